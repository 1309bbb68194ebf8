// Tests of DirtyBitmap: marking, coalesced runs, clipping at a volume end that is not a
// multiple of the region size, and the saved file (round trip, damage, wrong volume).
#include "cdp/agent/dirty_bitmap.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kRegion = 64 * kKiB;  // the default region size

// Every test file names its own temp dirs.
class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("dirty_bitmap_test") {}
};

using Extent = std::pair<uint64_t, uint64_t>;  // offset, length

// Takes every run out of the bitmap.
std::vector<Extent> TakeAll(DirtyBitmap& bitmap, uint64_t max_bytes = UINT64_MAX) {
  std::vector<Extent> runs;
  uint64_t offset = 0;
  uint64_t length = 0;
  while (bitmap.TakeRun(max_bytes, &offset, &length)) {
    runs.emplace_back(offset, length);
    if (runs.size() > 100000) break;  // a bitmap that never empties is a bug, not a hang
  }
  return runs;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

TEST(DirtyBitmap, StartsClean) {
  DirtyBitmap bitmap(1 << 20);
  EXPECT_TRUE(bitmap.empty());
  EXPECT_EQ(bitmap.dirty_bytes(), 0u);
  EXPECT_EQ(bitmap.region_size(), kRegion);
  uint64_t offset = 7;
  uint64_t length = 7;
  EXPECT_FALSE(bitmap.TakeRun(UINT64_MAX, &offset, &length));
  EXPECT_EQ(offset, 7u);
  EXPECT_EQ(length, 7u);
}

TEST(DirtyBitmap, DirtySinceTracksTheOldestUnsentMark) {
  DirtyBitmap bitmap(1 << 20, 4096);
  EXPECT_EQ(bitmap.dirty_since_ns(), 0u);
  const uint64_t before = NowNanos();
  bitmap.Mark(0, 4096);
  const uint64_t first = bitmap.dirty_since_ns();
  EXPECT_GE(first, before);
  bitmap.Mark(8192, 4096);  // a later mark does not make the backlog look younger
  EXPECT_EQ(bitmap.dirty_since_ns(), first);
  uint64_t off = 0, len = 0;
  ASSERT_TRUE(bitmap.TakeRun(4096, &off, &len));
  EXPECT_EQ(bitmap.dirty_since_ns(), first);  // one region still dirty
  ASSERT_TRUE(bitmap.TakeRun(4096, &off, &len));
  EXPECT_EQ(bitmap.dirty_since_ns(), 0u);  // clean again
}

TEST(DirtyBitmap, MarkDirtiesEveryTouchedRegion) {
  DirtyBitmap bitmap(1 << 20);
  bitmap.Mark(0, 1);
  EXPECT_EQ(bitmap.dirty_bytes(), kRegion);
  bitmap.Mark(100, 512);  // same region again
  EXPECT_EQ(bitmap.dirty_bytes(), kRegion);
  bitmap.Mark(2 * kRegion - 1, 2);  // straddles regions 1 and 2
  EXPECT_EQ(bitmap.dirty_bytes(), 3 * kRegion);
  bitmap.Mark(5 * kRegion, 0);  // empty write: nothing
  EXPECT_EQ(bitmap.dirty_bytes(), 3 * kRegion);
  bitmap.Mark(1 << 20, 4096);  // at the end: nothing
  bitmap.Mark(UINT64_MAX - 10, 4096);
  EXPECT_EQ(bitmap.dirty_bytes(), 3 * kRegion);
  EXPECT_FALSE(bitmap.empty());
}

TEST(DirtyBitmap, TakeRunCoalescesConsecutiveRegions) {
  DirtyBitmap bitmap(1 << 20);
  bitmap.Mark(0, 1);
  bitmap.Mark(kRegion + 100, 10);
  bitmap.Mark(3 * kRegion, kRegion);
  bitmap.Mark(15 * kRegion + 5, 1);  // the last region
  EXPECT_EQ(
      TakeAll(bitmap),
      (std::vector<Extent>{{0, 2 * kRegion}, {3 * kRegion, kRegion}, {15 * kRegion, kRegion}}));
  EXPECT_TRUE(bitmap.empty());
  EXPECT_EQ(bitmap.dirty_bytes(), 0u);
}

TEST(DirtyBitmap, TakeRunHonoursMaxBytes) {
  DirtyBitmap bitmap(1 << 20);
  bitmap.Mark(0, 10 * kRegion);
  uint64_t offset = 0;
  uint64_t length = 0;
  ASSERT_TRUE(bitmap.TakeRun(3 * kRegion, &offset, &length));
  EXPECT_EQ(offset, 0u);
  EXPECT_EQ(length, 3 * kRegion);
  EXPECT_EQ(bitmap.dirty_bytes(), 7 * kRegion);
  // Less than a region still takes one region.
  ASSERT_TRUE(bitmap.TakeRun(1, &offset, &length));
  EXPECT_EQ(offset, 3 * kRegion);
  EXPECT_EQ(length, kRegion);
  // Not a multiple of the region: rounded down.
  ASSERT_TRUE(bitmap.TakeRun(2 * kRegion + 1, &offset, &length));
  EXPECT_EQ(offset, 4 * kRegion);
  EXPECT_EQ(length, 2 * kRegion);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{6 * kRegion, 4 * kRegion}}));
}

// 64 regions per word: runs that cross words, and dirty regions after empty words.
TEST(DirtyBitmap, RunsCrossWordBoundaries) {
  const uint32_t region = 4096;
  DirtyBitmap bitmap(300 * region, region);
  bitmap.Mark(62 * region, 4 * region);   // regions 62..65
  bitmap.Mark(200 * region, 1);           // region 200, after an empty word
  bitmap.Mark(127 * region, 2 * region);  // regions 127..128
  bitmap.Mark(299 * region, region);      // the last region
  EXPECT_EQ(bitmap.dirty_bytes(), 8u * region);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{62 * region, 4 * region},
                                                  {127 * region, 2 * region},
                                                  {200 * region, region},
                                                  {299 * region, region}}));
}

// 100000 bytes in 4 KiB regions: 24 whole regions and a last one of 1696 bytes.
TEST(DirtyBitmap, ClipsTheLastRegionAtTheVolumeEnd) {
  const uint64_t size = 100000;
  const uint64_t last_start = 24 * 4096;
  DirtyBitmap bitmap(size, 4096);
  bitmap.Mark(99000, 5000);  // runs past the end
  EXPECT_EQ(bitmap.dirty_bytes(), size - last_start);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{last_start, size - last_start}}));

  bitmap.MarkAll();
  EXPECT_EQ(bitmap.dirty_bytes(), size);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{0, size}}));

  bitmap.MarkAll();
  const std::vector<Extent> pieces = TakeAll(bitmap, 10 * 4096);
  EXPECT_EQ(pieces, (std::vector<Extent>{{0, 40960}, {40960, 40960}, {81920, size - 81920}}));

  bitmap.Mark(0, 4096);
  EXPECT_EQ(bitmap.dirty_bytes(), 4096u) << "only the last region is partial";
}

TEST(DirtyBitmap, MarkWithAHugeLengthDoesNotWrapAround) {
  DirtyBitmap bitmap(100000, 4096);
  bitmap.Mark(5, UINT64_MAX);
  EXPECT_EQ(bitmap.dirty_bytes(), 100000u);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{0, 100000}}));
  bitmap.Mark(50000, UINT64_MAX - 40000);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{12 * 4096, 100000 - 12 * 4096}}));
}

TEST(DirtyBitmap, ConcurrentMarksAreAllCounted) {
  const uint32_t region = 4096;
  DirtyBitmap bitmap(4096 * region, region);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&bitmap, t] {
      for (uint64_t r = static_cast<uint64_t>(t); r < 4096; r += 4) bitmap.Mark(r * region, 1);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bitmap.dirty_bytes(), 4096u * region);
  EXPECT_EQ(TakeAll(bitmap), (std::vector<Extent>{{0, 4096u * region}}));
}

class DirtyBitmapFileTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno); }

  // A 100000-byte volume in 4 KiB regions with a few regions dirty, saved to path().
  void SaveSample() {
    DirtyBitmap bitmap(100000, 4096);
    bitmap.Mark(0, 1);
    bitmap.Mark(4096 * 5, 4096 * 3);
    bitmap.Mark(99999, 1);
    ASSERT_TRUE(bitmap.Save(path()).ok());
  }

  std::string path() const { return dir_.File("dirty.bitmap"); }

  TempDir dir_;
};

TEST_F(DirtyBitmapFileTest, SaveThenLoadRoundTrips) {
  SaveSample();
  DirtyBitmap loaded(100000, 4096);
  Status s = loaded.Load(path());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(loaded.dirty_bytes(), 4096u * 4 + (100000 - 24 * 4096));
  EXPECT_EQ(
      TakeAll(loaded),
      (std::vector<Extent>{{0, 4096}, {4096 * 5, 4096 * 3}, {24 * 4096, 100000 - 24 * 4096}}));
  EXPECT_FALSE(std::filesystem::exists(path() + ".tmp"));
}

TEST_F(DirtyBitmapFileTest, SavedFileHasTheDocumentedLayout) {
  SaveSample();
  const std::string file = ReadFile(path());
  // magic, volume size, region size, word count, one word, CRC.
  ASSERT_EQ(file.size(), 8u + 8 + 4 + 8 + 8 + 4);
  EXPECT_EQ(file.substr(0, 8), "CDPDIRT1");
  EXPECT_EQ(GetBigEndian64(file.data() + 8), 100000u);
  EXPECT_EQ(GetBigEndian32(file.data() + 16), 4096u);
  EXPECT_EQ(GetBigEndian64(file.data() + 20), 1u);
  EXPECT_EQ(GetBigEndian64(file.data() + 28),
            (uint64_t{1} << 0) | (uint64_t{7} << 5) | (uint64_t{1} << 24));
  EXPECT_EQ(GetBigEndian32(file.data() + 36), crc32c::Value(file.data(), 36));
}

TEST_F(DirtyBitmapFileTest, LoadOrsIntoTheCurrentMarks) {
  SaveSample();
  DirtyBitmap bitmap(100000, 4096);
  bitmap.Mark(4096 * 10, 1);
  ASSERT_TRUE(bitmap.Load(path()).ok());
  EXPECT_EQ(
      TakeAll(bitmap),
      (std::vector<Extent>{
          {0, 4096}, {4096 * 5, 4096 * 3}, {4096 * 10, 4096}, {24 * 4096, 100000 - 24 * 4096}}));
}

TEST_F(DirtyBitmapFileTest, AnyFlippedByteIsCorruption) {
  SaveSample();
  const std::string good = ReadFile(path());
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    WriteFile(path(), bad);
    DirtyBitmap bitmap(100000, 4096);
    Status s = bitmap.Load(path());
    ASSERT_EQ(s.code(), StatusCode::kCorruption) << "byte " << i << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(path()));
    EXPECT_TRUE(bitmap.empty()) << "a damaged file must not mark anything (byte " << i << ")";
  }
}

TEST_F(DirtyBitmapFileTest, DamageMessagesNameTheProblem) {
  SaveSample();
  std::string bad = ReadFile(path());
  bad[30] = static_cast<char>(bad[30] ^ 1);
  WriteFile(path(), bad);
  DirtyBitmap bitmap(100000, 4096);
  Status s = bitmap.Load(path());
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("dirty.bitmap fails its CRC"));

  WriteFile(path(), "short");
  s = bitmap.Load(path());
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("is not a cdp dirty bitmap"));

  WriteFile(path(), "");
  EXPECT_EQ(bitmap.Load(path()).code(), StatusCode::kCorruption);
}

TEST_F(DirtyBitmapFileTest, TruncatedFileIsCorruption) {
  SaveSample();
  const std::string good = ReadFile(path());
  for (size_t n = 0; n < good.size(); ++n) {
    WriteFile(path(), good.substr(0, n));
    DirtyBitmap bitmap(100000, 4096);
    EXPECT_EQ(bitmap.Load(path()).code(), StatusCode::kCorruption) << "first " << n << " bytes";
  }
}

TEST_F(DirtyBitmapFileTest, LoadForAnotherVolumeSizeIsInvalidArgument) {
  SaveSample();
  DirtyBitmap bigger(200000, 4096);
  Status s = bigger.Load(path());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(path()));
  EXPECT_THAT(s.message(), HasSubstr("100000 bytes"));
  EXPECT_THAT(s.message(), HasSubstr("200000 bytes"));
  EXPECT_TRUE(bigger.empty());

  // Same size, same word count, different region size.
  DirtyBitmap other_regions(100000, 8192);
  s = other_regions.Load(path());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("4096-byte regions"));
  EXPECT_THAT(s.message(), HasSubstr("8192-byte regions"));
}

// A file whose CRC is right but which marks regions past the volume end (not one we wrote):
// those bits could never be taken, so the bitmap would never become empty.
TEST_F(DirtyBitmapFileTest, BitsPastTheVolumeEndAreCorruption) {
  SaveSample();
  std::string file = ReadFile(path());
  file.resize(file.size() - 4);
  const uint64_t word = GetBigEndian64(file.data() + 28) | (uint64_t{1} << 40);
  std::string patched = file.substr(0, 28);
  PutBigEndian64(&patched, word);
  PutBigEndian32(&patched, crc32c::Value(patched));
  WriteFile(path(), patched);
  DirtyBitmap bitmap(100000, 4096);
  Status s = bitmap.Load(path());
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("past the volume end"));
  EXPECT_TRUE(bitmap.empty());
}

TEST_F(DirtyBitmapFileTest, LoadOfAMissingFileIsNotFound) {
  DirtyBitmap bitmap(100000, 4096);
  Status s = bitmap.Load(dir_.File("absent"));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("absent"));
}

TEST_F(DirtyBitmapFileTest, SaveIntoAMissingDirectoryIsAnError) {
  DirtyBitmap bitmap(100000, 4096);
  Status s = bitmap.Save(dir_.File("no-such-dir/dirty.bitmap"));
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_THAT(s.message(), HasSubstr("no-such-dir"));
}

}  // namespace
}  // namespace cdp::agent
