// Tests of RegionHasher and Xxh3OfZeros: whatever the bytes and however they are fed, the digest
// is XXH3_64bits of the bytes.
#include "cdp/core/region_hash.h"

#include <xxhash.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace cdp {
namespace {

uint64_t Reference(const std::string& bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

// Feeds `bytes` in pieces of `piece` bytes (the last one shorter).
uint64_t Fed(RegionHasher* h, const std::string& bytes, size_t piece) {
  h->Reset();
  for (size_t at = 0; at < bytes.size(); at += piece) {
    h->Update(std::span<const char>(bytes.data() + at, std::min(piece, bytes.size() - at)));
  }
  return h->Digest();
}

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(Xxh3OfZeros, EqualsTheHashOfThatManyZeroBytes) {
  for (uint64_t n : {0ull, 1ull, 63ull, 64ull, 65ull, 4096ull, 65536ull, 65537ull, 4194304ull,
                     4194304ull - 512}) {
    EXPECT_EQ(Xxh3OfZeros(n), Reference(std::string(n, '\0'))) << n;
    EXPECT_EQ(Xxh3OfZeros(n), Reference(std::string(n, '\0'))) << n << " (cached)";
  }
}

TEST(Xxh3OfZeros, ManyThreadsGetTheSameDigest) {
  const uint64_t want = Reference(std::string(1 << 20, '\0'));
  std::vector<std::thread> threads;
  std::vector<uint64_t> got(8);
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&got, i] { got[i] = Xxh3OfZeros(1 << 20); });
  }
  for (auto& t : threads) t.join();
  for (uint64_t g : got) EXPECT_EQ(g, want);
}

TEST(RegionHasher, EqualsXxh3ForZerosDataAndTheirMixesInAnyPieces) {
  const std::string zeros(3 << 20, '\0');
  const std::string data = Random(1 << 20, 7);
  std::string one_byte = zeros;
  one_byte[(2 << 20) + 17] = 1;  // a single non-zero byte after 2 MiB of zeros
  std::string last = zeros;
  last.back() = '\x80';  // only the very last byte
  const std::vector<std::string> inputs = {
      "",           zeros,        data,
      zeros + data, data + zeros, zeros + data + zeros,
      one_byte,     last,         std::string(100, '\0') + "x",
  };
  RegionHasher h;
  for (size_t i = 0; i < inputs.size(); ++i) {
    for (size_t piece : {size_t{1} << 20, size_t{4096}, size_t{1000}, size_t{64 << 10} + 1}) {
      if (inputs[i].size() > (1 << 20) && piece < 4096) continue;  // keep it quick
      EXPECT_EQ(Fed(&h, inputs[i], piece), Reference(inputs[i]))
          << "input " << i << " in pieces of " << piece;
    }
  }
}

TEST(ZeroAwareXxh3, EqualsXxh3OfZerosAndOfData) {
  for (const std::string& bytes : {std::string(), std::string(4096, '\0'), std::string(512, '\0'),
                                   Random(4096, 3), std::string(4095, '\0') + "z"}) {
    EXPECT_EQ(ZeroAwareXxh3(bytes), Reference(bytes)) << bytes.size();
  }
}

TEST(RegionHasher, AllZeroSaysWhetherANonZeroByteCame) {
  RegionHasher h;
  EXPECT_TRUE(h.all_zero());
  const std::string zeros(8192, '\0');
  h.Update(zeros);
  EXPECT_TRUE(h.all_zero());
  h.Update(std::string_view("\0\0y", 3));
  EXPECT_FALSE(h.all_zero());
  h.Update(zeros);
  EXPECT_EQ(h.Digest(), Reference(zeros + std::string("\0\0y", 3) + zeros));
  h.Reset();  // a new region starts clean
  EXPECT_TRUE(h.all_zero());
  h.Update(zeros);
  EXPECT_EQ(h.Digest(), Reference(zeros));
}

}  // namespace
}  // namespace cdp
