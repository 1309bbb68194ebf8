// GroupFreezeCycle: the freeze cycle of trace mode for every volume of one agent process at once
// (DESIGN.md §3-§4; issue 17 item 3), and the agent's GroupFreeze (group_freeze.h). One volume
// alone is a group of one: the same cycle, the same figures as before groups existed.
//
// One cycle, run by the cycle thread every checkpoint interval, on a `cdpctl checkpoint`, or by
// FreezeAndHold:
//
//   for each member (volume), in order, its read-back parked (FreezeMember::Park):
//     Prepare      unfrozen: its filesystems still mounted, no scan running, pre-copy (syncfs,
//                  read back) until its dirty set is small, room in its send buffer for the
//                  residual set; a member that is not ready skips the cycle for all
//   every filesystem of every member, deduplicated by st_dev, in mount-path order:
//     Freeze       FIFREEZE, the watchdog armed (a held freeze: with the hold limit)
//   for each member:
//     CaptureResidual  drain the block events, check none was lost, read back and queue the
//                  residual set; the member's LSN now ends the frozen state
//   every filesystem, in reverse order:
//     Thaw         FITHAW (a held freeze: not until Thaw() or the watchdog)
//   for each member:
//     AfterThaw    whether a point may be recorded (no resync became pending)
//     RecordPoint  one POINT_FREEZE per member; with two or more members, each names the group,
//                  the group point id and every member's LSN
//     Finish       figures (FreezeStats), log lines
//
// Quiet filesystems: a freeze writes to the disk by itself — ext4 its superblock at the thaw, xfs
// its log — and so do the agent's own state files when they are on a frozen filesystem. Those few
// writes would make every periodic cycle freeze again, and journal a few records, forever (the
// agent's hash file: a record invalidates an entry, the page is written back with the file's
// mtime, the ext4 journal commit of that inode is a new record, which invalidates an entry...).
// So when every member saw at most kQuietWrites block writes since its last point, the periodic
// cycle backs off — skipped whole, without even the pre-copy's syncfs, which would write back the
// agent's own dirty pages: the next point after a quiet one comes after twice the interval, then
// four times, up to kMaxQuietBackoffMs; any busier cycle (or a checkpoint) resets it. Writes are
// never delayed — only the point that covers them; the kernel's own writeback (30 s by
// default) then writes the agent's pages, one round of the loop per writeback.
//
// Nothing is written to a log, and nothing waits for anything that may write to one, between the
// first Freeze and the last Thaw: the agent's state dir and its stderr may be on a frozen
// filesystem (the root), and a write there blocks until the thaw. Members honour the same rule
// in CaptureResidual.
//
// Thread-safety: public methods are thread-safe. Phases of a member run only while it is parked.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cdp.pb.h"
#include "cdp/agent/fs_freezer.h"
#include "cdp/agent/group_freeze.h"

namespace cdp::agent {

// What a group point tells each member's point (ConsistencyPoint.group*).
struct GroupPointMark {
  std::string group;
  uint64_t id = 0;                    // the freeze's wall-clock time in microseconds
  std::vector<FrozenVolume> members;  // every member with its LSN at the freeze
};

// One volume in a freeze cycle: its phases, in the order the cycle calls them (see the file
// comment). TraceCapture implements it (freeze_cycle.cc); tests fake it. Every phase but
// Park/Unpark runs with the member parked, on the cycle thread.
class FreezeMember {
 public:
  virtual ~FreezeMember() = default;

  virtual const std::string& volume() const = 0;
  // Stops the member's own read-back between two batches until Unpark, so that the cycle thread
  // may run its phases. Returns once parked.
  virtual void Park() = 0;
  virtual void Unpark() = 0;
  // The filesystems to freeze (owned by the member; may be empty).
  virtual std::vector<Freezable*> Filesystems() = 0;
  // Why no point can be asked of this member now ("" when one can): not configured to freeze,
  // a resync running or pending, a filesystem unmounted. For Checkpoint's refusal.
  virtual Status CanCheckpoint() = 0;
  // Unfrozen, before the freeze: true when the member is ready (see the file comment), by
  // `deadline_ns` (steady clock). False: skip this cycle, retried at the next interval.
  virtual bool Prepare(int64_t deadline_ns) = 0;
  // Whether anything reached the member's disk since its last point (true before the first).
  virtual bool ChangedSincePoint() = 0;
  // The LSN of the member's last point, 0 for none.
  virtual uint64_t last_point_lsn() = 0;
  // How many block writes reached the member's disk since its last point (after Prepare: the
  // page cache written back); UINT64_MAX before the first point.
  virtual uint64_t WritesSincePoint() = 0;
  // Frozen: the residual set read back and queued. "" or why the freeze must be abandoned.
  // `frozen_at_ns` is when the first FIFREEZE began; `limit_ns` the freeze's budget.
  // REQUIRES: writes nothing to a log or to the state dir.
  virtual std::string CaptureResidual(int64_t frozen_at_ns, int64_t limit_ns) = 0;
  // The last LSN handed out: after CaptureResidual, the one the frozen state ends at.
  virtual uint64_t last_lsn() = 0;
  // Every filesystem of the freeze is thawed (or left to its watchdog): the member may write
  // to its state dir again. Called once after each CaptureResidual, for a held freeze at Thaw()
  // (the member is not parked then).
  virtual void OnThawed() = 0;
  // After the thaw (for a held freeze: at once): "" when a point may be recorded, else why not
  // (e.g. a resync became pending).
  virtual std::string AfterThaw() = 0;
  // Records the freeze point at last_lsn(), labelled; `group` null for a volume alone. Returns
  // its LSN, 0 when none was recorded (nothing ever written).
  virtual uint64_t RecordPoint(const std::string& label, const GroupPointMark* group) = 0;
  // The cycle is over: figures and log lines. `abandon` is "" for a point.
  virtual void Finish(uint64_t frozen_us, uint64_t fifreeze_us, const std::string& abandon,
                      uint64_t point_lsn) = 0;
  // The freeze could not be made (`why`, e.g. a FIFREEZE refused): logs once per episode.
  virtual void FreezeRefused(const Status& why) = 0;
};

struct GroupFreezeCycleOptions {
  std::string group;                  // names the group points; "" with one member
  int checkpoint_interval_ms = 1000;  // between periodic cycles
  int freeze_limit_ms = 200;          // a periodic freeze longer than this is abandoned
  int hard_limit_ms = 400;            // the watchdog thaws a periodic freeze after this
  // Test hook (CDP_AGENT_TEST_FREEZE_HOLD_MS): stay frozen this long. Honoured only in a build
  // with CDP_TEST_HOOKS.
  int freeze_hold_ms = 0;
};

class GroupFreezeCycle : public GroupFreeze {
 public:
  // See "Quiet filesystems" above.
  static constexpr uint64_t kQuietWrites = 32;
  static constexpr int64_t kMaxQuietBackoffMs = 30000;

  // The members are not owned; they outlive this object. With no member, every call fails with
  // FailedPrecondition (nothing to freeze).
  GroupFreezeCycle(GroupFreezeCycleOptions options, std::vector<FreezeMember*> members);
  ~GroupFreezeCycle() override;  // Stop()

  // Starts the cycle thread (periodic cycles). Without calling it, cycles run only when asked.
  void Start();
  // Stops the cycle thread; thaws a held freeze. Idempotent.
  void Stop();
  // The next periodic cycle runs now rather than at the end of the interval (a scan finished:
  // the first point after it is due).
  void RunSoon();

  // `cdpctl checkpoint`: a cycle now, the point labelled `label`; returns every member's point
  // LSN (the last point, when nothing changed since it). FailedPrecondition naming the volume
  // when a member cannot make a point (CanCheckpoint); Aborted when the freeze was abandoned;
  // TimedOut after timeout_ms; Aborted when stopping.
  Result<std::vector<FrozenVolume>> Checkpoint(const std::string& label, int timeout_ms);

  // GroupFreeze.
  Result<std::vector<FrozenVolume>> FreezeAndHold(const std::string& label,
                                                  std::chrono::milliseconds freeze_budget,
                                                  std::chrono::milliseconds hold_limit) override;
  Status RenewHold(std::chrono::milliseconds hold_limit) override;
  Status Thaw() override;
  std::chrono::milliseconds HeldFor() const override;

  // One cycle now on the calling thread (the cycle thread's body; tests call it directly),
  // after any cycle in progress. `label` for the points; a freeze longer than `limit_ms` is
  // abandoned; `hold_limit_ms` > 0: a held freeze (stays frozen, its watchdogs armed for that
  // long, points recorded at once). Returns each member's point LSN — when nothing changed since
  // the last points (and no hold), those — or why none was made: Aborted naming the volume that
  // abandoned it (the freeze of a group is abandoned for all), the Freeze error of a filesystem
  // (everything thawed again), FailedPrecondition when there is no member.
  Result<std::vector<FrozenVolume>> RunCycle(const std::string& label, int limit_ms,
                                             int hold_limit_ms);

  // The filesystems a cycle freezes, deduplicated, in freeze order (for the log and tests).
  std::vector<Freezable*> FreezeOrder() const;

 private:
  void Loop();
  Result<std::vector<FrozenVolume>> RunCycleLocked(const std::string& label, int limit_ms,
                                                   int hold_limit_ms);
  // Thaws `frozen` in reverse order; the first error (others are logged after).
  Status ThawAll(const std::vector<Freezable*>& frozen);

  const GroupFreezeCycleOptions options_;
  const std::vector<FreezeMember*> members_;

  // One cycle at a time (the cycle thread, Checkpoint, FreezeAndHold and Thaw).
  mutable std::timed_mutex cycle_mu_;
  std::vector<Freezable*> held_;                      // GUARDED_BY(cycle_mu_)
  int quiet_streak_ = 0;                              // GUARDED_BY(cycle_mu_)
  int64_t quiet_until_ns_ = 0;                        // GUARDED_BY(cycle_mu_): steady clock
  std::chrono::steady_clock::time_point held_since_;  // GUARDED_BY(cycle_mu_)
  // When the watchdogs thaw the held freeze (its hold limit from the freeze or the last renewal).
  std::chrono::steady_clock::time_point held_until_;  // GUARDED_BY(cycle_mu_)
  // The held freeze passed its limit: the watchdogs thawed it. Forgets it. REQUIRES: cycle_mu_.
  bool HoldExpired();

  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> run_soon_{false};
  std::thread thread_;
};

}  // namespace cdp::agent
