// Which consistency point a restore or an export uses, and whether the journal can produce it
// (docs/restore.md, section 2).
//
// A point is restorable when the journal holds every write before it in the order the device saw
// them. It is not inside an unrestorable window:
//   - from the volume's first LSN until the initial sync finished: the first POINT_SYNC_DONE
//     point labelled "full sync" (NBD mode) or the first POINT_FREEZE point (trace mode);
//   - each history gap, from after its after_lsn until the first point after it that ends it
//     (Gap.ends_at: "full sync" / "resync" = a POINT_SYNC_DONE point with that label, "freeze" =
//     a POINT_FREEZE point, "initial" = what ends the initial sync; empty = any POINT_SYNC_DONE
//     point). A gap not ended yet is open.
// A point exactly at a window's end is restorable: it is the one that closes it.
//
// Pure functions over the points and gaps of one volume; no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cdp.pb.h"
#include "cdp/core/status.h"

namespace cdp::journal {

// The reason of the initial-sync window (and of the gap a fold carries it as).
extern const char* const kInitialSyncReason;

// LSNs in (after_lsn, end_lsn) are not restorable; !ended: every LSN after after_lsn.
struct HistoryWindow {
  uint64_t after_lsn = 0;
  bool ended = false;
  uint64_t end_lsn = 0;
  std::string reason;  // "initial sync not finished" or the gap's reason
};

// The unrestorable windows of a volume. `points` and `gaps` sorted by LSN (as the journal
// returns them). With base_lsn > 0 (retention folded history) the initial-sync window is not
// implied: a fold that happened before it ended carried it as a gap with ends_at "initial".
std::vector<HistoryWindow> UnrestorableWindows(const std::vector<v1::ConsistencyPoint>& points,
                                               const std::vector<v1::Gap>& gaps,
                                               uint64_t base_lsn = 0);

// The window `lsn` lies in, or nullptr.
const HistoryWindow* WindowContaining(const std::vector<HistoryWindow>& windows, uint64_t lsn);

// What the operator asked for: an LSN (when nonzero) or a wall-clock time.
struct PointTarget {
  uint64_t lsn = 0;
  uint64_t time_ns = 0;
};

// "LSN 1234" or "2026-11-26T17:39:40.123456789Z" for messages.
std::string DescribeTarget(const PointTarget& target);

// The latest consistency point at or before `target`, if it is restorable. Errors, each naming
// the volume and what to do:
//   InvalidArgument  LSN 0, or neither an LSN nor a time;
//   OutOfRange       an LSN above `durable_lsn` (never journaled), a time after `now_ns` (in the
//                    future), a target before the oldest point (outside the history kept);
//   FailedPrecondition  the point is inside an unrestorable window; the message names the window
//                    and the nearest restorable points before and after it.
// Points below `history_start` (being folded by retention) are not offered, but still count for
// the windows.
Result<v1::ConsistencyPoint> ChoosePoint(const std::string& volume,
                                               const std::vector<v1::ConsistencyPoint>& points,
                                               const std::vector<v1::Gap>& gaps,
                                               const PointTarget& target, uint64_t durable_lsn,
                                               uint64_t now_ns, uint64_t base_lsn = 0,
                                               uint64_t history_start = 0);

}  // namespace cdp::journal
