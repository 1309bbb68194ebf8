// Tests of ChoosePoint / UnrestorableWindows: the latest point at or before an LSN or a time,
// the windows a history gap or the initial sync leave, and the worded refusals.
#include "cdp/journal/point_choice.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::HasSubstr;

v1::ConsistencyPoint Point(uint64_t lsn, v1::PointOrigin origin, const std::string& label = "") {
  v1::ConsistencyPoint p;
  p.set_lsn(lsn);
  p.set_time_ns(lsn * 1'000'000'000ull);  // LSN n at n seconds past the epoch
  p.set_origin(origin);
  p.set_label(label);
  return p;
}

v1::Gap Gap(uint64_t after, const std::string& reason, const std::string& ends_at) {
  v1::Gap g;
  g.set_after_lsn(after);
  g.set_reason(reason);
  g.set_ends_at(ends_at);
  return g;
}

// full sync at 10; flushes 12, 20; crash gap after 20 ended by the full sync at 40 with a flush
// at 30 inside; a send-buffer gap after 45 that the full sync at 50 does not end, the resync at
// 60 does; flush 70.
std::vector<v1::ConsistencyPoint> Points() {
  return {Point(5, v1::POINT_FLUSH),
          Point(10, v1::POINT_SYNC_DONE, "full sync"),
          Point(12, v1::POINT_FLUSH),
          Point(20, v1::POINT_FLUSH),
          Point(30, v1::POINT_FLUSH),
          Point(40, v1::POINT_SYNC_DONE, "full sync"),
          Point(47, v1::POINT_FLUSH),
          Point(50, v1::POINT_SYNC_DONE, "full sync"),
          Point(60, v1::POINT_SYNC_DONE, "resync"),
          Point(70, v1::POINT_FLUSH)};
}

std::vector<v1::Gap> Gaps() {
  return {Gap(20, "agent restarted after a crash; full resync", "full sync"),
          Gap(45, "send buffer full (journal-server slow or unreachable)", "resync")};
}

Result<v1::ConsistencyPoint> AtLsn(uint64_t lsn) {
  return ChoosePoint("db01", Points(), Gaps(), PointTarget{lsn, 0}, 75, 100'000'000'000ull);
}

TEST(PointChoice, WindowsFollowWhatEndsThem) {
  auto w = UnrestorableWindows(Points(), Gaps());
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].after_lsn, 0u);
  EXPECT_EQ(w[0].end_lsn, 10u);
  EXPECT_EQ(w[1].after_lsn, 20u);
  EXPECT_EQ(w[1].end_lsn, 40u);
  EXPECT_EQ(w[2].after_lsn, 45u);
  EXPECT_EQ(w[2].end_lsn, 60u);  // not the full sync at 50
}

TEST(PointChoice, LatestRestorablePointAtOrBefore) {
  EXPECT_EQ(AtLsn(12)->lsn(), 12u);
  EXPECT_EQ(AtLsn(19)->lsn(), 12u);
  EXPECT_EQ(AtLsn(20)->lsn(), 20u);  // the gap's after_lsn itself is complete
  EXPECT_EQ(AtLsn(40)->lsn(), 40u);  // the point that ends a gap is restorable
  EXPECT_EQ(AtLsn(44)->lsn(), 40u);
  EXPECT_EQ(AtLsn(75)->lsn(), 70u);
  auto by_time = ChoosePoint("db01", Points(), Gaps(), PointTarget{0, 21'500'000'000ull}, 75,
                             100'000'000'000ull);
  ASSERT_TRUE(by_time.ok()) << by_time.status();
  EXPECT_EQ(by_time->lsn(), 20u);
}

TEST(PointChoice, RefusesPointsInsideWindowsNamingTheNearestRestorable) {
  auto r = AtLsn(35);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(),
            "volume db01: the latest point at or before LSN 35, LSN 30 "
            "(1970-01-01T00:00:30.000000000Z), is inside a history gap (agent restarted after a "
            "crash; full resync: history after LSN 20 is incomplete until LSN 40); nearest "
            "restorable points: LSN 20 (1970-01-01T00:00:20.000000000Z) before, LSN 40 "
            "(1970-01-01T00:00:40.000000000Z) after");
  EXPECT_THAT(AtLsn(55).status().message(), HasSubstr("LSN 50 (1970-01-01T00:00:50.000000000Z), "
                                                      "is inside a history gap (send buffer"));
  auto before_sync = AtLsn(7);
  EXPECT_THAT(before_sync.status().message(),
              HasSubstr("(the initial full sync had not finished: history after LSN 0 is "
                        "incomplete until LSN 10); nearest restorable points: none before, LSN "
                        "10 (1970-01-01T00:00:10.000000000Z) after"));
}

TEST(PointChoice, AnOpenGapHasNoRestorablePointAfterIt) {
  auto gaps = Gaps();
  gaps.push_back(Gap(65, "send buffer full (journal-server slow or unreachable)", "resync"));
  auto r = ChoosePoint("db01", Points(), gaps, PointTarget{75, 0}, 75, 100'000'000'000ull);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("and the resync has not finished yet); nearest restorable points: LSN 60 "
                        "(1970-01-01T00:01:00.000000000Z) before, none after yet"));
}

TEST(PointChoice, OldJournalGapsEndAtAnySyncPoint) {
  auto r = ChoosePoint("db01", Points(), {Gap(45, "old", "")}, PointTarget{55, 0}, 75,
                       100'000'000'000ull);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lsn(), 50u);
}

TEST(PointChoice, AnInitialSyncThatSentNothingEndsAtLsnZero) {
  std::vector<v1::ConsistencyPoint> points = {Point(0, v1::POINT_SYNC_DONE, "full sync"),
                                              Point(4, v1::POINT_FLUSH)};
  auto w = UnrestorableWindows(points, {});
  ASSERT_EQ(w.size(), 1u);
  EXPECT_TRUE(w[0].ended);
  EXPECT_EQ(w[0].end_lsn, 0u);
  auto r = ChoosePoint("db01", points, {}, PointTarget{4, 0}, 4, 100'000'000'000ull);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lsn(), 4u);
}

TEST(PointChoice, PointsBeingFoldedAreNotOfferedButStillEndWindows) {
  // A fold to 12 is in progress: 5 and 10 are no longer offered, but the full sync at 10 still
  // ends the initial window.
  auto r = ChoosePoint("db01", Points(), Gaps(), PointTarget{13, 0}, 75, 100'000'000'000ull, 0, 12);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lsn(), 12u);
  auto early = ChoosePoint("db01", Points(), Gaps(), PointTarget{11, 0}, 75, 100'000'000'000ull, 0,
                           12);
  EXPECT_EQ(early.status().message(),
            "volume db01: no consistency point at or before LSN 11; the oldest kept is LSN 12 "
            "(1970-01-01T00:00:12.000000000Z)");
}

TEST(PointChoice, TraceGapsEndAtAFreeze) {
  std::vector<v1::ConsistencyPoint> points = {Point(3, v1::POINT_FREEZE),
                                              Point(8, v1::POINT_FREEZE)};
  std::vector<v1::Gap> gaps = {Gap(3, "lost events; checksum resync", "freeze")};
  auto r = ChoosePoint("db01", points, gaps, PointTarget{9, 0}, 9, 100'000'000'000ull);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lsn(), 8u);
}

TEST(PointChoice, RefusesTargetsOutsideTheJournal) {
  const uint64_t now = 100'000'000'000ull;
  auto never = AtLsn(76);
  EXPECT_EQ(never.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(never.status().message(),
            "volume db01: LSN 76 was never journaled (the newest is LSN 75)");
  auto future = ChoosePoint("db01", Points(), Gaps(), PointTarget{0, now + 1}, 75, now);
  EXPECT_EQ(future.status().code(), StatusCode::kOutOfRange);
  EXPECT_THAT(future.status().message(),
              HasSubstr("1970-01-01T00:01:40.000000001Z is in the future (the journal-server's "
                        "clock says 1970-01-01T00:01:40.000000000Z)"));
  auto early = AtLsn(4);
  EXPECT_EQ(early.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(early.status().message(),
            "volume db01: no consistency point at or before LSN 4; the oldest kept is LSN 5 "
            "(1970-01-01T00:00:05.000000000Z)");
  auto none = ChoosePoint("db01", {}, {}, PointTarget{3, 0}, 75, now);
  EXPECT_THAT(none.status().message(), HasSubstr("holds no consistency point yet"));
  auto nothing = ChoosePoint("db01", Points(), Gaps(), PointTarget{}, 75, now);
  EXPECT_EQ(nothing.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cdp::journal
