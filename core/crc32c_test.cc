// Tests of CRC32C: published check values, Extend composing like concatenation, and the
// hardware path agreeing with the table path bit for bit.
#include "cdp/core/crc32c.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace cdp::crc32c::internal {
// Defined in crc32c.cc: the table-driven implementation, whatever the CPU supports; and the
// SSE4.2 one (false when the CPU lacks it), whichever Extend chose.
uint32_t ExtendPortableForTest(uint32_t crc, const char* data, size_t n);
bool ExtendHardwareForTest(uint32_t crc, const char* data, size_t n, uint32_t* out);
}  // namespace cdp::crc32c::internal

namespace cdp::crc32c {
namespace {

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Check values from RFC 3720 (iSCSI), appendix B.4.
TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(Value("123456789"), 0xE3069283u);
  EXPECT_EQ(Value(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Value(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Value(ascending), 0x46DD794Eu);
  EXPECT_EQ(Value(""), 0u);
}

TEST(Crc32c, PortablePathMatchesKnownVectors) {
  const std::string digits = "123456789";
  EXPECT_EQ(internal::ExtendPortableForTest(0, digits.data(), digits.size()), 0xE3069283u);
  const std::string zeroes(32, '\0');
  EXPECT_EQ(internal::ExtendPortableForTest(0, zeroes.data(), zeroes.size()), 0x8A9136AAu);
}

TEST(Crc32c, ExtendEqualsValueOfConcatenation) {
  std::mt19937_64 rng(42);
  for (int iteration = 0; iteration < 1000; ++iteration) {
    const size_t total = std::uniform_int_distribution<size_t>(0, 2000)(rng);
    const std::string data = RandomBytes(rng, total);
    const size_t split = std::uniform_int_distribution<size_t>(0, total)(rng);
    const uint32_t whole = Value(data);
    const uint32_t joined = Extend(Value(data.data(), split), data.data() + split, total - split);
    ASSERT_EQ(joined, whole) << "total " << total << " split " << split;
  }
}

TEST(Crc32c, DifferentDataDifferentCrc) {
  EXPECT_NE(Value("a"), Value("b"));
  EXPECT_NE(Value(std::string(4096, '\0')), Value(std::string(4095, '\0')));
}

// Extend dispatches to SSE4.2 when the CPU has it; on such machines this compares the two
// implementations, on others it compares the table path with itself.
TEST(Crc32c, HardwarePathEqualsPortablePath) {
  std::mt19937_64 rng(7);
  // Room for every length at every offset up to 15 bytes past an aligned start.
  const std::string pool = RandomBytes(rng, 300 + 16);
  for (size_t length = 0; length <= 300; ++length) {
    for (int trial = 0; trial < 4; ++trial) {
      const size_t misalign = std::uniform_int_distribution<size_t>(0, 15)(rng);
      const uint32_t seed = trial == 0 ? 0 : static_cast<uint32_t>(rng());
      const char* p = pool.data() + misalign;
      ASSERT_EQ(Extend(seed, p, length), internal::ExtendPortableForTest(seed, p, length))
          << "length " << length << " misalignment " << misalign << " seed " << seed;
    }
  }
}

TEST(Crc32c, BothImplementationsAgreeWhicheverIsChosen) {
  std::mt19937_64 rng(11);
  const std::string pool = RandomBytes(rng, 70000);
  for (const size_t length :
       {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{4096}, size_t{65536}, size_t{69999}}) {
    uint32_t hardware = 0;
    if (!internal::ExtendHardwareForTest(5, pool.data() + 1, length, &hardware)) break;
    EXPECT_EQ(hardware, internal::ExtendPortableForTest(5, pool.data() + 1, length));
  }
  const std::string chosen = Implementation();
  EXPECT_TRUE(chosen == "sse4.2" || chosen.rfind("table", 0) == 0) << chosen;
  EXPECT_EQ(Value("123456789"), 0xE3069283u);
}

}  // namespace
}  // namespace cdp::crc32c
