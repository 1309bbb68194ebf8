// Tests of RetentionWorker over a real JournalStore in a temporary directory: a fold makes its
// base image durable (the image's directory and the data directory synced) before the records it
// replaces are deleted, and a volume whose fold fails neither stops the others' folds nor hides
// its failure.
#include "cdp/journal/retention.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/atomic_file.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kVolumeSize = 1 << 20;

class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("retention_test") {}
};

// A FoldSync that records each directory it syncs, with what the journal said at that moment
// about the volume being folded, and fails while `fail` is set.
class RecordingFoldSync : public FoldSync {
 public:
  RecordingFoldSync(JournalStore* store, std::string volume)
      : store_(store), volume_(std::move(volume)) {}

  Status SyncDirectory(const std::string& dir) override {
    Call call;
    call.dir = dir;
    auto v = store_->GetVolume(volume_);
    call.base_lsn = v.ok() ? v->base_lsn : UINT64_MAX;
    std::vector<ChangeRecord> first;
    call.records_kept = store_->ReadRecords(volume_, 1, 1 << 20, 1, &first).ok() && !first.empty();
    calls.push_back(call);
    if (fail) return Status::IOError("cannot fsync directory " + dir + ": Input/output error");
    return cdp::SyncDirectory(dir);
  }

  struct Call {
    std::string dir;
    uint64_t base_lsn = 0;
    bool records_kept = false;
  };
  std::vector<Call> calls;
  bool fail = false;

 private:
  JournalStore* const store_;
  const std::string volume_;
};

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    data_dir_ = dir_.File("data");
    auto store = JournalStore::Open(data_dir_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // Registers `name` with records 1..6 (4 KiB each; `skip` is left out, as a damaged journal
  // would), the end of its initial sync at LSN 2 and a flush point at LSN 5, all captured long
  // ago, and a one-second retention window: a pass folds it up to LSN 5.
  void MakeVolume(const std::string& name, uint64_t skip = 0) {
    auto v = store_->RegisterVolume(name, kVolumeSize, 512);
    ASSERT_TRUE(v.ok()) << v.status();
    WriteGroup group;
    for (uint64_t lsn = 1; lsn <= 6; ++lsn) {
      if (lsn == skip) continue;
      auto payload = std::make_shared<const std::string>(4096, static_cast<char>('a' + lsn));
      ChangeRecord rec = MakeWriteRecord(lsn, 1'000'000'000 + lsn, lsn * 4096, payload);
      store_->AppendRecord(&group, *v, rec, *payload);
    }
    for (auto [lsn, origin, label] :
         {std::tuple{2, v1::POINT_SYNC_DONE, "full sync"}, std::tuple{5, v1::POINT_FLUSH, ""}}) {
      v1::ConsistencyPoint p;
      p.set_lsn(lsn);
      p.set_time_ns(1'000'000'000 + lsn);
      p.set_origin(origin);
      p.set_label(label);
      store_->AppendPoint(&group, *v, p);
    }
    ASSERT_TRUE(store_->Commit(&group).ok());
    ASSERT_TRUE(store_->SetRetention(name, 1, std::nullopt).ok());
  }

  uint64_t BaseLsn(const std::string& name) {
    auto v = store_->GetVolume(name);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? v->base_lsn : 0;
  }

  TempDir dir_;
  std::string data_dir_;
  std::unique_ptr<JournalStore> store_;
};

// Issue 15, item 3: the base image and its directory entries are synced while every record it
// replaces is still in the journal.
TEST_F(RetentionTest, AFoldSyncsTheImageDirectoriesBeforeDeletingRecords) {
  MakeVolume("db01");
  RecordingFoldSync sync(store_.get(), "db01");
  RetentionWorker worker(store_.get(), RetentionOptions{}, &sync);
  Status s = worker.RunOnce();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(BaseLsn("db01"), 5u);
  ASSERT_EQ(sync.calls.size(), 2u);
  EXPECT_EQ(sync.calls[0].dir, data_dir_ + "/base");
  EXPECT_EQ(sync.calls[1].dir, data_dir_);
  for (const auto& call : sync.calls) {
    EXPECT_EQ(call.base_lsn, 0u) << "synced " << call.dir << " after the fold was finished";
    EXPECT_TRUE(call.records_kept) << "synced " << call.dir << " after the records went";
  }
  EXPECT_TRUE(std::filesystem::exists(store_->BaseImagePath(1)));
}

// A sync that fails leaves the fold unfinished: nothing deleted, the failure reported, and the
// next pass (after the pause) finishes it.
TEST_F(RetentionTest, AFailedSyncDeletesNothing) {
  MakeVolume("db01");
  RecordingFoldSync sync(store_.get(), "db01");
  sync.fail = true;
  RetentionWorker worker(store_.get(), RetentionOptions{}, &sync);
  Status s = worker.RunOnce();
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s;
  EXPECT_EQ(BaseLsn("db01"), 0u);
  std::vector<ChangeRecord> records;
  ASSERT_TRUE(store_->ReadRecords("db01", 1, UINT64_MAX, 100, &records).ok());
  EXPECT_EQ(records.size(), 6u);
  EXPECT_THAT(worker.LastError("db01"),
              HasSubstr("retention: syncing the base image directory: cannot fsync directory"));

  sync.fail = false;
  EXPECT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 0u) << "retried before its pause";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  s = worker.RunOnce();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(BaseLsn("db01"), 5u);
  EXPECT_EQ(worker.LastError("db01"), "");
}

// Issue 15, item 4: one volume whose fold fails (a record is missing from its journal) does not
// stop retention for the others; its failure stays visible.
TEST_F(RetentionTest, OneBadVolumeDoesNotStopTheOthers) {
  MakeVolume("a-damaged", /*skip=*/3);  // listed first
  MakeVolume("b-healthy");
  RetentionWorker worker(store_.get(), RetentionOptions{});
  Status s = worker.RunOnce();
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s;
  EXPECT_EQ(BaseLsn("b-healthy"), 5u) << "the healthy volume was not folded";
  EXPECT_EQ(BaseLsn("a-damaged"), 0u);
  EXPECT_EQ(worker.LastError("a-damaged"),
            "Corruption: retention: volume a-damaged: LSN 3 is missing from the journal");
  EXPECT_EQ(worker.LastError("b-healthy"), "");
}

}  // namespace
}  // namespace cdp::journal
