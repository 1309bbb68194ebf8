// Tests of RecordApplier on real files in a temporary directory under /var/tmp (where O_DIRECT
// works; /tmp may be tmpfs), once buffered and once with O_DIRECT. Every test applies records
// to the device and to an in-memory model of the volume, then compares the file's bytes.
#include "cdp/core/record_apply.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

constexpr uint64_t kVolumeSize = 256 * 1024;

// Under /var/tmp, which takes O_DIRECT (/tmp may be a tmpfs); removed also when a test failed.
class VarTmpDir : public testing::TempDir {
 public:
  VarTmpDir() : TempDir("record_apply_test", "/var/tmp") {}
};

std::string ReadWholeFile(const std::string& path) { return testing::TempDir::Read(path); }

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + static_cast<char>(i * 7 % 251));
  return s;
}

// A batch under construction: the records, the model of the volume after them, and storage
// that keeps every payload alive while the batch is applied.
class Batch {
 public:
  explicit Batch(std::string* model) : model_(model) {}

  // A write of `data` at `offset`, its payload viewed from `data` itself.
  void Write(uint64_t offset, std::string data) {
    auto bytes = std::make_shared<const std::string>(std::move(data));
    ChangeRecord rec = MakeWriteRecord(++lsn_, NowNanos(), offset, bytes);
    model_->replace(offset, bytes->size(), *bytes);
    items_.push_back(ApplyItem{rec, *bytes});
  }

  // A write whose payload view starts `skew` bytes into a heap std::string, so its address is
  // not aligned for O_DIRECT.
  void WriteFromUnalignedBuffer(uint64_t offset, const std::string& data, size_t skew) {
    auto backing = std::make_shared<std::string>(std::string(skew, '#') + data);
    keep_.push_back(backing);
    ChangeRecord rec =
        MakeWriteRecord(++lsn_, NowNanos(), offset, std::make_shared<const std::string>(data));
    model_->replace(offset, data.size(), data);
    items_.push_back(ApplyItem{rec, std::string_view(backing->data() + skew, data.size())});
  }

  void Zero(RecordKind kind, uint64_t offset, uint32_t length) {
    ChangeRecord rec;
    rec.lsn = ++lsn_;
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = kind;
    model_->replace(offset, length, std::string(length, '\0'));
    items_.push_back(ApplyItem{rec, {}});
  }
  void Discard(uint64_t offset, uint32_t length) { Zero(RecordKind::kDiscard, offset, length); }
  void WriteZeroes(uint64_t offset, uint32_t length) {
    Zero(RecordKind::kWriteZeroes, offset, length);
  }

  const std::vector<ApplyItem>& items() const { return items_; }
  uint64_t payload_bytes() const {
    uint64_t n = 0;
    for (const auto& item : items_) n += item.payload.size();
    return n;
  }

 private:
  std::string* model_;
  uint64_t lsn_ = 0;
  std::vector<ApplyItem> items_;
  std::vector<std::shared_ptr<std::string>> keep_;
};

// Parameter: open the device with O_DIRECT.
class RecordApplierTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp under /var/tmp: " << std::strerror(errno);
    path_ = dir_.File("volume.img");
    if (direct()) {
      // The filesystem must accept O_DIRECT; skip only when it does not (CI must run it).
      const std::string probe = dir_.File("o_direct_probe");
      const int fd = open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
      if (fd < 0) {
        const int err = errno;
        if (std::getenv("CI") != nullptr) {
          FAIL() << "O_DIRECT refused under /var/tmp on this CI machine: " << std::strerror(err);
        }
        GTEST_SKIP() << "O_DIRECT refused under /var/tmp: " << std::strerror(err);
      }
      close(fd);
    }
    BlockDeviceOptions options;
    options.writable = true;
    options.direct = direct();
    options.create_size = kVolumeSize;
    auto device = OpenBlockDevice(path_, options);
    ASSERT_TRUE(device.ok()) << device.status();
    device_ = std::move(device).value();
    applier_ = std::make_unique<RecordApplier>(device_.get(), direct());
    model_.assign(kVolumeSize, '\0');
  }

  bool direct() const { return GetParam(); }

  // Applies `batch` and checks that the file now holds exactly the model.
  void ApplyAndCompare(const Batch& batch) {
    Status s = applier_->Apply(batch.items());
    ASSERT_TRUE(s.ok()) << s;
    ExpectFileMatchesModel();
  }

  void ExpectFileMatchesModel() {
    const std::string file = ReadWholeFile(path_);
    ASSERT_EQ(file.size(), model_.size());
    for (size_t i = 0; i < file.size(); ++i) {
      if (file[i] != model_[i]) {
        FAIL() << "first difference at offset " << i << ": file has "
               << static_cast<int>(static_cast<unsigned char>(file[i])) << ", model has "
               << static_cast<int>(static_cast<unsigned char>(model_[i]));
      }
    }
  }

  VarTmpDir dir_;
  std::string path_;
  std::unique_ptr<BlockDevice> device_;
  std::unique_ptr<RecordApplier> applier_;
  std::string model_;
};

TEST_P(RecordApplierTest, AppliesSequentialWrites) {
  Batch batch(&model_);
  batch.Write(0, Pattern(4096, 'a'));
  batch.Write(4096, Pattern(8192, 'b'));
  batch.Write(16384, Pattern(512, 'c'));
  batch.Write(kVolumeSize - 1024, Pattern(1024, 'd'));
  ApplyAndCompare(batch);
  EXPECT_EQ(applier_->applied_bytes(), 4096u + 8192u + 512u + 1024u);
}

TEST_P(RecordApplierTest, AppliesManyDisjointWritesBeyondTheQueueDepth) {
  Batch batch(&model_);
  // 300 writes of one block in a scattered order, more than the device's 64 in flight.
  for (uint64_t i = 0; i < 300; ++i) {
    batch.Write((i * 37 % 300) * 512, Pattern(512, static_cast<char>(i)));
  }
  ApplyAndCompare(batch);
}

TEST_P(RecordApplierTest, OverlappingWritesInOneBatchGiveTheSequentialResult) {
  Batch batch(&model_);
  batch.Write(0, std::string(16384, 'A'));
  batch.Write(4096, std::string(4096, 'B'));   // inside the first
  batch.Write(0, std::string(4096, 'C'));      // same start as the first
  batch.Write(32768, std::string(4096, 'D'));  // disjoint
  batch.Write(20480, std::string(4096, 'E'));  // disjoint, between two earlier ones
  batch.Write(2048, std::string(32768, 'F'));  // overlaps A, B, C, E and the start of D
  batch.Write(4096, std::string(4096, 'G'));   // on top of F again
  batch.Write(4096, std::string(4096, 'H'));   // the very same range twice in a row
  ApplyAndCompare(batch);
  EXPECT_EQ(model_.substr(0, 2048), std::string(2048, 'C'));
  EXPECT_EQ(model_.substr(4096, 4096), std::string(4096, 'H'));
  EXPECT_EQ(model_.substr(34816, 2048), std::string(2048, 'D'));
}

TEST_P(RecordApplierTest, AdjacentWritesDoNotCountAsOverlapping) {
  Batch batch(&model_);
  batch.Write(4096, std::string(4096, 'x'));
  batch.Write(0, std::string(4096, 'y'));     // ends where the first starts
  batch.Write(8192, std::string(4096, 'z'));  // starts where the first ends
  ApplyAndCompare(batch);
}

TEST_P(RecordApplierTest, DiscardAndWriteZeroesReadBackAsZeroes) {
  Batch fill(&model_);
  fill.Write(0, Pattern(65536, 'p'));
  ApplyAndCompare(fill);

  Batch batch(&model_);
  batch.Discard(4096, 8192);
  batch.WriteZeroes(20480, 4096);
  batch.Write(8192, Pattern(1024, 'q'));  // after the discard: must survive it
  batch.Write(40960, Pattern(4096, 'r'));
  batch.WriteZeroes(40960 + 512, 1024);  // after the write: must zero part of it
  batch.Discard(61440, 4096);
  ApplyAndCompare(batch);
  EXPECT_EQ(model_.substr(4096, 4096), std::string(4096, '\0'));
  EXPECT_EQ(model_.substr(20480, 4096), std::string(4096, '\0'));
}

TEST_P(RecordApplierTest, UnalignedDiscardAndWriteZeroesReadBackAsZeroes) {
  // Apply's contract asks only for verified payloads and ranges inside the device, so a
  // byte-granular discard or write-zeroes must work with O_DIRECT as it does buffered.
  Batch fill(&model_);
  fill.Write(0, Pattern(16384, 'z'));
  ApplyAndCompare(fill);

  Batch batch(&model_);
  batch.Discard(100, 200);
  batch.WriteZeroes(4000, 1000);
  batch.Write(4096, Pattern(512, 'y'));  // after the write-zeroes: must survive it
  batch.Discard(8191, 513);
  ApplyAndCompare(batch);
}

TEST_P(RecordApplierTest, UnalignedWritesAreReadModifyWrittenInOrder) {
  Batch fill(&model_);
  fill.Write(0, Pattern(16384, 'm'));
  ApplyAndCompare(fill);

  Batch batch(&model_);
  batch.Write(1, "xyz");                        // offset 1, length 3
  batch.Write(4095, "\x01\x02");                // crosses the block boundary at 4096
  batch.Write(8192, Pattern(513, 'L'));         // one byte into the next block
  batch.Write(12288 + 100, Pattern(513, 'M'));  // unaligned on both ends
  ApplyAndCompare(batch);
  EXPECT_EQ(model_.substr(1, 3), "xyz");
}

TEST_P(RecordApplierTest, UnalignedAndAlignedWritesMixInBatchOrder) {
  Batch batch(&model_);
  batch.Write(0, std::string(4096, 'a'));     // aligned
  batch.Write(1, "bbb");                      // unaligned on top of it: must come after
  batch.Write(4096, std::string(4096, 'c'));  // aligned, pending when the next one comes
  batch.Write(4095, "dd");                    // unaligned across both earlier writes
  batch.Write(0, std::string(512, 'e'));      // aligned on top of the unaligned "bbb"
  batch.Write(8192, std::string(513, 'f'));   // unaligned, length 513
  batch.Write(8192, std::string(512, 'g'));   // aligned, leaves byte 8704 of 'f'
  batch.Write(9216, std::string(1024, 'h'));  // aligned, disjoint
  batch.Write(9215, "ii");                    // unaligned across 'h'
  ApplyAndCompare(batch);
  EXPECT_EQ(model_[1], 'e');
  EXPECT_EQ(model_[4095], 'd');
  EXPECT_EQ(model_[4096], 'd');
  EXPECT_EQ(model_[8704], 'f');
  EXPECT_EQ(model_[9216], 'i');
}

TEST_P(RecordApplierTest, UnalignedWriteAtTheEndOfTheDevice) {
  Batch batch(&model_);
  batch.Write(kVolumeSize - 3, "end");
  batch.Write(kVolumeSize - 4096 - 1, "xy");
  ApplyAndCompare(batch);
}

TEST_P(RecordApplierTest, PayloadsFromUnalignedStringBuffers) {
  Batch batch(&model_);
  batch.WriteFromUnalignedBuffer(0, Pattern(4096, 's'), 1);
  batch.WriteFromUnalignedBuffer(8192, Pattern(512, 't'), 3);
  batch.WriteFromUnalignedBuffer(16384, Pattern(1536, 'u'), 7);
  batch.WriteFromUnalignedBuffer(20480, Pattern(12288, 'v'), 511);
  batch.WriteFromUnalignedBuffer(4096 + 10, Pattern(100, 'w'), 5);  // unaligned range too
  ApplyAndCompare(batch);
}

TEST_P(RecordApplierTest, LaterCallsWithMoreDataThanTheFirst) {
  // The direct-mode staging area is sized by the first call and must grow for later ones.
  Batch small(&model_);
  small.Write(0, Pattern(512, '1'));
  ApplyAndCompare(small);
  Batch large(&model_);
  for (uint64_t off = 0; off < 131072; off += 8192) {
    large.Write(off, Pattern(8192, static_cast<char>(off / 8192)));
  }
  ApplyAndCompare(large);
  Batch smaller(&model_);
  smaller.Write(4096, Pattern(1024, '2'));
  ApplyAndCompare(smaller);
}

TEST_P(RecordApplierTest, AppliedBytesCountsPayloadBytesOnly) {
  EXPECT_EQ(applier_->applied_bytes(), 0u);
  Batch first(&model_);
  first.Write(0, Pattern(4096, 'a'));
  first.Write(5, "12345");  // unaligned: counted by its payload, not the blocks rewritten
  first.Discard(8192, 65536);
  first.WriteZeroes(131072, 4096);
  ApplyAndCompare(first);
  EXPECT_EQ(applier_->applied_bytes(), 4096u + 5u);
  EXPECT_EQ(first.payload_bytes(), 4096u + 5u);

  Batch second(&model_);
  second.Write(65536, Pattern(513, 'b'));
  second.Write(70000, Pattern(1024, 'c'));
  ApplyAndCompare(second);
  EXPECT_EQ(applier_->applied_bytes(), 4096u + 5u + 513u + 1024u);
}

TEST_P(RecordApplierTest, RandomBatchesMatchTheModel) {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 8; ++round) {
    Batch batch(&model_);
    for (int i = 0; i < 40; ++i) {
      const uint64_t kind = rng() % 10;
      // Mostly block-aligned ranges (the direct-mode fast path), some byte-granular writes.
      const bool unaligned_write = kind < 3;
      uint64_t offset, length;
      if (unaligned_write) {
        length = 1 + rng() % 9000;
        offset = rng() % (kVolumeSize - length);
      } else {
        length = 512 * (1 + rng() % 24);
        offset = 512 * (rng() % ((kVolumeSize - length) / 512 + 1));
      }
      if (kind == 9) {
        batch.Discard(offset, static_cast<uint32_t>(length));
      } else if (kind == 8) {
        batch.WriteZeroes(offset, static_cast<uint32_t>(length));
      } else {
        std::string data(length, '\0');
        for (char& c : data) c = static_cast<char>(rng());
        batch.Write(offset, std::move(data));
      }
    }
    ApplyAndCompare(batch);
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(BufferedAndDirect, RecordApplierTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Direct") : std::string("Buffered");
                         });

}  // namespace
}  // namespace cdp
