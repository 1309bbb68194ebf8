// cdpctl cutover, cdpctl drill: moving the service to the target, and rehearsing it.
#include <cstdio>
#include <iostream>
#include <optional>
#include <vector>

#include "cdp/failover/cutover.h"
#include "cdp/failover/drill.h"
#include "command.h"

namespace cdp::ctl {
namespace {

// Loads the plan of `command` (cutover, drill); prints why not and returns nullopt otherwise.
std::optional<failover::CutoverPlan> LoadPlan(const std::string& command,
                                              const std::string& plan_path) {
  auto plan = failover::LoadCutoverPlan(plan_path);
  if (!plan.ok()) {
    Fail(command, plan.status());
    return std::nullopt;
  }
  return std::move(*plan);
}

// The human table of a cutover's or a drill's steps.
void PrintSteps(const std::vector<failover::StepReport>& steps) {
  for (const auto& s : steps) {
    std::printf("%-11s %7.2f %7.2f  %s  %s\n", s.name.c_str(), s.start, s.end,
                s.ok ? "ok    " : "FAILED", s.result.c_str());
  }
}

ExitCode RunCutover(const Args& args) {
  if (args.plan.empty()) return Usage("cutover needs --plan FILE");
  auto plan = LoadPlan("cutover", args.plan);
  if (!plan) return ExitCode::kUsage;
  std::atomic<bool>* cancel = CancelOnSignals();
  failover::CutoverEngine engine(std::move(*plan), &std::cerr, cancel);
  const failover::CutoverReport report = engine.Run();
  if (args.json) {
    std::cout << failover::CutoverReportJson(report) << "\n";
  } else {
    PrintSteps(report.steps);
    if (report.ok) {
      std::printf("cutover ok: downtime %.2f s\n", report.downtime_seconds);
    } else {
      std::printf("cutover FAILED: %s%s%s\n", report.error.c_str(),
                  report.rollback.empty() ? "" : "; ", report.rollback.c_str());
    }
  }
  return report.ok ? ExitCode::kOk : ExitCode::kError;
}

ExitCode RunDrill(const Args& args) {
  if (args.plan.empty()) return Usage("drill needs --plan FILE");
  auto plan = LoadPlan("drill", args.plan);
  if (!plan) return ExitCode::kUsage;
  std::atomic<bool>* cancel = CancelOnSignals();
  failover::DrillEngine engine(std::move(*plan), &std::cerr, cancel);
  const failover::DrillReport report = engine.Run();
  if (args.json) {
    std::cout << failover::DrillReportJson(report) << "\n";
  } else {
    PrintSteps(report.steps);
    std::printf(report.ok ? "drill ok\n" : "drill FAILED: %s\n", report.error.c_str());
  }
  return report.ok ? ExitCode::kOk : ExitCode::kError;
}

}  // namespace

const Command kCutoverCommand = {
    "cutover", false,
    "  cdpctl cutover --plan FILE [--json]\n"
    "      moves the service to the target: precheck, pre-verify (while the source serves),\n"
    "      quiesce the source, drain, verify, fence, promote (switch_root or kexec into the\n"
    "      migrated OS), health check; a timeline on stderr and the report (with --json as\n"
    "      JSON) on stdout; exit 0 only on success. A failure before the promotion resumes the\n"
    "      source where it can (docs/cutover.md; plan keys: docs/cutover-plan.md).\n"
    "      SIGINT/SIGTERM before the fence stop it and resume the source; after the fence they\n"
    "      only cut the wait for the health check short\n",
    RunCutover};

const Command kDrillCommand = {
    "drill", false,
    "  cdpctl drill --plan FILE [--json]\n"
    "      boots a copy-on-write copy of the target's disks as a second VM in the isolated\n"
    "      namespace drill.namespace, promotes it, runs the health check there and tears it all\n"
    "      down; replication goes on and the source is never touched. SIGINT/SIGTERM stop the\n"
    "      drill and tear it down; exit 0 only on success (docs/drill.md); root\n",
    RunDrill};

}  // namespace cdp::ctl
