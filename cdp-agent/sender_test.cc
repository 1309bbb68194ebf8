// Tests of the agent's Sender against a real JournalServer (ipc:// in a temporary directory):
// records become durable with their exact bytes, the buffer cap holds, an absent server means
// TimedOut and a later server is reconnected to, and Stop hands back what is not durable.
#include "cdp/agent/sender.h"

#include <stdlib.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/testing/eventually.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/core/transport.h"
#include "cdp/journal/control_client.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/server.h"
#include "cdp/journal/testing/running_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using cdp::testing::Eventually;
using ::testing::HasSubstr;

constexpr int kWaitMs = 10000;  // generous: only reached when something is broken
constexpr uint64_t kVolumeSize = 4 << 20;
constexpr char kVolume[] = "db01-sda";

// Every test file names its own temp dirs.
class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("sender_test") {}
};

using cdp::journal::testing::RunningServer;

// Record `lsn` of the tests: payload sizes cycle through 512 B .. 8 KiB.
ChangeRecord SampleRecord(uint64_t lsn) {
  const size_t size = size_t{512} << (lsn % 5);
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(lsn * 31 + i * 7 + (i >> 9));
  return MakeWriteRecord(lsn, 1000 + lsn, (lsn % 256) * 8192,
                         std::make_shared<const std::string>(std::move(data)));
}

class SenderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    server_options_ = journal::testing::ServerOptionsIn(dir_);
  }

  void StartServer() { ASSERT_TRUE(server_.Start(server_options_).ok()); }
  void StopServer() { ASSERT_TRUE(server_.Stop().ok()); }

  SenderOptions Options() const {
    SenderOptions o;
    o.server = server_options_.listen;
    o.volume = kVolume;
    o.volume_size = kVolumeSize;
    o.identity = "sender-test";
    o.report_interval_ms = 50;
    o.silence_timeout_ms = 500;
    return o;
  }

  // Options() for a test that counts the sender's sessions: on a loaded machine the server may
  // not answer for longer than 500 ms, and the reconnect after such a silence is a handshake the
  // test did not ask for.
  SenderOptions OneSessionOptions() const {
    SenderOptions o = Options();
    o.silence_timeout_ms = kWaitMs;
    return o;
  }

  // A started sender whose handshakes are recorded in handshakes() and its reports in
  // reports(identity); `on_checkpoint`, when set, is its checkpoint callback.
  std::unique_ptr<Sender> StartSender(
      SenderOptions options,
      std::function<Result<uint64_t>(const std::string&)> on_checkpoint = nullptr,
      std::function<v1::SourceReply(const v1::SourceRequest&)> on_source = nullptr) {
    auto reporter = std::make_shared<std::atomic<const Sender*>>(nullptr);
    const std::string identity = options.identity;
    auto sender = std::make_unique<Sender>(
        std::move(options),
        [this](uint64_t durable) {
          std::lock_guard<std::mutex> lock(mu_);
          handshakes_.push_back(durable);
        },
        [this, reporter, identity](v1::AgentReport* report) {
          report->set_ack_mode("async");
          std::lock_guard<std::mutex> lock(mu_);
          Reports& reports = reports_[identity];
          ++reports.built;
          if (const Sender* s = reporter->load()) reports.last_durable = s->durable_lsn();
        });
    *reporter = sender.get();
    if (on_checkpoint) sender->SetCheckpointCallback(std::move(on_checkpoint));
    if (on_source) sender->SetSourceCallback(std::move(on_source));
    sender->Start();
    return sender;
  }

  std::vector<uint64_t> handshakes() {
    std::lock_guard<std::mutex> lock(mu_);
    return handshakes_;
  }

  // The AgentReports a sender has built (each is sent right after), by its identity.
  struct Reports {
    int built = 0;
    uint64_t last_durable = 0;  // the sender's durable LSN when it built the last one
  };
  Reports reports(const std::string& identity) {
    std::lock_guard<std::mutex> lock(mu_);
    return reports_[identity];
  }

  // With the server stopped: the journal holds exactly records 1..last, byte for byte.
  void ExpectJournaled(uint64_t last) {
    auto store = journal::JournalStore::Open(server_options_.data_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<ChangeRecord> got;
    ASSERT_TRUE((*store)->ReadRecords(kVolume, 1, UINT64_MAX, 100000, &got).ok());
    ASSERT_EQ(got.size(), last);
    for (uint64_t lsn = 1; lsn <= last; ++lsn) {
      const ChangeRecord want = SampleRecord(lsn);
      const ChangeRecord& rec = got[lsn - 1];
      ASSERT_EQ(rec.lsn, lsn);
      EXPECT_EQ(rec.offset, want.offset);
      EXPECT_EQ(rec.time_ns, want.time_ns);
      EXPECT_EQ(rec.crc32c, want.crc32c);
      ASSERT_NE(rec.payload, nullptr);
      EXPECT_TRUE(*rec.payload == *want.payload) << "payload of LSN " << lsn << " differs";
    }
  }

  TempDir dir_;
  journal::ServerOptions server_options_;
  RunningServer server_;
  std::mutex mu_;
  std::vector<uint64_t> handshakes_;        // GUARDED_BY(mu_)
  std::map<std::string, Reports> reports_;  // GUARDED_BY(mu_)
};

TEST_F(SenderTest, EnqueuedRecordsBecomeDurableWithTheirBytes) {
  StartServer();
  auto sender = StartSender(OneSessionOptions());
  for (uint64_t lsn = 1; lsn <= 100; ++lsn) {
    ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn))) << "LSN " << lsn;
  }
  v1::ConsistencyPoint point;
  point.set_lsn(50);
  point.set_origin(v1::POINT_FLUSH);
  sender->AddPoint(point);

  Status s = sender->WaitDurable(100, kWaitMs);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(sender->durable_lsn(), 100u);
  EXPECT_EQ(sender->pending_records(), 0u);
  EXPECT_EQ(sender->pending_bytes(), 0u);
  EXPECT_TRUE(sender->connected());
  EXPECT_EQ(handshakes(), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  EXPECT_TRUE(sender->stopped());

  StopServer();
  ExpectJournaled(100);
  auto store = journal::JournalStore::Open(server_options_.data_dir);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<v1::ConsistencyPoint> points;
  ASSERT_TRUE((*store)->ReadPoints(kVolume, 1, 100, &points).ok());
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].lsn(), 50u);
}

// More records than one batch and one window hold.
TEST_F(SenderTest, ManySmallBatchesAllBecomeDurable) {
  StartServer();
  SenderOptions options = Options();
  options.max_batch_records = 7;
  options.max_batch_bytes = 16 * 1024;
  options.window_bytes = 40 * 1024;
  auto sender = StartSender(options);
  for (uint64_t lsn = 1; lsn <= 300; ++lsn) {
    ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn))) << "LSN " << lsn;
  }
  Status s = sender->WaitDurable(300, kWaitMs);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  StopServer();
  ExpectJournaled(300);
}

TEST_F(SenderTest, TryEnqueueRefusesRecordsPastTheBufferCap) {
  SenderOptions options = Options();  // nobody listens on this endpoint
  options.buffer_bytes = 1000;
  auto sender = StartSender(options);
  auto record = [](uint64_t lsn) {
    return MakeWriteRecord(lsn, lsn, lsn * 512,
                           std::make_shared<const std::string>(256, static_cast<char>(lsn)));
  };
  ASSERT_EQ(Sender::Charge(record(1)), 256u + 64u);
  EXPECT_TRUE(sender->TryEnqueue(record(1)));
  EXPECT_TRUE(sender->TryEnqueue(record(2)));
  EXPECT_TRUE(sender->TryEnqueue(record(3)));  // 960 of 1000 bytes
  EXPECT_FALSE(sender->TryEnqueue(record(4)));
  ChangeRecord discard;
  discard.lsn = 4;
  discard.length = 4096;
  discard.kind = RecordKind::kDiscard;
  EXPECT_FALSE(sender->TryEnqueue(discard)) << "64 bytes of overhead do not fit either";
  EXPECT_EQ(sender->pending_records(), 3u);
  EXPECT_EQ(sender->pending_bytes(), 3u * 256);
  EXPECT_FALSE(sender->WaitForSpace(Sender::Charge(record(4)), 20));
  EXPECT_TRUE(sender->WaitForSpace(40, 0));
  EXPECT_FALSE(sender->connected());

  const std::vector<ChangeRecord> left = sender->Stop(0);
  ASSERT_EQ(left.size(), 3u);
  EXPECT_FALSE(sender->TryEnqueue(record(4))) << "a stopped sender accepts nothing";
}

TEST_F(SenderTest, WaitDurableTimesOutWithoutAServerThenTheSenderReconnects) {
  auto sender = StartSender(OneSessionOptions());
  for (uint64_t lsn = 1; lsn <= 5; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  Status s = sender->WaitDurable(5, 200);
  EXPECT_EQ(s.code(), StatusCode::kTimedOut);
  EXPECT_THAT(s.message(), HasSubstr("volume db01-sda: LSN 5 not durable"));
  EXPECT_EQ(sender->durable_lsn(), 0u);
  EXPECT_EQ(sender->pending_records(), 5u);

  StartServer();
  s = sender->WaitDurable(5, kWaitMs);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(sender->pending_records(), 0u);
  EXPECT_EQ(handshakes(), (std::vector<uint64_t>{0}));
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  StopServer();
  ExpectJournaled(5);
}

TEST_F(SenderTest, ServerRestartIsReconnectedAndNothingIsLost) {
  StartServer();
  auto sender = StartSender(Options());
  for (uint64_t lsn = 1; lsn <= 10; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(sender->WaitDurable(10, kWaitMs).ok());

  StopServer();
  // Handshakes so far. The next one (with the restarted server, or a reconnect after a silence
  // that a loaded machine may add) comes after LSN 10 is durable and before LSN 11 can be.
  const size_t before_restart = handshakes().size();
  for (uint64_t lsn = 11; lsn <= 20; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  EXPECT_EQ(sender->WaitDurable(20, 100).code(), StatusCode::kTimedOut);

  StartServer();
  Status s = sender->WaitDurable(20, kWaitMs);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<uint64_t> seen = handshakes();
  ASSERT_GT(seen.size(), before_restart);
  EXPECT_EQ(seen.front(), 0u);
  EXPECT_EQ(seen[before_restart], 10u) << "the restarted server reports what it kept";
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  StopServer();
  ExpectJournaled(20);
}

TEST_F(SenderTest, StopReturnsTheRecordsThatAreNotDurable) {
  auto sender = StartSender(Options());  // nobody listens
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  const std::vector<ChangeRecord> left = sender->Stop(100);
  ASSERT_EQ(left.size(), 3u);
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
    const ChangeRecord want = SampleRecord(lsn);
    EXPECT_EQ(left[lsn - 1].lsn, lsn);
    EXPECT_EQ(left[lsn - 1].offset, want.offset);
    EXPECT_EQ(left[lsn - 1].length, want.length);
    ASSERT_NE(left[lsn - 1].payload, nullptr);
    EXPECT_TRUE(*left[lsn - 1].payload == *want.payload);
  }
  EXPECT_TRUE(sender->stopped());
  EXPECT_EQ(sender->pending_records(), 0u);
  EXPECT_TRUE(sender->Stop(100).empty()) << "Stop is idempotent";

  Status s = sender->WaitDurable(3, kWaitMs);
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("LSN 3"));
}

TEST_F(SenderTest, StopDrainsQueuedRecordsWhenTheServerIsThere) {
  StartServer();
  auto sender = StartSender(Options());
  for (uint64_t lsn = 1; lsn <= 20; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  EXPECT_EQ(sender->durable_lsn(), 20u);
  StopServer();
  ExpectJournaled(20);
}

// A restarted agent whose records the journal already has: the handshake trims them.
TEST_F(SenderTest, RecordsTheServerAlreadyHasAreDroppedAtHandshake) {
  StartServer();
  {
    auto first = StartSender(Options());
    for (uint64_t lsn = 1; lsn <= 4; ++lsn) ASSERT_TRUE(first->TryEnqueue(SampleRecord(lsn)));
    ASSERT_TRUE(first->WaitDurable(4, kWaitMs).ok());
    EXPECT_TRUE(first->Stop(kWaitMs).empty());
  }
  SenderOptions restarted = Options();
  restarted.writer_epoch = 1;  // what the first run's state dir kept
  auto second = StartSender(restarted);
  for (uint64_t lsn = 3; lsn <= 6; ++lsn) ASSERT_TRUE(second->TryEnqueue(SampleRecord(lsn)));
  Status s = second->WaitDurable(6, kWaitMs);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(second->Stop(kWaitMs).empty());
  StopServer();
  ExpectJournaled(6);
}

// Sync-mode writers reserve buffer space in arrival order, without holding any lock the sender
// thread needs; while one waits, TryEnqueue (async writes, the resync) leaves the room to it.
TEST_F(SenderTest, ReservationsWaitForRoomInArrivalOrder) {
  SenderOptions o = Options();
  o.buffer_bytes = 10000;
  auto sender = StartSender(o);  // nobody listens: nothing is freed until the server comes
  ASSERT_TRUE(sender->TryEnqueue(
      MakeWriteRecord(1, 1001, 0, std::make_shared<const std::string>(8192, 'x'))));
  // The big one needs nearly the whole buffer, so the small one cannot be granted beside it:
  // whichever is granted first counts itself in `order` before its reservation is released at
  // the end of its thread, so `order` is the order of the grants, not of the threads' wake-ups.
  constexpr uint64_t kBig = 9950, kSmall = 100;
  static_assert(kBig + kSmall > 10000 && 8192 + Sender::kRecordOverhead + kSmall <= 10000);
  // Reserve asks give_up once it has its place in line and again before each later check for
  // room: counting the calls shows where a waiter is, without sleeping. They give up only when
  // the test is long over, so that a broken run ends.
  const auto test_over = std::chrono::steady_clock::now() + std::chrono::milliseconds(3 * kWaitMs);
  std::atomic<int> big_asked{0}, small_asked{0};
  auto asking = [&](std::atomic<int>* asked) {
    return [asked, test_over] {
      ++*asked;
      return std::chrono::steady_clock::now() > test_over;
    };
  };
  std::atomic<int> order{0};
  int big_done = 0, small_done = 0;
  auto big = std::async(std::launch::async, [&] {
    auto r = sender->Reserve(kBig, asking(&big_asked));
    big_done = ++order;
    return r.ok();
  });
  EXPECT_TRUE(Eventually([&] { return big_asked > 0; }, std::chrono::milliseconds(kWaitMs)))
      << "the big reservation never took its place in line";
  auto small = std::async(std::launch::async, [&] {
    auto r = sender->Reserve(kSmall, asking(&small_asked));  // would fit now, but comes second
    small_done = ++order;
    return r.ok();
  });
  // Asked a second time: it had its place in line and was not let through although it fits.
  EXPECT_TRUE(Eventually([&] { return small_asked > 1; }, std::chrono::milliseconds(kWaitMs)))
      << "the small reservation never waited";
  EXPECT_EQ(order.load(), 0) << "a later, smaller reservation went first";
  EXPECT_FALSE(sender->TryEnqueue(
      MakeWriteRecord(2, 1002, 8192, std::make_shared<const std::string>(512, 'y'))))
      << "a waiting reservation has the room";
  EXPECT_EQ(sender->Reserve(1u << 20, [] { return false; }).status().code(),
            StatusCode::kInvalidArgument);

  StartServer();
  EXPECT_TRUE(sender->WaitDurable(1, kWaitMs).ok());  // room again
  EXPECT_TRUE(big.get());
  EXPECT_TRUE(small.get());
  EXPECT_EQ(big_done, 1);
  EXPECT_EQ(small_done, 2);
}

// Issue 15, item 5: waiters of a generation that a rebase ended fail, even once the new
// sequence's records reach their LSN.
TEST_F(SenderTest, WaitersOfARebasedSequenceFail) {
  StartServer();
  auto sender = StartSender(Options());
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  const uint64_t old_generation = sender->generation();
  auto waiter = std::async(std::launch::async,
                           [&] { return sender->WaitDurable(6, kWaitMs, old_generation); });
  ASSERT_TRUE(sender->WaitDurable(3, kWaitMs).ok());
  EXPECT_EQ(sender->Rebase(3).size(), 0u);
  Status s = waiter.get();
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s;
  EXPECT_THAT(s.message(), HasSubstr("LSN 6 was dropped"));
  for (uint64_t lsn = 4; lsn <= 6; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(sender->WaitDurable(6, kWaitMs, sender->generation()).ok());
  EXPECT_EQ(sender->WaitDurable(6, kWaitMs, old_generation).code(), StatusCode::kIOError);
}

// A control client (cdpctl's role) on its own socket, handshaken: relays checkpoint requests and
// asks for status.
class ControlClient {
 public:
  explicit ControlClient(const std::string& server) {
    auto socket = Socket::Connect(ctx_, server);
    EXPECT_TRUE(socket.ok()) << socket.status();
    if (!socket.ok()) return;
    socket_ = std::move(*socket);
    auto reply = Handshake(*socket_, wire::MakeHello(v1::ROLE_CONTROL, "control-client"), kWaitMs);
    EXPECT_TRUE(reply.ok()) << reply.status();
  }

  void Ask(const std::string& label) {
    v1::Header h;
    h.mutable_checkpoint_request()->set_volume(kVolume);
    h.mutable_checkpoint_request()->set_label(label);
    ASSERT_TRUE(socket_ && socket_->Send(h, {}, kWaitMs).ok());
  }

  // The checkpoint reply's point, or the relayed error.
  Result<v1::ConsistencyPoint> Answer() {
    while (true) {
      auto msg = socket_->Recv(kWaitMs);
      if (!msg.ok()) return msg.status();
      if (msg->header.has_error()) return wire::StatusFromError(msg->header.error());
      if (msg->header.has_checkpoint_reply()) return msg->header.checkpoint_reply().point();
    }
  }

  // The server's count of the AgentReports it took for kVolume (VolumeStatus.report_sequence).
  Result<uint64_t> ReportSequence() {
    v1::Header h;
    h.mutable_status_request();
    if (!socket_) return Status::IOError("no control socket");
    Status sent = socket_->Send(h, {}, kWaitMs);
    if (!sent.ok()) return sent;
    while (true) {
      auto msg = socket_->Recv(kWaitMs);
      if (!msg.ok()) return msg.status();
      if (msg->header.has_error()) return wire::StatusFromError(msg->header.error());
      if (!msg->header.has_status_reply()) continue;
      for (const auto& v : msg->header.status_reply().volumes()) {
        if (v.name() == kVolume) return v.report_sequence();
      }
      return Status::NotFound("no volume " + std::string(kVolume) + " in the status");
    }
  }

 private:
  zmq::context_t ctx_;
  std::unique_ptr<Socket> socket_;
};

// Issue 15, item 2: one writer per volume. A second agent with no (or an older) writer epoch is
// refused and fenced, and nothing it sends is journaled; --take-over makes it the writer and
// fences the first.
TEST_F(SenderTest, ASecondAgentIsFencedUntilItTakesOver) {
  StartServer();
  SenderOptions first_options = Options();
  first_options.identity = "agent-one";
  first_options.instance_id = 1;
  // Reports only after its handshake and when its queue drains, so that the test knows when it
  // has sent everything (below).
  first_options.report_interval_ms = 3600 * 1000;
  auto first = StartSender(first_options);
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) ASSERT_TRUE(first->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(first->WaitDurable(3, kWaitMs).ok());
  EXPECT_EQ(first->writer_epoch(), 1u);

  SenderOptions second_options = Options();
  second_options.identity = "agent-two";
  second_options.instance_id = 2;
  auto second = StartSender(second_options);
  ASSERT_TRUE(Eventually([&] { return second->fenced(); }, std::chrono::milliseconds(kWaitMs)))
      << "a second agent for the volume was accepted";
  EXPECT_FALSE(second->TryEnqueue(SampleRecord(4))) << "a fenced agent queues nothing";
  EXPECT_THAT(second->Reserve(100, [] { return false; }).status().message(),
              HasSubstr("this agent is fenced"));
  EXPECT_FALSE(second->connected());
  second->Stop(0);

  // The first goes on writing; then a third agent takes the volume over.
  ASSERT_TRUE(first->TryEnqueue(SampleRecord(4)));
  ASSERT_TRUE(first->WaitDurable(4, kWaitMs).ok());
  // The first is quiet: it has reported its drained queue (LSN 4 durable) and the server took
  // every report it sent, so it sends nothing before its next write. (Otherwise a report that
  // reached the server after the take-over would tell it first, and the server would have
  // nothing of the first's to refuse below.)
  ControlClient control(server_options_.listen);
  ASSERT_TRUE(Eventually(
      [&] {
        const Reports sent = reports("agent-one");
        auto taken = control.ReportSequence();
        return sent.last_durable == 4 && taken.ok() && *taken == static_cast<uint64_t>(sent.built);
      },
      std::chrono::milliseconds(kWaitMs)))
      << "the first agent's reports were never all taken";
  SenderOptions third_options = Options();
  third_options.identity = "agent-three";
  third_options.instance_id = 3;
  third_options.take_over = true;
  auto third = StartSender(third_options);
  Eventually([&] { return third->writer_epoch() == 2; }, std::chrono::milliseconds(kWaitMs));
  ASSERT_EQ(third->writer_epoch(), 2u);
  // The first does not know yet (it has sent nothing since): its own LSN 5, another write than
  // the third's.
  ASSERT_TRUE(
      first->TryEnqueue(MakeWriteRecord(5, 7, 0, std::make_shared<const std::string>(512, 'x'))));
  Status s = first->WaitDurable(5, kWaitMs);
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s;
  EXPECT_THAT(s.message(), HasSubstr("this one is fenced"));
  EXPECT_TRUE(first->fenced());
  for (uint64_t lsn = 5; lsn <= 6; ++lsn) ASSERT_TRUE(third->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(third->WaitDurable(6, kWaitMs).ok());
  first->Stop(0);
  third->Stop(kWaitMs);
  StopServer();
  ExpectJournaled(6);  // LSN 5 is the third agent's record, never the fenced first's
}

// A checkpoint callback that, once called, waits until the test releases it, then adds an
// operator point at `lsn` to the sender (Attach) and returns its LSN.
class HeldCheckpoint {
 public:
  explicit HeldCheckpoint(uint64_t lsn) : lsn_(lsn) {}

  void Attach(Sender* sender) { sender_ = sender; }

  std::function<Result<uint64_t>(const std::string&)> Callback() {
    return [this](const std::string& label) -> Result<uint64_t> {
      std::unique_lock<std::mutex> lock(mu_);
      entered_ = true;
      cv_.notify_all();
      if (!cv_.wait_for(lock, std::chrono::milliseconds(kWaitMs), [&] { return released_; })) {
        return Status::TimedOut("the test never released the checkpoint");
      }
      v1::ConsistencyPoint p;
      p.set_lsn(lsn_);
      p.set_origin(v1::POINT_OPERATOR);
      p.set_label(label);
      sender_->AddPoint(p);
      return lsn_;
    };
  }

  // True once the callback runs (within kWaitMs).
  bool WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(kWaitMs), [&] { return entered_; });
  }

  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  const uint64_t lsn_;
  Sender* sender_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;   // GUARDED_BY(mu_)
  bool released_ = false;  // GUARDED_BY(mu_)
};

// A checkpoint that takes its time (a trace-mode freeze waits for its records to fit in the
// buffer, so for acks) runs beside the sender thread: records keep becoming durable while it
// waits, a second request meanwhile is refused, and the first one's reply comes once it is done.
TEST_F(SenderTest, ASlowCheckpointDoesNotHoldUpAcks) {
  StartServer();
  HeldCheckpoint held(20);
  auto sender = StartSender(Options(), held.Callback());
  held.Attach(sender.get());
  for (uint64_t lsn = 1; lsn <= 10; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(sender->WaitDurable(10, kWaitMs).ok());

  ControlClient first(server_options_.listen);
  first.Ask("before-upgrade");
  ASSERT_TRUE(held.WaitEntered());
  for (uint64_t lsn = 11; lsn <= 20; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  Status s = sender->WaitDurable(20, kWaitMs);
  EXPECT_TRUE(s.ok()) << "acks stopped while the checkpoint waited: " << s;

  ControlClient second(server_options_.listen);
  second.Ask("impatient");
  auto refused = second.Answer();
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(),
              HasSubstr("volume db01-sda: another checkpoint is being taken; try again when it "
                        "is done"));

  held.Release();
  auto point = first.Answer();
  ASSERT_TRUE(point.ok()) << point.status();
  EXPECT_EQ(point->lsn(), 20u);
  EXPECT_EQ(point->origin(), v1::POINT_OPERATOR);
  EXPECT_EQ(point->label(), "before-upgrade");
  EXPECT_TRUE(sender->Stop(kWaitMs).empty());
  StopServer();
  ExpectJournaled(20);
}

// A checkpoint still being taken when the agent is asked to stop is waited for (within the drain
// time): its point is journaled and its reply sent before the sender ends.
TEST_F(SenderTest, ACheckpointTakenWhileTheAgentStopsIsStillSent) {
  StartServer();
  HeldCheckpoint held(10);
  auto sender = StartSender(Options(), held.Callback());
  held.Attach(sender.get());
  for (uint64_t lsn = 1; lsn <= 10; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(sender->WaitDurable(10, kWaitMs).ok());

  ControlClient client(server_options_.listen);
  client.Ask("last-before-stop");
  ASSERT_TRUE(held.WaitEntered());
  // Stop while the checkpoint runs: everything else is sent, so only the checkpoint is left.
  auto stopped = std::async(std::launch::async, [&] { return sender->Stop(kWaitMs); });
  ASSERT_TRUE(Eventually([&] { return sender->stopped(); }, std::chrono::milliseconds(kWaitMs)));
  held.Release();
  auto point = client.Answer();
  ASSERT_TRUE(point.ok()) << "the checkpoint was dropped at stop: " << point.status();
  EXPECT_EQ(point->lsn(), 10u);
  EXPECT_EQ(point->label(), "last-before-stop");
  EXPECT_TRUE(stopped.get().empty());
  StopServer();
  ExpectJournaled(10);
}

// Source control end to end over real sockets: a control client's requests reach the agent
// through the journal-server and come back; a status is answered while a quiesce is still
// running on the agent; when the agent goes silent mid-request the client hears that its session
// dropped.
TEST_F(SenderTest, SourceRequestsAreRelayedAndASilentAgentIsReported) {
  StartServer();
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();
  auto sender =
      StartSender(OneSessionOptions(), nullptr, [&, released](const v1::SourceRequest& r) {
        v1::SourceReply reply;
        if (r.has_quiesce()) {
          entered.set_value();
          released.wait();
          reply.add_volumes()->set_final_lsn(5);
        } else {
          reply.add_volumes()->set_volume(kVolume);
          reply.set_can_freeze(true);
        }
        return reply;
      });
  for (uint64_t lsn = 1; lsn <= 5; ++lsn) ASSERT_TRUE(sender->TryEnqueue(SampleRecord(lsn)));
  ASSERT_TRUE(sender->WaitDurable(5, kWaitMs).ok());

  auto status_client = journal::ControlClient::Connect(server_options_.listen, kWaitMs);
  auto quiesce_client = journal::ControlClient::Connect(server_options_.listen, kWaitMs);
  ASSERT_TRUE(status_client.ok() && quiesce_client.ok());
  v1::SourceRequest status;
  status.set_volume(kVolume);
  status.mutable_status();
  auto reply = (*status_client)->Source(status, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->can_freeze());
  ASSERT_EQ(reply->volumes_size(), 1);
  EXPECT_EQ(reply->volumes(0).volume(), kVolume);

  v1::SourceRequest quiesce;
  quiesce.set_volume(kVolume);
  quiesce.mutable_quiesce()->add_volumes(kVolume);
  auto pending =
      std::async(std::launch::async, [&] { return (*quiesce_client)->Source(quiesce, 20000); });
  entered.get_future().wait();
  reply = (*status_client)->Source(status, kWaitMs);  // served beside the running quiesce
  ASSERT_TRUE(reply.ok()) << reply.status();

  // The agent goes silent (its sender thread ends; the quiesce still runs on it).
  auto stopped = std::async(std::launch::async, [&] { return sender->Stop(0); });
  auto dropped = pending.get();
  ASSERT_FALSE(dropped.ok());
  EXPECT_EQ(dropped.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(dropped.status().message(),
            "journal-server: volume db01-sda: the agent's session dropped before it answered the "
            "quiesce (the agent stopped reporting: killed, restarted, or its link cut); a freeze "
            "it holds thaws when its lease passes");
  reply = (*status_client)->Source(status, kWaitMs);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().message(),
            "journal-server: volume db01-sda: no agent connected; is the cdp-agent protecting it "
            "running on the source?");
  release.set_value();
  stopped.get();
  StopServer();
}

}  // namespace
}  // namespace cdp::agent
