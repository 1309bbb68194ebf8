// Agent: one protected volume, in NBD in-line mode or in trace mode. Wires the pieces together
// and owns the state directory (agent_state.h): what to sync at start, and what to save on a
// clean stop.
//
// NBD mode — BlockDevice, VolumeCapture, Sender, DirtyBitmap, SyncEngine, NbdServer. Start-up
// decides the sync plan from the state directory:
//   no state            -> full sync (zero regions skipped if the journal is empty for the volume)
//   clean shutdown      -> resume: the saved dirty bitmap, and the full sync from its cursor
//   unclean (crash)     -> a history gap and a full sync that sends zero regions too
//
// Trace mode (--trace) — BlockTracer, DirtyExtentMap, BlockHashStore, FsFreezer, TraceCapture
// (trace_capture.h) over the same VolumeCapture and Sender:
//   no state            -> initial full sync (zero blocks skipped if the journal is empty)
//   clean shutdown      -> resume the tracefs instance the stop left enabled: the events buffered
//                          meanwhile, the saved dirty regions, no resync; if the instance is gone
//                          (reboot) or lost events meanwhile: a gap and a checksum resync
//   unclean (crash)     -> a history gap and a checksum resync (only blocks whose content
//                          differs from the block hashes are sent)
#pragma once

#include <memory>
#include <string>

#include "cdp/agent/agent_state.h"
#include "cdp/agent/dirty_bitmap.h"
#include "cdp/agent/sender.h"
#include "cdp/agent/source_control_service.h"
#include "cdp/agent/sync_engine.h"
#include "cdp/agent/trace_capture.h"
#include "cdp/agent/volume_capture.h"
#include "cdp/nbd/nbd_server.h"

namespace cdp::agent {

// The smallest send buffer (--buffer-mib) each mode works with. NBD mode: the full sync and the
// resync queue records of 1 MiB (SyncEngine's chunk) plus Sender::kRecordOverhead, which must
// fit. Trace mode: a read-back batch (TraceCaptureOptions::read_batch_bytes, 4 MiB) plus the
// overhead of its records must fit, and a freeze's residual set is kept to an eighth of it.
inline constexpr uint64_t kMinBufferBytesNbd = 2ull << 20;
inline constexpr uint64_t kMinBufferBytesTrace = 8ull << 20;
// NBD mode advertises requests of at most this, or half the buffer when that is less, so that a
// sync-mode write always fits in the buffer next to another one.
inline constexpr uint32_t kMaxNbdRequestBytes = 32u << 20;

// OK when a send buffer of `buffer_bytes` works in that mode (at least kMinBufferBytesNbd or
// kMinBufferBytesTrace, at most 1 TiB); InvalidArgument naming --buffer-mib and the minimum.
Status ValidateBufferBytes(uint64_t buffer_bytes, bool trace);

// The NBD maximum request size for a send buffer of `buffer_bytes`: the largest power of two
// <= min(kMaxNbdRequestBytes, buffer_bytes / 2).
uint32_t NbdMaxRequestBytes(uint64_t buffer_bytes);

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
  uint64_t bandwidth_bytes_per_sec = 0;  // 0: unlimited
  // Become the volume's writer even though another agent holds it, fencing that one
  // (docs/wire-protocol.md, "One writer per volume"); for an agent whose state dir was lost or
  // that replaces a dead host.
  bool take_over = false;

  // Trace mode.
  bool trace = false;
  std::string freeze_path;  // empty: no freezes, no consistency points
  int checkpoint_interval_ms = 1000;
  int freeze_limit_ms = 200;
  uint32_t trace_buffer_kb = 4096;
  std::string tracefs_root;  // empty: found (or mounted) automatically
  int freeze_hold_ms = 0;    // test build only (CDP_TEST_HOOKS): CDP_AGENT_TEST_FREEZE_HOLD_MS
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

  std::string nbd_address() const { return nbd_ ? nbd_->bound_address() : std::string(); }

 private:
  explicit Agent(AgentOptions options) : options_(std::move(options)) {}
  // Creates (or checks) the state dir and takes its lock.
  Status PrepareStateDir();
  // Trace mode: takes /run/lock/cdp-agent.VOLUME.lock (one tracing agent per volume).
  Status LockVolume();
  Status StartNbd();
  Status StartTrace();
  void MakeSender(uint64_t size, uint32_t block_size);
  // Hands the sender's source-control requests to source_control_ (made here).
  void ServeSourceControl();
  void FillReport(v1::AgentReport* report);
  Status StopTrace();

  AgentOptions options_;
  // Written at start (before the sender thread), by the sender thread while running (the
  // writer epoch, SetWriterEpochCallback) and by Stop once the sender thread has ended.
  AgentState state_;
  std::unique_ptr<DirtyBitmap> dirty_;
  std::unique_ptr<AddressTable> addresses_;
  std::unique_ptr<SourceControlService> source_control_;  // before sender_: outlives its thread
  std::unique_ptr<Sender> sender_;
  std::unique_ptr<VolumeCapture> capture_;
  std::unique_ptr<SyncEngine> sync_;
  std::unique_ptr<nbd::NbdServer> nbd_;
  std::unique_ptr<BlockHashStore> hashes_;
  std::unique_ptr<TraceOutput> trace_output_;  // capture_ over sender_, for trace_
  std::unique_ptr<TraceCapture> trace_;
  int lock_fd_ = -1;
  int volume_lock_fd_ = -1;
  bool stopped_ = false;
};

}  // namespace cdp::agent
