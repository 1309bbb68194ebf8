// Replicator: tails one volume from the journal-server and applies it to a target, in LSN order.
//
// Pull-based: it asks for records from its cursor (TailRequest), and while it applies one batch
// the next request is already on its way (one batch of read-ahead). After each batch the data
// is made stable, then the cursor is saved, then the server hears the new applied LSN — so a
// crash at any point replays from a cursor whose data is on disk (replay is idempotent).
// A silent server is reconnected; a record that fails its CRC is never applied.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "cdp/core/block_device.h"
#include "cdp/core/status.h"
#include "cdp/replicator/replica_sink.h"

namespace cdp::replicator {

struct ReplicatorOptions {
  std::string server;
  std::string volume;
  std::string target;     // raw image file or block device
  std::string state_dir;  // where the cursor lives (default: the target's directory)
  IoEngine io_engine = IoEngine::kAuto;
  uint64_t max_batch_bytes = 8ull << 20;
  uint32_t wait_ms = 500;  // long-poll time of one tail request
};

class Replicator {
 public:
  // Applies to the sink MakeReplicaSink builds for options.target.
  explicit Replicator(ReplicatorOptions options);
  // Applies to `sink` (a test's wrapper around a real sink); options.target is still checked
  // and named in logs.
  Replicator(ReplicatorOptions options, std::unique_ptr<ReplicaSink> sink);

  // Runs until *stop is true. Returns a non-OK Status only for errors that retrying cannot fix
  // (a target smaller than the volume, a replica ahead of the journal, ...).
  Status Run(const std::atomic<bool>* stop);

 private:
  ReplicatorOptions options_;
  std::unique_ptr<ReplicaSink> sink_;  // null until Run builds it, unless given
};

}  // namespace cdp::replicator
