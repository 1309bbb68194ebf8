// Tests of the Replicator against a real JournalServer (ipc:// in a temporary directory) and a
// real image file: records are applied in LSN order in batches, the cursor moves only together
// with data that is already in the image, a restart resumes after the cursor (nothing before it
// is written again), a failed batch is retried from the durable cursor, the server hears the
// applied LSN, and a replica ahead of the journal or a cursor of another target stops the run
// with an error that says what to do. Also the sinks: target checks, and the pe sink against a
// pe-agent running in this process over files (no VM).
#include "cdp/replicator/replicator.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/core/transport.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/testing/running_server.h"
#include "cdp/pe/pe_agent.h"
#include "cdp/replicator/image_sink.h"
#include "cdp/replicator/replica_sink.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::replicator {
namespace {

namespace v1 = wire::v1;
using ::testing::HasSubstr;

constexpr int kWaitMs = 15000;  // generous: only reached when something is broken
constexpr uint64_t kVolumeSize = 1 << 20;
constexpr size_t kBlock = 4096;
constexpr uint64_t kBlocks = 8;  // record LSN writes block (LSN - 1) % kBlocks
constexpr char kVolume[] = "db01-sda";

class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("replicator_test") {}
};

// The block record `lsn` writes, and what it writes there.
uint64_t BlockOf(uint64_t lsn) { return (lsn - 1) % kBlocks; }
std::string DataOf(uint64_t lsn) {
  std::string data(kBlock, '\0');
  for (size_t i = 0; i < kBlock; ++i) data[i] = static_cast<char>(lsn * 37 + i);
  return data;
}

// One applied batch as a sink saw it.
struct Batch {
  uint64_t first = 0;
  uint64_t last = 0;
  uint64_t cursor_before = 0;  // the saved cursor when the batch arrived
  uint64_t cursor_after = 0;   // ... and once the real sink returned
  bool data_in_image = false;  // every block the batch wrote held its data at that moment
};

// Wraps the real image sink: records each batch with the cursor file before and after it and
// whether its data was in the image when the cursor moved; fails the batch numbered
// `fail_batch` (1-based, 0: none) before it reaches the real sink.
class WatchedSink : public ReplicaSink {
 public:
  WatchedSink(const SinkOptions& options, int fail_batch)
      : inner_(MakeReplicaSink(options)),
        cursor_(options.state_dir, options.volume, options.target),
        target_(options.target),
        fail_batch_(fail_batch) {}

  Result<uint64_t> Open(uint64_t volume_size, bool* permanent) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++opens_;
    return inner_->Open(volume_size, permanent);
  }

  Status ApplyDurably(const std::vector<ApplyItem>& items, bool* permanent) override {
    std::lock_guard<std::mutex> lock(mu_);
    Batch batch;
    batch.first = items.front().rec.lsn;
    batch.last = items.back().rec.lsn;
    batch.cursor_before = SavedCursor();
    if (++calls_ == fail_batch_) {
      *permanent = false;
      return Status::IOError("injected failure of batch " + std::to_string(calls_));
    }
    Status s = inner_->ApplyDurably(items, permanent);
    if (!s.ok()) return s;
    batch.cursor_after = SavedCursor();
    batch.data_in_image = true;
    for (const ApplyItem& item : items) {
      // A later record of the batch may have overwritten the block.
      if (item.rec.lsn + kBlocks <= batch.last) continue;
      batch.data_in_image &= ImageBlock(BlockOf(item.rec.lsn)) == item.payload;
    }
    batches_.push_back(batch);
    return Status::Ok();
  }

  std::string Describe() const override { return inner_->Describe(); }

  std::vector<Batch> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  int opens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return opens_;
  }

 private:
  uint64_t SavedCursor() const {
    auto c = cursor_.Load();
    return c.ok() ? *c : UINT64_MAX;
  }
  // Read through a descriptor of its own, as a reader after a crash would.
  std::string ImageBlock(uint64_t block) const {
    auto dev = OpenBlockDevice(target_, BlockDeviceOptions{});
    if (!dev.ok()) return "";
    std::string data(kBlock, '?');
    if (!(*dev)->ReadAt(block * kBlock, std::span<char>(data.data(), data.size())).ok()) return "";
    return data;
  }

  mutable std::mutex mu_;
  const std::unique_ptr<ReplicaSink> inner_;
  const ReplicaCursor cursor_;
  const std::string target_;
  const int fail_batch_;
  int calls_ = 0;
  int opens_ = 0;
  std::vector<Batch> batches_;
};

class ReplicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    server_options_ = journal::testing::ServerOptionsIn(dir_);
  }

  void TearDown() override { (void)StopReplicator(); }

  // Journals records from..to of kVolume (the server must be stopped: the journal is its).
  void Journal(uint64_t from, uint64_t to) {
    auto store = journal::JournalStore::Open(server_options_.data_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto v = (*store)->GetVolume(kVolume);
    if (!v.ok()) v = (*store)->RegisterVolume(kVolume, kVolumeSize, 512);
    ASSERT_TRUE(v.ok()) << v.status();
    journal::WriteGroup group;
    for (uint64_t lsn = from; lsn <= to; ++lsn) {
      auto payload = std::make_shared<const std::string>(DataOf(lsn));
      ChangeRecord rec = MakeWriteRecord(lsn, 1000 + lsn, BlockOf(lsn) * kBlock, payload);
      (*store)->AppendRecord(&group, *v, rec, *payload);
    }
    ASSERT_TRUE((*store)->Commit(&group).ok());
  }

  void StartServer() {
    Status s = server_.Start(server_options_);
    ASSERT_TRUE(s.ok()) << s;
  }
  void StopServer() { ASSERT_TRUE(server_.Stop().ok()); }

  SinkOptions Sink() const {
    SinkOptions o;
    o.volume = kVolume;
    o.target = dir_.File("replica.img");
    o.state_dir = dir_.File("state");
    return o;
  }

  // Two records per batch, so that every run has several.
  ReplicatorOptions Options() const {
    ReplicatorOptions o;
    o.server = server_options_.listen;
    o.volume = kVolume;
    o.target = Sink().target;
    o.state_dir = Sink().state_dir;
    o.max_batch_bytes = 2 * kBlock;
    o.wait_ms = 100;
    return o;
  }

  // Starts a replicator on its own thread, applying through a WatchedSink.
  WatchedSink* StartReplicator(int fail_batch = 0) {
    auto sink = std::make_unique<WatchedSink>(Sink(), fail_batch);
    WatchedSink* watched = sink.get();
    replicator_ = std::make_unique<Replicator>(Options(), std::move(sink));
    stop_ = false;
    run_ = std::async(std::launch::async, [this] { return replicator_->Run(&stop_); });
    return watched;
  }

  // Stops the replicator and returns what Run returned. The replicator (and the sink
  // StartReplicator returned) stays until the next StartReplicator.
  Status StopReplicator() {
    if (!run_.valid()) return Status::Ok();
    stop_ = true;
    return run_.get();
  }

  // Waits until Run returns by itself (an error retrying cannot fix).
  Status RunEnds() {
    if (run_.wait_for(std::chrono::milliseconds(kWaitMs)) != std::future_status::ready) {
      return Status::TimedOut("the replicator is still running");
    }
    return StopReplicator();
  }

  // The saved cursor (0 when none), polled until it reaches `lsn` or kWaitMs passed.
  uint64_t WaitForCursor(uint64_t lsn) {
    const ReplicaCursor cursor(Sink().state_dir, kVolume, Sink().target);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    uint64_t saved = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      auto c = cursor.Load();
      saved = c.ok() ? *c : 0;
      if (saved >= lsn) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return saved;
  }

  // The applied LSN the server shows in its status, polled until it reaches `lsn`.
  uint64_t WaitForReportedApplied(uint64_t lsn) {
    zmq::context_t ctx(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    uint64_t applied = 0;
    while (std::chrono::steady_clock::now() < deadline && applied < lsn) {
      auto sock = Socket::Connect(ctx, server_options_.listen);
      if (!sock.ok()) return 0;
      v1::Header h;
      h.mutable_status_request();
      if (!(*sock)->Send(h, {}, kWaitMs).ok()) return 0;
      auto reply = (*sock)->Recv(kWaitMs);
      if (!reply.ok()) return 0;
      for (const auto& v : reply->header.status_reply().volumes()) {
        if (v.name() == kVolume) applied = v.applied_lsn();
      }
      if (applied < lsn) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return applied;
  }

  // Block `block` of the replica image.
  std::string ImageBlock(uint64_t block) {
    return cdp::testing::TempDir::Read(Sink().target).substr(block * kBlock, kBlock);
  }

  TempDir dir_;
  journal::ServerOptions server_options_;
  journal::testing::RunningServer server_;
  std::unique_ptr<Replicator> replicator_;
  std::atomic<bool> stop_{false};
  std::future<Status> run_;
};

// Twelve records over eight blocks (LSN 9..12 overwrite blocks 0..3): the image ends with each
// block holding its last record, the batches follow each other in LSN order, the cursor moves
// only once the batch's data is in the image, and the server hears the applied LSN.
TEST_F(ReplicatorTest, AppliesInLsnOrderAndMovesTheCursorOnlyWithTheData) {
  Journal(1, 12);
  StartServer();
  WatchedSink* sink = StartReplicator();
  EXPECT_EQ(WaitForCursor(12), 12u);
  EXPECT_EQ(WaitForReportedApplied(12), 12u);
  Status s = StopReplicator();
  ASSERT_TRUE(s.ok()) << s;

  for (uint64_t block = 0; block < kBlocks; ++block) {
    const uint64_t last_lsn = block < 4 ? block + 9 : block + 1;
    EXPECT_EQ(ImageBlock(block), DataOf(last_lsn)) << "block " << block;
  }
  const std::vector<Batch> batches = sink->batches();
  ASSERT_GE(batches.size(), 6u) << "max_batch_bytes allows two records a batch";
  uint64_t next = 1;
  for (const Batch& b : batches) {
    EXPECT_EQ(b.first, next) << "batches out of LSN order";
    EXPECT_EQ(b.cursor_before, b.first - 1) << "cursor moved before batch " << b.first;
    EXPECT_EQ(b.cursor_after, b.last) << "batch " << b.first << ".." << b.last;
    EXPECT_TRUE(b.data_in_image) << "cursor at " << b.last << " before its data was in the image";
    next = b.last + 1;
  }
  EXPECT_EQ(next, 13u);
}

// A restarted replicator (and journal-server) resumes right after its cursor: it never writes a
// record at or before it again (the scribble over block 0 stays), and applies the new ones.
TEST_F(ReplicatorTest, ARestartResumesAfterTheCursor) {
  Journal(1, 4);
  StartServer();
  StartReplicator();
  ASSERT_EQ(WaitForCursor(4), 4u);
  ASSERT_TRUE(StopReplicator().ok());
  StopServer();

  {
    auto dev = OpenBlockDevice(Sink().target, BlockDeviceOptions{.writable = true});
    ASSERT_TRUE(dev.ok()) << dev.status();
    std::string scribble(kBlock, 'X');
    ASSERT_TRUE((*dev)->WriteAt(0, scribble).ok());
    ASSERT_TRUE((*dev)->Flush().ok());
  }
  Journal(5, 6);
  StartServer();
  WatchedSink* sink = StartReplicator();
  EXPECT_EQ(WaitForCursor(6), 6u);
  ASSERT_TRUE(StopReplicator().ok());

  const std::vector<Batch> batches = sink->batches();
  ASSERT_FALSE(batches.empty());
  EXPECT_EQ(batches.front().first, 5u);
  EXPECT_EQ(batches.front().cursor_before, 4u);
  EXPECT_EQ(ImageBlock(0), std::string(kBlock, 'X')) << "LSN 1 was applied again";
  for (uint64_t lsn = 2; lsn <= 6; ++lsn) {
    EXPECT_EQ(ImageBlock(BlockOf(lsn)), DataOf(lsn)) << "LSN " << lsn;
  }
}

// A batch that fails is not counted: the sink is opened again, its durable cursor read, and the
// same records applied from there.
TEST_F(ReplicatorTest, AFailedBatchIsRetriedFromTheDurableCursor) {
  Journal(1, 6);
  StartServer();
  WatchedSink* sink = StartReplicator(/*fail_batch=*/2);
  EXPECT_EQ(WaitForCursor(6), 6u);
  ASSERT_TRUE(StopReplicator().ok());

  EXPECT_EQ(sink->opens(), 2);
  const std::vector<Batch> batches = sink->batches();
  ASSERT_GE(batches.size(), 2u);
  EXPECT_EQ(batches[0].first, 1u);
  EXPECT_EQ(batches[1].first, batches[0].last + 1) << "the failed batch was not applied again";
  EXPECT_EQ(batches[1].cursor_before, batches[0].last);
  for (uint64_t lsn = 1; lsn <= 6; ++lsn) {
    EXPECT_EQ(ImageBlock(BlockOf(lsn)), DataOf(lsn)) << "LSN " << lsn;
  }
}

// A cursor past the journal's end means the journal was reset: the run stops and says what to do.
TEST_F(ReplicatorTest, AReplicaAheadOfTheJournalStopsTheRun) {
  Journal(1, 4);
  std::filesystem::create_directories(Sink().state_dir);
  ASSERT_TRUE(ReplicaCursor(Sink().state_dir, kVolume, Sink().target).Save(100).ok());
  StartServer();
  StartReplicator();
  Status s = RunEnds();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(s.message(),
            std::string("volume db01-sda: the replica has applied LSN 100 but the journal only "
                        "has 4; the journal was reset: start from an empty target (image ") +
                Sink().target + ") and remove its cursor");
}

// A cursor saved for another target is refused, naming both.
TEST_F(ReplicatorTest, ACursorOfAnotherTargetStopsTheRun) {
  Journal(1, 2);
  std::filesystem::create_directories(Sink().state_dir);
  ASSERT_TRUE(ReplicaCursor(Sink().state_dir, kVolume, dir_.File("other.img")).Save(2).ok());
  StartServer();
  StartReplicator();
  Status s = RunEnds();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(),
              HasSubstr("is for target " + dir_.File("other.img") + ", not " + Sink().target +
                        "; use another --state-dir or remove the cursor"));
}

TEST(ReplicaSinkTest, TargetsAreImagesOrPeAgentEndpoints) {
  EXPECT_TRUE(ValidateTarget("/var/lib/cdp/db01.img").ok());
  EXPECT_TRUE(ValidateTarget("pe:tcp://127.0.0.1:7800").ok());
  EXPECT_TRUE(IsPeTarget("pe:tcp://127.0.0.1:7800"));
  EXPECT_FALSE(IsPeTarget("/images/pe:1"));
  EXPECT_EQ(ValidateTarget("").message(), "--target is empty");
  Status s = ValidateTarget("pe:127.0.0.1:7800");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "--target 'pe:127.0.0.1:7800': a pe-agent target is pe:tcp://HOST:PORT (for example "
            "pe:tcp://127.0.0.1:7800)");
}

// An image smaller than the volume cannot be fixed by retrying: permanent, naming both sizes.
TEST(ReplicaSinkTest, AnImageSmallerThanTheVolumeIsPermanent) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  {
    auto dev = OpenBlockDevice(dir.File("small.img"),
                               BlockDeviceOptions{.writable = true, .create_size = 4096});
    ASSERT_TRUE(dev.ok()) << dev.status();
  }
  SinkOptions o;
  o.volume = kVolume;
  o.target = dir.File("small.img");
  o.state_dir = dir.path();
  auto sink = MakeReplicaSink(o);
  EXPECT_EQ(sink->Describe(), "image " + o.target);
  bool permanent = false;
  auto cursor = sink->Open(kVolumeSize, &permanent);
  ASSERT_FALSE(cursor.ok());
  EXPECT_TRUE(permanent);
  EXPECT_EQ(cursor.status().message(), "--target " + o.target +
                                           " has 4096 bytes but the volume has 1048576; grow it or "
                                           "point --target at a new file");
}

// Without a pe-agent listening, the pe sink is unavailable for now (retried), not permanent, and
// refuses a batch before it is open.
TEST(ReplicaSinkTest, AnAbsentPeAgentIsRetried) {
  SinkOptions o;
  o.volume = kVolume;
  o.target = "pe:tcp://127.0.0.1:1";  // nothing listens on port 1
  auto sink = MakeReplicaSink(o);
  EXPECT_EQ(sink->Describe(), "pe-agent tcp://127.0.0.1:1");
  bool permanent = true;
  Status apply = sink->ApplyDurably({}, &permanent);
  EXPECT_FALSE(permanent);
  EXPECT_EQ(apply.code(), StatusCode::kUnavailable);
  EXPECT_EQ(apply.message(), "not connected to pe-agent tcp://127.0.0.1:1");
  permanent = true;
  auto cursor = sink->Open(kVolumeSize, &permanent);
  ASSERT_FALSE(cursor.ok());
  EXPECT_FALSE(permanent) << cursor.status();
}

// The pe sink applies through a real pe-agent (in this process, its disks files): the data
// reaches the volume's disk, and the cursor lives in the target, so a new sink (a restarted
// replicator) opens at the LSN the last batch reached. A volume the agent does not have cannot
// be fixed by retrying.
TEST(ReplicaSinkTest, ThePeSinkKeepsItsCursorInTheTarget) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  for (const auto& [file, size] : {std::pair{"sda.img", kVolumeSize}, {"meta.img", kVolumeSize}}) {
    auto dev =
        OpenBlockDevice(dir.File(file), BlockDeviceOptions{.writable = true, .create_size = size});
    ASSERT_TRUE(dev.ok()) << dev.status();
  }
  pe::PeAgentOptions agent_options;
  agent_options.listen = "ipc://" + dir.File("pe.sock");
  agent_options.volumes = {{kVolume, kVolumeSize}};
  agent_options.disk_paths = {{kVolume, dir.File("sda.img")}};
  agent_options.meta_path = dir.File("meta.img");
  pe::PeAgent agent(agent_options);
  Status started = agent.Start();
  ASSERT_TRUE(started.ok()) << started;
  std::atomic<bool> stop{false};
  std::future<Status> run = std::async(std::launch::async, [&] { return agent.Run(&stop); });

  SinkOptions o;
  o.volume = kVolume;
  o.target = "pe:" + agent_options.listen;
  std::vector<std::shared_ptr<const std::string>> payloads;
  std::vector<ApplyItem> items;
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
    payloads.push_back(std::make_shared<const std::string>(DataOf(lsn)));
    ApplyItem item;
    item.rec = MakeWriteRecord(lsn, 1000 + lsn, BlockOf(lsn) * kBlock, payloads.back());
    item.payload = *payloads.back();
    items.push_back(item);
  }
  {
    auto sink = MakeReplicaSink(o);
    EXPECT_EQ(sink->Describe(), "pe-agent " + agent_options.listen);
    bool permanent = true;
    auto cursor = sink->Open(kVolumeSize, &permanent);
    ASSERT_TRUE(cursor.ok()) << cursor.status();
    EXPECT_EQ(*cursor, 0u);
    Status applied = sink->ApplyDurably(items, &permanent);
    ASSERT_TRUE(applied.ok()) << applied;
  }
  {
    auto sink = MakeReplicaSink(o);
    bool permanent = true;
    auto cursor = sink->Open(kVolumeSize, &permanent);
    ASSERT_TRUE(cursor.ok()) << cursor.status();
    EXPECT_EQ(*cursor, 3u);
  }
  const std::string disk = cdp::testing::TempDir::Read(dir.File("sda.img"));
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
    EXPECT_EQ(disk.substr(BlockOf(lsn) * kBlock, kBlock), DataOf(lsn)) << "LSN " << lsn;
  }

  SinkOptions other = o;
  other.volume = "db02-sdb";
  auto sink = MakeReplicaSink(other);
  bool permanent = false;
  auto cursor = sink->Open(kVolumeSize, &permanent);
  ASSERT_FALSE(cursor.ok());
  EXPECT_TRUE(permanent) << cursor.status();
  EXPECT_THAT(cursor.status().message(), HasSubstr("db02-sdb"));

  stop = true;
  Status ran = run.get();
  EXPECT_TRUE(ran.ok()) << ran;
}

}  // namespace
}  // namespace cdp::replicator
