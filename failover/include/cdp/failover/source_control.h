// SourceControl: how a cutover reaches the source server — is it serving, stop its writes, let
// it write again, fence it — held for the whole run. The cutover engine (cutover.h) calls it at
// precheck (CheckServing), quiesce (Quiesce), rollback (Resume) and fence (Fence); the drill
// never does (the source is not touched).
//
// Today's implementations (MakeSourceControl builds the one a plan asks for):
//   QmpSourceControl      the source is a QEMU VM: query-status, stop, cont, quit (or stays
//                         paused) over its QMP socket, one connection for the run;
//   CommandSourceControl  the plan's commands (argv) for quiesce, resume and fence.
// A plan may mix them (quiesce by QMP, fence by a command); an agent-driven implementation (the
// source's cdp-agent freezing its filesystems and dropping the service address) fits the same
// four calls.
//
// Not thread-safe: one engine thread calls it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/failover/cutover_plan.h"

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
};

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
// CheckServing. A quiesce method that is not built (fsfreeze) fails at Quiesce with
// NotSupported.
std::unique_ptr<SourceControl> MakeSourceControl(const CutoverPlan& plan);

}  // namespace cdp::failover
