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
#pragma once

#include <atomic>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cdp/failover/cutover.h"
#include "cdp/failover/cutover_plan.h"

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

class DrillEngine {
 public:
  // `timeline` gets one human line per step as it happens. The drill stops early (and tears
  // down) once *cancel is true: cdpctl sets it on SIGINT/SIGTERM.
  DrillEngine(CutoverPlan plan, std::ostream* timeline, const std::atomic<bool>* cancel = nullptr);

  DrillReport Run();

 private:
  class Impl;
  CutoverPlan plan_;
  std::ostream* timeline_;
  const std::atomic<bool>* cancel_;
};

// The JSON report: {"ok", "plan", "error", "downtime_seconds" (always 0: the source is not
// touched), "snapshot_lsn": {VOLUME: LSN}, "applied_lsn_after": {VOLUME: LSN}, "teardown",
// "steps": [{"name", "start", "end", "result", "ok"}]}.
std::string DrillReportJson(const DrillReport& report);

}  // namespace cdp::failover
