#include "cdp/agent/block_hashes.h"

#include <xxhash.h>

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "cdp/core/testing/temp_dir.h"

namespace cdp::agent {
namespace {

TEST(BlockHashStore, NewFileIsAllUnknownAndRoundTrips) {
  testing::TempDir dir;
  bool reset = true;
  auto store = BlockHashStore::Open(dir.path() + "/h", 10 * 4096 + 512, &reset);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_FALSE(reset);
  EXPECT_EQ((*store)->blocks(), 11u);
  std::vector<uint64_t> got(11, 99);
  ASSERT_TRUE((*store)->Get(0, got).ok());
  EXPECT_EQ(got, std::vector<uint64_t>(11, BlockHashStore::kUnknown));
  const std::vector<uint64_t> want = {1, 0x0123456789abcdefull, 3};
  ASSERT_TRUE((*store)->Set(8, want).ok());
  std::vector<uint64_t> three(3);
  ASSERT_TRUE((*store)->Get(8, three).ok());
  EXPECT_EQ(three, want);
  EXPECT_FALSE((*store)->Set(10, want).ok());  // past the end
  // Invalidate by bytes: blocks 8 and 9 (offset 32768 + 1 .. 40961).
  ASSERT_TRUE((*store)->Invalidate(8 * 4096 + 1, 4096).ok());
  ASSERT_TRUE((*store)->Get(8, three).ok());
  EXPECT_EQ(three, (std::vector<uint64_t>{0, 0, 3}));
}

TEST(BlockHashStore, SurvivesReopenAndResetsForAnotherSize) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/h";
  bool reset = false;
  {
    auto store = BlockHashStore::Open(path, 1 << 20, &reset);
    ASSERT_TRUE(store.ok());
    const uint64_t h = 42;
    ASSERT_TRUE((*store)->Set(5, std::span<const uint64_t>(&h, 1)).ok());
  }
  {
    auto store = BlockHashStore::Open(path, 1 << 20, &reset);
    ASSERT_TRUE(store.ok());
    EXPECT_FALSE(reset);
    uint64_t h = 0;
    ASSERT_TRUE((*store)->Get(5, std::span<uint64_t>(&h, 1)).ok());
    EXPECT_EQ(h, 42u);
    ASSERT_TRUE((*store)->InvalidateAll().ok());
    ASSERT_TRUE((*store)->Get(5, std::span<uint64_t>(&h, 1)).ok());
    EXPECT_EQ(h, 0u);
  }
  auto other = BlockHashStore::Open(path, 2 << 20, &reset);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(reset);
  uint64_t h = 1;
  ASSERT_TRUE((*other)->Get(5, std::span<uint64_t>(&h, 1)).ok());
  EXPECT_EQ(h, 0u);
}

TEST(BlockHashStore, DamagedHeaderResets) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/h";
  { std::ofstream(path) << "not a hash file at all, but long enough to hold a header......."; }
  bool reset = false;
  auto store = BlockHashStore::Open(path, 1 << 20, &reset);
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE(reset);
}

TEST(BlockHashStore, HashIsNeverUnknownAndSeesOneBitFlip) {
  std::string block(4096, '\0');
  const uint64_t zero = BlockHashStore::Hash(block.data(), block.size());
  EXPECT_NE(zero, BlockHashStore::kUnknown);
  block[4095] = 1;
  EXPECT_NE(BlockHashStore::Hash(block.data(), block.size()), zero);
  EXPECT_NE(BlockHashStore::Hash(block.data(), 512), zero);
}

TEST(BlockHashStore, AZeroBlockHashesAsXxh3DoesWithoutHashingIt) {
  // Stored hashes outlive the agent binary: the zero shortcut must give XXH3's own value, for a
  // whole block and for the device's shorter last one.
  const std::string zeros(4096, '\0');
  EXPECT_EQ(BlockHashStore::Hash(zeros.data(), 4096), XXH3_64bits(zeros.data(), 4096));
  EXPECT_EQ(BlockHashStore::Hash(zeros.data(), 512), XXH3_64bits(zeros.data(), 512));
  EXPECT_EQ(BlockHashStore::Hash(zeros.data(), 1), XXH3_64bits(zeros.data(), 1));
}

TEST(BlockHashStore, UnwritableDirectoryNamesThePath) {
  bool reset = false;
  auto store = BlockHashStore::Open("/nonexistent-dir/h", 1 << 20, &reset);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("/nonexistent-dir/h"), std::string::npos);
}

}  // namespace
}  // namespace cdp::agent
