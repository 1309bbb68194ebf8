// Tests of FormatRfc3339 / ParseRfc3339: round trips, zones, fractions, and the worded errors.
#include "cdp/core/time_text.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

using ::testing::HasSubstr;

TEST(TimeText, FormatsUtcWithNineFractionDigits) {
  EXPECT_EQ(FormatRfc3339(0), "1970-01-01T00:00:00.000000000Z");
  EXPECT_EQ(FormatRfc3339(1795714780123456789ull), "2026-11-26T17:39:40.123456789Z");
}

TEST(TimeText, ParsesWhatItFormats) {
  for (uint64_t t : {0ull, 1ull, 1795714780123456789ull, 951782400000000000ull}) {
    auto parsed = ParseRfc3339(FormatRfc3339(t));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, t);
  }
}

TEST(TimeText, ParsesZonesAndShortFractions) {
  EXPECT_EQ(*ParseRfc3339("2026-11-26T17:39:40Z"), 1795714780000000000ull);
  EXPECT_EQ(*ParseRfc3339("2026-11-26T18:39:40.5+01:00"), 1795714780500000000ull);
  EXPECT_EQ(*ParseRfc3339("2026-11-26t12:09:40-05:30"), 1795714780000000000ull);
  EXPECT_EQ(*ParseRfc3339("2026-11-26 17:39:40z"), 1795714780000000000ull);
}

TEST(TimeText, RefusesMalformedTimesNamingThem) {
  for (const char* bad : {"", "yesterday", "2026-11-26", "2026-11-26T17:39:40",
                          "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-26T25:00:00Z",
                          "2026-11-26T17:39:40.Z", "2026-11-26T17:39:40.1234567890Z",
                          "2026-11-26T17:39:40Zjunk", "2026-11-26T17:39:40+0100"}) {
    auto parsed = ParseRfc3339(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(std::string("'") + bad + "'"));
    EXPECT_THAT(parsed.status().message(), HasSubstr("RFC 3339"));
  }
}

}  // namespace
}  // namespace cdp
