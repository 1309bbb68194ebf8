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

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cdp/agent/agent_state.h"
#include "cdp/agent/dirty_bitmap.h"
#include "cdp/agent/group_freeze_cycle.h"
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

  // The consistency group (DESIGN.md §3): the volumes of one process are one group, whose
  // freezes are group points. Empty: the volume's name.
  std::string group;

  // Trace mode.
  bool trace = false;
  // Mount points of the filesystems on the device to freeze for consistency points, or the one
  // entry "auto": every freezable filesystem mounted from the device or a device stacked on it
  // (disk_filesystems.h). Empty: no freezes, no consistency points.
  std::vector<std::string> freeze_paths;
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

  // Trace mode with filesystems to freeze: the volume's member of the process's freeze cycle;
  // null otherwise.
  FreezeMember* freeze_member();
  const AgentOptions& options() const { return options_; }
  // Routes the volume's checkpoints (`cdpctl checkpoint`) to the process's freeze cycle, and the
  // end of a device scan to it. Before that, checkpoints are refused as Unavailable. The cycle
  // outlives the agent's running (AgentProcess stops it first).
  void SetFreezeCycle(GroupFreezeCycle* cycle) { cycle_ = cycle; }
  // Routes the sender's source-control requests to `service` (the process's: every volume, the
  // group freeze) instead of the volume's own; null: back to its own. `service` outlives the
  // routing (AgentProcess resets it before it stops the volume).
  void SetSourceControl(SourceControlService* service) { process_source_control_ = service; }
  // Trace mode: the mount points its freezes freeze (--freeze, `auto` resolved); else empty.
  std::vector<std::string> freeze_mount_points();

#if CDP_TEST_HOOKS
  // Test builds: saves the state file on a thread of its own now (joined at Stop), as a state
  // save racing a freeze would; the number of saves done so far is logged at stop.
  void SaveStateInBackground();
#endif

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
  std::atomic<GroupFreezeCycle*> cycle_{nullptr};
  std::atomic<SourceControlService*> process_source_control_{nullptr};
#if CDP_TEST_HOOKS
  std::mutex test_savers_mu_;
  std::vector<std::thread> test_savers_;  // GUARDED_BY(test_savers_mu_)
  std::atomic<int> test_saves_done_{0};
#endif
  int lock_fd_ = -1;
  int volume_lock_fd_ = -1;
  bool stopped_ = false;
};

// The agent process: one Agent per volume, the freeze cycle of those in trace mode with
// filesystems to freeze — a group of one for a volume alone, a group point across all of them
// otherwise (group_freeze_cycle.h) — and one SourceControlService over all of them, the cycle
// as its GroupFreeze (the cutover's quiesce: a held freeze of every filesystem). Stop() stops
// the cycle (thawing a held freeze) before the volumes.
class AgentProcess {
 public:
  // Starts every volume in order (an error stops those already started and names the volume),
  // then the freeze cycle. The volumes must share one group name (else InvalidArgument). The
  // cycle runs every min(checkpoint_interval_ms) with max(freeze_limit_ms) of the volumes.
  static Result<std::unique_ptr<AgentProcess>> Start(const std::vector<AgentOptions>& volumes);
  ~AgentProcess();

  // Stops the freeze cycle, then every volume (Agent::Stop); the first error.
  Status Stop();

  // The process's GroupFreeze (the cutover's held freeze); null when no volume freezes.
  GroupFreeze* group_freeze() { return cycle_.get(); }

#if CDP_TEST_HOOKS
  // Test builds: Agent::SaveStateInBackground of every volume.
  void SaveStatesInBackground() {
    for (auto& agent : agents_) agent->SaveStateInBackground();
  }
#endif

 private:
  AgentProcess() = default;
  // Destroyed in reverse: the volumes first (their senders route to source_control_), then the
  // source control (it holds the cycle as its GroupFreeze), then the cycle.
  std::unique_ptr<GroupFreezeCycle> cycle_;
  std::unique_ptr<AddressTable> addresses_;
  std::unique_ptr<SourceControlService> source_control_;
  std::vector<std::unique_ptr<Agent>> agents_;
  bool stopped_ = false;
};

}  // namespace cdp::agent
