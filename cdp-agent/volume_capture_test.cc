// Tests of VolumeCapture in sync mode against a real JournalServer (ipc:// in a temporary
// directory), over a real file: the waits a sync-mode write makes never block the sender thread
// (a journal-server restart while the buffer is full), and writes whose LSNs a journal loss
// hands out again fail instead of being acked by other records.
#include "cdp/agent/volume_capture.h"

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

Payload Bytes(size_t n, char fill) { return std::make_shared<const std::string>(n, fill); }

class SyncCaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    server_options_.data_dir = dir_.File("journal");
    server_options_.listen = "ipc://" + dir_.File("journal.sock");
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

}  // namespace
}  // namespace cdp::agent
