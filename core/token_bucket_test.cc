#include "cdp/core/token_bucket.h"

#include <gtest/gtest.h>

namespace cdp {
namespace {

using std::chrono::milliseconds;

TEST(TokenBucket, UnlimitedAlwaysSpends) {
  const auto t0 = TokenBucket::Clock::time_point{};
  TokenBucket b(0, 0, t0);
  b.Spend(1e12);
  EXPECT_TRUE(b.CanSpend(t0));
  EXPECT_EQ(b.TimeUntilPositive(t0).count(), 0);
}

TEST(TokenBucket, RefillsAtTheRateUpToTheBurst) {
  const auto t0 = TokenBucket::Clock::time_point{} + milliseconds(1000);
  TokenBucket b(1000, 500, t0);  // 1000 B/s, burst 500 B
  EXPECT_TRUE(b.CanSpend(t0));
  b.Spend(1500);  // balance -1000: one second of refill needed
  EXPECT_FALSE(b.CanSpend(t0));
  EXPECT_NEAR(b.TimeUntilPositive(t0).count(), 1e9, 1e3);
  EXPECT_FALSE(b.CanSpend(t0 + milliseconds(999)));
  EXPECT_TRUE(b.CanSpend(t0 + milliseconds(1001)));
  // A long idle time refills to the burst, not beyond.
  EXPECT_TRUE(b.CanSpend(t0 + milliseconds(60000)));
  EXPECT_DOUBLE_EQ(b.balance(), 500);
}

TEST(TokenBucket, SustainedRateMatchesTheLimit) {
  // Spend 10 KiB batches whenever allowed over 10 simulated seconds at 100 KiB/s.
  auto now = TokenBucket::Clock::time_point{};
  TokenBucket b(100 * 1024, 10 * 1024, now);
  double spent = 0;
  const auto end = now + milliseconds(10000);
  while (now < end) {
    if (b.CanSpend(now)) {
      b.Spend(10 * 1024);
      spent += 10 * 1024;
    } else {
      now += b.TimeUntilPositive(now);
    }
  }
  // 10 s at the rate plus at most one burst and one batch.
  EXPECT_GE(spent, 10 * 100 * 1024.0);
  EXPECT_LE(spent, 10 * 100 * 1024.0 + 20 * 1024);
}

}  // namespace
}  // namespace cdp
