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
//      order, and syncs it;
//   3. in one atomic synced write: base LSN = target, the records up to it and the points before
//      it deleted, and the gaps before it replaced by those still open at the target;
//   4. compacts the deleted range away.
// A crash anywhere leaves either the old base LSN with every record still there (the base image
// possibly ahead of it, which no image reader looks at: it reads only regions no record after
// the base covers, and every image is at or after the target), or the new one. The next start
// finishes an unfinished fold before any other.
//
// Ingest and tails run on the server's thread, image reads on the ImageService's; none waits for
// a fold, except for the short exclusive hold of step 3 (JournalStore::FoldReadLock).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "cdp/journal/journal_store.h"

namespace cdp::journal {

struct RetentionOptions {
  uint64_t default_window_s = 0;   // 0: keep everything
  uint64_t default_max_bytes = 0;  // 0: no cap
  double fold_mb_per_s = 0;        // payload bytes folded per second (10^6); 0: unlimited
};

class RetentionWorker {
 public:
  RetentionWorker(JournalStore* store, RetentionOptions options);
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

  // One pass: finishes unfinished folds, then folds what the windows and caps ask for.
  // Returns the first error (logged by the loop, retried next pass).
  Status RunOnce();

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

  JournalStore* const store_;
  const RetentionOptions options_;

  mutable std::mutex mu_;
  std::map<uint64_t, PinEntry> pins_;           // GUARDED_BY(mu_)
  std::map<std::string, uint64_t> folding_to_;  // volume -> target in progress, GUARDED_BY(mu_)
  uint64_t next_token_ = 1;                     // GUARDED_BY(mu_)
  std::condition_variable wake_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace cdp::journal
