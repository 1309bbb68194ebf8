// ReplicaSink: where the replicator applies a volume's records, and where the durable cursor
// (the last LSN whose data is stable on the replica) lives.
//
// Two kinds (MakeReplicaSink picks by the --target string):
//   PATH                 a raw image file or block device; the cursor is a JSON file in the
//                        state dir (ImageSink + ReplicaCursor);
//   pe:tcp://HOST:PORT   a pe-agent in a target VM; the cursor is kept inside the target
//                        (its metadata disk), so it survives the VM being killed and restarted.
//
// Thread-compatible: one thread at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record_apply.h"
#include "cdp/core/status.h"

namespace cdp::replicator {

class ReplicaSink {
 public:
  virtual ~ReplicaSink() = default;

  // (Re)opens the sink for a volume of volume_size bytes and returns the durable cursor.
  // Called after every connection to the journal and after any failed ApplyDurably. Sets
  // *permanent when retrying cannot help (a target smaller than the volume, a pe-agent that
  // has no such volume or speaks another protocol version).
  virtual Result<uint64_t> Open(uint64_t volume_size, bool* permanent) = 0;

  // Applies the items (contiguous LSNs right after the cursor) and makes them stable together
  // with the cursor: on OK the durable cursor is items.back().rec.lsn. On error the cursor is
  // at its old value or later (replay is idempotent); *permanent as for Open.
  virtual Status ApplyDurably(const std::vector<ApplyItem>& items, bool* permanent) = 0;

  // For logs: "image /path" or "pe-agent tcp://HOST:PORT".
  virtual std::string Describe() const = 0;
};

struct SinkOptions {
  std::string volume;
  std::string target;     // PATH or pe:tcp://HOST:PORT
  std::string state_dir;  // image targets: where the cursor file lives
  IoEngine io_engine = IoEngine::kAuto;
  int pe_timeout_ms = 60000;  // how long one batch may take inside the target
};

// True when `target` names a pe-agent ("pe:" prefix).
bool IsPeTarget(const std::string& target);

// Checks the target string: a pe: target must be pe:tcp://HOST:PORT. InvalidArgument with the
// expected forms otherwise.
Status ValidateTarget(const std::string& target);

std::unique_ptr<ReplicaSink> MakeReplicaSink(const SinkOptions& options);

}  // namespace cdp::replicator
