// Tests of RetentionWorker over a real JournalStore in a temporary directory: where a fold stops
// (the newest restorable point outside the window, never past the replica's applied LSN or a
// pinned image, earlier under a size cap, and an unfinished fold first), what the base image and
// the journal hold after it, that a fold makes its base image durable (the image's directory and
// the data directory synced) before the records it replaces are deleted, and that a volume whose
// fold fails neither stops the others' folds nor hides its failure, and is retried after a
// pause that doubles while the same error repeats.
#include "cdp/journal/retention.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/atomic_file.h"
#include "cdp/core/block_device.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/core/time_text.h"
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

  uint64_t BaseLsn(const std::string& name) { return Volume(name).base_lsn; }

  VolumeInfo Volume(const std::string& name) {
    auto v = store_->GetVolume(name);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : VolumeInfo{};
  }

  // Adds a flush point at `lsn` captured `time_ns`.
  void AddPoint(const std::string& name, uint64_t lsn, uint64_t time_ns) {
    auto v = store_->GetVolume(name);
    ASSERT_TRUE(v.ok()) << v.status();
    WriteGroup group;
    v1::ConsistencyPoint p;
    p.set_lsn(lsn);
    p.set_time_ns(time_ns);
    p.set_origin(v1::POINT_FLUSH);
    store_->AppendPoint(&group, *v, p);
    ASSERT_TRUE(store_->Commit(&group).ok());
  }

  // The LSNs of the records `name` still keeps.
  std::vector<uint64_t> KeptLsns(const std::string& name) {
    std::vector<ChangeRecord> records;
    Status read = store_->ReadRecords(name, BaseLsn(name) + 1, UINT64_MAX, 100, &records);
    EXPECT_TRUE(read.ok()) << read;
    std::vector<uint64_t> lsns;
    for (const ChangeRecord& r : records) lsns.push_back(r.lsn);
    return lsns;
  }

  // The 4 KiB block of the base image of `name` that record `lsn` of MakeVolume wrote.
  std::string BaseImageBlock(const std::string& name, uint64_t lsn) {
    auto dev = OpenBlockDevice(store_->BaseImagePath(Volume(name).id), BlockDeviceOptions{});
    EXPECT_TRUE(dev.ok()) << dev.status();
    if (!dev.ok()) return "";
    std::string block(4096, '?');
    Status read = (*dev)->ReadAt(lsn * 4096, std::span<char>(block.data(), block.size()));
    EXPECT_TRUE(read.ok()) << read;
    return block;
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

// A window fold stops at the newest restorable point older than the window (not at the newest
// record, nor at a point inside the window): the base image then holds exactly that point's
// state, and only the records after it stay in the journal.
TEST_F(RetentionTest, AWindowFoldStopsAtTheNewestPointOutsideTheWindow) {
  MakeVolume("db01");
  AddPoint("db01", 6, NowNanos());  // inside the one-second window
  RetentionWorker worker(store_.get(), RetentionOptions{});
  Status s = worker.RunOnce();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(BaseLsn("db01"), 5u);
  EXPECT_EQ(KeptLsns("db01"), std::vector<uint64_t>{6});
  EXPECT_EQ(Volume("db01").journal_bytes, 4096 + kRecordOverhead);
  EXPECT_EQ(Volume("db01").early_folds, 0u);
  for (uint64_t lsn = 1; lsn <= 5; ++lsn) {
    EXPECT_EQ(BaseImageBlock("db01", lsn), std::string(4096, static_cast<char>('a' + lsn)))
        << "LSN " << lsn;
  }
  EXPECT_EQ(BaseImageBlock("db01", 6), std::string(4096, '\0')) << "LSN 6 folded";
  EXPECT_EQ(worker.HistoryStart("db01"), 5u);

  // Nothing more is old enough: a second pass folds nothing.
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 5u);
}

// Without a window or a cap nothing is folded, however old the history is.
TEST_F(RetentionTest, KeepEverythingFoldsNothing) {
  MakeVolume("db01");
  ASSERT_TRUE(store_->SetRetention("db01", 0, std::nullopt).ok());
  RetentionWorker worker(store_.get(), RetentionOptions{});
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 0u);
  EXPECT_EQ(KeptLsns("db01"), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(std::filesystem::exists(store_->BaseImagePath(Volume("db01").id)));
}

// The replica still needs the records it has not applied: a fold stops at the newest point at
// or before its applied LSN, and goes on once the replica has caught up.
TEST_F(RetentionTest, AFoldNeverPassesTheReplicasAppliedLsn) {
  MakeVolume("db01");
  ASSERT_TRUE(store_->SetApplied("db01", 4).ok());
  RetentionWorker worker(store_.get(), RetentionOptions{});
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 2u);
  EXPECT_EQ(KeptLsns("db01"), (std::vector<uint64_t>{3, 4, 5, 6}));

  ASSERT_TRUE(store_->SetApplied("db01", 6).ok());
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 5u);
}

// An image a restore or an export has open pins its LSN: a fold stops at or before it, a pin
// below the history's start is refused with the LSN history starts at, and once unpinned the
// fold goes on.
TEST_F(RetentionTest, APinnedImageHoldsTheFoldBack) {
  MakeVolume("db01");
  RetentionWorker worker(store_.get(), RetentionOptions{});
  auto pin = worker.Pin("db01", 3);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 2u);

  auto too_old = worker.Pin("db01", 1);
  ASSERT_FALSE(too_old.ok());
  EXPECT_EQ(too_old.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(too_old.status().message(),
            "volume db01: LSN 1 has just been folded into the base image by retention (history "
            "now starts at LSN 2)");

  worker.Unpin(*pin);
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 5u);
}

// Over its size cap a volume is folded early, inside its window, to the LSN that brings it under
// 90 % of the cap; the early fold is counted with its LSN.
TEST_F(RetentionTest, ASizeCapFoldsEarlyAndCountsIt) {
  MakeVolume("db01");
  // Six records of 4096 + 64 bytes: 24960. 90 % of 10000 is 9000: freeing 15960 bytes takes
  // the first four records.
  ASSERT_TRUE(store_->SetRetention("db01", 0, 10000).ok());
  ASSERT_EQ(Volume("db01").journal_bytes, 6 * (4096 + kRecordOverhead));
  RetentionWorker worker(store_.get(), RetentionOptions{});
  ASSERT_TRUE(worker.RunOnce().ok());
  const VolumeInfo v = Volume("db01");
  EXPECT_EQ(v.base_lsn, 4u);
  EXPECT_EQ(v.journal_bytes, 2 * (4096 + kRecordOverhead));
  EXPECT_EQ(v.early_folds, 1u);
  EXPECT_EQ(v.early_fold_lsn, 4u);
  EXPECT_EQ(KeptLsns("db01"), (std::vector<uint64_t>{5, 6}));

  // Under the cap now: the next pass folds nothing more.
  ASSERT_TRUE(worker.RunOnce().ok());
  EXPECT_EQ(BaseLsn("db01"), 4u);
  EXPECT_EQ(Volume("db01").early_folds, 1u);
}

// A fold an earlier run began (its target recorded, the base LSN not yet moved) is finished at
// the next pass, even when the volume's settings no longer ask for it.
TEST_F(RetentionTest, AnUnfinishedFoldIsFinishedFirst) {
  MakeVolume("db01");
  ASSERT_TRUE(store_->BeginFold("db01", 3).ok());
  ASSERT_TRUE(store_->SetRetention("db01", 0, std::nullopt).ok());
  RetentionWorker worker(store_.get(), RetentionOptions{});
  EXPECT_EQ(worker.HistoryStart("db01"), 3u);
  ASSERT_TRUE(worker.RunOnce().ok());
  const VolumeInfo v = Volume("db01");
  EXPECT_EQ(v.base_lsn, 3u);
  EXPECT_EQ(KeptLsns("db01"), (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_EQ(BaseImageBlock("db01", 3), std::string(4096, 'd'));
}

// While the same error repeats, the pause before the next try doubles (1 s, then 2 s); the error
// stays reported until a fold works again.
TEST_F(RetentionTest, TheRetryPauseDoublesWhileTheSameErrorRepeats) {
  MakeVolume("db01");
  RecordingFoldSync sync(store_.get(), "db01");
  sync.fail = true;
  RetentionWorker failing(store_.get(), RetentionOptions{}, &sync);
  EXPECT_EQ(failing.RunOnce().code(), StatusCode::kIOError);
  ASSERT_EQ(sync.calls.size(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ(failing.RunOnce().code(), StatusCode::kIOError) << "not retried after 1 s";
  ASSERT_EQ(sync.calls.size(), 2u);
  const std::string error = failing.LastError("db01");
  EXPECT_THAT(error, HasSubstr("retention: syncing the base image directory"));

  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_TRUE(failing.RunOnce().ok());
  EXPECT_EQ(sync.calls.size(), 2u) << "retried after 1 s although the pause is now 2 s";
  EXPECT_EQ(failing.LastError("db01"), error);

  sync.fail = false;
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  Status s = failing.RunOnce();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(BaseLsn("db01"), 5u);
  EXPECT_EQ(failing.LastError("db01"), "");
}

}  // namespace
}  // namespace cdp::journal
