#include "cdp/agent/extent_map.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "cdp/core/record.h"

namespace cdp::agent {
namespace {

TEST(DirtyExtentMap, AddAlignsAndClips) {
  DirtyExtentMap m(10000, 4096);
  m.Add(100, 10);  // -> [0, 4096)
  EXPECT_EQ(m.bytes(), 4096u);
  m.Add(9000, 5000);  // -> [8192, 10000): clipped to the device
  EXPECT_EQ(m.bytes(), 4096u + 1808u);
  m.Add(20000, 10);  // past the end: ignored
  m.Add(50, 0);      // empty: ignored
  EXPECT_EQ(m.TakeAll(), (std::vector<Extent>{{0, 4096}, {8192, 1808}}));
  EXPECT_TRUE(m.empty());
}

TEST(DirtyExtentMap, MergesOverlappingAndAdjacent) {
  DirtyExtentMap m(1 << 20, 4096);
  m.Add(0, 4096);
  m.Add(8192, 4096);
  EXPECT_EQ(m.extents(), 2u);
  m.Add(4096, 4096);  // fills the hole: one extent
  EXPECT_EQ(m.extents(), 1u);
  m.Add(2048, 12288);  // overlaps everything and extends it
  EXPECT_EQ(m.TakeAll(), (std::vector<Extent>{{0, 16384}}));
}

TEST(DirtyExtentMap, TakeIsElevatorOrderAndSplits) {
  DirtyExtentMap m(1 << 20, 4096);
  m.Add(0, 4096);
  m.Add(65536, 16384);
  m.Add(262144, 4096);
  auto a = m.Take(8192, 10);  // first extent, then the head of the second
  EXPECT_EQ(a, (std::vector<Extent>{{0, 4096}, {65536, 4096}}));
  auto b = m.Take(1 << 20, 1);  // continues after the cursor, one extent
  EXPECT_EQ(b, (std::vector<Extent>{{69632, 12288}}));
  m.Add(0, 4096);  // behind the cursor: taken after the wrap
  auto c = m.Take(1 << 20, 10);
  EXPECT_EQ(c, (std::vector<Extent>{{262144, 4096}}));
  auto d = m.Take(1 << 20, 10);
  EXPECT_EQ(d, (std::vector<Extent>{{0, 4096}}));
  EXPECT_TRUE(m.Take(1 << 20, 10).empty());
}

TEST(DirtyExtentMap, OverlapsAndDirtySince) {
  DirtyExtentMap m(1 << 20, 4096);
  EXPECT_EQ(m.dirty_since_ns(), 0u);
  m.Add(8192, 4096);
  EXPECT_NE(m.dirty_since_ns(), 0u);
  EXPECT_TRUE(m.Overlaps(8192, 1));
  EXPECT_TRUE(m.Overlaps(0, 8193));
  EXPECT_TRUE(m.Overlaps(12287, 100));
  EXPECT_FALSE(m.Overlaps(0, 8192));
  EXPECT_FALSE(m.Overlaps(12288, 4096));
  m.Take(4096, 1);
  EXPECT_EQ(m.dirty_since_ns(), 0u);
}

TEST(DirtyExtentMap, CoarsensPastTheCapWithoutLosingAnything) {
  const uint64_t size = 64ull << 20;
  DirtyExtentMap m(size, 4096, 64);
  std::mt19937_64 rng(7);
  std::set<uint64_t> blocks;
  for (int i = 0; i < 5000; ++i) {
    const uint64_t block = rng() % (size / 4096);
    blocks.insert(block);
    m.Add(block * 4096 + 17, 100);
  }
  EXPECT_LE(m.extents(), 64u);
  // Every block that was added is still covered (over-approximation only).
  for (uint64_t block : blocks) EXPECT_TRUE(m.Overlaps(block * 4096, 4096)) << block;
  uint64_t total = 0;
  for (const Extent& e : m.TakeAll()) total += e.length;
  EXPECT_GE(total, blocks.size() * 4096);
}

}  // namespace
}  // namespace cdp::agent

namespace cdp::agent {
namespace {

TEST(DirtyExtentMap, DirtySinceIsTheOldestExtentStillThere) {
  DirtyExtentMap m(1 << 20, 4096);
  m.Add(0, 4096);
  const uint64_t first = m.dirty_since_ns();
  ASSERT_NE(first, 0u);
  while (NowNanos() == first) {
  }
  m.Add(65536, 4096);  // younger
  EXPECT_EQ(m.dirty_since_ns(), first);
  m.Take(4096, 1);  // the old one is read back: the young one is now the oldest
  EXPECT_GT(m.dirty_since_ns(), first);
  m.Add(69632, 4096);  // merges with the young one: keeps its time
  const uint64_t young = m.dirty_since_ns();
  m.Take(4096, 1);  // takes the head of the merged extent; the tail keeps the time
  EXPECT_EQ(m.dirty_since_ns(), young);
  m.TakeAll();
  EXPECT_EQ(m.dirty_since_ns(), 0u);
}

}  // namespace
}  // namespace cdp::agent
