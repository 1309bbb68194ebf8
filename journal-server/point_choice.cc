#include "cdp/journal/point_choice.h"

#include <algorithm>

#include "cdp/core/time_text.h"

namespace cdp::journal {



const char* const kInitialSyncReason = "the initial full sync had not finished";

namespace {

bool InitialSyncEnd(const v1::ConsistencyPoint& p) {
  return (p.origin() == v1::POINT_SYNC_DONE && p.label() == "full sync") ||
         p.origin() == v1::POINT_FREEZE;
}

bool EndsGap(const v1::Gap& gap, const v1::ConsistencyPoint& p) {
  if (gap.ends_at().empty()) return p.origin() == v1::POINT_SYNC_DONE;
  if (gap.ends_at() == "freeze") return p.origin() == v1::POINT_FREEZE;
  if (gap.ends_at() == "initial") return InitialSyncEnd(p);
  return p.origin() == v1::POINT_SYNC_DONE && p.label() == gap.ends_at();
}

std::string DescribePoint(const v1::ConsistencyPoint& p) {
  return "LSN " + std::to_string(p.lsn()) + " (" + FormatRfc3339(p.time_ns()) + ")";
}

}  // namespace

std::vector<HistoryWindow> UnrestorableWindows(const std::vector<v1::ConsistencyPoint>& points,
                                               const std::vector<v1::Gap>& gaps,
                                               uint64_t base_lsn) {
  std::vector<HistoryWindow> windows;
  if (base_lsn == 0) {
    HistoryWindow initial{0, false, 0, kInitialSyncReason};
    for (const auto& p : points) {
      if (InitialSyncEnd(p)) {
        initial.ended = true;
        initial.end_lsn = p.lsn();
        break;
      }
    }
    windows.push_back(initial);
  }
  for (const auto& g : gaps) {
    HistoryWindow w{g.after_lsn(), false, 0, g.reason()};
    for (const auto& p : points) {
      if (p.lsn() > g.after_lsn() && EndsGap(g, p)) {
        w.ended = true;
        w.end_lsn = p.lsn();
        break;
      }
    }
    windows.push_back(std::move(w));
  }
  return windows;
}

const HistoryWindow* WindowContaining(const std::vector<HistoryWindow>& windows, uint64_t lsn) {
  for (const auto& w : windows) {
    if (lsn > w.after_lsn && (!w.ended || lsn < w.end_lsn)) return &w;
  }
  return nullptr;
}

std::string DescribeTarget(const PointTarget& target) {
  if (target.lsn != 0) return "LSN " + std::to_string(target.lsn);
  return FormatRfc3339(target.time_ns);
}

Result<v1::ConsistencyPoint> ChoosePoint(const std::string& volume,
                                         const std::vector<v1::ConsistencyPoint>& points,
                                         const std::vector<v1::Gap>& gaps,
                                         const PointTarget& target, uint64_t durable_lsn,
                                         uint64_t now_ns, uint64_t base_lsn,
                                         uint64_t history_start) {
  const std::string what = "volume " + volume + ": ";
  if (target.lsn == 0 && target.time_ns == 0) {
    return Status::InvalidArgument(what + "no LSN or time given (LSNs start at 1)");
  }
  if (target.lsn > durable_lsn) {
    return Status::OutOfRange(what + "LSN " + std::to_string(target.lsn) +
                              " was never journaled (the newest is LSN " +
                              std::to_string(durable_lsn) + ")");
  }
  if (target.lsn == 0 && target.time_ns > now_ns) {
    return Status::OutOfRange(what + FormatRfc3339(target.time_ns) +
                              " is in the future (the journal-server's clock says " +
                              FormatRfc3339(now_ns) + ")");
  }
  auto at_or_before = [&](const v1::ConsistencyPoint& p) {
    return target.lsn != 0 ? p.lsn() <= target.lsn : p.time_ns() <= target.time_ns;
  };
  // Points are in LSN order; times follow LSNs (one agent clock), so the last match is the
  // latest one.
  const v1::ConsistencyPoint* chosen = nullptr;
  const v1::ConsistencyPoint* oldest = nullptr;
  for (const auto& p : points) {
    if (p.lsn() < history_start) continue;
    if (oldest == nullptr) oldest = &p;
    if (at_or_before(p)) chosen = &p;
  }
  if (chosen == nullptr) {
    if (oldest == nullptr) {
      return Status::OutOfRange(what + "the journal holds no consistency point yet");
    }
    return Status::OutOfRange(what + "no consistency point at or before " +
                              DescribeTarget(target) + "; the oldest kept is " +
                              DescribePoint(*oldest));
  }
  const auto windows = UnrestorableWindows(points, gaps, base_lsn);
  const HistoryWindow* inside = WindowContaining(windows, chosen->lsn());
  if (inside == nullptr) return *chosen;

  const v1::ConsistencyPoint* before = nullptr;
  const v1::ConsistencyPoint* after = nullptr;
  for (const auto& p : points) {
    if (p.lsn() < history_start || WindowContaining(windows, p.lsn()) != nullptr) continue;
    if (p.lsn() < chosen->lsn()) before = &p;
    if (p.lsn() > chosen->lsn() && after == nullptr) after = &p;
  }
  std::string msg = what + "the latest point at or before " + DescribeTarget(target) + ", " +
                    DescribePoint(*chosen) + ", is inside a history gap (" + inside->reason +
                    ": history after LSN " + std::to_string(inside->after_lsn) + " is incomplete " +
                    (!inside->ended
                         ? std::string("and the resync has not finished yet")
                         : "until LSN " + std::to_string(inside->end_lsn)) +
                    "); nearest restorable points: ";
  msg += before ? DescribePoint(*before) + " before" : std::string("none before");
  msg += ", ";
  msg += after ? DescribePoint(*after) + " after" : std::string("none after yet");
  return Status::FailedPrecondition(msg);
}

}  // namespace cdp::journal
