// Tests of ParseSize / ParseDuration / FormatDuration.
#include "cdp/core/units.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

using ::testing::HasSubstr;

TEST(Units, SizesTakeBinaryUnits) {
  EXPECT_EQ(*ParseSize("1073741824"), 1ull << 30);
  EXPECT_EQ(*ParseSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("10GiB"), 10ull << 30);
  for (const char* bad : {"", "0", "1X", "M", "-1G", "1.5G"}) {
    auto r = ParseSize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("is not a size"));
  }
}

TEST(Units, DurationsTakeOneUnit) {
  EXPECT_EQ(*ParseDuration("0"), 0u);
  EXPECT_EQ(*ParseDuration("90s"), 90u);
  EXPECT_EQ(*ParseDuration("15m"), 900u);
  EXPECT_EQ(*ParseDuration("2h"), 7200u);
  EXPECT_EQ(*ParseDuration("7d"), 604800u);
  for (const char* bad : {"", "5", "0s", "1w", "h", "-1h", "1.5h", "2h30m"}) {
    auto r = ParseDuration(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(
        r.status().message(),
        std::string("'") + bad + "' is not a duration (e.g. 90s, 15m, 2h, 7d, or 0 for none)");
  }
}

TEST(Units, DurationsFormatInTheLargestWholeUnit) {
  EXPECT_EQ(FormatDuration(0), "0");
  EXPECT_EQ(FormatDuration(90), "90s");
  EXPECT_EQ(FormatDuration(900), "15m");
  EXPECT_EQ(FormatDuration(7200), "2h");
  EXPECT_EQ(FormatDuration(604800), "7d");
}

TEST(FormatFixed, PrintsExactlyTheDigitsAsked) {
  EXPECT_EQ(FormatFixed(1.5, 2), "1.50");
  EXPECT_EQ(FormatFixed(0.044, 3), "0.044");
  EXPECT_EQ(FormatFixed(12.96, 1), "13.0");
  EXPECT_EQ(FormatFixed(90, 0), "90");
}

}  // namespace
}  // namespace cdp
