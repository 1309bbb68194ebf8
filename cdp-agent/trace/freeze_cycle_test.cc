// Tests of the parts of the freeze cycle that need no filesystem: how small the dirty set must be
// before a freeze (ResidualTarget), and the freezes' figures (FreezeStats) as reports and the
// once-a-minute log line show them.
#include "cdp/agent/freeze_cycle.h"

#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

TEST(ResidualTarget, IsAQuarterOfTheLimitAtTheReadRateWithinItsBounds) {
  // 1 byte/ns (1 GB/s) for a quarter of 200 ms: 50 MB, under an eighth of a 1 GiB buffer.
  EXPECT_EQ(ResidualTarget(1ull << 30, 1.0, 200), 50'000'000u);
  // A slow read-back: never below 2 MiB.
  EXPECT_EQ(ResidualTarget(1ull << 30, 0.001, 200), 2ull << 20);
  // A small buffer: an eighth of it, even below 2 MiB.
  EXPECT_EQ(ResidualTarget(8ull << 20, 1.0, 200), 1ull << 20);
}

TEST(FreezeStats, CountsAndPercentilesOfTheFreezes) {
  FreezeStats stats;
  v1::TraceStats empty;
  stats.Fill(&empty);
  EXPECT_EQ(empty.freezes(), 0u);
  EXPECT_EQ(empty.freeze_p50_us(), 0u);

  for (uint64_t us = 1; us <= 100; ++us) stats.Record(us * 100, us, /*abandoned=*/us % 10 == 0);
  v1::TraceStats t;
  t.set_events(5);  // replaced
  stats.Fill(&t);
  EXPECT_EQ(t.freezes(), 90u);
  EXPECT_EQ(t.freezes_abandoned(), 10u);
  EXPECT_EQ(t.freeze_last_us(), 10'000u);
  EXPECT_EQ(t.freeze_max_us(), 10'000u);
  EXPECT_EQ(t.freeze_p50_us(), 5'100u);
  EXPECT_EQ(t.freeze_p99_us(), 10'000u);
  EXPECT_EQ(t.fifreeze_p50_us(), 51u);
  EXPECT_EQ(t.fifreeze_p99_us(), 100u);
  EXPECT_EQ(t.events(), 0u);
}

TEST(FreezeStats, PercentilesCoverTheLastWindowOfFreezes) {
  FreezeStats stats;
  for (size_t i = 0; i < FreezeStats::kWindow; ++i) stats.Record(1'000'000, 1, false);
  for (size_t i = 0; i < FreezeStats::kWindow; ++i) stats.Record(10, 1, false);
  v1::TraceStats t;
  stats.Fill(&t);
  EXPECT_EQ(t.freeze_p99_us(), 10u);         // the long ones have left the window
  EXPECT_EQ(t.freeze_max_us(), 1'000'000u);  // the maximum stays
  EXPECT_EQ(t.freezes(), 2 * FreezeStats::kWindow);
}

TEST(FreezeStats, TheSummaryCoversTheFreezesSinceTheLastOne) {
  FreezeStats stats;
  EXPECT_EQ(stats.TakeSummary(), "");
  stats.Record(1500, 100, false);
  stats.Record(2500, 100, true);
  stats.Record(40000, 100, false);
  EXPECT_EQ(stats.TakeSummary(), "3 freezes (1 abandoned), p50 2.5 ms, p99 40 ms, max 40 ms");
  EXPECT_EQ(stats.TakeSummary(), "");
  stats.Record(800, 100, false);
  EXPECT_EQ(stats.TakeSummary(), "1 freezes (0 abandoned), p50 0.8 ms, p99 0.8 ms, max 0.8 ms");
}

}  // namespace
}  // namespace cdp::agent
