// Tests of PeMetadata: the slot-copy codec, and the metadata area on a real file in a temporary
// directory under /var/tmp (empty disks, save and reopen, alternating copies, torn writes,
// foreign disks, slot allocation).
#include "cdp/pe/pe_metadata.h"

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
#include <string>
#include <system_error>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::pe {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kBlock = PeMetadata::kBlock;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr char kLabel[] = "CDP-PE-META v1\n";

// Under /var/tmp, which takes O_DIRECT (/tmp may be a tmpfs); removed also when a test failed.
class VarTmpDir : public testing::TempDir {
 public:
  VarTmpDir() : TempDir("pe_metadata_test", "/var/tmp") {}
};

std::string ReadWholeFile(const std::string& path) { return testing::TempDir::Read(path); }

// Overwrites bytes of `path` at `offset` (the file keeps its size).
void Overwrite(const std::string& path, uint64_t offset, const std::string& bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// Byte offset of copy `copy` (0 or 1) of slot `slot`.
uint64_t CopyOffset(size_t slot, int copy) { return kBlock * (1 + 2 * slot + copy); }

VolumeCursor SampleCursor() {
  VolumeCursor c;
  c.volume = "db01-sda";
  c.volume_size = 10737418240ull;
  c.applied_lsn = 0x0102030405060708ull;
  c.generation = 77;
  c.time_ns = 1700000000123456789ull;
  return c;
}

TEST(PeMetadataCodec, RoundTrips) {
  const VolumeCursor c = SampleCursor();
  const std::string bytes = PeMetadata::EncodeCopy(c);
  ASSERT_EQ(bytes.size(), kBlock);
  auto decoded = PeMetadata::DecodeCopy(bytes.data());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->volume, c.volume);
  EXPECT_EQ(decoded->volume_size, c.volume_size);
  EXPECT_EQ(decoded->applied_lsn, c.applied_lsn);
  EXPECT_EQ(decoded->generation, c.generation);
  EXPECT_EQ(decoded->time_ns, c.time_ns);
}

TEST(PeMetadataCodec, RoundTripsANameOfTheMaximumLength) {
  VolumeCursor c = SampleCursor();
  c.volume = std::string(PeMetadata::kMaxNameBytes, 'n');
  const std::string bytes = PeMetadata::EncodeCopy(c);
  auto decoded = PeMetadata::DecodeCopy(bytes.data());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->volume, c.volume);
}

TEST(PeMetadataCodec, EveryFlippedBitOfTheRecordIsCorruption) {
  const std::string good = PeMetadata::EncodeCopy(SampleCursor());
  // The encoded fields and their CRC: magic 8, format 4, name length 4, name 64, four u64, CRC.
  constexpr size_t kCovered = 8 + 4 + 4 + 64 + 4 * 8 + 4;
  for (size_t bit = 0; bit < kCovered * 8; ++bit) {
    std::string bad = good;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    auto decoded = PeMetadata::DecodeCopy(bad.data());
    ASSERT_FALSE(decoded.ok()) << "bit " << bit << " flipped went unnoticed";
    EXPECT_EQ(decoded.status().code(), StatusCode::kCorruption)
        << "bit " << bit << ": " << decoded.status();
  }
}

TEST(PeMetadataCodec, NamesWhatIsWrong) {
  std::string bad_magic = PeMetadata::EncodeCopy(SampleCursor());
  bad_magic[0] = 'X';
  EXPECT_THAT(PeMetadata::DecodeCopy(bad_magic.data()).status().message(), HasSubstr("magic"));
  std::string bad_crc = PeMetadata::EncodeCopy(SampleCursor());
  bad_crc[90] ^= 1;
  EXPECT_THAT(PeMetadata::DecodeCopy(bad_crc.data()).status().message(), HasSubstr("CRC"));
}

TEST(PeMetadataCodec, AllZeroCopyIsNotFound) {
  const std::string zero(kBlock, '\0');
  auto decoded = PeMetadata::DecodeCopy(zero.data());
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kNotFound) << decoded.status();
}

class PeMetadataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp under /var/tmp: " << std::strerror(errno);
    path_ = dir_.File("meta.img");
  }

  // Opens the metadata area at path_ (creating a zero file of `size` bytes if missing).
  Result<std::unique_ptr<PeMetadata>> OpenMeta(uint64_t size = kMiB, bool direct = false) {
    BlockDeviceOptions options;
    options.writable = true;
    options.direct = direct;
    options.create_size = size;
    auto device = OpenBlockDevice(path_, options);
    if (!device.ok()) return device.status();
    return PeMetadata::Open(std::move(device).value());
  }

  std::unique_ptr<PeMetadata> MustOpen() {
    auto meta = OpenMeta();
    EXPECT_TRUE(meta.ok()) << meta.status();
    return meta.ok() ? std::move(meta).value() : nullptr;
  }

  // Decodes copy `copy` of slot `slot` straight from the file.
  Result<VolumeCursor> CopyInFile(size_t slot, int copy) {
    const std::string file = ReadWholeFile(path_);
    if (file.size() < CopyOffset(slot, copy) + kBlock) return Status::OutOfRange("short file");
    return PeMetadata::DecodeCopy(file.data() + CopyOffset(slot, copy));
  }

  VarTmpDir dir_;
  std::string path_;
};

TEST_F(PeMetadataTest, EmptyDiskHasNoCursors) {
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  for (const char* volume : {"db01-sda", "db01-sdb", "x"}) {
    const VolumeCursor c = meta->Get(volume);
    EXPECT_EQ(c.volume, volume);
    EXPECT_EQ(c.applied_lsn, 0u);
    EXPECT_EQ(c.generation, 0u);
  }
  // Opening alone writes nothing.
  EXPECT_EQ(ReadWholeFile(path_), std::string(kMiB, '\0'));
}

TEST_F(PeMetadataTest, SaveThenReopenReturnsTheCursor) {
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    const uint64_t before = NowNanos();
    ASSERT_TRUE(meta->Save("db01-sda", 1073741824, 4242).ok());
    const VolumeCursor c = meta->Get("db01-sda");
    EXPECT_EQ(c.applied_lsn, 4242u);
    EXPECT_EQ(c.volume_size, 1073741824u);
    EXPECT_EQ(c.generation, 1u);
    EXPECT_GE(c.time_ns, before);
  }
  EXPECT_EQ(ReadWholeFile(path_).substr(0, sizeof(kLabel) - 1), kLabel);
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  const VolumeCursor c = meta->Get("db01-sda");
  EXPECT_EQ(c.volume, "db01-sda");
  EXPECT_EQ(c.applied_lsn, 4242u);
  EXPECT_EQ(c.volume_size, 1073741824u);
  EXPECT_EQ(c.generation, 1u);
  EXPECT_EQ(meta->Get("db01-sdb").applied_lsn, 0u);
}

TEST_F(PeMetadataTest, SaveAndReopenWithODirect) {
  {
    auto meta = OpenMeta(kMiB, /*direct=*/true);
    if (!meta.ok() && meta.status().code() == StatusCode::kInvalidArgument &&
        std::getenv("CI") == nullptr) {
      GTEST_SKIP() << "O_DIRECT refused here: " << meta.status();
    }
    ASSERT_TRUE(meta.ok()) << meta.status();
    ASSERT_TRUE((*meta)->Save("db01-sda", 8192, 7).ok());
    ASSERT_TRUE((*meta)->Save("db01-sda", 8192, 8).ok());
  }
  auto meta = OpenMeta(kMiB, /*direct=*/true);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ((*meta)->Get("db01-sda").applied_lsn, 8u);
  EXPECT_EQ((*meta)->Get("db01-sda").generation, 2u);
}

TEST_F(PeMetadataTest, SavesAlternateCopiesAndTheNewestWinsAfterReopen) {
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    for (uint64_t g = 1; g <= 9; ++g) {
      ASSERT_TRUE(meta->Save("db01-sda", 65536, 100 + g).ok());
      // Generation g lands in copy g % 2; the other copy still holds generation g - 1.
      auto written = CopyInFile(0, static_cast<int>(g % 2));
      ASSERT_TRUE(written.ok()) << "generation " << g << ": " << written.status();
      EXPECT_EQ(written->generation, g);
      EXPECT_EQ(written->applied_lsn, 100 + g);
      auto other = CopyInFile(0, static_cast<int>((g + 1) % 2));
      if (g == 1) {
        EXPECT_EQ(other.status().code(), StatusCode::kNotFound);
      } else {
        ASSERT_TRUE(other.ok()) << other.status();
        EXPECT_EQ(other->generation, g - 1);
        EXPECT_EQ(other->applied_lsn, 100 + g - 1);
      }
    }
  }
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->Get("db01-sda").applied_lsn, 109u);
  EXPECT_EQ(meta->Get("db01-sda").generation, 9u);
  // Saving after the reopen continues the generations.
  ASSERT_TRUE(meta->Save("db01-sda", 65536, 110).ok());
  auto written = CopyInFile(0, 0);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->generation, 10u);
}

TEST_F(PeMetadataTest, TornNewestCopyFallsBackToThePreviousGeneration) {
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    for (uint64_t lsn = 1; lsn <= 5; ++lsn) ASSERT_TRUE(meta->Save("db01-sda", 65536, lsn).ok());
  }
  // Generation 5 is in copy 1; tear it (garbage over the first half of the copy).
  std::string garbage(kBlock / 2, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 131 + 7);
  Overwrite(path_, CopyOffset(0, 1), garbage);
  ASSERT_EQ(CopyInFile(0, 1).status().code(), StatusCode::kCorruption);
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    const VolumeCursor c = meta->Get("db01-sda");
    EXPECT_EQ(c.applied_lsn, 4u);
    EXPECT_EQ(c.generation, 4u);
    // The next save goes over the torn copy, never over the surviving one.
    ASSERT_TRUE(meta->Save("db01-sda", 65536, 6).ok());
    auto survivor = CopyInFile(0, 0);
    ASSERT_TRUE(survivor.ok()) << survivor.status();
    EXPECT_EQ(survivor->applied_lsn, 4u);
  }
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->Get("db01-sda").applied_lsn, 6u);
}

TEST_F(PeMetadataTest, NewestCopyZeroedByATornWriteFallsBack) {
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    for (uint64_t lsn = 1; lsn <= 4; ++lsn) ASSERT_TRUE(meta->Save("db01-sda", 65536, lsn).ok());
  }
  // Generation 4 is in copy 0; a write that never reached the disk leaves its header zero.
  Overwrite(path_, CopyOffset(0, 0), std::string(128, '\0'));
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->Get("db01-sda").applied_lsn, 3u);
}

TEST_F(PeMetadataTest, DeviceSmallerThanOneMiBIsInvalidArgument) {
  auto meta = OpenMeta(kMiB - 4096);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), StatusCode::kInvalidArgument) << meta.status();
  EXPECT_THAT(meta.status().message(), HasSubstr(path_));
  EXPECT_THAT(meta.status().message(), HasSubstr(std::to_string(kMiB - 4096)));
  EXPECT_THAT(meta.status().message(), HasSubstr(std::to_string(kMiB)));
  EXPECT_EQ(ReadWholeFile(path_), std::string(kMiB - 4096, '\0'));
}

TEST_F(PeMetadataTest, ForeignFirstBlockIsCorruptionAndNothingIsWritten) {
  // Something that is not ours: a filesystem-like header in block 0, data in a slot.
  std::string image(kMiB, '\0');
  const std::string foreign = "\xEB\x3C\x90mkfs.fat";
  image.replace(0, foreign.size(), foreign);
  image.replace(CopyOffset(0, 1), 8, "CDPPEMD1");
  {
    std::ofstream out(path_, std::ios::binary);
    out.write(image.data(), static_cast<std::streamsize>(image.size()));
  }
  auto meta = OpenMeta();
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), StatusCode::kCorruption) << meta.status();
  EXPECT_THAT(meta.status().message(), HasSubstr(path_));
  EXPECT_THAT(meta.status().message(), HasSubstr("not a cdp metadata disk"));
  EXPECT_THAT(meta.status().message(), HasSubstr("nothing is written"));
  EXPECT_EQ(ReadWholeFile(path_), image);
}

TEST_F(PeMetadataTest, LabelOnlyInAnotherBlockStillCountsAsForeign) {
  // A label one byte off is not ours either.
  std::string image(kMiB, '\0');
  image.replace(1, sizeof(kLabel) - 1, kLabel);
  {
    std::ofstream out(path_, std::ios::binary);
    out.write(image.data(), static_cast<std::streamsize>(image.size()));
  }
  auto meta = OpenMeta();
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), StatusCode::kCorruption) << meta.status();
  EXPECT_EQ(ReadWholeFile(path_), image);
}

TEST_F(PeMetadataTest, SeveralVolumesGetDifferentSlots) {
  {
    auto meta = MustOpen();
    ASSERT_NE(meta, nullptr);
    ASSERT_TRUE(meta->Save("db01-sda", 4096 * 10, 11).ok());
    ASSERT_TRUE(meta->Save("db01-sdb", 4096 * 20, 22).ok());
    ASSERT_TRUE(meta->Save("db01-sdc", 4096 * 30, 33).ok());
    ASSERT_TRUE(meta->Save("db01-sda", 4096 * 10, 12).ok());
  }
  // First saves are generation 1, in copy 1 of slots 0, 1, 2 in order of first save.
  const char* names[] = {"db01-sda", "db01-sdb", "db01-sdc"};
  for (size_t slot = 0; slot < 3; ++slot) {
    auto c = CopyInFile(slot, 1);
    ASSERT_TRUE(c.ok()) << "slot " << slot << ": " << c.status();
    EXPECT_EQ(c->volume, names[slot]);
  }
  auto sda_gen2 = CopyInFile(0, 0);
  ASSERT_TRUE(sda_gen2.ok()) << sda_gen2.status();
  EXPECT_EQ(sda_gen2->applied_lsn, 12u);
  EXPECT_EQ(CopyInFile(3, 0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(CopyInFile(3, 1).status().code(), StatusCode::kNotFound);

  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->Get("db01-sda").applied_lsn, 12u);
  EXPECT_EQ(meta->Get("db01-sda").volume_size, 4096u * 10);
  EXPECT_EQ(meta->Get("db01-sdb").applied_lsn, 22u);
  EXPECT_EQ(meta->Get("db01-sdb").volume_size, 4096u * 20);
  EXPECT_EQ(meta->Get("db01-sdc").applied_lsn, 33u);
  EXPECT_EQ(meta->Get("db01-sdc").volume_size, 4096u * 30);
}

TEST_F(PeMetadataTest, AllSlotsUsedIsResourceExhaustedForANewVolume) {
  // 1 MiB: one label block, then 127 slots of two 4 KiB copies.
  constexpr size_t kSlots = (kMiB - kBlock) / (2 * kBlock);
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  for (size_t i = 0; i < kSlots; ++i) {
    ASSERT_TRUE(meta->Save("vol" + std::to_string(i), 4096, i + 1).ok()) << "volume " << i;
  }
  Status full = meta->Save("one-too-many", 4096, 1);
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted) << full;
  EXPECT_THAT(full.message(), HasSubstr(path_));
  EXPECT_THAT(full.message(), HasSubstr("all " + std::to_string(kSlots) + " volume slots"));
  EXPECT_EQ(meta->Get("one-too-many").applied_lsn, 0u);
  // Volumes that have a slot can still save.
  Status again = meta->Save("vol5", 4096, 500);
  EXPECT_TRUE(again.ok()) << again;

  meta.reset();
  auto reopened = MustOpen();
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->Get("vol0").applied_lsn, 1u);
  EXPECT_EQ(reopened->Get("vol5").applied_lsn, 500u);
  EXPECT_EQ(reopened->Get("vol" + std::to_string(kSlots - 1)).applied_lsn, kSlots);
  EXPECT_EQ(reopened->Save("one-too-many", 4096, 1).code(), StatusCode::kResourceExhausted);
}

TEST_F(PeMetadataTest, NamesThatDoNotFitASlotAreInvalidArgument) {
  auto meta = MustOpen();
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->Save("", 4096, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(meta->Save(std::string(PeMetadata::kMaxNameBytes + 1, 'n'), 4096, 1).code(),
            StatusCode::kInvalidArgument);
  // Nothing was written, not even the label.
  EXPECT_EQ(ReadWholeFile(path_), std::string(kMiB, '\0'));
}

// ---- the kept area ----

constexpr uint64_t kKept = PeMetadata::kKeptOffset;

// A blob of `n` bytes that is not one repeated byte.
std::string SampleBlob(size_t n) {
  std::string blob(n, '\0');
  for (size_t i = 0; i < n; ++i) blob[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
  return blob;
}

TEST_F(PeMetadataTest, AFourMiBDiskHasNoKeptArea) {
  for (const uint64_t size :
       {kKept, kKept + kBlock}) {  // as cdpctl made them before; one block more
    std::filesystem::remove(path_);
    auto meta = OpenMeta(size);
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ((*meta)->kept_capacity(), 0u);
    EXPECT_EQ((*meta)->LoadKept().status().code(), StatusCode::kNotFound);
    Status s = (*meta)->SaveKept("x");
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(s.message(), HasSubstr("keeps at most 0 bytes from offset 4194304"));
    EXPECT_THAT(s.message(), HasSubstr("not 1; cdpctl target start grows a metadata disk "
                                       "smaller than 256 MiB while the target is stopped"));
    EXPECT_TRUE((*meta)->SaveKept("").ok());  // nothing to remove, nothing written
    EXPECT_EQ(ReadWholeFile(path_), std::string(size, '\0')) << size;  // not even the label
  }
}

TEST_F(PeMetadataTest, KeptBlobSurvivesAReopenNextToTheCursors) {
  const std::string blob = SampleBlob(3 * kMiB + 123);
  {
    auto meta = OpenMeta(kKept + 4 * kMiB, /*direct=*/true);
    if (!meta.ok() && meta.status().code() == StatusCode::kInvalidArgument &&
        std::getenv("CI") == nullptr) {
      GTEST_SKIP() << "O_DIRECT refused here: " << meta.status();
    }
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ((*meta)->kept_capacity(), 4 * kMiB - kBlock);
    EXPECT_EQ((*meta)->LoadKept().status().code(), StatusCode::kNotFound);
    ASSERT_TRUE((*meta)->Save("db01-sda", 8192, 7).ok());
    ASSERT_TRUE((*meta)->SaveKept(blob).ok());
    ASSERT_TRUE((*meta)->Save("db01-sda", 8192, 8).ok());
  }
  auto meta = OpenMeta(kKept + 4 * kMiB, /*direct=*/true);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ((*meta)->Get("db01-sda").applied_lsn, 8u);
  auto kept = (*meta)->LoadKept();
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_TRUE(*kept == blob);
  // A smaller blob replaces it; an empty one removes it.
  ASSERT_TRUE((*meta)->SaveKept("small").ok());
  EXPECT_EQ(*(*meta)->LoadKept(), "small");
  ASSERT_TRUE((*meta)->SaveKept("").ok());
  EXPECT_EQ((*meta)->LoadKept().status().code(), StatusCode::kNotFound);
  // Too large: refused, naming the sizes, and what was kept stays.
  ASSERT_TRUE((*meta)->SaveKept("kept").ok());
  Status big = (*meta)->SaveKept(SampleBlob(4 * kMiB));
  EXPECT_EQ(big.code(), StatusCode::kResourceExhausted) << big;
  EXPECT_THAT(big.message(), HasSubstr("keeps at most " + std::to_string(4 * kMiB - kBlock) +
                                       " bytes from offset 4194304"));
  EXPECT_EQ(*(*meta)->LoadKept(), "kept");
}

TEST_F(PeMetadataTest, ATornKeptSaveIsNeverReadAsTheBlob) {
  {
    auto meta = OpenMeta(kKept + kMiB);
    ASSERT_TRUE(meta.ok()) << meta.status();
    ASSERT_TRUE((*meta)->SaveKept(SampleBlob(10000)).ok());
  }
  // The crash came after the header was zeroed: nothing is kept.
  const std::string file = ReadWholeFile(path_);
  Overwrite(path_, kKept, std::string(kBlock, '\0'));
  {
    auto meta = OpenMeta(kKept + kMiB);
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ((*meta)->LoadKept().status().code(), StatusCode::kNotFound);
  }
  // The blob itself was damaged after its header: Corruption, not a wrong blob.
  Overwrite(path_, kKept, file.substr(kKept, kBlock));
  Overwrite(path_, kKept + kBlock + 5000, "X");
  {
    auto meta = OpenMeta(kKept + kMiB);
    ASSERT_TRUE(meta.ok()) << meta.status();
    auto kept = (*meta)->LoadKept();
    EXPECT_EQ(kept.status().code(), StatusCode::kCorruption);
    EXPECT_THAT(kept.status().message(),
                HasSubstr(": the kept blob (10000 bytes) does not match its CRC32C (a torn or "
                          "damaged save)"));
  }
  // A damaged header: Corruption naming it.
  Overwrite(path_, kKept + 3, "Z");
  auto meta = OpenMeta(kKept + kMiB);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_THAT(meta.value()->LoadKept().status().message(),
              HasSubstr("the kept area's header at offset 4194304 is damaged"));
}

}  // namespace
}  // namespace cdp::pe
