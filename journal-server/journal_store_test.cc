// Tests of JournalStore on a real RocksDB in a temporary directory: volume registration, group
// commit, reads with limits, recovery after reopening, consistency points, and the errors an
// operator sees for a bad or busy data directory and for damaged records.
#include "cdp/journal/journal_store.h"

#include <rocksdb/db.h>
#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kVolumeSize = 1 << 20;
constexpr uint64_t kNoLimit = UINT64_MAX;

// Every test file names its own temp dirs.
class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("journal_store_test") {}
};

SharedBytes Pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 13 + (i >> 8));
  return std::make_shared<const std::string>(std::move(s));
}

ChangeRecord NoPayload(uint64_t lsn, RecordKind kind, uint64_t offset, uint32_t length) {
  ChangeRecord rec;
  rec.lsn = lsn;
  rec.time_ns = 1'000'000'000ull * lsn;
  rec.offset = offset;
  rec.length = length;
  rec.kind = kind;
  return rec;
}

// The records of volume db01 used throughout: small (inline) and >= 4 KiB (blob file)
// payloads, and kinds without payload.
std::vector<ChangeRecord> SampleRecords() {
  return {
      MakeWriteRecord(1, 1'000'000'001, 0, Pattern(512, 1)),
      MakeWriteRecord(2, 1'000'000'002, 4096, Pattern(4096, 2)),
      NoPayload(3, RecordKind::kDiscard, 8192, 8192),
      MakeWriteRecord(4, 1'000'000'004, 65536, Pattern(65536, 4)),
      NoPayload(5, RecordKind::kWriteZeroes, 0, 4096),
      MakeWriteRecord(6, 1'000'000'006, 1000, Pattern(100, 6)),
  };
}

void ExpectSameRecord(const ChangeRecord& got, const ChangeRecord& want) {
  EXPECT_EQ(got.lsn, want.lsn);
  EXPECT_EQ(got.time_ns, want.time_ns) << "LSN " << want.lsn;
  EXPECT_EQ(got.offset, want.offset) << "LSN " << want.lsn;
  EXPECT_EQ(got.length, want.length) << "LSN " << want.lsn;
  EXPECT_EQ(got.kind, want.kind) << "LSN " << want.lsn;
  EXPECT_EQ(got.crc32c, want.crc32c) << "LSN " << want.lsn;
  if (want.has_payload()) {
    ASSERT_NE(got.payload, nullptr) << "LSN " << want.lsn;
    EXPECT_TRUE(*got.payload == *want.payload) << "payload of LSN " << want.lsn << " differs";
  } else {
    EXPECT_EQ(got.payload, nullptr) << "LSN " << want.lsn;
  }
}

std::vector<uint64_t> Lsns(const std::vector<ChangeRecord>& records) {
  std::vector<uint64_t> lsns;
  for (const auto& r : records) lsns.push_back(r.lsn);
  return lsns;
}

v1::ConsistencyPoint Point(uint64_t lsn, v1::PointOrigin origin, const std::string& label) {
  v1::ConsistencyPoint p;
  p.set_lsn(lsn);
  p.set_time_ns(lsn * 10);
  p.set_origin(origin);
  p.set_label(label);
  return p;
}

class JournalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    Reopen();
  }

  void Reopen() {
    store_.reset();
    auto opened = JournalStore::Open(dir_.File("data"));
    ASSERT_TRUE(opened.ok()) << opened.status();
    store_ = std::move(*opened);
  }

  VolumeInfo Register(const std::string& name) {
    auto v = store_->RegisterVolume(name, kVolumeSize, 512);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : VolumeInfo{};
  }

  // Appends the sample records (and points at LSN 2, 4 and 6) to db01 and commits them.
  void CommitSample(const VolumeInfo& volume) {
    WriteGroup group;
    for (const auto& rec : SampleRecords()) {
      store_->AppendRecord(&group, volume, rec, rec.has_payload() ? *rec.payload : "");
    }
    store_->AppendPoint(&group, volume, Point(2, v1::POINT_FLUSH, ""));
    store_->AppendPoint(&group, volume, Point(4, v1::POINT_OPERATOR, "before-upgrade"));
    store_->AppendPoint(&group, volume, Point(6, v1::POINT_FREEZE, ""));
    ASSERT_TRUE(store_->Commit(&group).ok());
  }

  std::vector<ChangeRecord> Read(const std::string& name, uint64_t from, uint64_t max_bytes,
                                 size_t max_records) {
    std::vector<ChangeRecord> out;
    Status s = store_->ReadRecords(name, from, max_bytes, max_records, &out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  TempDir dir_;
  std::unique_ptr<JournalStore> store_;
};

TEST_F(JournalStoreTest, RegisterVolumeAssignsIdsAndChecksTheSize) {
  VolumeInfo a = Register("db01");
  EXPECT_EQ(a.name, "db01");
  EXPECT_EQ(a.id, 1u);
  EXPECT_EQ(a.size_bytes, kVolumeSize);
  EXPECT_EQ(a.block_size, 512u);
  EXPECT_EQ(a.durable_lsn, 0u);
  EXPECT_GT(a.created_ns, 0u);
  VolumeInfo b = Register("db02");
  EXPECT_EQ(b.id, 2u);

  // Same size again: the existing volume.
  VolumeInfo again = Register("db01");
  EXPECT_EQ(again.id, 1u);
  EXPECT_EQ(again.created_ns, a.created_ns);

  auto resized = store_->RegisterVolume("db01", 2 * kVolumeSize, 512);
  ASSERT_FALSE(resized.ok());
  EXPECT_EQ(resized.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(resized.status().message(), HasSubstr("volume db01"));
  EXPECT_THAT(resized.status().message(), HasSubstr(std::to_string(kVolumeSize)));
  EXPECT_THAT(resized.status().message(), HasSubstr(std::to_string(2 * kVolumeSize)));

  ASSERT_EQ(store_->ListVolumes().size(), 2u);
  EXPECT_EQ(store_->ListVolumes()[0].name, "db01");
  EXPECT_EQ(store_->ListVolumes()[1].name, "db02");
}

TEST_F(JournalStoreTest, GetVolumeOfAnUnknownNameIsNotFoundListingTheKnownOnes) {
  auto none = store_->GetVolume("db09");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr("unknown volume 'db09' (known: none yet)"));
  Register("db01");
  Register("db02");
  auto missing = store_->GetVolume("db09");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("(known: db01, db02)"));
}

TEST_F(JournalStoreTest, CommittedRecordsReadBackIdenticalInLsnOrder) {
  VolumeInfo v = Register("db01");
  CommitSample(v);
  const std::vector<ChangeRecord> want = SampleRecords();
  const std::vector<ChangeRecord> got = Read("db01", 1, kNoLimit, 100);
  ASSERT_EQ(Lsns(got), Lsns(want));
  for (size_t i = 0; i < want.size(); ++i) ExpectSameRecord(got[i], want[i]);

  const std::vector<ChangeRecord> tail = Read("db01", 4, kNoLimit, 100);
  EXPECT_EQ(Lsns(tail), (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_TRUE(Read("db01", 7, kNoLimit, 100).empty());
  EXPECT_EQ(Lsns(Read("db01", 0, kNoLimit, 100)).size(), 6u);

  auto info = store_->GetVolume("db01");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->durable_lsn, 6u);
  EXPECT_EQ(info->records, 6u);
  EXPECT_EQ(info->bytes_received, 512u + 4096u + 65536u + 100u);
  EXPECT_EQ(info->last_point_lsn, 6u);
}

TEST_F(JournalStoreTest, ReadRecordsHonoursMaxRecords) {
  CommitSample(Register("db01"));
  EXPECT_EQ(Lsns(Read("db01", 1, kNoLimit, 1)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Lsns(Read("db01", 1, kNoLimit, 2)), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Lsns(Read("db01", 3, kNoLimit, 2)), (std::vector<uint64_t>{3, 4}));
  EXPECT_TRUE(Read("db01", 1, kNoLimit, 0).empty());
}

// Payloads: LSN 1 = 512, 2 = 4096, 3 = none, 4 = 65536, 5 = none, 6 = 100 bytes.
TEST_F(JournalStoreTest, ReadRecordsHonoursMaxBytes) {
  CommitSample(Register("db01"));
  EXPECT_EQ(Lsns(Read("db01", 1, 512 + 4096, 100)), (std::vector<uint64_t>{1, 2}));
  // Room for the discard after LSN 2, not for the 64 KiB of LSN 4.
  EXPECT_EQ(Lsns(Read("db01", 1, 5000, 100)), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(Lsns(Read("db01", 1, 600, 100)), (std::vector<uint64_t>{1}));
  // A first record larger than max_bytes still comes, alone.
  EXPECT_EQ(Lsns(Read("db01", 4, 1, 100)), (std::vector<uint64_t>{4}));
  EXPECT_EQ(Lsns(Read("db01", 2, 4095, 100)), (std::vector<uint64_t>{2}));
  for (uint64_t max_bytes : {1ull, 512ull, 4608ull, 5000ull, 70000ull, 70232ull, 70300ull}) {
    uint64_t total = 0;
    for (const auto& r : Read("db01", 1, max_bytes, 100)) {
      total += r.has_payload() ? r.payload->size() : 0;
    }
    EXPECT_TRUE(total <= max_bytes || total == 512) << "max_bytes " << max_bytes;
  }
  EXPECT_EQ(Read("db01", 1, 512 + 4096 + 65536 + 100, 100).size(), 6u);
}

TEST_F(JournalStoreTest, DurableLsnAdvancesOnlyOnCommit) {
  VolumeInfo v = Register("db01");
  WriteGroup group;
  EXPECT_TRUE(group.empty());
  EXPECT_TRUE(store_->Commit(&group).ok()) << "an empty group commits trivially";
  for (const auto& rec : SampleRecords()) {
    store_->AppendRecord(&group, v, rec, rec.has_payload() ? *rec.payload : "");
  }
  EXPECT_FALSE(group.empty());
  EXPECT_GT(group.byte_size(), 512u + 4096u + 65536u + 100u);

  EXPECT_EQ(store_->LastLsn("db01", group), 6u);
  EXPECT_EQ(store_->LastLsn("db01", WriteGroup()), 0u);
  EXPECT_EQ(store_->GetVolume("db01")->durable_lsn, 0u);
  EXPECT_TRUE(Read("db01", 1, kNoLimit, 100).empty()) << "uncommitted records are not visible";

  ASSERT_TRUE(store_->Commit(&group).ok());
  EXPECT_EQ(store_->GetVolume("db01")->durable_lsn, 6u);
  EXPECT_EQ(store_->LastLsn("db01", WriteGroup()), 6u);
  EXPECT_EQ(Read("db01", 1, kNoLimit, 100).size(), 6u);
}

TEST_F(JournalStoreTest, VolumesDoNotSeeEachOthersRecords) {
  VolumeInfo a = Register("db01");
  VolumeInfo b = Register("db02");
  WriteGroup group;
  // Interleaved in one group, as a group commit of two agents' batches would be.
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
    ChangeRecord ra = MakeWriteRecord(lsn, lsn, 512 * lsn, Pattern(512, 10 + lsn));
    ChangeRecord rb = MakeWriteRecord(lsn, lsn, 512 * lsn, Pattern(8192, 20 + lsn));
    store_->AppendRecord(&group, a, ra, *ra.payload);
    if (lsn <= 2) store_->AppendRecord(&group, b, rb, *rb.payload);
  }
  EXPECT_EQ(store_->LastLsn("db01", group), 3u);
  EXPECT_EQ(store_->LastLsn("db02", group), 2u);
  ASSERT_TRUE(store_->Commit(&group).ok());

  const auto ra = Read("db01", 1, kNoLimit, 100);
  const auto rb = Read("db02", 1, kNoLimit, 100);
  ASSERT_EQ(Lsns(ra), (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_EQ(Lsns(rb), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(*ra[1].payload == *Pattern(512, 12));
  EXPECT_TRUE(*rb[1].payload == *Pattern(8192, 22));
  EXPECT_EQ(store_->GetVolume("db01")->durable_lsn, 3u);
  EXPECT_EQ(store_->GetVolume("db02")->durable_lsn, 2u);
}

TEST_F(JournalStoreTest, ReopenRecoversVolumesDurableAndAppliedLsns) {
  VolumeInfo a = Register("db01");
  VolumeInfo b = Register("db02");
  Register("db03");  // never written
  CommitSample(a);
  WriteGroup group;
  ChangeRecord rb = MakeWriteRecord(1, 5, 0, Pattern(4096, 9));
  store_->AppendRecord(&group, b, rb, *rb.payload);
  v1::Gap gap;
  gap.set_after_lsn(1);
  gap.set_reason("agent buffer full");
  store_->AppendGap(&group, b, gap);
  ASSERT_TRUE(store_->Commit(&group).ok());
  EXPECT_EQ(store_->GetVolume("db02")->gaps, 1u);
  ASSERT_TRUE(store_->SetApplied("db01", 4).ok());
  EXPECT_EQ(store_->GetVolume("db01")->applied_lsn, 4u);

  Reopen();
  const std::vector<VolumeInfo> volumes = store_->ListVolumes();
  ASSERT_EQ(volumes.size(), 3u);
  EXPECT_EQ(volumes[0].name, "db01");
  EXPECT_EQ(volumes[0].id, a.id);
  EXPECT_EQ(volumes[0].size_bytes, kVolumeSize);
  EXPECT_EQ(volumes[0].block_size, 512u);
  EXPECT_EQ(volumes[0].created_ns, a.created_ns);
  EXPECT_EQ(volumes[0].durable_lsn, 6u);
  EXPECT_EQ(volumes[0].applied_lsn, 4u);
  EXPECT_EQ(volumes[0].last_point_lsn, 6u);
  EXPECT_EQ(volumes[0].records, 0u) << "records counts since the server started";
  EXPECT_EQ(volumes[1].name, "db02");
  EXPECT_EQ(volumes[1].durable_lsn, 1u);
  EXPECT_EQ(volumes[1].applied_lsn, 0u);
  EXPECT_EQ(volumes[2].name, "db03");
  EXPECT_EQ(volumes[2].durable_lsn, 0u);

  // The records themselves survive, blob-file payloads included.
  const std::vector<ChangeRecord> want = SampleRecords();
  const std::vector<ChangeRecord> got = Read("db01", 1, kNoLimit, 100);
  ASSERT_EQ(Lsns(got), Lsns(want));
  for (size_t i = 0; i < want.size(); ++i) ExpectSameRecord(got[i], want[i]);

  // New volumes get fresh ids and the journal continues where it stopped.
  EXPECT_EQ(Register("db04").id, 4u);
  WriteGroup more;
  EXPECT_EQ(store_->LastLsn("db01", more), 6u);
  ChangeRecord seven = MakeWriteRecord(7, 7, 0, Pattern(512, 7));
  store_->AppendRecord(&more, *store_->GetVolume("db01"), seven, *seven.payload);
  ASSERT_TRUE(store_->Commit(&more).ok());
  EXPECT_EQ(store_->GetVolume("db01")->durable_lsn, 7u);
}

TEST_F(JournalStoreTest, SetAppliedOfAnUnknownVolumeIsNotFound) {
  Status s = store_->SetApplied("nope", 3);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("'nope'"));
}

TEST_F(JournalStoreTest, ReadPointsReturnsTheInclusiveRangeOfThisVolume) {
  VolumeInfo a = Register("db01");
  VolumeInfo b = Register("db02");
  CommitSample(a);
  WriteGroup group;
  store_->AppendPoint(&group, b, Point(3, v1::POINT_FLUSH, "other volume"));
  ASSERT_TRUE(store_->Commit(&group).ok());

  auto points = [&](uint64_t from, uint64_t to) {
    std::vector<v1::ConsistencyPoint> out;
    Status s = store_->ReadPoints("db01", from, to, &out);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<uint64_t> lsns;
    for (const auto& p : out) lsns.push_back(p.lsn());
    return lsns;
  };
  EXPECT_EQ(points(1, 3), (std::vector<uint64_t>{2}));
  EXPECT_EQ(points(2, 4), (std::vector<uint64_t>{2, 4}));
  EXPECT_EQ(points(5, 100), (std::vector<uint64_t>{6}));
  EXPECT_EQ(points(1, UINT64_MAX), (std::vector<uint64_t>{2, 4, 6}));
  EXPECT_TRUE(points(7, 100).empty());
  EXPECT_TRUE(points(3, 3).empty());

  std::vector<v1::ConsistencyPoint> out;
  ASSERT_TRUE(store_->ReadPoints("db01", 4, 4, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].origin(), v1::POINT_OPERATOR);
  EXPECT_EQ(out[0].label(), "before-upgrade");
  EXPECT_EQ(out[0].time_ns(), 40u);

  out.clear();
  EXPECT_EQ(store_->ReadPoints("db09", 1, 10, &out).code(), StatusCode::kNotFound);
}

// Reading stops at max_points: a request on the ingest thread never loads a volume's whole list
// to take a few (issue 15, item 8).
TEST_F(JournalStoreTest, ReadPointsStopsAtMaxPoints) {
  VolumeInfo a = Register("db01");
  VolumeInfo b = Register("db02");
  CommitSample(a);
  WriteGroup group;
  store_->AppendPoint(&group, b, Point(1, v1::POINT_FLUSH, "other volume"));
  ASSERT_TRUE(store_->Commit(&group).ok());
  std::vector<v1::ConsistencyPoint> out;
  ASSERT_TRUE(store_->ReadPoints("db01", 0, UINT64_MAX, &out, 1).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].lsn(), 2u);
  out.clear();
  ASSERT_TRUE(store_->ReadPoints("db01", 3, UINT64_MAX, &out, 2).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].lsn(), 6u);
  out.clear();
  ASSERT_TRUE(store_->ReadPoints("db01", 5, UINT64_MAX, &out, 10).ok());
  ASSERT_EQ(out.size(), 1u) << "the next volume's points are not this one's";
}

// Issue 15, item 12: a point sent with merge_labels where a point already sits keeps that point
// and adds the label; a sync-done point replaces it and keeps the labels.
TEST(MergePoint, KeepsTheExistingPointAndEveryLabel) {
  v1::ConsistencyPoint flush = Point(7, v1::POINT_FLUSH, "");
  v1::ConsistencyPoint op = Point(7, v1::POINT_OPERATOR, "before deploy");
  op.set_merge_labels(true);
  v1::ConsistencyPoint merged = MergePoint(flush, op);
  EXPECT_EQ(merged.origin(), v1::POINT_FLUSH);
  EXPECT_EQ(merged.time_ns(), flush.time_ns());
  ASSERT_EQ(merged.operator_labels_size(), 1);
  EXPECT_EQ(merged.operator_labels(0), "before deploy");
  EXPECT_FALSE(merged.merge_labels());
  merged = MergePoint(merged, op);  // the same label twice is kept once
  EXPECT_EQ(merged.operator_labels_size(), 1);

  v1::ConsistencyPoint sync = Point(7, v1::POINT_SYNC_DONE, "resync");
  sync.set_merge_labels(true);
  v1::ConsistencyPoint replaced = MergePoint(merged, sync);
  EXPECT_EQ(replaced.origin(), v1::POINT_SYNC_DONE);
  EXPECT_EQ(replaced.label(), "resync") << "a sync point's label says what it ends";
  ASSERT_EQ(replaced.operator_labels_size(), 1);
  EXPECT_EQ(replaced.operator_labels(0), "before deploy");

  v1::ConsistencyPoint first_op = Point(7, v1::POINT_OPERATOR, "first");
  v1::ConsistencyPoint over_op = MergePoint(first_op, sync);
  ASSERT_EQ(over_op.operator_labels_size(), 1);
  EXPECT_EQ(over_op.operator_labels(0), "first") << "the replaced operator point's label";
}

// Issue 17, item 3: a group freeze of a volume unchanged since its last point sends a member
// with merge_labels; the point kept there becomes that volume's member of the group point.
TEST(MergePoint, AGroupMemberMarksTheExistingPoint) {
  v1::ConsistencyPoint freeze = Point(7, v1::POINT_FREEZE, "");
  v1::ConsistencyPoint member = Point(7, v1::POINT_FREEZE, "");
  member.set_merge_labels(true);
  member.set_group("db01");
  member.set_group_point_id(1765000000000001);
  auto* m = member.add_group_members();
  m->set_volume("db01-sda");
  m->set_lsn(7);
  m = member.add_group_members();
  m->set_volume("db01-sdb");
  m->set_lsn(42);
  v1::ConsistencyPoint merged = MergePoint(freeze, member);
  EXPECT_EQ(merged.time_ns(), freeze.time_ns());
  EXPECT_EQ(merged.group(), "db01");
  EXPECT_EQ(merged.group_point_id(), 1765000000000001u);
  ASSERT_EQ(merged.group_members_size(), 2);
  EXPECT_EQ(merged.group_members(1).volume(), "db01-sdb");
  EXPECT_EQ(merged.group_members(1).lsn(), 42u);
  EXPECT_FALSE(merged.merge_labels());
}

TEST_F(JournalStoreTest, PreparePointsMergesWithTheBatchTheGroupAndTheJournal) {
  VolumeInfo a = Register("db01");
  CommitSample(a);  // a flush point at LSN 2
  WriteGroup group;
  v1::ConsistencyPoint first = Point(2, v1::POINT_OPERATOR, "label one");
  first.set_merge_labels(true);
  std::vector<v1::ConsistencyPoint> batch1 = {first};
  ASSERT_TRUE(store_->PreparePoints(group, a, &batch1).ok());
  for (const auto& p : batch1) store_->AppendPoint(&group, a, p);
  v1::ConsistencyPoint second = Point(2, v1::POINT_OPERATOR, "label two");
  second.set_merge_labels(true);
  v1::ConsistencyPoint third = Point(2, v1::POINT_OPERATOR, "label three");
  third.set_merge_labels(true);
  v1::ConsistencyPoint fresh = Point(9, v1::POINT_OPERATOR, "nothing there");
  fresh.set_merge_labels(true);
  // The second merges with the first (in the group), the third with the second (same batch).
  std::vector<v1::ConsistencyPoint> batch2 = {second, third, fresh};
  ASSERT_TRUE(store_->PreparePoints(group, a, &batch2).ok());
  for (const auto& p : batch2) store_->AppendPoint(&group, a, p);
  ASSERT_TRUE(store_->Commit(&group).ok());
  std::vector<v1::ConsistencyPoint> out;
  ASSERT_TRUE(store_->ReadPoints("db01", 2, 2, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].origin(), v1::POINT_FLUSH);
  EXPECT_THAT(
      std::vector<std::string>(out[0].operator_labels().begin(), out[0].operator_labels().end()),
      ::testing::ElementsAre("label one", "label two", "label three"));
  out.clear();
  ASSERT_TRUE(store_->ReadPoints("db01", 9, 9, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].origin(), v1::POINT_OPERATOR);
  EXPECT_EQ(out[0].label(), "nothing there");
  EXPECT_FALSE(out[0].merge_labels()) << "the flag is never stored";
}

// A resend is compared with the header journaled or appended under its LSN.
TEST_F(JournalStoreTest, StoredHeaderSeesTheJournalAndTheOpenGroup) {
  VolumeInfo a = Register("db01");
  const auto records = SampleRecords();
  WriteGroup group;
  store_->AppendRecord(&group, a, records[0], *records[0].payload);
  ASSERT_TRUE(store_->Commit(&group).ok());
  WriteGroup open;
  store_->AppendRecord(&open, a, records[1], *records[1].payload);
  auto committed = store_->StoredHeader("db01", 1, open);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->crc32c, records[0].crc32c);
  EXPECT_EQ(committed->payload, nullptr);
  auto pending = store_->StoredHeader("db01", 2, open);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_EQ(pending->offset, records[1].offset);
  EXPECT_EQ(store_->StoredHeader("db01", 3, open).status().code(), StatusCode::kNotFound);
}

TEST_F(JournalStoreTest, RecordTime) {
  CommitSample(Register("db01"));
  auto t = store_->RecordTime("db01", 4);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, 1'000'000'004u);
  auto t3 = store_->RecordTime("db01", 3);
  ASSERT_TRUE(t3.ok()) << t3.status();
  EXPECT_EQ(*t3, 3'000'000'000u);

  auto missing = store_->RecordTime("db01", 99);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("LSN 99"));
  EXPECT_EQ(store_->RecordTime("db09", 1).status().code(), StatusCode::kNotFound);
}

TEST_F(JournalStoreTest, ReadRecordsOfAnUnknownVolumeIsNotFound) {
  std::vector<ChangeRecord> out;
  Status s = store_->ReadRecords("db09", 1, kNoLimit, 10, &out);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("db09"));
}

TEST_F(JournalStoreTest, JournalKeyIsBigEndianVolumeThenLsn) {
  EXPECT_EQ(JournalKey(0x01020304, 0x05060708090A0B0Cull),
            std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0A\x0B\x0C", 12));
  EXPECT_LT(JournalKey(1, 255), JournalKey(1, 256));
  EXPECT_LT(JournalKey(1, UINT64_MAX), JournalKey(2, 0));
}

TEST_F(JournalStoreTest, SecondOpenOfTheSameDirIsUnavailableBecauseLocked) {
  auto second = JournalStore::Open(dir_.File("data"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("locked"));
  EXPECT_THAT(second.status().message(), HasSubstr(dir_.File("data")));
  // The first store is unaffected.
  Register("db01");
  EXPECT_TRUE(store_->GetVolume("db01").ok());
}

TEST(JournalStoreOpen, UnwritableDataDirIsAnErrorNamingTheDir) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string file = dir.File("plain-file");
  std::ofstream(file) << "not a directory";
  const std::string data_dir = file + "/journal";
  auto store = JournalStore::Open(data_dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kIOError);
  EXPECT_THAT(store.status().message(), HasSubstr("data dir " + data_dir));
  EXPECT_THAT(store.status().message(), HasSubstr("--data-dir"));
}

// Damage written behind the store's back (a bad disk, a stray tool) is reported on read, with
// the volume and LSN, and never returned as data.
class JournalStoreDamageTest : public JournalStoreTest {
 protected:
  // Replaces the value of `key` in column family `cf` with `value`, with the store closed.
  void Overwrite(const std::string& cf, const std::string& key, const std::string& value) {
    store_.reset();
    const std::string path = dir_.File("data") + "/journal";
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), path, cfs, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == cf) {
        EXPECT_TRUE(db->Put(rocksdb::WriteOptions(), handles[i], key, value).ok());
      }
    }
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    EXPECT_TRUE(db->Close().ok());
    db.reset();
    Reopen();
  }
};

TEST_F(JournalStoreDamageTest, FlippedPayloadBitIsCorruptionNamingTheLsn) {
  VolumeInfo v = Register("db01");
  CommitSample(v);
  std::string payload = *SampleRecords()[0].payload;
  payload[100] = static_cast<char>(payload[100] ^ 0x10);
  Overwrite("payload", JournalKey(v.id, 1), payload);

  std::vector<ChangeRecord> out;
  Status s = store_->ReadRecords("db01", 1, kNoLimit, 10, &out);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("journal volume db01"));
  EXPECT_THAT(s.message(), HasSubstr("LSN 1"));
  EXPECT_THAT(s.message(), HasSubstr("CRC32C mismatch"));
  // Records past the damage are still readable.
  EXPECT_EQ(Lsns(Read("db01", 2, kNoLimit, 100)), (std::vector<uint64_t>{2, 3, 4, 5, 6}));
}

TEST_F(JournalStoreDamageTest, DamagedHeaderIsCorruption) {
  VolumeInfo v = Register("db01");
  CommitSample(v);
  std::string header = EncodeRecordHeader(SampleRecords()[2]);
  header[13] = static_cast<char>(header[13] ^ 0x01);
  Overwrite("index", JournalKey(v.id, 3), header);

  std::vector<ChangeRecord> out;
  Status s = store_->ReadRecords("db01", 1, kNoLimit, 10, &out);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("journal volume db01: record header CRC mismatch"));
}

TEST_F(JournalStoreDamageTest, HeaderUnderTheWrongKeyIsCorruption) {
  VolumeInfo v = Register("db01");
  CommitSample(v);
  Overwrite("index", JournalKey(v.id, 3), EncodeRecordHeader(SampleRecords()[4]));

  std::vector<ChangeRecord> out;
  Status s = store_->ReadRecords("db01", 3, kNoLimit, 10, &out);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("index key LSN 3 holds record LSN 5"));
}

}  // namespace
}  // namespace cdp::journal
