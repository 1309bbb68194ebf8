// Internal to cdp_failover: asking the migrated service whether it answers (the health check of
// a cutover or a drill), and handing a target VM over to its migrated OS (the promote step).
// Sockets are made on the calling thread, so a caller inside another network namespace
// (NetnsGuard, drill.cc) probes that namespace.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "cdp/core/status.h"
#include "cdp/failover/cutover.h"
#include "cdp/failover/cutover_plan.h"
#include "cdp/failover/target_agent.h"

namespace cdp::failover {

// Sends one `request` line to host:port and returns the first reply line (without the line end);
// an empty request only connects and returns "". Unavailable when nothing accepts or the peer
// closes first, TimedOut when no reply line came within timeout_ms.
Result<std::string> AskService(const std::string& host, uint16_t port, const std::string& request,
                               int timeout_ms);

// Asks plan.health every interval until the reply is plan.ExpectedReply() (any reply when that
// is "") and, when plan.health.command is set, that command (run then, on the calling thread's
// network namespace) exits 0 — for at most budget_seconds: "HOST:PORT answers 'REQ' with
// 'REPLY'[; COMMAND exited 0]", or TimedOut naming the last answer or the command's exit and
// output. NotFound when the command is not installed. Stops early (Aborted) when *cancel
// becomes true.
Result<std::string> WaitForService(const CutoverPlan& plan, double budget_seconds,
                                   const std::atomic<bool>* cancel = nullptr);

// Sends `agent` (the pe-agent of the VM to promote) a takeover of plan.root_volume with
// plan.network and returns what happened ("switch_root into the migrated OS on /dev/vda (check 0.01
// s, ...)"). A refused takeover is FailedPrecondition with the pe-agent's reason; a connection that
// drops before the reply is reported as a takeover that probably went through (docs/pe-agent.md
// §5): the health check decides. *sent (when given) tells whether the request went out at all.
// Sends `agent` the takeover RequestTakeover would, as a dry run: the pe-agent mounts the root
// read-only, runs every check of the adaptation and writes nothing. A refusal is
// FailedPrecondition "the target's takeover dry run refuses: <the pe-agent's reason>".
Result<std::string> DryRunTakeover(TargetAgent& agent, const CutoverPlan& plan);

Result<std::string> RequestTakeover(TargetAgent& agent, const CutoverPlan& plan,
                                    bool* sent = nullptr);

// The health check of `plan` (WaitForService), as the engines' ports take it.
ServiceWait PlanHealthCheck(const CutoverPlan& plan);

// The pe-agent of plan.target, its connection errors naming the plan's target.config.
std::unique_ptr<TargetAgent> PlanTargetAgent(const CutoverPlan& plan);

}  // namespace cdp::failover
