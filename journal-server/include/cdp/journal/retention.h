// RetentionWorker: folds old history into each volume's base image, in the background
// (docs/retention.md).
//
// Once a second it looks at every volume and picks a fold target:
//   - window W (> 0): the newest restorable consistency point older than now - W;
//   - size cap M (> 0): when the records kept cost more than M bytes, the LSN that brings them
//     under 90 % of M (an "early" fold: history inside the window is lost, and reported);
// never past the replica's applied LSN (when a replicator has reported one), nor past the LSN of
// an image a restore or an export has open (Pin). A fold then:
//   1. records its target (JournalStore::BeginFold, synced);
//   2. applies the records up to the target to DATA_DIR/base/ID.img (created sparse) in LSN
//      order, and syncs it, then DATA_DIR/base/ and DATA_DIR (FoldSync), so that the image and
//      its directory entry are on stable storage before any record it replaces is deleted;
//   3. in one atomic synced write: base LSN = target, the records up to it and the points before
//      it deleted, and the gaps before it replaced by those still open at the target;
//   4. compacts the deleted range away.
// A crash anywhere leaves either the old base LSN with every record still there (the base image
// possibly ahead of it, which no image reader looks at: it reads only regions no record after
// the base covers, and every image is at or after the target), or the new one. The next start
// finishes an unfinished fold before any other.
//
// A volume whose fold fails (a damaged record, a base image that cannot be written) is logged
// once per distinct error, reported (LastError, shown by `cdpctl status`), retried after a
// growing pause (1 s doubling to 5 min), and never keeps the other volumes from folding.
//
// Ingest and tails run on the server's thread, image reads on the ImageService's; none waits for
// a fold, except for the short exclusive hold of step 3 (JournalStore::FoldReadLock).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "cdp/journal/journal_store.h"

namespace cdp::journal {

// The syncs that make a fold's base image durable (step 2), behind an interface so that a test
// can watch their order or fail one. The default fsyncs.
class FoldSync {
 public:
  virtual ~FoldSync() = default;
  // Makes the entries of directory `dir` (a created file, a created subdirectory) durable.
  virtual Status SyncDirectory(const std::string& dir) = 0;
};

// FoldSync with fsync(2) on the directory (core/atomic_file.h SyncDirectory).
FoldSync* DefaultFoldSync();

struct RetentionOptions {
  uint64_t default_window_s = 0;   // 0: keep everything
  uint64_t default_max_bytes = 0;  // 0: no cap
  double fold_mb_per_s = 0;        // payload bytes folded per second (10^6); 0: unlimited
};

class RetentionWorker {
 public:
  // `sync` (not owned; default DefaultFoldSync()) must outlive the worker.
  RetentionWorker(JournalStore* store, RetentionOptions options,
                  FoldSync* sync = DefaultFoldSync());
  ~RetentionWorker();  // Stop()

  void Start();
  // Stops after the fold step in progress; an unfinished fold is finished at the next start.
  void Stop();

  // The window and cap in effect for `v`.
  uint64_t WindowSeconds(const VolumeInfo& v) const;
  uint64_t MaxBytes(const VolumeInfo& v) const;

  // Keeps folds of `volume` at or below `lsn` until Unpin with the returned token. Fails
  // (FailedPrecondition, naming the LSN folded up to) when history up to `lsn` is already folded
  // or being folded.
  Result<uint64_t> Pin(const std::string& volume, uint64_t lsn);
  void Unpin(uint64_t token);

  // The LSN below which history is gone or going: max(base LSN, target of a fold in progress).
  uint64_t HistoryStart(const std::string& volume) const;

  // One pass over every volume (skipping those waiting to retry a failed fold): finishes
  // unfinished folds, then folds what the windows and caps ask for. A volume's failure is
  // recorded (LastError) and the pass goes on with the next volume; returns the first failure.
  Status RunOnce();

  // The last fold failure of `volume`, as an operator reads it ("" when its last fold worked or
  // none failed). Thread-safe.
  std::string LastError(const std::string& volume) const;

 private:
  struct PinEntry {
    std::string volume;
    uint64_t lsn;
  };
  void Loop();
  // Chooses the fold target of `v` (0: nothing to fold); `early` when the cap forced it past the
  // window's target.
  Result<uint64_t> ChooseTarget(const VolumeInfo& v, bool* early);
  // Steps 2-4 for the fold `v.fold_target` already recorded.
  Status Fold(const VolumeInfo& v, bool early);
  // Chooses, records and runs the fold of one volume (finishing one left unfinished).
  Status FoldVolume(const VolumeInfo& listed);
  // Bookkeeping of a volume's failures: the error, when to try again.
  struct Failure {
    std::string error;
    std::chrono::steady_clock::time_point retry_at;
    std::chrono::seconds pause{1};
  };

  JournalStore* const store_;
  const RetentionOptions options_;
  FoldSync* const sync_;

  mutable std::mutex mu_;
  std::map<uint64_t, PinEntry> pins_;           // GUARDED_BY(mu_)
  std::map<std::string, uint64_t> folding_to_;  // volume -> target in progress, GUARDED_BY(mu_)
  uint64_t next_token_ = 1;                     // GUARDED_BY(mu_)
  std::map<std::string, Failure> failures_;     // by volume, GUARDED_BY(mu_)
  std::condition_variable wake_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace cdp::journal
