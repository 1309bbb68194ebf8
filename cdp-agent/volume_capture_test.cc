// Tests of VolumeCapture in sync mode against a real JournalServer (ipc:// in a temporary
// directory), over a real file: the waits a sync-mode write makes never block the sender thread
// (a journal-server restart while the buffer is full), and writes whose LSNs a journal loss
// hands out again fail instead of being acked by other records.
#include "cdp/agent/volume_capture.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/server.h"
#include "cdp/journal/testing/running_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using ::testing::HasSubstr;

constexpr int kWaitMs = 15000;  // generous: only reached when something is broken
constexpr uint64_t kVolumeSize = 4 << 20;
constexpr char kVolume[] = "db01-sda";
constexpr size_t kWriteBytes = 48 << 10;

class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("volume_capture_test") {}
};

using cdp::journal::testing::RunningServer;

SharedBytes Bytes(size_t n, char fill) { return std::make_shared<const std::string>(n, fill); }

class SyncCaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    server_options_ = journal::testing::ServerOptionsIn(dir_);
    const std::string device = dir_.File("device.img");
    BlockDeviceOptions o;
    o.writable = true;
    o.create_size = kVolumeSize;
    auto dev = OpenBlockDevice(device, o);
    auto read_dev = OpenBlockDevice(device, o);
    ASSERT_TRUE(dev.ok() && read_dev.ok());
    dirty_ = std::make_unique<DirtyBitmap>(kVolumeSize);

    SenderOptions so;
    so.server = server_options_.listen;
    so.volume = kVolume;
    so.volume_size = kVolumeSize;
    so.identity = "volume-capture-test";
    so.buffer_bytes = 64 << 10;  // one 48 KiB write fits, a second waits for room
    so.report_interval_ms = 50;
    so.silence_timeout_ms = 1000;
    so.instance_id = 42;
    sender_ = std::make_unique<Sender>(
        so, [this](uint64_t durable) { capture_->OnHandshake(durable); }, [](v1::AgentReport*) {});
    sender_->SetJournalLossCallback(
        [this](uint64_t durable) { capture_->RebaseAfterJournalLoss(durable); });
    capture_ = std::make_unique<VolumeCapture>(kVolume, std::move(*dev), std::move(*read_dev),
                                               sender_.get(), dirty_.get(), AckMode::kSync);
    sender_->Start();
  }

  void TearDown() override {
    if (capture_) capture_->BeginShutdown(0);
    if (sender_) sender_->Stop(0);
    ASSERT_TRUE(server_.Stop().ok());
  }

  // A sync-mode write of kWriteBytes of `fill` at `offset`, on a thread of its own.
  std::future<Status> WriteAsync(uint64_t offset, char fill) {
    return std::async(std::launch::async, [this, offset, fill] {
      return capture_->Write(offset, Bytes(kWriteBytes, fill), false);
    });
  }

  // Waits for a write started with WriteAsync; a write still waiting after kWaitMs is a hang.
  static Status Finish(std::future<Status>& write) {
    if (write.wait_for(std::chrono::milliseconds(kWaitMs)) != std::future_status::ready) {
      return Status::TimedOut("the write never completed");
    }
    return write.get();
  }

  // Waits until the capture has handed out `lsn` (the write has been queued).
  void WaitCaptured(uint64_t lsn) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    while (capture_->captured_lsn() < lsn && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_GE(capture_->captured_lsn(), lsn);
  }

  TempDir dir_;
  journal::ServerOptions server_options_;
  RunningServer server_;
  std::unique_ptr<DirtyBitmap> dirty_;
  std::unique_ptr<Sender> sender_;
  std::unique_ptr<VolumeCapture> capture_;
};

// Issue 15, item 1: a sync-mode writer waiting for buffer space used to hold the capture lock,
// which the sender thread needs for OnHandshake after a reconnect; only the sender frees space,
// so a journal-server restart during a full buffer hung every write for good.
TEST_F(SyncCaptureTest, AJournalRestartWhileTheBufferIsFullDoesNotHangWrites) {
  ASSERT_TRUE(server_.Start(server_options_).ok());
  auto first = WriteAsync(0, 'a');
  ASSERT_TRUE(Finish(first).ok());

  ASSERT_TRUE(server_.Stop().ok());
  auto queued = WriteAsync(1 << 20, 'b');  // fits: waits to become durable
  WaitCaptured(2);
  auto waiting = WriteAsync(2 << 20, 'c');  // does not fit: waits for room
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(capture_->captured_lsn(), 2u) << "the third write cannot be queued yet";

  ASSERT_TRUE(server_.Start(server_options_).ok());  // the sender reconnects: OnHandshake
  Status s = Finish(queued);
  EXPECT_TRUE(s.ok()) << s;
  s = Finish(waiting);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(sender_->durable_lsn(), 3u);
}

// Issue 15, item 5: after the journal lost records it had acked, the LSN sequence continues from
// its durable LSN, so a sync-mode write still waiting for its LSN used to be acked by whatever
// new record got that LSN. It fails now, and later writes are acked for themselves.
TEST_F(SyncCaptureTest, WritesWaitingWhenTheJournalIsLostFail) {
  ASSERT_TRUE(server_.Start(server_options_).ok());
  auto first = WriteAsync(0, 'a');
  ASSERT_TRUE(Finish(first).ok());  // LSN 1, durable

  ASSERT_TRUE(server_.Stop().ok());
  auto lost = WriteAsync(1 << 20, 'b');  // LSN 2, never durable on the old journal
  WaitCaptured(2);
  std::filesystem::remove_all(server_options_.data_dir);  // the journal is reset
  ASSERT_TRUE(server_.Start(server_options_).ok());

  Status s = Finish(lost);
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s;
  EXPECT_THAT(s.message(), HasSubstr("LSN 2 was dropped: the journal-server lost records it had "
                                     "acknowledged"));
  // The new sequence hands out LSN 1 and 2 again: to these writes, which are durable.
  auto again1 = WriteAsync(2 << 20, 'c');
  s = Finish(again1);
  EXPECT_TRUE(s.ok()) << s;
  auto again2 = WriteAsync(3 << 20, 'd');
  s = Finish(again2);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(capture_->captured_lsn(), 2u);
  EXPECT_TRUE(dirty_->dirty_bytes() > 0) << "the whole device is resynced after a journal loss";
}

// Issue 15, item 12: a labelled point (a checkpoint) where a point already sits is sent anyway,
// and the journal adds its label to that point; an unlabelled one there is not made again.
TEST_F(SyncCaptureTest, ALabelledPointAtAnExistingPointKeepsItsLabel) {
  ASSERT_TRUE(server_.Start(server_options_).ok());
  auto first = WriteAsync(0, 'a');
  ASSERT_TRUE(Finish(first).ok());
  EXPECT_EQ(capture_->AddPoint(v1::POINT_FREEZE, ""), 1u);
  EXPECT_EQ(capture_->AddPoint(v1::POINT_FREEZE, ""), 0u) << "a second unlabelled point";
  EXPECT_EQ(capture_->AddPoint(v1::POINT_FREEZE, "before deploy"), 1u);
  auto op = capture_->AddOperatorPoint("and after");
  ASSERT_TRUE(op.ok()) << op.status();
  EXPECT_EQ(*op, 1u);
  ASSERT_TRUE(sender_->Stop(kWaitMs).empty());
  ASSERT_TRUE(server_.Stop().ok());
  auto store = journal::JournalStore::Open(server_options_.data_dir);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<v1::ConsistencyPoint> points;
  ASSERT_TRUE((*store)->ReadPoints(kVolume, 1, 1, &points).ok());
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].origin(), v1::POINT_FREEZE);
  EXPECT_EQ(points[0].label(), "");
  EXPECT_THAT(std::vector<std::string>(points[0].operator_labels().begin(),
                                       points[0].operator_labels().end()),
              ::testing::ElementsAre("before deploy", "and after"));
}

// Issue 15 review: an agent refused at its first handshake (another agent writes the volume)
// never learns its LSN base; its sync-mode writes used to wait for it forever. They fail now,
// unapplied.
TEST_F(SyncCaptureTest, AnAgentFencedAtItsFirstHandshakeFailsSyncWrites) {
  {
    auto store = journal::JournalStore::Open(server_options_.data_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->RegisterVolume(kVolume, kVolumeSize, 512).ok());
    ASSERT_TRUE((*store)->GrantWriter(kVolume, 5, "the-other-agent", 99, 4).ok());
    ASSERT_TRUE((*store)->ConfirmWriter(kVolume).ok());
  }
  ASSERT_TRUE(server_.Start(server_options_).ok());
  auto write = WriteAsync(0, 'a');
  Status s = Finish(write);
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s;
  EXPECT_THAT(s.message(), HasSubstr("this agent is fenced"));
  EXPECT_TRUE(sender_->fenced());
  EXPECT_EQ(capture_->captured_lsn(), 0u);
}

// Issue 15 review: in sync mode the sync engine's regions take their room in turn with the
// clients' writes; while writers kept a reservation waiting, CaptureRegion used to find no room
// again and again, and a full sync under a steady sync load never ended.
TEST_F(SyncCaptureTest, RegionsAreQueuedInTurnUnderASteadySyncLoad) {
  ASSERT_TRUE(server_.Start(server_options_).ok());
  auto first = WriteAsync(0, 'a');
  ASSERT_TRUE(Finish(first).ok());
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; !stop; ++i) {
        Status s = capture_->Write((uint64_t(w) << 20) + (i % 8) * kWriteBytes,
                                   Bytes(kWriteBytes, static_cast<char>('b' + w)), false);
        if (!s.ok()) return;
      }
    });
  }
  int queued = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = capture_->CaptureRegion(3 << 20, 32 << 10, false);
    ASSERT_TRUE(r.ok()) << r.status();
    if (*r == VolumeCapture::RegionResult::kQueued) ++queued;
  }
  stop = true;
  for (auto& t : writers) t.join();
  EXPECT_EQ(queued, 20) << "regions found no room while sync writes kept the buffer busy";
}

}  // namespace
}  // namespace cdp::agent
