// CutoverEngine: the steps of DESIGN.md §7, each timed, with a human timeline and a JSON report
// (`cdpctl cutover --plan FILE [--json]`, docs/cutover.md).
//
//   precheck  the plan is valid, the source's QMP (or agent) answers, the target is pe-ready,
//             the replica's lag is within budget
//   pre-verify  before the outage: a written-regions mark on the target, then every 4 MiB region
//             compared (source device vs pe-agent), the differing ones remembered
//   quiesce   the source stops writing (QMP stop: its block layer drains; or its agent runs the
//             pre-freeze hooks and freezes every filesystem, held under a lease), then the
//             journal has everything: the final LSN of each volume
//   drain     the target applied every final LSN
//   verify    XXH3-64 of the regions written since the mark or differing then (every region
//             without a usable mark): the source's device vs the pe-agent's
//   fence     the source can no longer answer (QMP quit, or pause, or a command, or its agent
//             removes the service addresses or powers it off)
//   promote   the pe-agent's takeover: final flush, boot adaptation (net.conf for the target's
//             NIC, fstab, virtio drivers), switch_root into the migrated OS
//   health    the service answers at its address (IP drift: the migrated OS announced it)
//
// A failure before `fence` rolls back: the source is resumed and keeps its IP; the report says
// which step failed and why. A failure at `fence`, or a takeover the pe-agent refused, rolls back
// too when the fence left the source paused (else the report says the rollback is impossible
// and why); after the promotion nothing is undone and the report says what state each side is
// in. Precheck errors name the plan's file, line and key (CutoverPlan::Where). Not
// thread-safe; one cutover at a time.
//
// The steps reach the world through CutoverPorts, made once per run (MakeCutoverPorts from the
// plan; fakes in cutover_test.cc):
//   precheck    source.CheckServing, target.Status, journal.Status (plus the target's lock and
//               own files: PutTargetOnOwnFiles)
//   pre-verify  target.WrittenRegions (the mark), target.Checksums; source_hashes (the source
//               devices read on this host, or the source's agent hashing its own)
//   quiesce     source.Quiesce, then journal.Status every kPollInterval until the final LSNs:
//               those source.FinalLsns names (the agent's freeze) are durable, or (QMP, command)
//               the journal holds everything the agent captured
//   drain       target.Status every kPollInterval until every final LSN is applied; then
//               source.CheckQuiesced (an agent's freeze may have lost its lease)
//   verify      target.WrittenRegions, target.Checksums; source_hashes; source.CheckQuiesced
//   fence       source.Fence
//   promote     target.Takeover
//   health      wait_for_service
//   rollback    source.Resume; after a fence failure source.DescribeFence says what is left
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "cdp/core/step_timeline.h"
#include "cdp/failover/cutover_plan.h"
#include "cdp/failover/journal_view.h"
#include "cdp/failover/source_control.h"
#include "cdp/failover/target_agent.h"

namespace cdp::failover {

using cdp::StepReport;  // one step of the report (start/end: seconds since the cutover began)

struct CutoverReport {
  bool ok = false;
  std::string plan;
  std::string error;     // the failed step's reason
  std::string rollback;  // what the rollback did ("" when none was needed)
  std::vector<StepReport> steps;
  double downtime_seconds = 0;  // estimate: quiesce start -> health check passed
  std::vector<std::pair<std::string, uint64_t>> final_lsn;  // per volume
  std::string verify;  // e.g. "64 regions (256 MiB) equal: v: 2 of 64 in the window, ..."
};

// Waits until the migrated service answers as the plan's health check expects, for at most
// budget_seconds; stops early (Aborted) once *cancel (when given) is true. WaitForService in
// production.
using ServiceWait =
    std::function<Result<std::string>(double budget_seconds, const std::atomic<bool>* cancel)>;

// What a cutover talks to, held for the whole run. Every member is required but
// source_hashes: without it, the plan's source.devices are read on this host (and without those
// the verification is skipped).
struct CutoverPorts {
  std::unique_ptr<SourceControl> source;
  std::unique_ptr<JournalView> journal;
  std::unique_ptr<TargetAgent> target;
  ServiceWait wait_for_service;
  std::unique_ptr<SourceHashes> source_hashes;
};

// The ports `plan` names: MakeSourceControl, the journal-server at plan.journal, the pe-agent of
// plan.target, the health check plan.health. Connects to nothing yet.
CutoverPorts MakeCutoverPorts(const CutoverPlan& plan);

class CutoverEngine {
 public:
  // `timeline` gets one human line per step as it happens. Once *cancel is true (cdpctl sets it
  // on SIGINT/SIGTERM) the cutover stops: before the fence it fails with Aborted ("stopped by a
  // signal") and rolls back like any failure there; from the fence on only the wait for the
  // health check is cut short (nothing can be undone then).
  CutoverEngine(CutoverPlan plan, std::ostream* timeline, const std::atomic<bool>* cancel = nullptr);
  // The same over the given ports (a test's fakes).
  CutoverEngine(CutoverPlan plan, CutoverPorts ports, std::ostream* timeline,
                const std::atomic<bool>* cancel = nullptr);

  // Runs the cutover once. REQUIRES: not called before on this engine.
  CutoverReport Run();

 private:
  class Impl;
  CutoverPlan plan_;
  CutoverPorts ports_;
  std::ostream* timeline_;
  const std::atomic<bool>* cancel_;
};

// The takeover the cutover of `plan` would ask of its target, as a dry run (the cutover's
// precheck sends the same): the pe-agent mounts the root volume read-only, runs every check of
// the adaptation and writes nothing. Returns its reply: ok, or the error naming every problem
// (file and line); its steps; and the changes the takeover would make (`cdpctl target
// takeover-plan`). Errors: the pe-agent does not answer (naming the plan's target.config key).
Result<wire::v1::TakeoverReply> PlanTakeover(const CutoverPlan& plan);

// The JSON report: {"ok", "plan", "error", "rollback", "downtime_seconds", "final_lsn":
// {VOLUME: LSN}, "verify", "steps": [{"name", "start", "end", "result", "ok"}]}.
std::string CutoverReportJson(const CutoverReport& report);

}  // namespace cdp::failover
