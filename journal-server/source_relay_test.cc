// Tests of SourceRelay alone: a real JournalStore, a recording Outbox in place of the socket and
// a fake directory of agents. A source request goes to the volume's live writer with the relay's
// id and its reply comes back with the client's; no agent, a session that drops and a reply that
// never comes are answered with the Error that says so; other requests go on meanwhile.
#include "cdp/journal/source_relay.h"

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

v1::SourceRequest Quiesce(uint64_t client_id, uint32_t timeout_ms = 0) {
  v1::SourceRequest r;
  r.set_volume(kVolume);
  r.set_request_id(client_id);
  r.set_reply_timeout_ms(timeout_ms);
  r.mutable_quiesce()->add_volumes(kVolume);
  r.mutable_quiesce()->set_hold_ms(30000);
  return r;
}

class SourceRelayTest : public testing::LoopServiceTest {
 protected:
  void SetUp() override {
    testing::LoopServiceTest::SetUp();
    if (HasFatalFailure()) return;
    agents_.writers_[kVolume] = kAgent;
    relay_ = std::make_unique<SourceRelay>(store_.get(), &outbox_, &agents_);
  }

  // Relays `request` and returns the id the agent was given (0 when none was relayed).
  uint64_t Relay(const v1::SourceRequest& request) {
    relay_->HandleRequest(kClient, request);
    auto sent = outbox_.Take();
    if (sent.size() != 1 || sent[0].peer != kAgent || !sent[0].header.has_source_request()) {
      ADD_FAILURE() << "not relayed to the agent";
      return 0;
    }
    return sent[0].header.source_request().request_id();
  }

  v1::Error ClientError() { return outbox_.TakeOneError(kClient); }

  FakeAgents agents_;
  std::unique_ptr<SourceRelay> relay_;
};

TEST_F(SourceRelayTest, TheAgentsReplyReachesTheClientWithTheClientsId) {
  relay_->HandleRequest(kClient, Quiesce(77));
  auto sent = outbox_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].peer, kAgent);
  const v1::SourceRequest& fwd = sent[0].header.source_request();
  EXPECT_TRUE(fwd.has_quiesce());
  EXPECT_EQ(fwd.quiesce().volumes(0), kVolume);
  EXPECT_EQ(fwd.quiesce().hold_ms(), 30000u);
  const uint64_t id = fwd.request_id();
  EXPECT_EQ(relay_->pending(), 1u);

  v1::SourceReply reply;
  reply.set_volume(kVolume);
  reply.set_request_id(id);
  auto* v = reply.add_volumes();
  v->set_volume(kVolume);
  v->set_final_lsn(1042);
  relay_->HandleReply(kAgent, reply);
  sent = outbox_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].peer, kClient);
  ASSERT_TRUE(sent[0].header.has_source_reply());
  EXPECT_EQ(sent[0].header.source_reply().request_id(), 77u);
  EXPECT_EQ(sent[0].header.source_reply().volumes(0).final_lsn(), 1042u);
  EXPECT_EQ(relay_->pending(), 0u);

  relay_->HandleReply(kAgent, reply);  // answered already: dropped
  EXPECT_TRUE(outbox_.Take().empty());
}

TEST_F(SourceRelayTest, NoAgentConnectedSaysWhatToCheck) {
  agents_.alive_ = false;
  relay_->HandleRequest(kClient, Quiesce(1));
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kUnavailable));
  EXPECT_EQ(e.message(),
            "journal-server: volume db01-sda: no agent connected; is the cdp-agent protecting it "
            "running on the source?");
  EXPECT_EQ(relay_->pending(), 0u);

  v1::SourceRequest unknown = Quiesce(2);
  unknown.set_volume("db09");
  relay_->HandleRequest(kClient, unknown);
  e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kNotFound));
  EXPECT_TRUE(e.permanent());
}

TEST_F(SourceRelayTest, ARequestWithoutBodyIsRefused) {
  v1::SourceRequest r;
  r.set_volume(kVolume);
  relay_->HandleRequest(kClient, r);
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kInvalidArgument));
  EXPECT_TRUE(e.permanent());
}

TEST_F(SourceRelayTest, ASessionThatDropsMidRequestIsUnavailable) {
  Relay(Quiesce(5, 60000));
  relay_->ServePending();  // alive: still waiting
  EXPECT_TRUE(outbox_.Take().empty());
  agents_.alive_ = false;  // the agent stopped reporting (killed, link cut)
  relay_->ServePending();
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kUnavailable));
  EXPECT_EQ(e.message(),
            "journal-server: volume db01-sda: the agent's session dropped before it answered the "
            "quiesce (the agent stopped reporting: killed, restarted, or its link cut); a freeze "
            "it holds thaws when its lease passes");
  EXPECT_EQ(relay_->pending(), 0u);
}

TEST_F(SourceRelayTest, AnotherWriterMeansTheSessionDropped) {
  const uint64_t id = Relay(Quiesce(5, 60000));
  agents_.writers_[kVolume] = "agent-2";  // a restarted agent took the volume
  v1::SourceReply late;
  late.set_request_id(id);
  relay_->HandleReply("agent-2", late);  // not the agent it went to: ignored
  EXPECT_TRUE(outbox_.Take().empty());
  relay_->ServePending();
  EXPECT_EQ(ClientError().code(), static_cast<int32_t>(StatusCode::kUnavailable));
}

TEST_F(SourceRelayTest, NoReplyWithinTheTimeoutIsTimedOutAndOthersGoOn) {
  Relay(Quiesce(5, 1));
  v1::SourceRequest status;
  status.set_volume(kVolume);
  status.set_request_id(6);
  status.set_reply_timeout_ms(60000);
  status.mutable_status();
  const uint64_t second = Relay(status);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  relay_->ServePending();
  v1::Error e = ClientError();
  EXPECT_EQ(e.code(), static_cast<int32_t>(StatusCode::kTimedOut));
  EXPECT_EQ(e.message(),
            "journal-server: volume db01-sda: the agent did not answer the quiesce within 1 ms");
  EXPECT_EQ(relay_->pending(), 1u);  // the status request still waits
  v1::SourceReply reply;
  reply.set_request_id(second);
  reply.set_frozen(true);
  relay_->HandleReply(kAgent, reply);
  auto sent = outbox_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].header.source_reply().request_id(), 6u);
  EXPECT_TRUE(sent[0].header.source_reply().frozen());
}

TEST_F(SourceRelayTest, TheAgentsErrorIsForwardedAsItsReply) {
  const uint64_t id = Relay(Quiesce(9));
  v1::SourceReply reply;
  reply.set_request_id(id);
  reply.set_error("pre-freeze hook 1 (false) exited 1: ");
  reply.set_error_code(static_cast<int32_t>(StatusCode::kFailedPrecondition));
  relay_->HandleReply(kAgent, reply);
  auto sent = outbox_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_THAT(sent[0].header.source_reply().error(), HasSubstr("exited 1"));
}

}  // namespace
}  // namespace cdp::journal
