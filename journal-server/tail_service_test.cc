// Tests of TailService alone: a real JournalStore in a temporary directory and a recording
// Outbox in place of the socket. What a replicator gets for each request (records with their
// exact payloads, the points among them, the durable LSN), the long poll, progress reports, and
// the Errors for requests that cannot be served.
#include "cdp/journal/tail_service.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/record.h"
#include "cdp/journal/testing/loop_service_test.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::kVolume;

namespace v1 = wire::v1;

constexpr char kReplicator[] = "replicator-1";

SharedBytes Pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed * 7 + i * 13);
  return std::make_shared<const std::string>(std::move(s));
}

v1::TailRequest Tail(uint64_t from, uint64_t max_bytes = 1 << 20, uint32_t wait_ms = 0,
                     uint64_t applied = 0) {
  v1::TailRequest req;
  req.set_volume(kVolume);
  req.set_from_lsn(from);
  req.set_max_bytes(max_bytes);
  req.set_wait_ms(wait_ms);
  req.set_applied_lsn(applied);
  req.set_request_id(from * 100);
  return req;
}

std::vector<uint64_t> Lsns(const v1::TailBatch& batch) {
  std::vector<uint64_t> lsns;
  for (const auto& r : batch.records()) lsns.push_back(r.lsn());
  return lsns;
}

class TailServiceTest : public testing::LoopServiceTest {
 protected:
  void SetUp() override {
    testing::LoopServiceTest::SetUp();
    if (HasFatalFailure()) return;
    tails_ = std::make_unique<TailService>(store_.get(), &outbox_, /*max_tail_bytes=*/16 << 20);
  }

  // Journals 4 KiB records first..last (payload seeded by the LSN), and a point at `point_lsn`
  // (0: none).
  void Commit(uint64_t first, uint64_t last, uint64_t point_lsn = 0) {
    auto v = store_->GetVolume(kVolume);
    ASSERT_TRUE(v.ok()) << v.status();
    WriteGroup group;
    for (uint64_t lsn = first; lsn <= last; ++lsn) {
      ChangeRecord rec = MakeWriteRecord(lsn, 1000 + lsn, lsn * 4096, Pattern(4096, lsn));
      store_->AppendRecord(&group, *v, rec, *rec.payload);
    }
    if (point_lsn != 0) {
      v1::ConsistencyPoint p;
      p.set_lsn(point_lsn);
      p.set_origin(v1::POINT_FLUSH);
      store_->AppendPoint(&group, *v, p);
    }
    Status s = store_->Commit(&group);
    ASSERT_TRUE(s.ok()) << s;
  }

  // The one message sent since the last call, to the replicator.
  testing::RecordingOutbox::Sent TakeOne() {
    auto sent = outbox_.Take();
    EXPECT_EQ(sent.size(), 1u);
    if (sent.empty()) return {};
    EXPECT_EQ(sent[0].peer, kReplicator);
    return sent[0];
  }

  std::unique_ptr<TailService> tails_;
};

TEST_F(TailServiceTest, ATailSendsTheDurableRecordsWithTheirPayloadsAndPoints) {
  Commit(1, 3, /*point_lsn=*/2);
  tails_->HandleRequest(kReplicator, Tail(2));
  auto sent = TakeOne();
  ASSERT_TRUE(sent.header.has_tail_batch()) << sent.header.DebugString();
  const v1::TailBatch& batch = sent.header.tail_batch();
  EXPECT_EQ(batch.volume(), kVolume);
  EXPECT_EQ(batch.request_id(), 200u);
  EXPECT_EQ(batch.durable_lsn(), 3u);
  EXPECT_THAT(Lsns(batch), ElementsAre(2, 3));
  ASSERT_EQ(sent.frames.size(), 2u);
  EXPECT_EQ(sent.frames[0], *Pattern(4096, 2));
  EXPECT_EQ(sent.frames[1], *Pattern(4096, 3));
  ASSERT_EQ(batch.points_size(), 1);
  EXPECT_EQ(batch.points(0).lsn(), 2u);
  EXPECT_EQ(tails_->parked(), 0u);
}

TEST_F(TailServiceTest, ATailStopsAtMaxBytesButSendsAtLeastOneRecord) {
  Commit(1, 3);
  tails_->HandleRequest(kReplicator, Tail(1, /*max_bytes=*/8192));
  EXPECT_THAT(Lsns(TakeOne().header.tail_batch()), ElementsAre(1, 2));
  tails_->HandleRequest(kReplicator, Tail(1, /*max_bytes=*/1));
  EXPECT_THAT(Lsns(TakeOne().header.tail_batch()), ElementsAre(1));
}

TEST_F(TailServiceTest, ATailPastTheEndIsParkedAndAnsweredOnceRecordsAreDurable) {
  Commit(1, 1);
  tails_->HandleRequest(kReplicator, Tail(2, 1 << 20, /*wait_ms=*/60'000));
  EXPECT_TRUE(outbox_.Take().empty());
  EXPECT_EQ(tails_->parked(), 1u);

  tails_->ServeParked(/*expire_only=*/false);  // nothing new yet
  EXPECT_TRUE(outbox_.Take().empty());

  Commit(2, 2);
  tails_->ServeParked(/*expire_only=*/true);  // idle pass: only expiries
  EXPECT_TRUE(outbox_.Take().empty());
  tails_->ServeParked(/*expire_only=*/false);
  auto sent = TakeOne();
  EXPECT_THAT(Lsns(sent.header.tail_batch()), ElementsAre(2));
  EXPECT_EQ(sent.header.tail_batch().durable_lsn(), 2u);
  EXPECT_EQ(tails_->parked(), 0u);
}

TEST_F(TailServiceTest, AParkedTailPastItsWaitIsAnsweredEmptyWithTheDurableLsn) {
  Commit(1, 1);
  tails_->HandleRequest(kReplicator, Tail(2, 1 << 20, /*wait_ms=*/1));
  EXPECT_EQ(tails_->parked(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  tails_->ServeParked(/*expire_only=*/true);
  auto sent = TakeOne();
  ASSERT_TRUE(sent.header.has_tail_batch());
  EXPECT_EQ(sent.header.tail_batch().records_size(), 0);
  EXPECT_EQ(sent.header.tail_batch().durable_lsn(), 1u);
  EXPECT_EQ(tails_->parked(), 0u);
}

TEST_F(TailServiceTest, ATailWithoutWaitIsAnsweredAtOnceEvenWhenEmpty) {
  tails_->HandleRequest(kReplicator, Tail(1));
  auto sent = TakeOne();
  ASSERT_TRUE(sent.header.has_tail_batch());
  EXPECT_EQ(sent.header.tail_batch().records_size(), 0);
  EXPECT_EQ(sent.header.tail_batch().durable_lsn(), 0u);
  EXPECT_EQ(tails_->parked(), 0u);
}

TEST_F(TailServiceTest, AProgressReportRecordsTheAppliedLsnAndGetsNoAnswer) {
  Commit(1, 3);
  EXPECT_FALSE(tails_->LastAppliedReport(kVolume).has_value());
  tails_->HandleRequest(kReplicator, Tail(4, /*max_bytes=*/0, 0, /*applied=*/3));
  EXPECT_TRUE(outbox_.Take().empty());
  auto v = store_->GetVolume(kVolume);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->applied_lsn, 3u);
  EXPECT_TRUE(tails_->LastAppliedReport(kVolume).has_value());
  EXPECT_FALSE(tails_->LastAppliedReport("db02").has_value());
}

TEST_F(TailServiceTest, ATailFromLsnZeroIsAPermanentInvalidArgument) {
  tails_->HandleRequest(kReplicator, Tail(0));
  auto sent = TakeOne();
  ASSERT_TRUE(sent.header.has_error()) << sent.header.DebugString();
  EXPECT_EQ(sent.header.error().message(), "tail from LSN 0: LSNs start at 1");
  EXPECT_TRUE(sent.header.error().permanent());
}

TEST_F(TailServiceTest, ATailOfAnUnknownVolumeIsNotFoundAndRecordsNothing) {
  v1::TailRequest req = Tail(1);
  req.set_volume("db09");
  tails_->HandleRequest(kReplicator, req);
  auto sent = TakeOne();
  ASSERT_TRUE(sent.header.has_error());
  EXPECT_THAT(sent.header.error().message(), HasSubstr("unknown volume 'db09'"));
  EXPECT_FALSE(sent.header.error().permanent());
  EXPECT_FALSE(tails_->LastAppliedReport("db09").has_value());
}

}  // namespace
}  // namespace cdp::journal
