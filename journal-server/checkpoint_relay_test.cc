// Tests of CheckpointRelay alone: a real JournalStore in a temporary directory, a recording
// Outbox in place of the socket and a fake directory of agents. A checkpoint is forwarded to the
// volume's live writer and answered once its point is durable with the operator's label; every
// way it can fail answers the client with the Error that says why.
#include "cdp/journal/checkpoint_relay.h"

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "cdp/journal/testing/loop_service_test.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using testing::FakeAgents;
using ::testing::HasSubstr;
using testing::kVolume;

namespace v1 = wire::v1;

constexpr char kClient[] = "cdpctl-1";
constexpr char kAgent[] = "agent-1";

v1::CheckpointRequest Request(const std::string& label, const std::string& volume = kVolume) {
  v1::CheckpointRequest r;
  r.set_volume(volume);
  r.set_label(label);
  return r;
}

v1::CheckpointReply AgentReply(uint64_t request_id, uint64_t lsn, const std::string& error = "") {
  v1::CheckpointReply r;
  r.set_volume(kVolume);
  r.set_request_id(request_id);
  r.set_lsn(lsn);
  r.set_error(error);
  return r;
}

class CheckpointRelayTest : public testing::LoopServiceTest {
 protected:
  void SetUp() override {
    testing::LoopServiceTest::SetUp();
    if (HasFatalFailure()) return;
    agents_.writers_[kVolume] = kAgent;
    relay_ = std::make_unique<CheckpointRelay>(store_.get(), &outbox_, &agents_);
  }

  // Journals write-zeroes records up to `lsn` and an operator point at `lsn` carrying `label`.
  void CommitPoint(uint64_t lsn, const std::string& label) {
    auto v = store_->GetVolume(kVolume);
    ASSERT_TRUE(v.ok()) << v.status();
    WriteGroup group;
    for (uint64_t l = v->durable_lsn + 1; l <= lsn; ++l) {
      ChangeRecord rec;
      rec.lsn = l;
      rec.time_ns = l;
      rec.offset = 0;
      rec.length = 4096;
      rec.kind = RecordKind::kWriteZeroes;
      store_->AppendRecord(&group, *v, rec, "");
    }
    v1::ConsistencyPoint p;
    p.set_lsn(lsn);
    p.set_origin(v1::POINT_OPERATOR);
    p.set_label(label);
    store_->AppendPoint(&group, *v, p);
    Status s = store_->Commit(&group);
    ASSERT_TRUE(s.ok()) << s;
  }

  // Relays a request and returns the request id the agent was given (0 when none was relayed).
  uint64_t Relay(const std::string& label) {
    relay_->HandleRequest(kClient, Request(label));
    auto sent = outbox_.Take();
    if (sent.size() != 1 || sent[0].peer != kAgent || !sent[0].header.has_checkpoint_request()) {
      ADD_FAILURE() << "not relayed to the agent";
      return 0;
    }
    EXPECT_EQ(sent[0].header.checkpoint_request().volume(), kVolume);
    EXPECT_EQ(sent[0].header.checkpoint_request().label(), label);
    return sent[0].header.checkpoint_request().request_id();
  }

  // The one Error sent to the client since the last call.
  v1::Error ClientError() { return outbox_.TakeOneError(kClient); }

  FakeAgents agents_;
  std::unique_ptr<CheckpointRelay> relay_;
};

TEST_F(CheckpointRelayTest, TheClientGetsThePointOnceItIsDurableWithItsLabel) {
  const uint64_t id = Relay("before-upgrade");
  ASSERT_NE(id, 0u);
  relay_->HandleReply(kAgent, AgentReply(id, 5));
  relay_->ServePending();  // LSN 5 is not durable yet
  EXPECT_TRUE(outbox_.Take().empty());
  EXPECT_EQ(relay_->pending(), 1u);

  CommitPoint(5, "before-upgrade");
  relay_->ServePending();
  auto sent = outbox_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].peer, kClient);
  ASSERT_TRUE(sent[0].header.has_checkpoint_reply()) << sent[0].header.DebugString();
  const v1::CheckpointReply& reply = sent[0].header.checkpoint_reply();
  EXPECT_EQ(reply.volume(), kVolume);
  EXPECT_EQ(reply.request_id(), id);
  EXPECT_EQ(reply.lsn(), 5u);
  EXPECT_EQ(reply.point().lsn(), 5u);
  EXPECT_EQ(reply.point().label(), "before-upgrade");
  EXPECT_EQ(relay_->pending(), 0u);
}

TEST_F(CheckpointRelayTest, APointWithoutTheLabelYetIsNotTheAnswer) {
  CommitPoint(3, "");  // a flush point already at the LSN the agent will name
  const uint64_t id = Relay("nightly");
  relay_->HandleReply(kAgent, AgentReply(id, 3));
  relay_->ServePending();
  EXPECT_TRUE(outbox_.Take().empty());
  EXPECT_EQ(relay_->pending(), 1u);
}

TEST_F(CheckpointRelayTest, AnUnknownVolumeIsAPermanentNotFound) {
  relay_->HandleRequest(kClient, Request("x", "db09"));
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kNotFound));
  EXPECT_THAT(e.message(), HasSubstr("db09"));
  EXPECT_TRUE(e.permanent());
}

TEST_F(CheckpointRelayTest, NoLiveAgentIsUnavailable) {
  agents_.alive_ = false;
  relay_->HandleRequest(kClient, Request("x"));
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kUnavailable));
  EXPECT_EQ(e.message(),
            "journal-server: volume db01-sda: no agent connected; a checkpoint is made by the "
            "volume's agent: start it, or restore a point that exists (cdpctl points)");
  EXPECT_FALSE(e.permanent());

  agents_.alive_ = true;
  agents_.writers_.clear();
  relay_->HandleRequest(kClient, Request("x"));
  EXPECT_EQ(ClientError().code(), static_cast<int32_t>(StatusCode::kUnavailable));
  EXPECT_EQ(relay_->pending(), 0u);
}

TEST_F(CheckpointRelayTest, ARelayTheSocketRefusesIsAnsweredAtOnce) {
  outbox_.RefuseWith(Status::Unavailable("peer gone"));
  relay_->HandleRequest(kClient, Request("x"));
  outbox_.RefuseWith(Status::Ok());
  // The Error to the client was refused too (same outbox); nothing stays pending.
  EXPECT_TRUE(outbox_.Take().empty());
  EXPECT_EQ(relay_->pending(), 0u);
}

TEST_F(CheckpointRelayTest, AnAgentThatMadeNoPointIsAPermanentFailedPrecondition) {
  const uint64_t id = Relay("x");
  relay_->HandleReply(kAgent, AgentReply(id, 0, "a checksum resync is in progress"));
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kFailedPrecondition));
  EXPECT_EQ(e.message(),
            "journal-server: the agent of volume db01-sda made no point: a checksum resync is "
            "in progress");
  EXPECT_TRUE(e.permanent());
  EXPECT_EQ(relay_->pending(), 0u);
}

TEST_F(CheckpointRelayTest, AReplyFromAnotherPeerThanTheWriterIsIgnored) {
  const uint64_t id = Relay("x");
  relay_->HandleReply("agent-2", AgentReply(id, 0, "not mine"));
  EXPECT_TRUE(outbox_.Take().empty());
  EXPECT_EQ(relay_->pending(), 1u);
  relay_->HandleReply(kAgent, AgentReply(id + 1, 4));  // no such request: dropped
  EXPECT_TRUE(outbox_.Take().empty());
}

TEST_F(CheckpointRelayTest, ACheckpointPastItsTimeoutIsTimedOut) {
  relay_ = std::make_unique<CheckpointRelay>(store_.get(), &outbox_, &agents_,
                                             std::chrono::milliseconds(1));
  Relay("x");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  relay_->ServePending();
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kTimedOut));
  EXPECT_EQ(e.message(),
            "journal-server: volume db01-sda: the agent did not answer within 1 ms (is the "
            "agent falling back to its dirty bitmap?)");
  EXPECT_EQ(relay_->pending(), 0u);
}

}  // namespace
}  // namespace cdp::journal
