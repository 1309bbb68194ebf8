// Agent: one protected volume in NBD in-line mode. Wires the pieces together — BlockDevice,
// VolumeCapture, Sender, DirtyBitmap, SyncEngine, NbdServer — and owns the state directory
// (agent_state.h): what to sync at start, and what to save on a clean stop.
//
// Start-up decides the sync plan from the state directory:
//   no state            -> full sync (zero regions skipped if the journal is empty for the volume)
//   clean shutdown      -> resume: the saved dirty bitmap, and the full sync from its cursor
//   unclean (crash)     -> a history gap and a full sync that sends zero regions too
#pragma once

#include <memory>
#include <string>

#include "cdp/agent/agent_state.h"
#include "cdp/agent/dirty_bitmap.h"
#include "cdp/agent/nbd_server.h"
#include "cdp/agent/sender.h"
#include "cdp/agent/sync_engine.h"
#include "cdp/agent/volume_capture.h"

namespace cdp::agent {

struct AgentOptions {
  std::string server;  // tcp://HOST:PORT of the journal-server
  std::string volume;
  std::string device;  // file or block device to protect
  std::string nbd;     // unix:PATH or tcp:HOST:PORT
  AckMode ack_mode = AckMode::kAsync;
  std::string state_dir;
  uint64_t buffer_bytes = 32ull << 20;
  IoEngine io_engine = IoEngine::kAuto;
  int drain_ms = 10000;  // how long a clean stop tries to get buffered records durable
};

class Agent {
 public:
  // Validates everything an operator can get wrong (volume name, device, state dir, NBD
  // address, server endpoint) and starts serving. Errors are one line naming the culprit.
  static Result<std::unique_ptr<Agent>> Start(const AgentOptions& options);
  ~Agent();

  // Clean stop: no new client I/O, the sync stops, buffered records get until drain_ms to
  // become durable, what is left is saved as dirty regions, and the state says clean.
  Status Stop();

  std::string nbd_address() const { return nbd_->bound_address(); }

 private:
  explicit Agent(AgentOptions options) : options_(std::move(options)) {}
  void FillReport(v1::AgentReport* report);

  AgentOptions options_;
  AgentState state_;
  std::unique_ptr<DirtyBitmap> dirty_;
  std::unique_ptr<Sender> sender_;
  std::unique_ptr<VolumeCapture> capture_;
  std::unique_ptr<SyncEngine> sync_;
  std::unique_ptr<NbdServer> nbd_;
  bool stopped_ = false;
};

}  // namespace cdp::agent
