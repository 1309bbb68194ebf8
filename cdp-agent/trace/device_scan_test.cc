// Tests of PlanScanChunk, the device scan's decision for one chunk: on bytes alone, which blocks
// are sent (in runs), which are skipped because the journal holds them already, and which are
// known to be zeroes in a journal that started empty.
#include "cdp/agent/device_scan.h"

#include <string>
#include <vector>

#include "cdp/agent/block_hashes.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using ::testing::ElementsAre;
using BlockRun = std::pair<size_t, size_t>;

constexpr size_t kBlock = BlockHashStore::kBlockSize;
constexpr uint64_t kUnknown = BlockHashStore::kUnknown;

// `blocks` blocks; block i is filled with byte fill[i] (0: zeroes).
std::string Chunk(const std::vector<char>& fill) {
  std::string data;
  for (char c : fill) data.append(kBlock, c);
  return data;
}

uint64_t HashOf(char fill, size_t n = kBlock) {
  const std::string block(n, fill);
  return BlockHashStore::Hash(block.data(), n);
}

const auto kNeverShipped = [](size_t) { return false; };

TEST(PlanScanChunk, SendsTheRunsOfBlocksWhoseHashDiffers) {
  const std::string data = Chunk({'a', 'b', 'c', 'd', 'e'});
  // Blocks 0 and 3 are held by the journal; 1-2 and 4 differ or are unknown.
  const std::vector<uint64_t> stored = {HashOf('a'), HashOf('x'), kUnknown, HashOf('d'), 7};
  const ScanChunkPlan plan = PlanScanChunk(data, stored, /*skip_zero=*/false, kNeverShipped);
  EXPECT_THAT(plan.send_runs, ElementsAre(BlockRun{1, 3}, BlockRun{4, 5}));
  EXPECT_TRUE(plan.known_zero.empty());
  EXPECT_THAT(plan.hashes,
              ElementsAre(HashOf('a'), HashOf('b'), HashOf('c'), HashOf('d'), HashOf('e')));
}

TEST(PlanScanChunk, ZeroBlocksOfAnEmptyJournalAreKnownWithoutSending) {
  const std::string data = Chunk({0, 'b', 0, 0});
  const std::vector<uint64_t> stored(4, kUnknown);
  const ScanChunkPlan plan = PlanScanChunk(data, stored, /*skip_zero=*/true, kNeverShipped);
  EXPECT_THAT(plan.send_runs, ElementsAre(BlockRun{1, 2}));
  EXPECT_THAT(plan.known_zero, ElementsAre(0, 2, 3));
  EXPECT_EQ(plan.hashes[0], HashOf(0));
}

TEST(PlanScanChunk, ZeroBlocksAreSentWithoutSkipZeroOrWhenARecordMayBeShipped) {
  const std::string data = Chunk({0, 0, 0});
  const std::vector<uint64_t> stored(3, kUnknown);
  EXPECT_THAT(PlanScanChunk(data, stored, /*skip_zero=*/false, kNeverShipped).send_runs,
              ElementsAre(BlockRun{0, 3}));

  std::vector<size_t> asked;
  const ScanChunkPlan plan = PlanScanChunk(data, stored, /*skip_zero=*/true, [&](size_t b) {
    asked.push_back(b);
    return b == 1;  // a record for block 1 is in flight
  });
  EXPECT_THAT(plan.send_runs, ElementsAre(BlockRun{1, 2}));
  EXPECT_THAT(plan.known_zero, ElementsAre(0, 2));
  EXPECT_THAT(asked, ElementsAre(0, 1, 2));
}

TEST(PlanScanChunk, AZeroBlockWithAKnownOtherHashIsSent) {
  // The journal holds something else there: its zeroes must be journaled.
  const std::string data = Chunk({0});
  const ScanChunkPlan plan =
      PlanScanChunk(data, std::vector<uint64_t>{HashOf('q')}, /*skip_zero=*/true, kNeverShipped);
  EXPECT_THAT(plan.send_runs, ElementsAre(BlockRun{0, 1}));
  EXPECT_TRUE(plan.known_zero.empty());
}

TEST(PlanScanChunk, TheLastBlockMayBeShort) {
  std::string data = Chunk({'a'});
  data.append(512, 'z');
  const std::vector<uint64_t> stored = {HashOf('a'), kUnknown};
  const ScanChunkPlan plan = PlanScanChunk(data, stored, /*skip_zero=*/false, kNeverShipped);
  EXPECT_THAT(plan.send_runs, ElementsAre(BlockRun{1, 2}));
  EXPECT_EQ(plan.hashes[1], HashOf('z', 512));
}

}  // namespace
}  // namespace cdp::agent
