// SourceControl: how a cutover reaches the source server — is it serving, stop its writes, let
// it write again, fence it — held for the whole run. The cutover engine (cutover.h) calls it at
// precheck (CheckServing), quiesce (Quiesce), rollback (Resume) and fence (Fence); the drill
// never does (the source is not touched).
//
// The implementations (MakeSourceControl builds the one a plan asks for):
//   QmpSourceControl      the source is a QEMU VM: query-status, stop, cont, quit (or stays
//                         paused) over its QMP socket, one connection for the run;
//   CommandSourceControl  the plan's commands (argv) for quiesce, resume and fence;
//   AgentSourceControl    the source's cdp-agent, through the journal-server's relay
//                         (SourceAgentChannel): status, pre-freeze hooks and a group freeze held
//                         under a lease that a thread of its own renews, release (thaw), fence
//                         (addresses removed and read back, or a forced power-off); the final LSN
//                         of each volume comes from the freeze.
// A plan may mix them (quiesce by QMP, fence by a command).
//
// SourceHashes is the verification's view of the source's bytes: the source devices read on this
// host (plan source.devices), or the agent hashing its own devices (no path on this host).
//
// Not thread-safe: one engine thread calls it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"
#include "cdp/failover/cutover_plan.h"
#include "cdp/failover/target_vm.h"

namespace cdp::failover {

// What a fence leaves of the source, for the report of a failure after it.
struct FenceEffect {
  // True when Resume() after the fence makes the source serve again (a fence that only keeps
  // it paused).
  bool resumable = false;
  // The source's state after the fence: "powered off", "paused", "fenced by CMD".
  std::string state;
  // Why it cannot be undone (only when !resumable): "powered off at the fence (QMP quit)",
  // "fenced by CMD, which has no undo".
  std::string why_final;
};

class SourceControl {
 public:
  virtual ~SourceControl() = default;

  // Precheck: OK when the source serves (or there is nothing to ask); FailedPrecondition saying
  // its state and what to do when it does not; the connection's error (naming the plan key)
  // when it cannot be asked.
  virtual Status CheckServing() = 0;

  // Stops the source's writes, so everything it wrote reaches its agent. Returns what was done
  // ("source paused (QMP stop)", "source quiesced"). On error the source is as before (as far
  // as the method can tell); the engine does not Resume it.
  virtual Result<std::string> Quiesce() = 0;

  // Undoes Quiesce (the rollback): the source serves again. Returns what was done ("the source
  // VM runs again (QMP cont)", the command line); the error's message is what failed ("QMP
  // cont: ...", the command line). REQUIRES: Quiesce succeeded.
  virtual Result<std::string> Resume() = 0;

  // Makes sure the source can no longer answer. Returns what was done ("source powered off (QMP
  // quit)", "source stays paused", "fenced by CMD").
  virtual Result<std::string> Fence() = 0;

  // What Fence leaves of the source (whether or not it was called).
  virtual FenceEffect DescribeFence() const = 0;

  // The final LSN of each volume as the quiesce reported it (the agent's freeze: every write
  // completed before it is at or below); empty when the method reports none (QMP, a command):
  // the engine then waits until the journal holds everything the source's agent captured.
  virtual std::vector<std::pair<std::string, uint64_t>> FinalLsns() const { return {}; }

  // Seconds of the last Quiesce during which the source still served: its pre-freeze hooks (the
  // agent's `psql -c CHECKPOINT`). The engine's downtime starts after them. 0 when the method
  // stops the source at once (QMP, a command).
  virtual double ServingSecondsOfQuiesce() const { return 0; }

  // Asked between the steps after Quiesce and before Fence: OK while the source is still
  // quiesced; the error when it no longer is (an agent's freeze whose lease could not be
  // renewed: the agent died, the link was cut), so that the cutover stops before the fence.
  virtual Status CheckQuiesced() { return Status::Ok(); }
};

// How AgentSourceControl and AgentSourceHashes reach the source's agent: one request relayed by
// the journal-server (docs/wire-protocol.md, "Source control"), its reply or the error (the
// agent's, or the server's: no agent, session dropped, timed out). Thread-safe (the lease
// renewer calls it beside the engine).
class SourceAgentChannel {
 public:
  virtual ~SourceAgentChannel() = default;
  virtual Result<wire::v1::SourceReply> Call(const wire::v1::SourceRequest& request,
                                             int timeout_ms) = 0;
};

// The journal-server at `endpoint` relays (ControlClient::Source); a connection per concurrent
// call, kept for the next (one when calls come one at a time), closed after a call that failed.
std::shared_ptr<SourceAgentChannel> MakeSourceAgentChannel(std::string endpoint);

// The source's bytes, as the verification compares them with the target's.
class SourceHashes {
 public:
  virtual ~SourceHashes() = default;
  // Sets the xxh3 of every region of `volume` (offset, length given) to XXH3-64 of the source's
  // bytes there. Errors name the volume and where the bytes were read.
  virtual Status Hash(const std::string& volume, std::vector<RegionChecksum>* regions) = 0;
};

// plan.source_devices read on this host (REQUIRES: the plan names them).
std::unique_ptr<SourceHashes> MakeDeviceSourceHashes(const CutoverPlan& plan);
// The source's agent hashes its own devices (SourceHashes requests of at most 256 MiB each).
std::unique_ptr<SourceHashes> MakeAgentSourceHashes(std::shared_ptr<SourceAgentChannel> channel);

// quiesce method agent (and fence method agent when the plan says so) over `channel`.
// REQUIRES: plan.quiesce.method == "agent".
std::unique_ptr<SourceControl> MakeAgentSourceControl(const CutoverPlan& plan,
                                                      std::shared_ptr<SourceAgentChannel> channel);

// The source of a QEMU VM at `qmp_socket`. `where` names the plan key in connection errors
// ("plan.yaml:14: 'source.qmp_socket'"). `fence_keeps_paused`: Fence leaves the VM paused
// (fence qmp-pause) instead of QMP quit. Connects at the first call and keeps the connection
// (QEMU serves one QMP client at a time: others wait until the run ends); reconnects once the
// monitor closed it.
std::unique_ptr<SourceControl> MakeQmpSourceControl(std::string qmp_socket, std::string where,
                                                    bool fence_keeps_paused);

// The plan's commands: each run with a timeout (kPlanCommandMs), exit 0 = done. An empty
// `resume` makes Resume an error naming what is missing; an empty `fence` likewise for Fence.
// CheckServing has nothing to ask: OK.
std::unique_ptr<SourceControl> MakeCommandSourceControl(std::vector<std::string> quiesce,
                                                        std::vector<std::string> resume,
                                                        std::vector<std::string> fence);

// The SourceControl `plan` asks for: its source.quiesce method quiesces and resumes, its
// source.fence method fences, and the source's QMP socket (when the plan names one) answers
// CheckServing — the agent when the quiesce method is agent (with `channel`, required then).
// A quiesce method that is not built (fsfreeze) fails at Quiesce with NotSupported.
std::unique_ptr<SourceControl> MakeSourceControl(
    const CutoverPlan& plan, std::shared_ptr<SourceAgentChannel> channel = nullptr);

}  // namespace cdp::failover
