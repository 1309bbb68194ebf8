// DrillEngine: a failover drill (`cdpctl drill --plan FILE [--json]`, docs/drill.md). It proves
// that the target would take over — the migrated OS boots from the replica and the service
// answers — without touching the source and without stopping replication:
//
//   precheck     the target VM runs, is pe-ready and runs on its own disks; the target has a
//                service NIC; the drill namespace is free. What a drill that died left behind
//                (its VM, namespace, overlays, deltas) is cleaned up first.
//   snapshot     the target's pe-agent holds the apply at a batch boundary; one QMP transaction
//                puts a copy-on-write delta (STATE_DIR/NAME.drill-delta.ID.qcow2) on top of every
//                target disk and the metadata disk, so the files the target config names are
//                frozen at the snapshot LSN; the hold is released and the target goes on
//                applying, into the deltas.
//   network      network namespace drill.namespace with its own copy of the service network: a
//                bridge holding drill.address and a tap (tap-drill) for the drill VM.
//   boot         a second VM, NAME-drill, in that namespace: the PE, booted from overlays
//                (STATE_DIR/NAME-drill.ID.qcow2) of the frozen files, same SMBIOS UUID and MACs.
//   promote      the drill VM's takeover with the plan's network mapping: boot adaptation and
//                switch_root, exactly as in a cutover.
//   health       the plan's health check, from inside the namespace.
//   replication  the target's applied LSN now against the snapshot's: replication went on.
//   teardown     always, also after a failure: the drill VM stopped, the namespace and the
//                overlays removed, every delta committed back into the target's disk (QMP
//                block-commit, online) and deleted.
//
// The source is never contacted: no QMP, no agent command, no journal write. Not thread-safe;
// one drill per target at a time.
//
// The steps reach the world through DrillPorts, made once per run (MakeDrillPorts from the
// plan; fakes in drill_test.cc):
//   precheck     sandbox.LeftoversExist/NamespaceExists (and Teardown for leftovers),
//                sandbox.PrepareTarget, target.Status (plus the target's lock)
//   snapshot     sandbox.Freeze
//   network      sandbox.MakeNetwork
//   boot         sandbox.BootDrillVm
//   promote      sandbox.InNamespace(drill_vm.Takeover)
//   health       sandbox.InNamespace(wait_for_service)
//   replication  target.Status, journal.Status
//   teardown     sandbox.Teardown
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cdp/failover/cutover.h"
#include "cdp/failover/cutover_plan.h"
#include "cdp/failover/journal_view.h"
#include "cdp/failover/target_agent.h"

namespace cdp::failover {

struct DrillReport {
  bool ok = false;
  std::string plan;
  std::string error;  // the failed step's reason (a failed teardown counts)
  std::vector<StepReport> steps;
  std::vector<std::pair<std::string, uint64_t>> snapshot_lsn;       // per volume: what booted
  std::vector<std::pair<std::string, uint64_t>> applied_lsn_after;  // the target, at the end
  std::string teardown;                                             // what the teardown did
};

// What a drill makes and removes on this host: the snapshot of the target's disks, the network
// namespace, the drill VM. Production: files in the target's state_dir, `ip`, QEMU (drill.cc).
// Not thread-safe: one engine thread calls it.
class DrillSandbox {
 public:
  virtual ~DrillSandbox() = default;

  // Whether a drill that did not finish left files behind (deltas, overlays, the drill VM's pid
  // file); Teardown removes them.
  virtual bool LeftoversExist() = 0;
  // Whether the plan's drill namespace exists.
  virtual bool NamespaceExists() = 0;
  // The target VM answers on its QMP socket and runs every drive on the file its config names
  // (deltas an export-boot left are committed back first). Returns what it cleaned up ("" when
  // nothing).
  virtual Result<std::string> PrepareTarget() = 0;
  // Freezes the target's disk files at a batch boundary (TargetSnapshot::Freeze): *lsn gets
  // each volume's applied LSN in them. Returns the description for the report.
  virtual Result<std::string> Freeze(std::map<std::string, uint64_t>* lsn) = 0;
  // The namespace with its bridge (drill.address) and the drill VM's tap.
  virtual Result<std::string> MakeNetwork() = 0;
  // Overlays of the frozen files and the drill VM on them, in the namespace, until it is
  // pe-ready.
  virtual Result<std::string> BootDrillVm() = 0;
  // Runs `fn` with this thread inside the namespace (sockets it makes live there).
  virtual Result<std::string> InNamespace(const std::function<Result<std::string>()>& fn) = 0;
  // Removes whatever a drill of this target made (idempotent): what was done and what failed.
  struct TeardownResult {
    std::vector<std::string> done;
    std::vector<std::string> failed;
  };
  virtual TeardownResult Teardown() = 0;
};

// What a drill talks to, held for the whole run. Every member is required.
struct DrillPorts {
  std::unique_ptr<DrillSandbox> sandbox;
  std::unique_ptr<JournalView> journal;
  std::unique_ptr<TargetAgent> target;    // the target VM's pe-agent
  std::unique_ptr<TargetAgent> drill_vm;  // the drill VM's; first called inside the namespace
  ServiceWait wait_for_service;           // called inside the namespace
};

// The ports `plan` names (the host's sandbox for plan.target, the journal-server at
// plan.journal, the pe-agents of the target and of its drill VM, the health check). Connects
// to nothing yet.
DrillPorts MakeDrillPorts(const CutoverPlan& plan);

class DrillEngine {
 public:
  // `timeline` gets one human line per step as it happens. The drill stops early (and tears
  // down) once *cancel is true: cdpctl sets it on SIGINT/SIGTERM.
  DrillEngine(CutoverPlan plan, std::ostream* timeline, const std::atomic<bool>* cancel = nullptr);
  // The same over the given ports (a test's fakes).
  DrillEngine(CutoverPlan plan, DrillPorts ports, std::ostream* timeline,
              const std::atomic<bool>* cancel = nullptr);

  // Runs the drill once. REQUIRES: not called before on this engine.
  DrillReport Run();

 private:
  class Impl;
  CutoverPlan plan_;
  DrillPorts ports_;
  std::ostream* timeline_;
  const std::atomic<bool>* cancel_;
};

// The JSON report: {"ok", "plan", "error", "downtime_seconds" (always 0: the source is not
// touched), "snapshot_lsn": {VOLUME: LSN}, "applied_lsn_after": {VOLUME: LSN}, "teardown",
// "steps": [{"name", "start", "end", "result", "ok"}]}.
std::string DrillReportJson(const DrillReport& report);

}  // namespace cdp::failover
