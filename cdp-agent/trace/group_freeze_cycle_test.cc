#include "cdp/agent/group_freeze_cycle.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <thread>

namespace cdp::agent {
namespace {

// Every phase call, in order, from every fake: "sda:prepare", "fs /:freeze", ...
std::vector<std::string>* g_calls;

class FakeFs : public Freezable {
 public:
  FakeFs(std::string path, dev_t dev) : path_(std::move(path)), dev_(dev) {}
  Status Freeze(int hard_limit_ms) override {
    g_calls->push_back("fs " + path_ + ":freeze " + std::to_string(hard_limit_ms));
    if (!freeze_error.ok()) return freeze_error;
    frozen_ = true;
    return Status::Ok();
  }
  Status ExtendHold(int hard_limit_ms) override {
    g_calls->push_back("fs " + path_ + ":extend " + std::to_string(hard_limit_ms));
    return Status::Ok();
  }
  Status Thaw() override {
    g_calls->push_back("fs " + path_ + ":thaw");
    frozen_ = false;
    return Status::Ok();
  }
  bool frozen() const override { return frozen_; }
  const std::string& mount_path() const override { return path_; }
  dev_t fs_dev() const override { return dev_; }
  Status freeze_error = Status::Ok();

 private:
  std::string path_;
  dev_t dev_;
  bool frozen_ = false;
};

class FakeMember : public FreezeMember {
 public:
  FakeMember(std::string volume, std::vector<Freezable*> fs, uint64_t lsn)
      : volume_(std::move(volume)), fs_(std::move(fs)), lsn_(lsn) {}
  const std::string& volume() const override { return volume_; }
  void Park() override { Note("park"); }
  void Unpark() override { Note("unpark"); }
  std::vector<Freezable*> Filesystems() override { return fs_; }
  Status CanCheckpoint() override { return can_checkpoint; }
  bool Prepare(int64_t) override {
    Note("prepare");
    return ready;
  }
  bool ChangedSincePoint() override { return changed; }
  uint64_t last_point_lsn() override { return point_lsn; }
  uint64_t WritesSincePoint() override { return writes; }
  std::string CaptureResidual(int64_t, int64_t) override {
    // Every filesystem of the group is frozen while any member reads its residual set.
    for (Freezable* f : all_fs) EXPECT_TRUE(f->frozen()) << f->mount_path();
    Note("capture");
    lsn_ += written_while_frozen;
    return abandon;
  }
  uint64_t last_lsn() override { return lsn_; }
  void OnThawed() override { Note("thawed"); }
  std::string AfterThaw() override { return ""; }
  uint64_t RecordPoint(const std::string& label, const GroupPointMark* group) override {
    Note("point " + std::to_string(lsn_) + (label.empty() ? "" : " '" + label + "'"));
    if (group != nullptr) marks.push_back(*group);
    point_lsn = lsn_;
    return lsn_;
  }
  void Finish(uint64_t, uint64_t, const std::string& why, uint64_t) override {
    Note(why.empty() ? "finish" : "finish: " + why);
  }
  void FreezeRefused(const Status& why) override { Note("refused: " + why.message()); }

  bool ready = true;
  bool changed = true;
  std::string abandon;
  uint64_t written_while_frozen = 0;
  uint64_t point_lsn = 0;
  uint64_t writes = 1000;
  Status can_checkpoint = Status::Ok();
  std::vector<Freezable*> all_fs;
  std::vector<GroupPointMark> marks;

 private:
  void Note(const std::string& what) { g_calls->push_back(volume_ + ":" + what); }
  std::string volume_;
  std::vector<Freezable*> fs_;
  uint64_t lsn_;
};

class GroupFreezeCycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_calls = &calls_;
    for (FakeMember* m : {&sda_, &sdb_}) m->all_fs = {&root_, &pg_, &srv_};
  }
  std::vector<std::string> calls_;
  FakeFs root_{"/", makedev(8, 2)};
  FakeFs srv_{"/srv", makedev(254, 1)};
  FakeFs pg_{"/var/lib/postgresql", makedev(254, 0)};
  FakeFs pg_again_{"/var/lib/postgresql", makedev(254, 0)};  // the same filesystem, twice
  FakeMember sda_{"db01-sda", {&root_}, 100};
  FakeMember sdb_{"db01-sdb", {&pg_, &srv_, &pg_again_}, 7};
  GroupFreezeCycleOptions Options() {
    GroupFreezeCycleOptions o;
    o.group = "db01";
    o.freeze_limit_ms = 60000;
    o.hard_limit_ms = 500;
    return o;
  }
};

TEST_F(GroupFreezeCycleTest, FreezesAllInOrderThenThawsInReverseAndMarksOneGroupPoint) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  sdb_.written_while_frozen = 3;  // its residual set: three records
  auto points = cycle.RunCycle("", 60000, 0);
  ASSERT_TRUE(points.ok()) << points.status().ToString();
  EXPECT_EQ(calls_,
            (std::vector<std::string>{
                "db01-sda:park",     "db01-sdb:park",      "db01-sda:prepare",
                "db01-sdb:prepare",  "db01-sda:prepare",   "db01-sdb:prepare",
                "fs /:freeze 500",   "fs /srv:freeze 500", "fs /var/lib/postgresql:freeze 500",
                "db01-sda:capture",  "db01-sdb:capture",   "fs /var/lib/postgresql:thaw",
                "fs /srv:thaw",      "fs /:thaw",          "db01-sda:thawed",
                "db01-sdb:thawed",   "db01-sda:point 100", "db01-sda:finish",
                "db01-sdb:point 10", "db01-sdb:finish",    "db01-sdb:unpark",
                "db01-sda:unpark"}));
  ASSERT_EQ(points->size(), 2u);
  EXPECT_EQ((*points)[1].volume, "db01-sdb");
  EXPECT_EQ((*points)[1].lsn, 10u);
  ASSERT_EQ(sda_.marks.size(), 1u);
  ASSERT_EQ(sdb_.marks.size(), 1u);
  EXPECT_EQ(sda_.marks[0].group, "db01");
  EXPECT_NE(sda_.marks[0].id, 0u);
  EXPECT_EQ(sda_.marks[0].id, sdb_.marks[0].id) << "one group point";
  ASSERT_EQ(sda_.marks[0].members.size(), 2u);
  EXPECT_EQ(sda_.marks[0].members[0].volume, "db01-sda");
  EXPECT_EQ(sda_.marks[0].members[0].lsn, 100u);
  EXPECT_EQ(sda_.marks[0].members[1].volume, "db01-sdb");
  EXPECT_EQ(sda_.marks[0].members[1].lsn, 10u);
}

TEST_F(GroupFreezeCycleTest, AVolumeAloneMakesAPlainPoint) {
  sda_.all_fs = {&root_};
  GroupFreezeCycle cycle(Options(), {&sda_});
  auto points = cycle.RunCycle("before deploy", 60000, 0);
  ASSERT_TRUE(points.ok());
  EXPECT_TRUE(sda_.marks.empty());
  EXPECT_NE(std::find(calls_.begin(), calls_.end(), "db01-sda:point 100 'before deploy'"),
            calls_.end());
}

TEST_F(GroupFreezeCycleTest, OneMemberAbandoningAbandonsTheGroupPoint) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  sdb_.abandon = "send buffer full";
  auto points = cycle.RunCycle("", 60000, 0);
  ASSERT_FALSE(points.ok());
  EXPECT_EQ(points.status().message(), "freeze abandoned: volume db01-sdb: send buffer full");
  EXPECT_EQ(std::count_if(calls_.begin(), calls_.end(),
                          [](const std::string& c) { return c.find(":point") != c.npos; }),
            0);
  EXPECT_NE(std::find(calls_.begin(), calls_.end(),
                      "db01-sda:finish: the group freeze was abandoned (volume db01-sdb: send "
                      "buffer full)"),
            calls_.end());
  EXPECT_FALSE(root_.frozen());
  EXPECT_FALSE(pg_.frozen());
}

TEST_F(GroupFreezeCycleTest, AFailedFreezeThawsWhatWasFrozen) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  pg_.freeze_error = Status::FailedPrecondition("/var/lib/postgresql is already frozen");
  auto points = cycle.RunCycle("", 60000, 0);
  ASSERT_FALSE(points.ok());
  EXPECT_EQ(points.status().message(), "/var/lib/postgresql is already frozen");
  EXPECT_FALSE(root_.frozen());
  EXPECT_FALSE(srv_.frozen());
  auto thaw = std::find(calls_.begin(), calls_.end(), "fs /srv:thaw");
  ASSERT_NE(thaw, calls_.end());
  EXPECT_EQ(*(thaw + 1), "fs /:thaw");
  EXPECT_NE(std::find(calls_.begin(), calls_.end(),
                      "db01-sdb:refused: /var/lib/postgresql is already frozen"),
            calls_.end());
}

TEST_F(GroupFreezeCycleTest, NotReadyOrUnchangedMakesNoFreeze) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  sdb_.ready = false;
  auto busy = cycle.RunCycle("", 60000, 0);
  ASSERT_FALSE(busy.ok());
  EXPECT_TRUE(busy.status().code() == StatusCode::kAborted);
  sdb_.ready = true;
  sda_.changed = sdb_.changed = false;
  sda_.point_lsn = 90;
  sdb_.point_lsn = 5;
  auto same = cycle.RunCycle("", 60000, 0);
  ASSERT_TRUE(same.ok());
  ASSERT_EQ(same->size(), 2u);
  EXPECT_EQ((*same)[0].lsn, 90u) << "the last points still hold";
  EXPECT_EQ(std::count_if(calls_.begin(), calls_.end(),
                          [](const std::string& c) { return c.find(":freeze") != c.npos; }),
            0);
}

// Issue 17, item 2: a freeze's own writes (ext4's superblock at the thaw, the agent's state
// files on the frozen root) must not make every periodic cycle freeze again forever.
TEST_F(GroupFreezeCycleTest, QuietFilesystemsBackOff) {
  GroupFreezeCycleOptions o = Options();
  o.checkpoint_interval_ms = 10000;
  GroupFreezeCycle cycle(o, {&sda_, &sdb_});
  auto freezes = [&] { return std::count(calls_.begin(), calls_.end(), "fs /:freeze 500"); };
  sda_.writes = sdb_.writes = 3;  // a few writes: the last freeze's own
  ASSERT_TRUE(cycle.RunCycle("", 60000, 0).ok());
  EXPECT_EQ(freezes(), 1) << "the first quiet cycle still freezes";
  ASSERT_TRUE(cycle.RunCycle("", 60000, 0).ok());
  EXPECT_EQ(freezes(), 1) << "the next one, within twice the interval, does not";
  sdb_.writes = GroupFreezeCycle::kQuietWrites + 1;  // the application writes again
  ASSERT_TRUE(cycle.RunCycle("", 60000, 0).ok());
  EXPECT_EQ(freezes(), 2);
  ASSERT_TRUE(cycle.RunCycle("", 60000, 0).ok());
  EXPECT_EQ(freezes(), 3) << "a busy cycle resets the back-off";
  sdb_.writes = 3;
  ASSERT_TRUE(cycle.Checkpoint("asked", 1000).ok());
  EXPECT_EQ(freezes(), 4) << "a checkpoint never waits";
}

TEST_F(GroupFreezeCycleTest, HeldFreezeStaysFrozenUntilThaw) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  auto held = cycle.FreezeAndHold("cutover", std::chrono::milliseconds(5000),
                                  std::chrono::milliseconds(30000));
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  ASSERT_EQ(held->size(), 2u);
  EXPECT_EQ((*held)[0].lsn, 100u);
  EXPECT_NE(std::find(calls_.begin(), calls_.end(), "fs /:freeze 30000"), calls_.end())
      << "the watchdogs are armed with the hold limit";
  EXPECT_TRUE(root_.frozen());
  EXPECT_TRUE(pg_.frozen());
  EXPECT_GE(cycle.HeldFor().count(), 0);
  EXPECT_EQ(
      cycle.FreezeAndHold("again", std::chrono::milliseconds(100), std::chrono::milliseconds(100))
          .status()
          .message(),
      "a freeze is already held");
  EXPECT_TRUE(cycle.Checkpoint("x", 100).status().code() == StatusCode::kFailedPrecondition);
  calls_.clear();
  ASSERT_TRUE(cycle.RenewHold(std::chrono::milliseconds(60000)).ok());
  EXPECT_EQ(calls_, (std::vector<std::string>{"fs /:extend 60000", "fs /srv:extend 60000",
                                              "fs /var/lib/postgresql:extend 60000"}));
  calls_.clear();
  ASSERT_TRUE(cycle.Thaw().ok());
  EXPECT_EQ(calls_, (std::vector<std::string>{"fs /var/lib/postgresql:thaw", "fs /srv:thaw",
                                              "fs /:thaw", "db01-sda:thawed", "db01-sdb:thawed"}));
  EXPECT_FALSE(root_.frozen());
  EXPECT_EQ(cycle.HeldFor().count(), 0);
  EXPECT_TRUE(cycle.RenewHold(std::chrono::milliseconds(1)).code() ==
              StatusCode::kFailedPrecondition);
  EXPECT_TRUE(cycle.Thaw().ok()) << "nothing frozen: OK";
}

TEST_F(GroupFreezeCycleTest, AHoldPastItsLimitIsOver) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  ASSERT_TRUE(
      cycle.FreezeAndHold("cutover", std::chrono::milliseconds(5000), std::chrono::milliseconds(50))
          .ok());
  EXPECT_GT(cycle.HeldFor().count(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the watchdogs thaw now
  EXPECT_EQ(cycle.HeldFor().count(), 0);
  EXPECT_EQ(cycle.RenewHold(std::chrono::milliseconds(1000)).message(),
            "no freeze is held: it passed its hold limit and the watchdogs thawed it");
  EXPECT_TRUE(cycle.Thaw().ok());
  EXPECT_TRUE(
      cycle
          .FreezeAndHold("again", std::chrono::milliseconds(5000), std::chrono::milliseconds(30000))
          .ok())
      << "a new hold after the expired one";
  EXPECT_TRUE(cycle.Thaw().ok());
}

TEST_F(GroupFreezeCycleTest, CheckpointRefusedByAMember) {
  GroupFreezeCycle cycle(Options(), {&sda_, &sdb_});
  sdb_.can_checkpoint = Status::FailedPrecondition("volume db01-sdb: a checksum resync");
  EXPECT_EQ(cycle.Checkpoint("x", 1000).status().message(), "volume db01-sdb: a checksum resync");
  GroupFreezeCycle none(Options(), {});
  EXPECT_TRUE(none.Checkpoint("x", 1000).status().code() == StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cdp::agent
