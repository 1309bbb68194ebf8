// Tests of JournalServer over a real ROUTER socket (ipc:// in a temporary directory) with raw
// DEALER clients: the Hello handshake, group-committed ingest and its idempotent resends, long-
// polled tails, status, and the bad-input contract — every bad input gets a worded Error,
// journals nothing, and the server keeps serving everyone else.
#include <stdlib.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/core/transport.h"
#include "cdp/core/wire.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/server.h"
#include "cdp/journal/testing/running_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::HasSubstr;

constexpr int kWaitMs = 5000;  // generous: only reached when something is broken
constexpr uint64_t kVolumeSize = 1 << 20;
constexpr char kVolume[] = "db01-sda";

// Every test file names its own temp dirs.
class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("journal_server_test") {}
};

using cdp::journal::testing::RunningServer;

// One DEALER connection to the server.
class Client {
 public:
  Client(zmq::context_t& ctx, const std::string& endpoint) {
    auto s = Socket::Connect(ctx, endpoint);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) socket_ = std::move(*s);
  }

  bool ok() const { return socket_ != nullptr; }
  Socket& socket() { return *socket_; }

  Result<v1::HelloReply> Hello(const v1::Hello& hello) {
    return Handshake(*socket_, hello, kWaitMs);
  }

  // Sends one message and returns the one reply.
  Result<wire::Message> Call(const v1::Header& header, std::vector<zmq::message_t> payloads = {}) {
    Status sent = socket_->Send(header, std::move(payloads), kWaitMs);
    if (!sent.ok()) return sent;
    return socket_->Recv(kWaitMs);
  }

  Result<wire::Message> Recv(int timeout_ms = kWaitMs) { return socket_->Recv(timeout_ms); }

 private:
  std::unique_ptr<Socket> socket_;
};

// An agent's Hello; `epoch` is the writer epoch its state dir holds (the first agent of a
// volume is granted 1), `instance` its process (0: a new one each call).
v1::Hello AgentHello(const std::string& volume, uint64_t size = kVolumeSize, uint64_t epoch = 0,
                     uint64_t instance = 0) {
  static uint64_t next_instance = 1000;
  if (instance == 0) instance = next_instance++;
  v1::Hello hello = wire::MakeHello(v1::ROLE_AGENT, "test-agent", volume);
  hello.set_volume_size(size);
  hello.set_block_size(512);
  hello.set_writer_epoch(epoch);
  hello.set_instance_id(instance);
  return hello;
}

v1::Hello ReplicatorHello(const std::string& volume) {
  return wire::MakeHello(v1::ROLE_REPLICATOR, "test-replicator", volume);
}

SharedBytes Pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed * 7 + i * 13 + (i >> 8));
  return std::make_shared<const std::string>(std::move(s));
}

// The record the tests write at `lsn`: 4 KiB at offset lsn * 4 KiB (8 KiB for LSN 2, so that
// one payload goes to a blob file and others do not matter).
ChangeRecord SampleRecord(uint64_t lsn) {
  return MakeWriteRecord(lsn, 1000 + lsn, lsn * 4096, Pattern(lsn == 2 ? 8192 : 4096, lsn));
}

// A ChangeBatch with `records` and one payload frame per record with payload.
struct Batch {
  v1::Header header;
  std::vector<zmq::message_t> frames;
};

Batch MakeBatch(const std::vector<ChangeRecord>& records, const std::string& volume = kVolume) {
  Batch b;
  auto* cb = b.header.mutable_change_batch();
  cb->set_volume(volume);
  cb->set_first_lsn(records.empty() ? 0 : records.front().lsn);
  for (const auto& rec : records) {
    *cb->add_records() = wire::RecordToProto(rec);
    if (rec.has_payload()) b.frames.push_back(wire::FrameFromShared(rec.payload));
  }
  return b;
}

Batch MakeBatch(uint64_t first, uint64_t last) {
  std::vector<ChangeRecord> records;
  for (uint64_t lsn = first; lsn <= last; ++lsn) records.push_back(SampleRecord(lsn));
  return MakeBatch(records);
}

std::string FrameBytes(const zmq::message_t& m) {
  return std::string(static_cast<const char*>(m.data()), m.size());
}

// Asserts that `reply` is an Error with `code` whose message contains every one of `parts`.
void ExpectError(const Result<wire::Message>& reply, StatusCode code,
                 const std::vector<std::string>& parts) {
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->header.has_error()) << reply->header.DebugString();
  const Status s = wire::StatusFromError(reply->header.error());
  EXPECT_EQ(s.code(), code) << s;
  for (const auto& part : parts) EXPECT_THAT(s.message(), HasSubstr(part));
}

// Asserts that `reply` is a DurableAck and returns it.
v1::DurableAck ExpectAck(const Result<wire::Message>& reply) {
  EXPECT_TRUE(reply.ok()) << reply.status();
  if (!reply.ok()) return {};
  EXPECT_TRUE(reply->header.has_durable_ack()) << reply->header.DebugString();
  return reply->header.durable_ack();
}

class JournalServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    options_ = cdp::journal::testing::ServerOptionsIn(dir_);
    options_.server_id = "test-journal";
    ASSERT_TRUE(server_.Start(options_).ok());
  }

  void TearDown() override { EXPECT_TRUE(server_.Stop().ok()); }

  std::unique_ptr<Client> NewClient() { return std::make_unique<Client>(ctx_, options_.listen); }

  // An agent client that has said Hello for kVolume.
  std::unique_ptr<Client> NewAgent() {
    auto agent = NewClient();
    auto reply = agent->Hello(AgentHello(kVolume));
    EXPECT_TRUE(reply.ok()) << reply.status();
    return agent;
  }

  // An agent client (process `instance`, its state dir holding epoch `presented`) that has said
  // Hello for kVolume and was granted writer epoch `granted`.
  std::unique_ptr<Client> Writer(uint64_t instance, uint64_t presented, uint64_t granted) {
    auto agent = NewClient();
    auto reply = agent->Hello(AgentHello(kVolume, kVolumeSize, presented, instance));
    if (!reply.ok()) {
      ADD_FAILURE() << "agent " << instance << " refused: " << reply.status();
    } else {
      EXPECT_EQ(reply->writer_epoch(), granted) << "agent " << instance;
    }
    return agent;
  }

  std::unique_ptr<Client> NewReplicator() {
    auto replicator = NewClient();
    auto reply = replicator->Hello(ReplicatorHello(kVolume));
    EXPECT_TRUE(reply.ok()) << reply.status();
    return replicator;
  }

  // Asks for status on a fresh connection: proves the server still serves others.
  v1::StatusReply ServerStatus() {
    Client control(ctx_, options_.listen);
    v1::Header h;
    h.mutable_status_request();
    auto reply = control.Call(h);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return {};
    EXPECT_TRUE(reply->header.has_status_reply()) << reply->header.DebugString();
    return reply->header.status_reply();
  }

  // The status of kVolume; an empty status when the volume is unknown.
  v1::VolumeStatus VolumeStatus() {
    const v1::StatusReply status = ServerStatus();
    for (const auto& v : status.volumes()) {
      if (v.name() == kVolume) return v;
    }
    return {};
  }

  // Nothing of kVolume was journaled, and the server answers others.
  void ExpectNothingJournaled() {
    const v1::VolumeStatus v = VolumeStatus();
    EXPECT_EQ(v.name(), kVolume) << "the agent's Hello registered the volume";
    EXPECT_EQ(v.durable_lsn(), 0u);
    EXPECT_EQ(v.records(), 0u);
    EXPECT_EQ(v.bytes_received(), 0u);
  }

  TempDir dir_;
  ServerOptions options_;
  RunningServer server_;
  zmq::context_t ctx_{1};
};

// ---- Hello ----

TEST_F(JournalServerTest, AgentHelloRegistersTheVolume) {
  auto agent = NewClient();
  auto reply = agent->Hello(AgentHello(kVolume));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->version(), wire::kMaxVersion);
  EXPECT_EQ(reply->server_id(), "test-journal");
  EXPECT_EQ(reply->durable_lsn(), 0u);
  EXPECT_EQ(reply->volume_size(), kVolumeSize);
  EXPECT_FALSE(reply->session().empty());

  const v1::StatusReply status = ServerStatus();
  EXPECT_EQ(status.server_id(), "test-journal");
  ASSERT_EQ(status.volumes_size(), 1);
  EXPECT_EQ(status.volumes(0).name(), kVolume);
  EXPECT_EQ(status.volumes(0).size_bytes(), kVolumeSize);
}

TEST_F(JournalServerTest, HelloWithAnUnsupportedVersionRangeIsProtocolMismatch) {
  auto agent = NewClient();
  v1::Hello hello = AgentHello(kVolume);
  hello.set_min_version(7);
  hello.set_max_version(9);
  hello.set_identity("cdp-agent@future/42");
  v1::Header h;
  *h.mutable_hello() = hello;
  auto reply = agent->Call(h);
  ExpectError(reply, StatusCode::kProtocolMismatch,
              {"cdp-agent@future/42 speaks protocol versions 7..9",
               "this build speaks " + std::to_string(wire::kMinVersion) + ".." +
                   std::to_string(wire::kMaxVersion)});
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->header.error().permanent());
  EXPECT_EQ(ServerStatus().volumes_size(), 0) << "a refused agent registers nothing";
}

TEST_F(JournalServerTest, HelloWithABadVolumeNameIsInvalidArgument) {
  for (const std::string name : {"../etc", "", "-x", "a b"}) {
    auto agent = NewClient();
    v1::Header h;
    *h.mutable_hello() = AgentHello(name);
    ExpectError(agent->Call(h), StatusCode::kInvalidArgument, {"bad volume name '" + name + "'"});
    auto replicator = NewClient();
    *h.mutable_hello() = ReplicatorHello(name);
    ExpectError(replicator->Call(h), StatusCode::kInvalidArgument,
                {"bad volume name '" + name + "'"});
  }
  EXPECT_EQ(ServerStatus().volumes_size(), 0);
}

TEST_F(JournalServerTest, AgentHelloWithSizeZeroIsInvalidArgument) {
  auto agent = NewClient();
  auto reply = agent->Hello(AgentHello(kVolume, 0));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(reply.status().message(), HasSubstr("size of 0 bytes"));
  EXPECT_EQ(ServerStatus().volumes_size(), 0);
}

TEST_F(JournalServerTest, AgentHelloWithAnotherSizeIsFailedPrecondition) {
  NewAgent();
  auto other = NewClient();
  auto reply = other->Hello(AgentHello(kVolume, 2 * kVolumeSize));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(reply.status().message(), HasSubstr(std::to_string(kVolumeSize)));
  EXPECT_THAT(reply.status().message(), HasSubstr(std::to_string(2 * kVolumeSize)));
  EXPECT_EQ(VolumeStatus().size_bytes(), kVolumeSize);
}

// Issue 15, item 4: a volume's geometry is bounded and aligned before anything is written.
TEST_F(JournalServerTest, AgentHelloWithAnAbsurdGeometryIsInvalidArgument) {
  struct Case {
    uint64_t size;
    uint32_t block;
    const char* says;
  } cases[] = {
      {UINT64_MAX, 512,
       "size 18446744073709551615 bytes is not a non-zero multiple of its "
       "512-byte blocks of at most 1024 TiB"},
      {(uint64_t{1} << 50) + 512, 512, "of at most 1024 TiB"},
      {kVolumeSize + 100, 512, "is not a non-zero multiple of its 512-byte blocks"},
      {kVolumeSize, 3, "block size 3 bytes is not a power of two from 512 to 65536"},
      {kVolumeSize, 1 << 20, "block size 1048576 bytes is not a power of two"},
  };
  for (const Case& c : cases) {
    auto agent = NewClient();
    v1::Hello hello = AgentHello(kVolume, c.size);
    hello.set_block_size(c.block);
    auto reply = agent->Hello(hello);
    ASSERT_FALSE(reply.ok()) << c.size;
    EXPECT_EQ(reply.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(reply.status().message(), HasSubstr(c.says));
  }
  EXPECT_EQ(ServerStatus().volumes_size(), 0) << "nothing registered";
}

TEST_F(JournalServerTest, HelloWithoutARoleIsInvalidArgument) {
  auto peer = NewClient();
  auto reply = peer->Hello(wire::MakeHello(v1::ROLE_UNSPECIFIED, "mystery", kVolume));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(reply.status().message(), HasSubstr("mystery has no known role"));
}

TEST_F(JournalServerTest, ReplicatorHelloForAnUnknownVolumeIsNotFound) {
  auto replicator = NewClient();
  auto reply = replicator->Hello(ReplicatorHello("db09"));
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(reply.status().message(), HasSubstr("unknown volume 'db09'"));
  EXPECT_EQ(ServerStatus().volumes_size(), 0);
}

TEST_F(JournalServerTest, UnexpectedMessageIsInvalidArgument) {
  auto peer = NewClient();
  v1::Header h;
  h.mutable_durable_ack()->set_durable_lsn(5);  // only the server sends these
  ExpectError(peer->Call(h), StatusCode::kInvalidArgument, {"unexpected message"});
  ExpectError(peer->Call(v1::Header()), StatusCode::kInvalidArgument, {"unexpected message"});
  EXPECT_EQ(ServerStatus().volumes_size(), 0);
}

// ---- Bad batches ----

TEST_F(JournalServerTest, BatchWithoutHelloIsFailedPrecondition) {
  auto agent = NewClient();
  Batch b = MakeBatch(1, 1);
  auto reply = agent->Call(b.header, std::move(b.frames));
  ExpectError(reply, StatusCode::kFailedPrecondition, {"send Hello", kVolume});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->header.error().permanent()) << "the agent is expected to Hello and retry";
  EXPECT_EQ(ServerStatus().volumes_size(), 0);
}

TEST_F(JournalServerTest, BatchForAnotherVolumeThanTheSessionIsFailedPrecondition) {
  auto agent = NewAgent();
  std::vector<ChangeRecord> records = {SampleRecord(1)};
  Batch b = MakeBatch(records, "db02");
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kFailedPrecondition,
              {"'db02'", "send Hello"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, BatchWithABadPayloadCrcIsCorruptionAndJournalsNothing) {
  auto agent = NewAgent();
  ChangeRecord bad = SampleRecord(2);
  bad.crc32c ^= 0x00010000;
  Batch b = MakeBatch({SampleRecord(1), bad, SampleRecord(3)});
  auto reply = agent->Call(b.header, std::move(b.frames));
  ExpectError(reply, StatusCode::kCorruption,
              {"volume db01-sda", "LSN 2", "CRC32C mismatch", "nothing journaled"});
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->header.error().permanent());
  ExpectNothingJournaled();

  // The good records of that batch were not taken either: a correct resend starts at LSN 1.
  Batch good = MakeBatch(1, 3);
  EXPECT_EQ(ExpectAck(agent->Call(good.header, std::move(good.frames))).durable_lsn(), 3u);
}

TEST_F(JournalServerTest, CorruptedPayloadBytesAreCorruption) {
  auto agent = NewAgent();
  ChangeRecord rec = SampleRecord(1);
  std::string flipped = *rec.payload;
  flipped[4000] = static_cast<char>(flipped[4000] ^ 0x04);
  Batch b = MakeBatch({rec});
  b.frames.clear();
  b.frames.emplace_back(flipped.data(), flipped.size());
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kCorruption,
              {"LSN 1", "CRC32C mismatch"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, TruncatedBatchIsCorruption) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  b.frames.pop_back();
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kCorruption,
              {"LSN 3 has no payload frame", "truncated"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, ExtraPayloadFramesAreCorruption) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 2);
  b.frames.emplace_back(std::string("stray").data(), 5);
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kCorruption,
              {"1 payload frames more than records with payload"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, RecordPastTheVolumeEndIsInvalidArgument) {
  auto agent = NewAgent();
  ChangeRecord past = MakeWriteRecord(2, 1, kVolumeSize - 512, Pattern(4096, 9));
  Batch b = MakeBatch({SampleRecord(1), past});
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kInvalidArgument,
              {"LSN 2", "past the volume end " + std::to_string(kVolumeSize)});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, RecordOfUnknownKindOrZeroLengthIsInvalidArgument) {
  auto agent = NewAgent();
  ChangeRecord unknown;
  unknown.lsn = 1;
  unknown.offset = 0;
  unknown.length = 4096;
  unknown.kind = static_cast<RecordKind>(0);
  Batch b = MakeBatch({unknown});
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kInvalidArgument,
              {"LSN 1", "unknown kind"});

  ChangeRecord empty = unknown;
  empty.kind = RecordKind::kDiscard;
  empty.length = 0;
  Batch e = MakeBatch({empty});
  ExpectError(agent->Call(e.header, std::move(e.frames)), StatusCode::kInvalidArgument,
              {"LSN 1: zero length"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, NonContiguousLsnsAreInvalidArgument) {
  auto agent = NewAgent();
  Batch b = MakeBatch({SampleRecord(1), SampleRecord(2), SampleRecord(4)});
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kInvalidArgument,
              {"record 2 has LSN 4, expected 3", "contiguous"});

  // first_lsn disagreeing with the first record is the same mistake.
  Batch shifted = MakeBatch(1, 2);
  shifted.header.mutable_change_batch()->set_first_lsn(5);
  ExpectError(agent->Call(shifted.header, std::move(shifted.frames)), StatusCode::kInvalidArgument,
              {"record 0 has LSN 1, expected 5"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, LsnZeroIsInvalidArgument) {
  auto agent = NewAgent();
  Batch b = MakeBatch({MakeWriteRecord(0, 1, 0, Pattern(512, 1))});
  ExpectError(agent->Call(b.header, std::move(b.frames)), StatusCode::kInvalidArgument,
              {"LSN 0 is reserved"});
  ExpectNothingJournaled();
}

TEST_F(JournalServerTest, GarbageHeaderFrameIsDroppedAndTheServerKeepsServing) {
  zmq::socket_t raw(ctx_, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(options_.listen);
  const std::string garbage(11, '\xFF');  // an over-long varint: never a valid protobuf
  ASSERT_TRUE(raw.send(zmq::buffer(garbage), zmq::send_flags::sndmore));
  ASSERT_TRUE(raw.send(zmq::str_buffer("payload"), zmq::send_flags::none));

  // Another connection is served.
  const v1::StatusReply status = ServerStatus();
  EXPECT_EQ(status.server_id(), "test-journal");

  // And so is the one that sent the garbage, once it sends something sensible.
  v1::Header h;
  h.mutable_status_request();
  const std::string bytes = h.SerializeAsString();
  ASSERT_TRUE(raw.send(zmq::buffer(bytes), zmq::send_flags::none));
  zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, std::chrono::milliseconds(kWaitMs)), 1);
  zmq::message_t reply;
  ASSERT_TRUE(raw.recv(reply, zmq::recv_flags::none));
  v1::Header parsed;
  ASSERT_TRUE(parsed.ParseFromArray(reply.data(), static_cast<int>(reply.size())));
  EXPECT_TRUE(parsed.has_status_reply()) << parsed.DebugString() << " (the garbage got a reply?)";

  // And agents can still journal.
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 1);
  EXPECT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 1u);
}

// ---- Ingest ----

TEST_F(JournalServerTest, GoodBatchIsAckedWhenDurableAndAResendIsIdempotent) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  const v1::DurableAck ack = ExpectAck(agent->Call(b.header, std::move(b.frames)));
  EXPECT_EQ(ack.volume(), kVolume);
  EXPECT_EQ(ack.durable_lsn(), 3u);
  EXPECT_EQ(ack.resend_from(), 0u);

  // A reconnecting agent resends what it has not seen acked.
  Batch again = MakeBatch(1, 3);
  const v1::DurableAck ack2 = ExpectAck(agent->Call(again.header, std::move(again.frames)));
  EXPECT_EQ(ack2.durable_lsn(), 3u);
  EXPECT_EQ(ack2.resend_from(), 0u);
  v1::VolumeStatus v = VolumeStatus();
  EXPECT_EQ(v.durable_lsn(), 3u);
  EXPECT_EQ(v.records(), 3u) << "a resent record must not be journaled twice";
  EXPECT_EQ(v.bytes_received(), 4096u + 8192u + 4096u);

  // Overlapping: 2 and 3 are known, 4 is new.
  Batch overlap = MakeBatch(2, 4);
  EXPECT_EQ(ExpectAck(agent->Call(overlap.header, std::move(overlap.frames))).durable_lsn(), 4u);
  EXPECT_EQ(VolumeStatus().records(), 4u);
}

TEST_F(JournalServerTest, BatchPastTheDurableLsnAsksForAResend) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);

  Batch gap = MakeBatch(10, 11);
  const v1::DurableAck ack = ExpectAck(agent->Call(gap.header, std::move(gap.frames)));
  EXPECT_EQ(ack.volume(), kVolume);
  EXPECT_EQ(ack.durable_lsn(), 3u);
  EXPECT_EQ(ack.resend_from(), 4u);
  EXPECT_EQ(VolumeStatus().records(), 3u);
  EXPECT_EQ(VolumeStatus().durable_lsn(), 3u);

  Batch resend = MakeBatch(4, 11);
  EXPECT_EQ(ExpectAck(agent->Call(resend.header, std::move(resend.frames))).durable_lsn(), 11u);
}

TEST_F(JournalServerTest, AcksEchoTheBatchSequence) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 2);
  b.header.mutable_change_batch()->set_sequence(41);
  const v1::DurableAck ack = ExpectAck(agent->Call(b.header, std::move(b.frames)));
  EXPECT_EQ(ack.durable_lsn(), 2u);
  EXPECT_EQ(ack.sequence(), 41u);

  // The resend request answers the batch that caused it.
  Batch gap = MakeBatch(7, 7);
  gap.header.mutable_change_batch()->set_sequence(42);
  const v1::DurableAck resend = ExpectAck(agent->Call(gap.header, std::move(gap.frames)));
  EXPECT_EQ(resend.resend_from(), 3u);
  EXPECT_EQ(resend.sequence(), 42u);

  // An AgentReport's ack answers no batch.
  v1::Header report;
  report.mutable_agent_report()->set_volume(kVolume);
  EXPECT_EQ(ExpectAck(agent->Call(report)).sequence(), 0u);
}

TEST_F(JournalServerTest, BatchesOfSeveralAgentsAreAllAcked) {
  auto a = NewAgent();
  auto b = NewClient();
  ASSERT_TRUE(b->Hello(AgentHello("db02")).ok());
  Batch ba = MakeBatch(1, 2);
  std::vector<ChangeRecord> records = {SampleRecord(1)};
  Batch bb = MakeBatch(records, "db02");
  // Both sent before either waits: likely one group commit.
  ASSERT_TRUE(a->socket().Send(ba.header, std::move(ba.frames), kWaitMs).ok());
  ASSERT_TRUE(b->socket().Send(bb.header, std::move(bb.frames), kWaitMs).ok());
  const v1::DurableAck ack_a = ExpectAck(a->Recv());
  const v1::DurableAck ack_b = ExpectAck(b->Recv());
  EXPECT_EQ(ack_a.volume(), kVolume);
  EXPECT_EQ(ack_a.durable_lsn(), 2u);
  EXPECT_EQ(ack_b.volume(), "db02");
  EXPECT_EQ(ack_b.durable_lsn(), 1u);
}

// ---- One writer per volume (issue 15, item 2) ----

// A second agent for a volume that has a writer — a fresh state dir, a restarted host — is
// refused and journals nothing; the first goes on.
TEST_F(JournalServerTest, ASecondAgentWithAnOlderEpochIsRefused) {
  auto first = Writer(1, 0, 1);
  Batch b = MakeBatch(1, 2);
  ASSERT_EQ(ExpectAck(first->Call(b.header, std::move(b.frames))).durable_lsn(), 2u);

  auto second = NewClient();
  auto refused = second->Hello(AgentHello(kVolume, kVolumeSize, 0, 2));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("volume db01-sda: this agent holds writer epoch 0 (none: a new or emptied "
                        "state dir), but the volume's writer is epoch 1, granted to test-agent"));
  EXPECT_THAT(refused.status().message(), HasSubstr("restart it with --take-over"));
  // Its batch, resending LSN 2 with other bytes, is refused too (no session).
  std::vector<ChangeRecord> other = {
      MakeWriteRecord(2, 5, 0, std::make_shared<const std::string>(512, 'x'))};
  Batch stale = MakeBatch(other);
  auto reply = second->Call(stale.header, std::move(stale.frames));
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->header.has_error()) << reply->header.DebugString();

  Batch next = MakeBatch(3, 3);
  EXPECT_EQ(ExpectAck(first->Call(next.header, std::move(next.frames))).durable_lsn(), 3u);
  EXPECT_EQ(VolumeStatus().writer_epoch(), 1u);
}

// An agent from before the one-writer rule (no instance id) is told to upgrade, not fenced.
TEST_F(JournalServerTest, AnAgentWithoutAnInstanceIdIsTooOld) {
  auto old = NewClient();
  v1::Hello hello = AgentHello(kVolume);
  hello.clear_instance_id();
  auto reply = old->Hello(hello);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_THAT(reply.status().message(),
              HasSubstr("sends no instance id: it is older than this journal-server"));
}

// The writer granted an epoch died before it saved it (or before it sent anything): its restart,
// presenting the epoch it held before, is the same agent, not a second one — until the grant has
// been used.
TEST_F(JournalServerTest, ARestartBeforeTheGrantWasSavedIsTheSameAgent) {
  auto first = Writer(1, 0, 1);
  Batch b = MakeBatch(1, 1);
  ASSERT_EQ(ExpectAck(first->Call(b.header, std::move(b.frames))).durable_lsn(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));  // the first run is gone
  // The restart saved epoch 1 and was granted 2, then killed before saving it.
  auto restarted = Writer(2, 1, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));  // both runs are silent
  // The next restart presents 1 again.
  auto again = NewClient();
  auto reply = again->Hello(AgentHello(kVolume, kVolumeSize, 1, 3));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->writer_epoch(), 2u);
  Batch next = MakeBatch(2, 2);  // uses the grant: from now on epoch 1 is stale
  ASSERT_EQ(ExpectAck(again->Call(next.header, std::move(next.frames))).durable_lsn(), 2u);
  auto stale = NewClient();
  auto refused = stale->Hello(AgentHello(kVolume, kVolumeSize, 1, 4));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
}

// Issue 15 review: a take-over while the open group holds the old writer's records. The new
// writer's HelloReply waits for the commit, so its first LSN follows them, and nothing of the
// two is mixed or acked twice.
TEST_F(JournalServerTest, ATakeOverReplyFollowsTheOldWritersOpenGroup) {
  auto first = Writer(1, 0, 1);
  Batch b = MakeBatch(1, 2);
  ASSERT_EQ(ExpectAck(first->Call(b.header, std::move(b.frames))).durable_lsn(), 2u);
  auto second = NewClient();
  v1::Hello take_over = AgentHello(kVolume, kVolumeSize, 0, 2);
  take_over.set_take_over(true);
  v1::Header hello;
  *hello.mutable_hello() = take_over;
  // Both sent before either is read: likely one drain, the batch first.
  Batch late = MakeBatch(3, 3);
  ASSERT_TRUE(first->socket().Send(late.header, std::move(late.frames), kWaitMs).ok());
  ASSERT_TRUE(second->socket().Send(hello, {}, kWaitMs).ok());
  auto ack = first->Recv();
  ASSERT_TRUE(ack.ok()) << ack.status();
  auto reply = second->Recv();
  ASSERT_TRUE(reply.ok() && reply->header.has_hello_reply()) << reply.status();
  const uint64_t durable = VolumeStatus().durable_lsn();
  if (ack->header.has_durable_ack()) {
    EXPECT_EQ(durable, 3u) << "the old writer's batch was acked";
  } else {
    EXPECT_EQ(durable, 2u) << "the old writer's batch was refused";
  }
  EXPECT_EQ(reply->header.hello_reply().durable_lsn(), durable)
      << "the new writer was told a durable LSN below what the journal holds";
}

// --take-over makes the newer agent the writer; the older one's next batch is refused, and
// nothing of it is journaled.
TEST_F(JournalServerTest, ATakeOverFencesTheWriter) {
  auto first = Writer(1, 0, 1);
  Batch b = MakeBatch(1, 2);
  ASSERT_EQ(ExpectAck(first->Call(b.header, std::move(b.frames))).durable_lsn(), 2u);

  auto second = NewClient();
  v1::Hello take_over = AgentHello(kVolume, kVolumeSize, 0, 2);
  take_over.set_identity("new-host-agent");
  take_over.set_take_over(true);
  auto granted = second->Hello(take_over);
  ASSERT_TRUE(granted.ok()) << granted.status();
  EXPECT_EQ(granted->writer_epoch(), 2u);
  EXPECT_EQ(granted->durable_lsn(), 2u);

  Batch late = MakeBatch(3, 3);
  auto reply = first->Call(late.header, std::move(late.frames));
  ExpectError(reply, StatusCode::kPermissionDenied,
              {"volume db01-sda: this agent is fenced: new-host-agent became the volume's writer "
               "(epoch 2)"});
  ASSERT_TRUE(reply.ok());
  EXPECT_TRUE(reply->header.error().permanent());
  EXPECT_EQ(VolumeStatus().durable_lsn(), 2u) << "the fenced agent's batch was journaled";
  // Its reconnect, with the old epoch, is refused as well.
  auto again = NewClient();
  auto refused = again->Hello(AgentHello(kVolume, kVolumeSize, 1, 1));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);

  Batch next = MakeBatch(3, 3);
  EXPECT_EQ(ExpectAck(second->Call(next.header, std::move(next.frames))).durable_lsn(), 3u);
  const v1::VolumeStatus v = VolumeStatus();
  EXPECT_EQ(v.writer_epoch(), 2u);
  EXPECT_EQ(v.writer_identity(), "new-host-agent");
}

// Two live processes with the same epoch (a cloned source, a copied state dir): the second
// waits (retryable) until the first has been silent, then gets a new epoch that fences the
// first. The same process reconnecting keeps its epoch.
TEST_F(JournalServerTest, TheSameEpochFromAnotherLiveProcessWaits) {
  auto first = Writer(1, 0, 1);
  auto reconnect = NewClient();
  auto same = reconnect->Hello(AgentHello(kVolume, kVolumeSize, 1, 1));
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->writer_epoch(), 1u) << "a reconnect of the writer keeps its epoch";
  // The writer's reply was lost (or it could not save the epoch): it asks again with what it
  // held before, and gets the same answer instead of being fenced by its own grant.
  auto retry = NewClient();
  auto again = retry->Hello(AgentHello(kVolume, kVolumeSize, 0, 1));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->writer_epoch(), 1u);
  reconnect = std::move(retry);

  auto clone = NewClient();
  auto waits = clone->Hello(AgentHello(kVolume, kVolumeSize, 1, 7));
  ASSERT_FALSE(waits.ok());
  EXPECT_EQ(waits.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(waits.status().message(), HasSubstr("two agents share one state dir"));

  std::this_thread::sleep_for(std::chrono::milliseconds(3300));  // the writer falls silent
  auto later = clone->Hello(AgentHello(kVolume, kVolumeSize, 1, 7));
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(later->writer_epoch(), 2u);
  Batch b = MakeBatch(1, 1);
  ExpectError(reconnect->Call(b.header, std::move(b.frames)), StatusCode::kPermissionDenied,
              {"this agent is fenced"});
}

// A resend is compared with what the journal holds under its LSN: another record (another
// device's write under a reused LSN) is refused, never acked as a duplicate.
TEST_F(JournalServerTest, AResendOfADifferentRecordIsRefused) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);
  std::vector<ChangeRecord> other = {
      MakeWriteRecord(2, 5, 0, std::make_shared<const std::string>(512, 'x'))};
  Batch stale = MakeBatch(other);
  auto reply = agent->Call(stale.header, std::move(stale.frames));
  ExpectError(reply, StatusCode::kFailedPrecondition,
              {"LSN 2 is already journaled as a different record (offset 8192, 8192 bytes",
               "than this resend (offset 0, 512 bytes"});
  // The same record again is still a harmless duplicate.
  Batch dup = MakeBatch(2, 3);
  EXPECT_EQ(ExpectAck(agent->Call(dup.header, std::move(dup.frames))).durable_lsn(), 3u);
  auto replicator = NewReplicator();
  v1::Header tail;
  tail.mutable_tail_request()->set_volume(kVolume);
  tail.mutable_tail_request()->set_from_lsn(2);
  tail.mutable_tail_request()->set_max_bytes(1 << 20);
  auto got = replicator->Call(tail);
  ASSERT_TRUE(got.ok() && got->header.has_tail_batch()) << got.status();
  ASSERT_GE(got->payloads.size(), 1u);
  EXPECT_EQ(FrameBytes(got->payloads[0]), *SampleRecord(2).payload);
}

TEST_F(JournalServerTest, JournalSurvivesAServerRestart) {
  {
    auto agent = NewAgent();
    Batch b = MakeBatch(1, 3);
    ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);
  }
  ASSERT_TRUE(server_.Stop().ok());
  ASSERT_TRUE(server_.Start(options_).ok());

  auto agent = NewClient();
  auto reply = agent->Hello(AgentHello(kVolume, kVolumeSize, /*epoch=*/1));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->durable_lsn(), 3u);
  EXPECT_EQ(reply->writer_epoch(), 2u) << "another process: a new epoch";
  Batch next = MakeBatch(4, 4);
  EXPECT_EQ(ExpectAck(agent->Call(next.header, std::move(next.frames))).durable_lsn(), 4u);
}

TEST_F(JournalServerTest, SecondServerOnTheSameDataDirIsRefused) {
  ServerOptions other = options_;
  other.listen = "ipc://" + dir_.File("other.sock");
  auto second = JournalServer::Start(other);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("locked"));
}

// ---- Tails ----

v1::Header TailRequest(uint64_t from, uint32_t wait_ms, uint64_t request_id, uint64_t applied = 0) {
  v1::Header h;
  auto* t = h.mutable_tail_request();
  t->set_volume(kVolume);
  t->set_from_lsn(from);
  t->set_max_bytes(1 << 20);
  t->set_wait_ms(wait_ms);
  t->set_request_id(request_id);
  t->set_applied_lsn(applied);
  return h;
}

TEST_F(JournalServerTest, TailReturnsTheRecordsWithTheirExactPayloads) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  v1::ConsistencyPoint* point = b.header.mutable_change_batch()->add_points();
  point->set_lsn(2);
  point->set_origin(v1::POINT_FLUSH);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);

  auto replicator = NewClient();
  auto hello = replicator->Hello(ReplicatorHello(kVolume));
  ASSERT_TRUE(hello.ok()) << hello.status();
  EXPECT_EQ(hello->durable_lsn(), 3u);
  EXPECT_EQ(hello->volume_size(), kVolumeSize);

  auto reply = replicator->Call(TailRequest(1, 0, 77));
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->header.has_tail_batch()) << reply->header.DebugString();
  const v1::TailBatch& tail = reply->header.tail_batch();
  EXPECT_EQ(tail.volume(), kVolume);
  EXPECT_EQ(tail.request_id(), 77u);
  EXPECT_EQ(tail.durable_lsn(), 3u);
  ASSERT_EQ(tail.records_size(), 3);
  ASSERT_EQ(reply->payloads.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const ChangeRecord want = SampleRecord(static_cast<uint64_t>(i) + 1);
    EXPECT_EQ(tail.records(i).SerializeAsString(), wire::RecordToProto(want).SerializeAsString())
        << "record " << i;
    EXPECT_TRUE(FrameBytes(reply->payloads[static_cast<size_t>(i)]) == *want.payload)
        << "payload of LSN " << want.lsn << " differs";
  }
  ASSERT_EQ(tail.points_size(), 1);
  EXPECT_EQ(tail.points(0).lsn(), 2u);
  EXPECT_EQ(tail.points(0).origin(), v1::POINT_FLUSH);

  // From the middle.
  auto from2 = replicator->Call(TailRequest(3, 0, 78));
  ASSERT_TRUE(from2.ok()) << from2.status();
  ASSERT_EQ(from2->header.tail_batch().records_size(), 1);
  EXPECT_EQ(from2->header.tail_batch().records(0).lsn(), 3u);
  EXPECT_EQ(from2->header.tail_batch().points_size(), 0);
}

TEST_F(JournalServerTest, TailPastTheEndLongPollsThenAnswersEmpty) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);
  auto replicator = NewReplicator();

  ASSERT_TRUE(replicator->socket().Send(TailRequest(4, 200, 5), {}, kWaitMs).ok());
  // The request is parked for 200 ms from its arrival, so nothing can come within 20 ms of
  // sending it.
  auto early = replicator->Recv(20);
  ASSERT_FALSE(early.ok()) << early->header.DebugString();
  EXPECT_EQ(early.status().code(), StatusCode::kTimedOut);

  auto reply = replicator->Recv();
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->header.has_tail_batch()) << reply->header.DebugString();
  EXPECT_EQ(reply->header.tail_batch().request_id(), 5u);
  EXPECT_EQ(reply->header.tail_batch().records_size(), 0);
  EXPECT_EQ(reply->header.tail_batch().durable_lsn(), 3u);
  EXPECT_TRUE(reply->payloads.empty());

  // wait_ms 0: an empty answer at once.
  auto now = replicator->Call(TailRequest(4, 0, 6));
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->header.tail_batch().request_id(), 6u);
  EXPECT_EQ(now->header.tail_batch().records_size(), 0);
}

TEST_F(JournalServerTest, ParkedTailIsAnsweredWhenRecordsArrive) {
  auto agent = NewAgent();
  auto replicator = NewReplicator();
  ASSERT_TRUE(replicator->socket().Send(TailRequest(1, 60000, 9), {}, kWaitMs).ok());
  // A peer's messages are handled in order: once the status reply is back, the tail is parked.
  v1::Header status;
  status.mutable_status_request();
  auto status_reply = replicator->Call(status);
  ASSERT_TRUE(status_reply.ok()) << status_reply.status();
  ASSERT_TRUE(status_reply->header.has_status_reply()) << status_reply->header.DebugString();

  Batch b = MakeBatch(1, 2);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 2u);
  auto reply = replicator->Recv();
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->header.has_tail_batch()) << reply->header.DebugString();
  EXPECT_EQ(reply->header.tail_batch().request_id(), 9u);
  ASSERT_EQ(reply->header.tail_batch().records_size(), 2);
  EXPECT_EQ(reply->header.tail_batch().records(0).lsn(), 1u);
  EXPECT_EQ(reply->header.tail_batch().records(1).lsn(), 2u);
  ASSERT_EQ(reply->payloads.size(), 2u);
  EXPECT_TRUE(FrameBytes(reply->payloads[1]) == *SampleRecord(2).payload);
}

TEST_F(JournalServerTest, TailRespectsMaxBytes) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);  // payloads of 4096, 8192, 4096 bytes
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);
  auto replicator = NewReplicator();
  v1::Header h = TailRequest(1, 0, 1);
  h.mutable_tail_request()->set_max_bytes(4096 + 8192);
  auto reply = replicator->Call(h);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->header.tail_batch().records_size(), 2);
  EXPECT_EQ(reply->payloads.size(), 2u);
}

TEST_F(JournalServerTest, TailWithoutAReplicatorSessionIsFailedPrecondition) {
  NewAgent();
  auto stranger = NewClient();
  ExpectError(stranger->Call(TailRequest(1, 0, 1)), StatusCode::kFailedPrecondition,
              {"no replicator session", "send Hello"});
}

TEST_F(JournalServerTest, TailFromLsnZeroIsInvalidArgument) {
  NewAgent();
  auto replicator = NewReplicator();
  ExpectError(replicator->Call(TailRequest(0, 0, 1)), StatusCode::kInvalidArgument,
              {"LSNs start at 1"});
}

// ---- Status ----

TEST_F(JournalServerTest, StatusShowsCapturedDurableAndApplied) {
  auto agent = NewAgent();
  Batch b = MakeBatch(1, 3);
  ASSERT_EQ(ExpectAck(agent->Call(b.header, std::move(b.frames))).durable_lsn(), 3u);

  v1::Header report;
  auto* r = report.mutable_agent_report();
  r->set_volume(kVolume);
  r->set_captured_lsn(5);
  r->set_pending_bytes(8192);
  r->set_pending_records(2);
  r->set_dirty_bytes(65536);
  r->set_ack_mode("async");
  r->set_initial_sync_done(true);
  const v1::DurableAck report_ack = ExpectAck(agent->Call(report));
  EXPECT_EQ(report_ack.durable_lsn(), 3u);

  // The replicator reports having applied LSN 2 (a progress-only request: max_bytes 0).
  auto replicator = NewReplicator();
  v1::Header progress = TailRequest(3, 0, 1, /*applied=*/2);
  progress.mutable_tail_request()->set_max_bytes(0);
  ASSERT_TRUE(replicator->socket().Send(progress, {}, kWaitMs).ok());
  // Handled in order: the first reply on this connection is to the status request.
  v1::Header status;
  status.mutable_status_request();
  auto status_reply = replicator->Call(status);
  ASSERT_TRUE(status_reply.ok()) << status_reply.status();
  EXPECT_TRUE(status_reply->header.has_status_reply())
      << "a progress report gets no reply: " << status_reply->header.DebugString();

  const v1::VolumeStatus v = VolumeStatus();
  EXPECT_EQ(v.name(), kVolume);
  EXPECT_EQ(v.captured_lsn(), 5u);
  EXPECT_EQ(v.durable_lsn(), 3u);
  EXPECT_EQ(v.applied_lsn(), 2u);
  EXPECT_EQ(v.records(), 3u);
  EXPECT_EQ(v.pending_bytes(), 8192u);
  EXPECT_EQ(v.dirty_bytes(), 65536u);
  EXPECT_EQ(v.ack_mode(), "async");
  EXPECT_TRUE(v.initial_sync_done());
  EXPECT_EQ(v.report_sequence(), 1u);
  EXPECT_TRUE(v.agent_connected());
  EXPECT_TRUE(v.replicator_connected());
  EXPECT_GE(v.agent_report_age_seconds(), 0.0);
  EXPECT_GE(v.lag_seconds(), 0.0);
}

TEST_F(JournalServerTest, StatusBeforeAnyReportSaysNeverReported) {
  NewAgent();
  const v1::VolumeStatus v = VolumeStatus();
  EXPECT_EQ(v.captured_lsn(), 0u);
  EXPECT_EQ(v.report_sequence(), 0u);
  EXPECT_EQ(v.agent_report_age_seconds(), -1.0);
  EXPECT_EQ(v.applied_report_age_seconds(), -1.0);
  EXPECT_FALSE(v.replicator_connected());
}

TEST_F(JournalServerTest, AgentReportWithoutHelloIsFailedPrecondition) {
  auto stranger = NewClient();
  v1::Header report;
  report.mutable_agent_report()->set_volume(kVolume);
  ExpectError(stranger->Call(report), StatusCode::kFailedPrecondition, {"send Hello"});
}

// ---- Images (restore and export) ----

v1::Header ImageOpen(const std::string& volume, uint64_t at_lsn) {
  v1::Header h;
  h.mutable_image_open_request()->set_volume(volume);
  h.mutable_image_open_request()->set_at_lsn(at_lsn);
  return h;
}

v1::Header ImageRead(uint64_t image_id, uint64_t offset, uint32_t length) {
  v1::Header h;
  auto* r = h.mutable_image_read_request();
  r->set_image_id(image_id);
  r->set_offset(offset);
  r->set_length(length);
  return h;
}

// Journals LSNs 1..3 with the initial sync's end at 3: the point an image can be opened at.
void JournalThreeRecordsAndASyncPoint(Client& agent) {
  Batch b = MakeBatch(1, 3);
  v1::ConsistencyPoint* point = b.header.mutable_change_batch()->add_points();
  point->set_lsn(3);
  point->set_origin(v1::POINT_SYNC_DONE);
  point->set_label("full sync");
  ASSERT_EQ(ExpectAck(agent.Call(b.header, std::move(b.frames))).durable_lsn(), 3u);
}

// Opens the image of kVolume at LSN 3 and returns its reply (an empty one on a failure).
v1::ImageOpenReply OpenImageAt3(Client& control) {
  auto opened = control.Call(ImageOpen(kVolume, 3));
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) return {};
  EXPECT_TRUE(opened->header.has_image_open_reply()) << opened->header.DebugString();
  return opened->header.image_open_reply();
}

TEST_F(JournalServerTest, AnImageReadsTheVolumeAsItWasAtItsPoint) {
  auto agent = NewAgent();
  JournalThreeRecordsAndASyncPoint(*agent);
  auto control = NewClient();
  const v1::ImageOpenReply opened = OpenImageAt3(*control);
  ASSERT_NE(opened.image_id(), 0u);
  const uint64_t id = opened.image_id();
  EXPECT_EQ(opened.point().lsn(), 3u);
  EXPECT_EQ(opened.size_bytes(), kVolumeSize);

  // Written after the point: not in the image.
  Batch later = MakeBatch(4, 4);
  ASSERT_EQ(ExpectAck(agent->Call(later.header, std::move(later.frames))).durable_lsn(), 4u);

  auto read = control->Call(ImageRead(id, 4096, 4096));
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->header.has_image_read_reply()) << read->header.DebugString();
  ASSERT_EQ(read->payloads.size(), 1u);
  EXPECT_TRUE(FrameBytes(read->payloads[0]) == *SampleRecord(1).payload);
  auto zero = control->Call(ImageRead(id, 4 * 4096, 4096));
  ASSERT_TRUE(zero.ok()) << zero.status();
  ASSERT_TRUE(zero->header.has_image_read_reply()) << zero->header.DebugString();
  EXPECT_TRUE(zero->header.image_read_reply().zero()) << "LSN 4 came after the image's point";
  EXPECT_TRUE(zero->payloads.empty());

  ExpectError(control->Call(ImageRead(id, kVolumeSize - 512, 4096)), StatusCode::kInvalidArgument,
              {"read of 4096 bytes at offset 1048064 leaves the volume (1048576 bytes)"});
  ExpectError(control->Call(ImageRead(id, 0, 0)), StatusCode::kInvalidArgument,
              {"image read of 0 bytes; ask for 1 byte to 8 MiB"});
  ExpectError(control->Call(ImageRead(id + 100, 0, 4096)), StatusCode::kNotFound,
              {"image " + std::to_string(id + 100) + " is not open", "open it again"});
  ExpectError(control->Call(ImageOpen("nope", 3)), StatusCode::kNotFound,
              {"no volume 'nope' (it has: " + std::string(kVolume) + ")"});

  v1::Header close;
  close.mutable_image_close_request()->set_image_id(id);
  auto closed = control->Call(close);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->header.image_close_reply().image_id(), id);
  ExpectError(control->Call(ImageRead(id, 0, 4096)), StatusCode::kNotFound, {"is not open"});
}

TEST_F(JournalServerTest, AHeldImageRequestDoesNotHoldUpAcks) {
  auto agent = NewAgent();
  JournalThreeRecordsAndASyncPoint(*agent);
  auto control = NewClient();
  const uint64_t id = OpenImageAt3(*control).image_id();
  ASSERT_NE(id, 0u);

  // The image thread holds the next request (a slow read over a long history, in effect) until
  // released; the wait is bounded so a broken test cannot hang the server's shutdown.
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> first{true};
  server_.server()->SetImageRequestHookForTesting([&entered, released, &first] {
    if (first.exchange(false)) {
      entered.set_value();
      released.wait_for(std::chrono::seconds(10));
    }
  });
  ASSERT_TRUE(control->socket().Send(ImageRead(id, 4096, 4096), {}, kWaitMs).ok());
  ASSERT_EQ(entered.get_future().wait_for(std::chrono::milliseconds(kWaitMs)),
            std::future_status::ready);

  // Ingest, acks and status go on while the read is held.
  Batch more = MakeBatch(4, 6);
  EXPECT_EQ(ExpectAck(agent->Call(more.header, std::move(more.frames))).durable_lsn(), 6u);
  EXPECT_EQ(VolumeStatus().durable_lsn(), 6u);
  EXPECT_FALSE(control->socket().Readable(0)) << "the read was answered while held";

  release.set_value();
  auto read = control->Recv();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->header.has_image_read_reply()) << read->header.DebugString();
  ASSERT_EQ(read->payloads.size(), 1u);
  EXPECT_TRUE(FrameBytes(read->payloads[0]) == *SampleRecord(1).payload);
  server_.server()->SetImageRequestHookForTesting(nullptr);
}

TEST(JournalServerStart, BusyEndpointIsUnavailable) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  zmq::context_t ctx(1);
  auto busy = Socket::Bind(ctx, "tcp://127.0.0.1:*");
  ASSERT_TRUE(busy.ok()) << busy.status();
  ServerOptions options;
  options.data_dir = dir.File("data");
  options.listen = (*busy)->raw().get(zmq::sockopt::last_endpoint);
  auto refused = JournalServer::Start(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(refused.status().message(), HasSubstr("address already in use"));
}

TEST(JournalServerStart, BadListenEndpointIsInvalidArgument) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  ServerOptions options;
  options.data_dir = dir.File("data");
  options.listen = "127.0.0.1:7700";
  auto refused = JournalServer::Start(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("tcp://HOST:PORT"));
}

// ---- Bounds of the image service (issue 15, item 7) ----

// Holds the image thread at the next request it serves until Release() (or 20 s, so that a
// broken test cannot hang the server's shutdown).
class ImageThreadHold {
 public:
  explicit ImageThreadHold(JournalServer* server) : server_(server) {
    server_->SetImageRequestHookForTesting([state = state_] {
      if (state->first.exchange(false)) {
        state->entered.set_value();
        state->released.wait_for(std::chrono::seconds(20));
      }
    });
  }
  ~ImageThreadHold() {
    Release();
    server_->SetImageRequestHookForTesting(nullptr);
  }
  bool WaitEntered() {
    return state_->entered.get_future().wait_for(std::chrono::milliseconds(kWaitMs)) ==
           std::future_status::ready;
  }
  void Release() {
    if (!state_->release_set.exchange(true)) state_->release.set_value();
  }

 private:
  struct State {
    std::atomic<bool> first{true};
    std::promise<void> entered;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> release_set{false};
  };
  JournalServer* server_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

// A client that sends image reads without reading the replies gets at most
// ImageService::kMaxRequestsPerPeer of them queued; the rest are refused at once, and another
// client is still served.
TEST_F(JournalServerTest, AFloodOfImageRequestsIsRefusedOverThePerClientBound) {
  constexpr size_t kBound = ImageService::kMaxRequestsPerPeer;
  constexpr size_t kFlood = 40;
  auto agent = NewAgent();
  JournalThreeRecordsAndASyncPoint(*agent);
  auto flooder = NewClient();
  const uint64_t id = OpenImageAt3(*flooder).image_id();
  ASSERT_NE(id, 0u);
  ImageThreadHold hold(server_.server());
  for (size_t i = 0; i < kFlood; ++i) {
    ASSERT_TRUE(flooder->socket().Send(ImageRead(id, 4096, 4096), {}, kWaitMs).ok());
  }
  ASSERT_TRUE(hold.WaitEntered());
  for (size_t i = 0; i < kFlood - kBound; ++i) {
    ExpectError(flooder->Recv(), StatusCode::kResourceExhausted,
                {"has " + std::to_string(kBound) + " image requests waiting already",
                 "the limit per client"});
  }
  EXPECT_FALSE(flooder->socket().Readable(200)) << "more than the bound was refused";

  auto other = NewClient();
  ASSERT_TRUE(other->socket().Send(ImageRead(id, 4096, 4096), {}, kWaitMs).ok());
  hold.Release();
  auto read = other->Recv();
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->header.has_image_read_reply()) << read->header.DebugString();
  ASSERT_EQ(read->payloads.size(), 1u);
  EXPECT_TRUE(FrameBytes(read->payloads[0]) == *SampleRecord(1).payload);
  for (size_t i = 0; i < kBound; ++i) {
    auto r = flooder->Recv();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->header.has_image_read_reply()) << r->header.DebugString();
  }
  // Once its replies are taken the client may ask again.
  auto again = flooder->Call(ImageRead(id, 4096, 4096));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->header.has_image_read_reply()) << again->header.DebugString();
}

// Clients that each stay within their bound are together held to ImageService::kMaxRequests.
TEST_F(JournalServerTest, ImageRequestsOfAllClientsAreBoundedTogether) {
  constexpr size_t kPerClient = ImageService::kMaxRequestsPerPeer;
  constexpr size_t kClients = ImageService::kMaxRequests / kPerClient + 1;
  auto agent = NewAgent();
  JournalThreeRecordsAndASyncPoint(*agent);
  std::vector<std::unique_ptr<Client>> clients;
  for (size_t c = 0; c < kClients; ++c) clients.push_back(NewClient());
  const uint64_t id = OpenImageAt3(*clients[0]).image_id();
  ASSERT_NE(id, 0u);
  ImageThreadHold hold(server_.server());
  for (auto& c : clients) {
    for (size_t i = 0; i < kPerClient; ++i) {
      ASSERT_TRUE(c->socket().Send(ImageRead(id, 4096, 4096), {}, kWaitMs).ok());
    }
  }
  ASSERT_TRUE(hold.WaitEntered());
  // Which client's requests come last to the server is up to ZeroMQ; the count is not.
  size_t refused = 0;
  std::vector<size_t> got(kClients, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
  while (refused < kClients * kPerClient - ImageService::kMaxRequests) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "only " << refused << " refused";
    for (size_t c = 0; c < kClients; ++c) {
      if (!clients[c]->socket().Readable(1)) continue;
      auto r = clients[c]->Recv();
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectError(r, StatusCode::kResourceExhausted,
                  {std::to_string(ImageService::kMaxRequests) +
                   " image requests of all clients are waiting already"});
      ++refused;
      ++got[c];
    }
  }
  hold.Release();
  size_t served = 0;
  for (size_t c = 0; c < kClients; ++c) {
    for (; got[c] < kPerClient; ++got[c]) {
      auto r = clients[c]->Recv();
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->header.has_image_read_reply()) << r->header.DebugString();
      ++served;
    }
    EXPECT_FALSE(clients[c]->socket().Readable(0));
  }
  EXPECT_EQ(served, ImageService::kMaxRequests);
}

// A volume whose retention fold fails shows the failure in its status (retention_error, what
// `cdpctl status` prints) while its history stays, and once the cause is gone the fold is
// retried, the history folded and the error cleared.
TEST(JournalServerRetention, AFailingFoldShowsInStatusUntilItWorks) {
  TempDir dir;
  ASSERT_TRUE(dir.ok()) << "mkdtemp: " << std::strerror(errno);
  const ServerOptions options = cdp::journal::testing::ServerOptionsIn(dir);
  {
    // Records 1..3, the initial sync done at LSN 1 and a flush point at LSN 2, all captured long
    // ago; a one-second window.
    auto store = JournalStore::Open(options.data_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    auto v = (*store)->RegisterVolume(kVolume, kVolumeSize, 512);
    ASSERT_TRUE(v.ok()) << v.status();
    WriteGroup group;
    for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
      auto payload = std::make_shared<const std::string>(4096, static_cast<char>('a' + lsn));
      (*store)->AppendRecord(&group, *v, MakeWriteRecord(lsn, 1000 + lsn, lsn * 4096, payload),
                             *payload);
    }
    for (auto [lsn, origin, label] :
         {std::tuple{1, v1::POINT_SYNC_DONE, "full sync"}, std::tuple{2, v1::POINT_FLUSH, ""}}) {
      v1::ConsistencyPoint p;
      p.set_lsn(lsn);
      p.set_time_ns(1000 + lsn);
      p.set_origin(origin);
      p.set_label(label);
      (*store)->AppendPoint(&group, *v, p);
    }
    ASSERT_TRUE((*store)->Commit(&group).ok());
    ASSERT_TRUE((*store)->SetRetention(kVolume, 1, std::nullopt).ok());
  }
  // The base image cannot be created: a file stands where its directory goes.
  const std::string base_dir = options.data_dir + "/base";
  { std::ofstream(base_dir) << "not a directory"; }
  RunningServer server;
  ASSERT_TRUE(server.Start(options).ok());

  zmq::context_t ctx(1);
  auto volume_status = [&]() -> v1::VolumeStatus {
    Client control(ctx, options.listen);
    v1::Header h;
    h.mutable_status_request();
    auto reply = control.Call(h);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok() || reply->header.status_reply().volumes_size() != 1) return {};
    return reply->header.status_reply().volumes(0);
  };
  // Folds are tried once a second, retried after 1 s, 2 s, 4 s ... while the error repeats.
  constexpr auto kFoldWait = std::chrono::seconds(30);
  auto deadline = std::chrono::steady_clock::now() + kFoldWait;
  v1::VolumeStatus v = volume_status();
  while (v.retention_error().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    v = volume_status();
  }
  EXPECT_THAT(v.retention_error(), HasSubstr(base_dir));
  EXPECT_EQ(v.base_lsn(), 0u);
  EXPECT_EQ(v.durable_lsn(), 3u);

  std::filesystem::remove(base_dir);
  deadline = std::chrono::steady_clock::now() + kFoldWait;
  while ((v.base_lsn() != 2 || !v.retention_error().empty()) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    v = volume_status();
  }
  EXPECT_EQ(v.base_lsn(), 2u);
  EXPECT_EQ(v.retention_error(), "");
  EXPECT_TRUE(std::filesystem::is_regular_file(base_dir + "/1.img"));
}

}  // namespace
}  // namespace cdp::journal
