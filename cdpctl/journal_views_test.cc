#include "cdp/ctl/journal_views.h"

#include <gtest/gtest.h>

namespace cdp::ctl {
namespace {

namespace v1 = wire::v1;

// 2026-11-26T17:39:40.5Z
constexpr uint64_t kTime = 1795714780500000000ull;

std::vector<v1::ConsistencyPoint> TwoPoints() {
  std::vector<v1::ConsistencyPoint> points(2);
  points[0].set_lsn(7);
  points[0].set_time_ns(kTime);
  points[0].set_origin(v1::POINT_FLUSH);
  points[1].set_lsn(12);
  points[1].set_time_ns(kTime + 1'000'000'001);
  points[1].set_origin(v1::POINT_OPERATOR);
  points[1].set_label("before-upgrade");
  points[1].add_operator_labels("db-consistent");
  return points;
}

TEST(JournalViews, PointsTableListsEveryPointWithItsLabels) {
  EXPECT_EQ(PointsTable(TwoPoints()),
            "LSN                  TIME (UTC)                      ORIGIN    LABEL\n"
            "7                    2026-11-26T17:39:40.500000000Z  flush     \n"
            "12                   2026-11-26T17:39:41.500000001Z  operator  before-upgrade, "
            "db-consistent\n"
            "2 point(s)\n");
}

TEST(JournalViews, PointsJsonNamesOriginsAndKeepsLabelsApart) {
  EXPECT_EQ(PointsJson(TwoPoints()),
            R"([{"label":"","lsn":7,"operator_labels":[],"origin":"flush",)"
            R"("time":"2026-11-26T17:39:40.500000000Z"},)"
            R"({"label":"before-upgrade","lsn":12,"operator_labels":["db-consistent"],)"
            R"("origin":"operator","time":"2026-11-26T17:39:41.500000001Z"}])");
}

// Issue 17, item 3: a member of a group point names the group, its id and every member's LSN.
TEST(JournalViews, PointsShowTheGroupPoint) {
  v1::ConsistencyPoint p;
  p.set_lsn(12);
  p.set_time_ns(1795714781500000001ull);
  p.set_origin(v1::POINT_FREEZE);
  p.set_group("db01");
  p.set_group_point_id(1764178781500000);
  auto* m = p.add_group_members();
  m->set_volume("db01-sda");
  m->set_lsn(12);
  m = p.add_group_members();
  m->set_volume("db01-sdb");
  m->set_lsn(40);
  EXPECT_EQ(PointsTable({p}),
            "LSN                  TIME (UTC)                      ORIGIN    LABEL\n"
            "12                   2026-11-26T17:39:41.500000001Z  freeze      [group db01 point "
            "1764178781500000: db01-sda@12 db01-sdb@40]\n"
            "1 point(s)\n");
  EXPECT_EQ(PointsJson({p}),
            R"([{"group":"db01","group_members":[{"lsn":12,"volume":"db01-sda"},)"
            R"({"lsn":40,"volume":"db01-sdb"}],"group_point_id":1764178781500000,"label":"",)"
            R"("lsn":12,"operator_labels":[],"origin":"freeze",)"
            R"("time":"2026-11-26T17:39:41.500000001Z"}])");
}

TEST(JournalViews, OriginNameOfAnUnknownOriginIsUnknown) {
  EXPECT_EQ(OriginName(v1::POINT_SYNC_DONE), "sync");
  EXPECT_EQ(OriginName(static_cast<v1::PointOrigin>(99)), "unknown");
}

TEST(JournalViews, RetentionTextSaysWhatAnEarlyFoldLost) {
  v1::RetentionReply r;
  r.set_volume("db01-sda");
  r.set_window_s(7200);
  r.set_max_bytes(512ull << 20);
  r.set_max_bytes_default(true);
  r.set_journal_bytes(3ull << 20);
  r.set_base_lsn(40);
  r.set_durable_lsn(90);
  r.set_oldest_point_lsn(41);
  r.set_oldest_point_time_ns(kTime);
  r.set_early_folds(1);
  r.set_early_fold_lsn(40);
  r.set_early_fold_time_ns(kTime);
  EXPECT_EQ(RetentionText(r),
            "volume db01-sda\n"
            "  window:        2h\n"
            "  max bytes:     512.0 MiB (server default)\n"
            "  journal:       3.0 MiB, LSN 41..90 (base image holds LSN 40)\n"
            "  oldest point:  LSN 41 (2026-11-26T17:39:40.500000000Z)\n"
            "  early folds:   1 (the size cap folded history inside the window; history before "
            "2026-11-26T17:39:40.500000000Z, LSN 40, is lost)\n");
}

TEST(JournalViews, StatusTableSaysWhenTheJournalIsFull) {
  v1::StatusReply reply;
  reply.set_journal_free_bytes(1 << 20);
  reply.set_journal_reserve_bytes(1 << 30);
  EXPECT_TRUE(JournalFull(reply));
  EXPECT_EQ(StatusTable(reply),
            "VOLUME                 SIZE   CAPTURED    DURABLE    APPLIED   LAG(s)    RECEIVED  "
            "STATE\n"
            "(no volumes yet: start a cdp-agent)\n"
            "journal full: 1.0 MiB free on its filesystem, under the reserve of 1.0 GiB: nothing "
            "is journaled (agents track dirty regions); free space or set retention\n");
}

}  // namespace
}  // namespace cdp::ctl
