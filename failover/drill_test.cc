#include "cdp/failover/drill.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <sstream>

#include "engine_fakes_test.h"

namespace cdp::failover {
namespace {

using testing::CallLog;
using testing::FakeJournal;
using testing::FakeTarget;
using testing::TakeoverReply;
using Calls = std::vector<std::string>;

// The host side of a drill, recorded: each call as "sandbox.NAME".
class FakeSandbox final : public DrillSandbox {
 public:
  explicit FakeSandbox(CallLog* log) : log_(log) {}
  bool leftovers = false;
  bool namespace_exists = false;
  Result<std::string> prepare = std::string();
  Status freeze = Status::Ok();
  Status network = Status::Ok();
  Status boot = Status::Ok();
  TeardownResult teardown{{"drill VM stopped", "namespace cdp-drill removed"}, {}};

  bool LeftoversExist() override {
    log_->Record("sandbox.LeftoversExist");
    return leftovers;
  }
  bool NamespaceExists() override {
    log_->Record("sandbox.NamespaceExists");
    return namespace_exists;
  }
  Result<std::string> PrepareTarget() override {
    log_->Record("sandbox.PrepareTarget");
    return prepare;
  }
  Result<std::string> Freeze(std::map<std::string, uint64_t>* lsn) override {
    log_->Record("sandbox.Freeze");
    if (!freeze.ok()) return freeze;
    (*lsn)["v"] = 12;
    return std::string("target disks frozen at LSN v 12");
  }
  Result<std::string> MakeNetwork() override {
    log_->Record("sandbox.MakeNetwork");
    if (!network.ok()) return network;
    return std::string("namespace cdp-drill up");
  }
  Result<std::string> BootDrillVm() override {
    log_->Record("sandbox.BootDrillVm");
    if (!boot.ok()) return boot;
    return std::string("drill VM tgt-drill pe-ready");
  }
  Result<std::string> InNamespace(const std::function<Result<std::string>()>& fn) override {
    log_->Record("sandbox.InNamespace");
    auto r = fn();
    log_->Record("sandbox.LeftNamespace");
    return r;
  }
  TeardownResult Teardown() override {
    log_->Record("sandbox.Teardown");
    return teardown;
  }

 private:
  CallLog* log_;
};

class DrillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/drill_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    plan_.file = dir_ + "/drill.yaml";
    plan_.name = "lab";
    plan_.journal = "tcp://127.0.0.1:7700";
    plan_.volumes = {"v"};
    plan_.root_volume = "v";
    plan_.target_config = dir_ + "/target.yaml";
    plan_.target.name = "tgt";
    plan_.target.state_dir = dir_;
    plan_.target.service_nic.mode = "tap";
    plan_.target.disks = {{"v", dir_ + "/v.qcow2", 1 << 20}};
    plan_.drill_namespace = "cdp-drill";
    plan_.drill_address = "192.0.2.1/24";

    sandbox_ = std::make_unique<FakeSandbox>(&log_);
    journal_ = std::make_unique<FakeJournal>(&log_);
    target_ = std::make_unique<FakeTarget>(&log_, "target");
    drill_vm_ = std::make_unique<FakeTarget>(&log_, "drill");
    journal_->lsn = {{"v", 30}};
    target_->applied = {{"v", 12}};
    drill_vm_->takeover = TakeoverReply(true);
    // The target goes on applying once its disks are frozen.
    FakeTarget* target = target_.get();
    log_.at["sandbox.Freeze#1"] = [target] { target->applied["v"] = 20; };
  }

  void TearDown() override { std::filesystem::remove_all(dir_); }

  DrillReport Run() {
    DrillPorts ports;
    ports.sandbox = std::move(sandbox_);
    ports.journal = std::move(journal_);
    ports.target = std::move(target_);
    ports.drill_vm = std::move(drill_vm_);
    ports.wait_for_service = testing::FakeHealthCheck(&log_, &health);
    return DrillEngine(plan_, std::move(ports), &timeline_, &cancel_).Run();
  }

  static std::vector<std::string> Steps(const DrillReport& r) {
    std::vector<std::string> out;
    for (const auto& s : r.steps) out.push_back(s.name + (s.ok ? " ok: " : " FAILED: ") + s.result);
    return out;
  }
  static std::vector<std::string> StepNames(const DrillReport& r) {
    std::vector<std::string> out;
    for (const auto& s : r.steps) out.push_back(s.name);
    return out;
  }

  std::string dir_;
  CutoverPlan plan_;
  CallLog log_;
  std::unique_ptr<FakeSandbox> sandbox_;
  std::unique_ptr<FakeJournal> journal_;
  std::unique_ptr<FakeTarget> target_, drill_vm_;
  Result<std::string> health = std::string("192.0.2.10:7000 answers");
  std::atomic<bool> cancel_{false};
  std::ostringstream timeline_;
};

TEST_F(DrillTest, HappyPathCallsEachPortInStepOrder) {
  const DrillReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r),
            (std::vector<std::string>{
                "precheck ok: target tgt pe-ready (applied LSN v 12); namespace cdp-drill free",
                "snapshot ok: target disks frozen at LSN v 12",
                "network ok: namespace cdp-drill up", "boot ok: drill VM tgt-drill pe-ready",
                "prepare ok: not needed: takeover dry run passed (0 change(s) to the migrated OS "
                "planned)",
                "promote ok: switch_root into the migrated OS on /dev/vda (check 0.01 s)",
                "health ok: 192.0.2.10:7000 answers in namespace cdp-drill",
                "replication ok: the target went on applying during the drill: v 12 -> 20 "
                "(replicator v connected)",
                "teardown ok: drill VM stopped; namespace cdp-drill removed"}));
  EXPECT_EQ(r.snapshot_lsn, (std::vector<std::pair<std::string, uint64_t>>{{"v", 12}}));
  EXPECT_EQ(r.applied_lsn_after, (std::vector<std::pair<std::string, uint64_t>>{{"v", 20}}));
  EXPECT_EQ(r.teardown, "drill VM stopped; namespace cdp-drill removed");
  // The takeover and the health check run inside the namespace; the source is never asked.
  EXPECT_EQ(log_.calls,
            (Calls{"sandbox.LeftoversExist", "sandbox.NamespaceExists", "sandbox.PrepareTarget",
                   "target.Status", "sandbox.Freeze", "sandbox.MakeNetwork", "sandbox.BootDrillVm",
                   "sandbox.InNamespace", "drill.Takeover v dry-run", "sandbox.LeftNamespace",
                   "sandbox.InNamespace", "drill.Takeover v", "sandbox.LeftNamespace",
                   "sandbox.InNamespace", "health", "sandbox.LeftNamespace", "target.Status",
                   "journal.Status", "sandbox.Teardown"}));
}

// An initramfs without the virtio drivers: the drill VM's PE prepares the boot, then takes over.
TEST_F(DrillTest, ADryRunThatRefusesPreparesTheDrillVmsBoot) {
  wire::v1::TakeoverReply refused;
  refused.set_ok(false);
  refused.set_error("the migrated OS's initramfs has no virtio_blk");
  drill_vm_->dry_run_takeover = refused;
  wire::v1::PrepareBootReply prepared;
  prepared.set_ok(true);
  auto* step = prepared.add_steps();
  step->set_name("initramfs");
  step->set_result("/boot/initrd.img-6.1.0-pe rebuilt with virtio_blk");
  drill_vm_->prepare_boot = prepared;
  const DrillReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[4], "prepare ok: /boot/initrd.img-6.1.0-pe rebuilt with virtio_blk");
  EXPECT_THAT(log_.calls, ::testing::IsSupersetOf({"drill.Takeover v dry-run",
                                                   "drill.PrepareBoot v", "drill.Takeover v"}));
}

TEST_F(DrillTest, LeftoversOfADrillThatDiedAreTornDownFirst) {
  sandbox_->leftovers = true;
  const DrillReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[0],
            "precheck ok: target tgt pe-ready (applied LSN v 12); namespace cdp-drill free; "
            "cleaned up after a drill that did not finish (drill VM stopped; namespace cdp-drill "
            "removed)");
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "sandbox.Teardown"), 2);
}

TEST_F(DrillTest, AForeignNamespaceIsRefusedAndNothingIsTornDown) {
  sandbox_->namespace_exists = true;
  const DrillReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "precheck: " + plan_.file +
                         ": 'drill.namespace': network namespace cdp-drill exists but no drill of "
                         "target tgt left it (no drill files in " +
                         dir_ +
                         "); remove it (ip netns del cdp-drill) or choose another drill.namespace");
  EXPECT_EQ(StepNames(r), (std::vector<std::string>{"precheck"}));
  EXPECT_EQ(log_.calls, (Calls{"sandbox.LeftoversExist", "sandbox.NamespaceExists"}));
}

TEST_F(DrillTest, ATargetWithoutServiceNicIsRefusedBeforeAnythingIsAsked) {
  plan_.target.service_nic.mode = "none";
  const DrillReport r = Run();
  EXPECT_EQ(r.error, "precheck: " + plan_.file + ": 'target.config': " + plan_.target_config +
                         ": target tgt has service_nic.mode none; a drill boots its copy on a "
                         "copy of the service network and needs the service NIC (mode tap or "
                         "user)");
  EXPECT_TRUE(log_.calls.empty());
}

TEST_F(DrillTest, ATeardownThatFailsFailsTheDrill) {
  sandbox_->teardown = {{"drill VM stopped"}, {"ip netns del cdp-drill: busy"}};
  const DrillReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "teardown: ip netns del cdp-drill: busy (done: drill VM stopped); run the drill again "
            "to finish the cleanup");
  EXPECT_EQ(r.teardown, "drill VM stopped; FAILED: ip netns del cdp-drill: busy");
}

// --- a failure at each step: the drill stops there and tears down ---------------------------

class DrillFailTest;

struct FailCase {
  std::string name;
  std::function<void(DrillFailTest*)> fail;
  std::string error;
};

class DrillFailTest : public DrillTest, public ::testing::WithParamInterface<FailCase> {
 public:
  FakeSandbox* sandbox() { return sandbox_.get(); }
  FakeTarget* target() { return target_.get(); }
  FakeTarget* drill_vm() { return drill_vm_.get(); }
  void set_health(Result<std::string> r) { health = std::move(r); }
  CallLog& log() { return log_; }
};

TEST_P(DrillFailTest, StopsThereAndTearsDown) {
  GetParam().fail(this);
  const DrillReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, GetParam().error);
  EXPECT_EQ(r.steps.back().name, "teardown");
  EXPECT_TRUE(r.steps.back().ok);
  EXPECT_EQ(log_.calls.back(), "sandbox.Teardown");
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, DrillFailTest,
    ::testing::Values(
        FailCase{"precheck",
                 [](DrillFailTest* t) {
                   auto* self = t;
                   self->target()->state = wire::v1::PE_STATE_ERROR;
                   self->target()->error = "disk v too small";
                 },
                 "precheck: the target is pe-error: disk v too small"},
        FailCase{"snapshot",
                 [](DrillFailTest* t) {
                   t->sandbox()->freeze =
                       Status::FailedPrecondition("target tgt has no drive disk0");
                 },
                 "snapshot: target tgt has no drive disk0"},
        FailCase{"network",
                 [](DrillFailTest* t) {
                   t->sandbox()->network =
                       Status::FailedPrecondition("ip netns add cdp-drill failed: exists");
                 },
                 "network: ip netns add cdp-drill failed: exists"},
        FailCase{"boot",
                 [](DrillFailTest* t) {
                   t->sandbox()->boot =
                       Status::TimedOut("drill VM tgt-drill: no pe-ready within 120 s");
                 },
                 "boot: drill VM tgt-drill: no pe-ready within 120 s"},
        FailCase{"prepare",
                 [](DrillFailTest* t) {
                   wire::v1::TakeoverReply refused;
                   refused.set_ok(false);
                   refused.set_error("the migrated OS's initramfs has no virtio_blk");
                   t->drill_vm()->dry_run_takeover = refused;
                   wire::v1::PrepareBootReply failed;
                   failed.set_ok(false);
                   failed.set_error("the migrated OS has neither update-initramfs nor dracut");
                   t->drill_vm()->prepare_boot = failed;
                 },
                 "prepare: the drill VM's pe-agent could not prepare the boot: the migrated OS "
                 "has neither update-initramfs nor dracut (the target's takeover dry run "
                 "refuses: the migrated OS's initramfs has no virtio_blk)"},
        FailCase{"promote",
                 [](DrillFailTest* t) {
                   t->drill_vm()->takeover = TakeoverReply(false, "no root filesystem on v");
                 },
                 "promote: the pe-agent refused the takeover: no root filesystem on v (check "
                 "0.01 s)"},
        FailCase{"health",
                 [](DrillFailTest* t) {
                   t->set_health(Status::TimedOut("the service at 192.0.2.10:7000 did not answer"));
                 },
                 "health: the service at 192.0.2.10:7000 did not answer"},
        FailCase{"replication",
                 [](DrillFailTest* t) {
                   auto* self = t;
                   FakeTarget* target = self->target();
                   self->log().at["target.Status#2"] = [target] {
                     target->state = wire::v1::PE_STATE_ERROR;
                   };
                 },
                 "replication: the target is pe-error after the drill: "}),
    [](const ::testing::TestParamInfo<FailCase>& info) { return info.param.name; });

// --- SIGINT at each step: the drill stops at the next step and tears down --------------------

struct CancelCase {
  std::string at;  // the call during which the signal lands ("" = before the run)
  std::string error;
};

class DrillCancelTest : public DrillTest, public ::testing::WithParamInterface<CancelCase> {};

TEST_P(DrillCancelTest, StopsAtTheNextStepAndTearsDown) {
  const CancelCase& c = GetParam();
  if (c.at.empty()) {
    cancel_ = true;
  } else {
    log_.at[c.at] = [this] { cancel_ = true; };
  }
  const DrillReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, c.error);
  EXPECT_EQ(r.steps.back().name, "teardown");
  EXPECT_EQ(log_.calls.back(), "sandbox.Teardown");
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, DrillCancelTest,
    ::testing::Values(
        CancelCase{"", "precheck: stopped by a signal before precheck"},
        CancelCase{"target.Status#1", "snapshot: stopped by a signal before snapshot"},
        CancelCase{"sandbox.Freeze#1", "network: stopped by a signal before network"},
        CancelCase{"sandbox.MakeNetwork#1", "boot: stopped by a signal before boot"},
        CancelCase{"sandbox.BootDrillVm#1", "prepare: stopped by a signal before prepare"},
        CancelCase{"drill.Takeover v dry-run#1", "promote: stopped by a signal before promote"},
        CancelCase{"drill.Takeover v#1", "health: stopped by a signal before health"},
        // Inside the health step: its wait is cut short.
        CancelCase{"sandbox.InNamespace#3",
                   "health: stopped by a signal while waiting for 192.0.2.10:7000 (no answer "
                   "yet)"},
        CancelCase{"sandbox.LeftNamespace#3",
                   "replication: stopped by a signal before replication"}));

TEST(PrepareBootSummary, SaysWhatTheInitramfsStepDidAndWhereItIsKept) {
  wire::v1::PrepareBootReply reply;
  reply.set_initramfs("/boot/initrd.img-6.1.0-57-amd64");
  EXPECT_EQ(PrepareBootSummary(reply), "/boot/initrd.img-6.1.0-57-amd64 prepared");
  auto add = [&](const std::string& name, const std::string& result) {
    auto* step = reply.add_steps();
    step->set_name(name);
    step->set_result(result);
  };
  add("check", "pe-ready");
  add("mount", "/dev/vda2 at /newroot read-only");
  EXPECT_EQ(PrepareBootSummary(reply), "/dev/vda2 at /newroot read-only");  // the last step's
  add("initramfs", "rebuilt with virtio_blk; kept in /run/cdp-prepared/6.1.0-57-amd64");
  add("keep", "the prepared images (10 bytes) kept on metadata disk /dev/vdc");
  EXPECT_EQ(PrepareBootSummary(reply),
            "rebuilt with virtio_blk; kept in /run/cdp-prepared/6.1.0-57-amd64; the prepared "
            "images (10 bytes) kept on metadata disk /dev/vdc");
}

}  // namespace
}  // namespace cdp::failover
