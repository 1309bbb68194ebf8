// Tests of RegionHasher and Xxh3OfZeros: whatever the bytes and however they are fed, the digest
// is XXH3_64bits of the bytes.
#include "cdp/core/region_hash.h"

#include <xxhash.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "xxh3_impl.h"

namespace cdp {
namespace internal {
std::vector<const xxh3::Impl*> Xxh3ImplsForTest();  // region_hash.cc
}  // namespace internal
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

// Whichever build a process chooses, its digests are XXH3's: each build, one-shot and streamed
// in uneven pieces, equals the library's reference for every length around XXH3's internal
// boundaries (16, 128, 240 bytes, its 1 KiB stripes and 64 KiB-ish blocks).
TEST(Xxh3Builds, EveryBuildGivesTheSameDigests) {
  const auto builds = internal::Xxh3ImplsForTest();
  ASSERT_EQ(builds.size(), 2u);
  const std::string data = Random(200000, 21);
  for (const size_t n : {size_t{0}, size_t{1}, size_t{3}, size_t{16}, size_t{17}, size_t{128},
                         size_t{129}, size_t{240}, size_t{241}, size_t{1024}, size_t{4096},
                         size_t{65536}, size_t{65537}, size_t{199999}}) {
    const std::string bytes = data.substr(0, n);
    for (const xxh3::Impl* b : builds) {
      EXPECT_EQ(b->hash(bytes.data(), n), Reference(bytes)) << b->name << " length " << n;
      void* state = b->create();
      ASSERT_NE(state, nullptr);
      b->reset(state);
      for (size_t at = 0, piece = 1; at < n; at += piece, piece = piece * 3 + 7) {
        b->update(state, bytes.data() + at, std::min(piece, n - at));
      }
      EXPECT_EQ(b->digest(state), Reference(bytes)) << b->name << " streamed, length " << n;
      b->destroy(state);
    }
  }
  const std::string chosen = Xxh3Implementation();
  EXPECT_TRUE(chosen == builds[0]->name || chosen == builds[1]->name) << chosen;
}

}  // namespace
}  // namespace cdp
