// TargetSnapshot: the target VM's disk files frozen at a batch boundary while the VM keeps
// running and applying (docs/drill.md, "Why the snapshot is consistent"). Used by drills (a
// second VM boots overlays of the frozen files) and by `cdpctl target export-boot` (the
// migrated OS's kernel is read from them).
//
// Freeze(): the pe-agent holds its apply (ApplyHoldRequest, at most 10 s), one QMP transaction
// of blockdev-snapshot-sync puts a qcow2 delta STATE_DIR/NAME.<tag>.<VOLUME|meta>.qcow2 on top of
// every drive (the volume disks and the metadata disk together, so data and cursors agree), the
// hold is released; from then on the target writes into the deltas and the files its config
// names do not change. Thaw(): every delta committed back into its file (QMP block-commit while
// the VM runs, qemu-img commit when it is stopped) and deleted; idempotent, so it also cleans up
// after a process that died between the two.
//
// Not thread-safe; one snapshot per (target, tag) at a time.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/failover/target_config.h"

namespace cdp::failover {

struct FrozenDrive {
  std::string id;     // the target's QEMU drive id ("disk0".., "meta")
  std::string label;  // the volume name, or "meta"
  std::string base;   // the file the target config names: frozen between Freeze and Thaw
  std::string delta;  // where the target writes meanwhile
};

class TargetSnapshot {
 public:
  // `tag` names the deltas ("drill-delta", "boot-delta"): different users never share them.
  TargetSnapshot(const TargetConfig& target, const std::string& tag);

  const std::vector<FrozenDrive>& drives() const { return drives_; }

  // True when a delta file exists (a snapshot taken and not thawed, maybe by a process that
  // died).
  bool DeltasExist() const;

  // Checks the target runs every drive on its own file (not on a delta), then freezes as above.
  // *lsn gets each volume's applied LSN at the freeze (what the frozen files hold). Returns a
  // description for a report ("target disks frozen at LSN v 12 (apply held 0.05 s, 1 batch(es)
  // waited)"). On error nothing changed on the target (a failed transaction is rolled back by
  // QEMU and its files removed).
  Result<std::string> Freeze(std::map<std::string, uint64_t>* lsn);

  // Commits every existing delta back and deletes it; appends what it did to *done. Errors:
  // the target's QMP socket does not answer while the VM runs, a block job fails (the target
  // keeps running on the delta, which is safe; Thaw again later).
  Status Thaw(std::vector<std::string>* done);

 private:
  const TargetConfig& target_;
  std::vector<FrozenDrive> drives_;
};

// An exclusive lock on one target for a cutover, a drill or an export-boot (flock on
// STATE_DIR/NAME.lock, released when the object goes away or the process dies): they freeze,
// thaw and promote the same disks and must not overlap.
class TargetLock {
 public:
  // FailedPrecondition naming the holder ("a drill (pid 123)") when another process holds it.
  static Result<std::unique_ptr<TargetLock>> Acquire(const TargetConfig& target,
                                                     const std::string& what);
  ~TargetLock();
  TargetLock(const TargetLock&) = delete;
  TargetLock& operator=(const TargetLock&) = delete;

 private:
  explicit TargetLock(int fd) : fd_(fd) {}
  int fd_;
};

// The readers of the QMP replies a snapshot relies on (exposed for tests). Each checks the reply's
// shape: a field missing or of another type is a ProtocolMismatch starting with `context` (by
// convention QmpClient::ReplyContext(COMMAND)) and naming the field and what was there.
//
// query-block: drive id ("device") -> the file on top of it ("inserted"."file"), for the drives
// that have a medium.
Result<std::map<std::string, std::string>> DriveFilesFromQueryBlock(const nlohmann::json& reply,
                                                                    std::string_view context);
// query-block-jobs: whether a job runs on `device` (for a job started with a job-id, QEMU
// reports that id as its device).
Result<bool> BlockJobListed(const nlohmann::json& reply, const std::string& device,
                            std::string_view context);
// query-jobs: job `id`'s "status" and "error" ("" when it has none); status "absent" when no
// such job is listed.
struct JobState {
  std::string status;
  std::string error;
};
Result<JobState> JobStateFromQueryJobs(const nlohmann::json& reply, const std::string& id,
                                       std::string_view context);

// Makes sure the target runs on the files its config names before anything relies on them (a
// cutover's precheck, `cdpctl target start`): the deltas a drill or an export-boot left behind
// (killed midway) are committed back first. Returns what it did ("" when nothing was needed);
// FailedPrecondition when a drive still runs on another file.
Result<std::string> PutTargetOnOwnFiles(const TargetConfig& target);

}  // namespace cdp::failover
