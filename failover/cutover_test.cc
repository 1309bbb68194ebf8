#include "cdp/failover/cutover.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "cdp/core/host_command.h"
#include "engine_fakes_test.h"

namespace cdp::failover {
namespace {

using testing::CallLog;
using testing::FakeJournal;
using testing::FakeSource;
using testing::FakeTarget;
using testing::TakeoverReply;
using Calls = std::vector<std::string>;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 8 * kMiB;  // two verification regions

class CutoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cutover_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    device_ = dir_ + "/source.img";
    std::string bytes(kVolumeBytes, '\0');
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 / 4096);
    std::ofstream(device_, std::ios::binary).write(bytes.data(), bytes.size());

    plan_.file = dir_ + "/plan.yaml";
    plan_.name = "lab";
    plan_.journal = "tcp://127.0.0.1:7700";
    plan_.volumes = {"v"};
    plan_.root_volume = "v";
    plan_.source_qmp_socket = dir_ + "/source.qmp";
    plan_.source_devices = {device_};
    plan_.quiesce.method = "qmp-pause";
    plan_.fence.method = "qmp-poweroff";
    plan_.target_config = dir_ + "/target.yaml";
    plan_.target.name = "tgt";
    plan_.target.state_dir = dir_;
    plan_.target.qmp_socket = dir_ + "/tgt.qmp";
    plan_.target.metadata_disk = dir_ + "/meta.qcow2";
    plan_.target.disks = {{"v", dir_ + "/v.qcow2", kVolumeBytes}};
    plan_.health.host = "192.0.2.10";
    plan_.health.port = 7000;

    source_ = std::make_unique<FakeSource>(&log_);
    journal_ = std::make_unique<FakeJournal>(&log_);
    target_ = std::make_unique<FakeTarget>(&log_, "target");
    journal_->lsn = {{"v", 10}};
    target_->applied = {{"v", 10}};
    target_->devices = {{"v", device_}};
    target_->sizes = {{"v", kVolumeBytes}};
    target_->written = {1};
    target_->takeover = TakeoverReply(true);
  }

  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs the cutover over the fakes.
  CutoverReport Run() { return RunWith(std::move(source_)); }

  // Runs the cutover over `source` and the other fakes.
  CutoverReport RunWith(std::unique_ptr<SourceControl> source,
                        std::unique_ptr<SourceHashes> hashes = nullptr) {
    CutoverPorts ports;
    ports.source = std::move(source);
    ports.source_hashes = std::move(hashes);
    ports.journal = std::move(journal_);
    ports.target = std::move(target_);
    ports.wait_for_service = testing::FakeHealthCheck(&log_, &health);
    CutoverEngine engine(plan_, std::move(ports), &timeline_, &cancel_);
    return engine.Run();
  }

  // The report's step names and results, "NAME ok: RESULT" / "NAME FAILED: WHY".
  static std::vector<std::string> Steps(const CutoverReport& r) {
    std::vector<std::string> out;
    for (const auto& s : r.steps) out.push_back(s.name + (s.ok ? " ok: " : " FAILED: ") + s.result);
    return out;
  }

  // What the cutover calls up to and including the quiesce (no background pass differences).
  static Calls UpToQuiesce() {
    return {"source.CheckServing",
            "target.Status",
            "journal.Status",
            "target.Takeover v dry-run",
            "target.WrittenRegions v reset",
            "target.Checksums v 0+0",
            "source.Quiesce",
            "journal.Status",
            "journal.Status",
            "journal.Status"};
  }
  static Calls Then(Calls a, const Calls& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  std::string XxhOfRegion(uint64_t offset) {
    std::ifstream in(device_, std::ios::binary);
    std::string buf(4 * kMiB, '\0');
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(buf.data(), buf.size());
    char text[17];
    snprintf(text, sizeof(text), "%016llx",
             static_cast<unsigned long long>(XXH3_64bits(buf.data(), buf.size())));
    return text;
  }

  std::string dir_, device_;
  CutoverPlan plan_;
  CallLog log_;
  std::unique_ptr<FakeSource> source_;
  std::unique_ptr<FakeJournal> journal_;
  std::unique_ptr<FakeTarget> target_;
  Result<std::string> health = std::string("192.0.2.10:7000 answers");
  std::atomic<bool> cancel_{false};
  std::ostringstream timeline_;

  const std::string kNotTouched = "nothing to roll back: the source was not touched";
  const std::string kResumed = "rolled back: the source VM runs again (QMP cont)";
  std::string NoRollback() const {
    return "NO ROLLBACK after the promotion: the migrated OS runs on the target (console " + dir_ +
           "/tgt.console.log) and may hold the service address; the source is powered off. Fix "
           "the target's service, or stop the target (cdpctl target stop) before bringing the "
           "source back";
  }
  const std::string kImpossible =
      "ROLLBACK IMPOSSIBLE: the source was powered off at the fence (QMP quit); the target is "
      "still in the PE, not promoted: start the source again (its disk is intact and protected; "
      "the target keeps replicating once its agent reconnects), then cut over again";
};

TEST_F(CutoverTest, HappyPathCallsEachPortInStepOrder) {
  int preloads = 0;
  target_->dry_runs_preloading_kexec = &preloads;
  const CutoverReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.rollback, "");
  EXPECT_EQ(
      Steps(r),
      (std::vector<std::string>{
          "precheck ok: source running, target pe-ready, v lag 0.50 s; takeover dry run passed "
          "(0 change(s) to the migrated OS planned)",
          "pre-verify ok: v: 2 regions at LSN 7, 0 differed (being written)",
          "quiesce ok: source paused (QMP stop); v final LSN 10",
          "drain ok: target applied every final LSN: v applied 10/10",
          "verify ok: 2 regions (8 MiB) equal: v: 1 of 2 in the window, the rest in the "
          "background pass at LSN 7 and not written since",
          "fence ok: source powered off (QMP quit)",
          "promote ok: switch_root into the migrated OS on /dev/vda (check 0.01 s)",
          "health ok: 192.0.2.10:7000 answers"}));
  EXPECT_EQ(r.final_lsn, (std::vector<std::pair<std::string, uint64_t>>{{"v", 10}}));
  EXPECT_EQ(log_.calls, Then(UpToQuiesce(), {"target.Status", "target.WrittenRegions v",
                                             "target.Checksums v 4194304+4194304", "source.Fence",
                                             "target.Takeover v", "health"}));
  EXPECT_GT(r.downtime_seconds, 0);
  // The precheck's dry run loads a kexec boot's kernel ahead (the pe-agent ignores it for a
  // switch_root), so the promotion need not.
  EXPECT_EQ(preloads, 1);
}

// Where RendezvousHashes' calls meet; owned by the test, so it outlives the engine.
struct Rendezvous {
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;      // GUARDED_BY(mu)
  int max_in_flight = 0;  // GUARDED_BY(mu)
  int calls = 0;          // GUARDED_BY(mu)
};

// The source's hashes of a volume, read from `device`, but each call first waits (at most 5 s)
// until `want` calls are in flight at once: a pass that hashes volumes one after the other sees
// at most one, and says so through max_in_flight.
class RendezvousHashes final : public SourceHashes {
 public:
  RendezvousHashes(std::string device, int want, Rendezvous* meet)
      : device_(std::move(device)), want_(want), meet_(meet) {}

  Status Hash(const std::string&, std::vector<RegionChecksum>* regions) override {
    {
      std::unique_lock<std::mutex> lock(meet_->mu);
      ++meet_->calls;
      ++meet_->in_flight;
      meet_->max_in_flight = std::max(meet_->max_in_flight, meet_->in_flight);
      meet_->cv.notify_all();
      meet_->cv.wait_for(lock, std::chrono::seconds(5),
                         [&] { return meet_->max_in_flight >= want_; });
    }
    CutoverPlan p;
    p.volumes = {"v"};
    p.source_devices = {device_};
    Status s = MakeDeviceSourceHashes(p)->Hash("v", regions);
    std::lock_guard<std::mutex> lock(meet_->mu);
    --meet_->in_flight;
    return s;
  }

 private:
  std::string device_;
  int want_;
  Rendezvous* meet_;
};

TEST_F(CutoverTest, TheSourceHashesEveryVolumeAtOnceAndTheTargetInPlanOrder) {
  plan_.volumes = {"v", "w"};
  plan_.source_devices = {device_, device_};
  plan_.target.disks.push_back({"w", dir_ + "/w.qcow2", kVolumeBytes});
  journal_->lsn["w"] = 10;
  target_->applied["w"] = 10;
  target_->devices["w"] = device_;
  target_->sizes["w"] = kVolumeBytes;
  Rendezvous meet;
  const CutoverReport r =
      RunWith(std::move(source_), std::make_unique<RendezvousHashes>(device_, 2, &meet));
  ASSERT_TRUE(r.ok) << r.error;
  // Both volumes' source hashes were in flight together: the background pass's two calls met
  // (the verify's two then go through at once).
  EXPECT_EQ(meet.max_in_flight, 2);
  EXPECT_EQ(meet.calls, 4);
  // Both marks first, then the target's checksums in plan order.
  const auto at = std::find(log_.calls.begin(), log_.calls.end(), "target.WrittenRegions v reset");
  ASSERT_NE(at, log_.calls.end());
  EXPECT_EQ(Calls(at, at + 4),
            Calls({"target.WrittenRegions v reset", "target.WrittenRegions w reset",
                   "target.Checksums v 0+0", "target.Checksums w 0+0"}));
  EXPECT_EQ(r.verify.rfind("4 regions (16 MiB) equal: v: 1 of 2 in the window", 0), 0u) << r.verify;
}

TEST_F(CutoverTest, APrecheckOfAKexecBootSaysItsKernelIsLoaded) {
  v1::TakeoverReply kexec;
  kexec.set_ok(true);
  kexec.set_boot_mode(v1::BOOT_MODE_KEXEC);
  kexec.set_kernel_release("6.1.0-57-amd64");
  target_->dry_run_takeover = kexec;
  const CutoverReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r).front(),
            "precheck ok: source running, target pe-ready, v lag 0.50 s; takeover dry run passed "
            "(0 change(s) to the migrated OS planned; kexec into 6.1.0-57-amd64, its kernel "
            "loaded now)");
}

TEST_F(CutoverTest, DowntimeStartsAfterThePreFreezeHooks) {
  source_->hooks_seconds = 0.5;  // the source serves while its hooks run
  CutoverReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  const auto& quiesce = r.steps[2];
  ASSERT_EQ(quiesce.name, "quiesce");
  // From the end of the hooks to the health check passing (the report's clock, not a bound on
  // how long anything took).
  EXPECT_NEAR(r.downtime_seconds, r.steps.back().end - quiesce.start - 0.5, 0.2);
  EXPECT_GE(quiesce.end - quiesce.start, 0.5);
}

// --- a failure before the fence: the source is resumed once it was quiesced ---------------

TEST_F(CutoverTest, PrecheckRefusesATargetNotReadyAndTouchesNothing) {
  target_->state = wire::v1::PE_STATE_ERROR;
  target_->error = "disk v too small";
  const CutoverReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "precheck: the target is pe-error: disk v too small");
  EXPECT_EQ(r.rollback, kNotTouched);
  EXPECT_EQ(log_.calls, (Calls{"source.CheckServing", "target.Status"}));
}

TEST_F(CutoverTest, PrecheckRefusesASourceThatDoesNotServe) {
  source_->check = Status::FailedPrecondition("the source VM is not running (QMP status paused)");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "precheck: the source VM is not running (QMP status paused)");
  EXPECT_EQ(r.rollback, kNotTouched);
  EXPECT_EQ(log_.calls, (Calls{"source.CheckServing"}));
}

TEST_F(CutoverTest, PrecheckNamesThePlanKeyOfAVolumeTheJournalDoesNotHave) {
  journal_->lsn = {{"other", 1}};
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "precheck: " + plan_.file +
                         ": 'volumes[0]': the journal-server at tcp://127.0.0.1:7700 has no volume "
                         "v: it is not protected; start its cdp-agent (or fix the name); nothing "
                         "was touched");
  EXPECT_EQ(r.rollback, kNotTouched);
}

// What the promotion would refuse is refused at precheck, before the source is touched (the
// pe-agent's dry run writes nothing to the replica).
TEST_F(CutoverTest, PrecheckRefusesWhatTheTakeoverDryRunRefuses) {
  wire::v1::TakeoverReply refused;
  refused.set_ok(false);
  refused.set_error(
      "the migrated OS's initramfs /boot/initrd.img-6.1.0-57-amd64 has no virtio_blk");
  target_->dry_run_takeover = refused;
  const CutoverReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "precheck: the target's takeover dry run refuses: the migrated OS's initramfs "
            "/boot/initrd.img-6.1.0-57-amd64 has no virtio_blk");
  EXPECT_EQ(r.rollback, kNotTouched);
  EXPECT_EQ(log_.calls, (Calls{"source.CheckServing", "target.Status", "journal.Status",
                               "target.Takeover v dry-run"}));
}

TEST_F(CutoverTest, PrecheckRefusesALagOverTheBudget) {
  journal_->lag_seconds = 45;
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "precheck: volume v lags 45.0 s, over the budget of 30.0 s");
  EXPECT_EQ(r.rollback, kNotTouched);
}

TEST_F(CutoverTest, PreVerifyWithoutMarksLetsVerifyCompareEveryRegion) {
  target_->keeps_marks = false;
  const CutoverReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[1],
            "pre-verify ok: skipped: the target's pe-agent keeps no written-region mark (unknown "
            "request); verify compares every region in the window");
  EXPECT_EQ(r.verify, "2 regions (8 MiB) equal: v: all 2 in the window");
}

TEST_F(CutoverTest, AQuiesceTheSourceRefusedIsNotRolledBack) {
  source_->quiesce = Status::FailedPrecondition("qmp stop: GenericError: no");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "quiesce: qmp stop: GenericError: no");
  EXPECT_EQ(r.rollback, kNotTouched);
  EXPECT_EQ(log_.calls.back(), "source.Quiesce");
}

TEST_F(CutoverTest, AJournalThatNeverHasEverythingRollsBackAtQuiesce) {
  journal_->pending_bytes = 4096;
  plan_.budgets.drain_seconds = 0.2;
  const CutoverReport r = Run();
  EXPECT_EQ(r.error,
            "quiesce: volume v: the journal did not get everything within the drain budget "
            "(captured 10, durable 10)");
  EXPECT_EQ(r.rollback, kResumed);
  EXPECT_EQ(log_.calls.back(), "source.Resume");
}

TEST_F(CutoverTest, ATargetThatDoesNotApplyRollsBackAtDrain) {
  target_->applied = {{"v", 5}};
  plan_.budgets.drain_seconds = 0.2;
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "drain: the target did not apply the final LSN within 0 s: v applied 5/10");
  EXPECT_EQ(r.rollback, kResumed);
  EXPECT_EQ(log_.calls.back(), "source.Resume");
}

TEST_F(CutoverTest, ARegionThatDiffersRollsBackAtVerify) {
  target_->corrupt = {4 * kMiB};
  const CutoverReport r = Run();
  const std::string source_hash = XxhOfRegion(4 * kMiB);
  char target_hash[17];
  snprintf(target_hash, sizeof(target_hash), "%016llx", std::stoull(source_hash, nullptr, 16) + 1);
  EXPECT_EQ(r.error, "verify: volume v: region 4194304+4194304 differs (source " + source_hash +
                         ", target " + target_hash + ")");
  EXPECT_EQ(r.rollback, kResumed);
  EXPECT_EQ(log_.calls,
            Then(UpToQuiesce(), {"target.Status", "target.WrittenRegions v",
                                 "target.Checksums v 4194304+4194304", "source.Resume"}));
}

TEST_F(CutoverTest, ATargetSummingOtherRegionsThanAskedIsRefused) {
  target_->sizes["v"] = kVolumeBytes / 2;  // its disk is half the plan's: one region, not two
  const CutoverReport r = Run();
  EXPECT_FALSE(r.ok);
  // The pre-verify is best effort; the verify in the window refuses, and the source resumes.
  EXPECT_EQ(Steps(r)[1],
            "pre-verify ok: skipped (volume v: the target's pe-agent sent 1 checksums for 2 "
            "regions); verify compares every region in the window");
  EXPECT_EQ(r.error, "verify: volume v: the target's pe-agent sent 1 checksums for 2 regions");
  EXPECT_EQ(r.rollback, kResumed);
}

TEST_F(CutoverTest, ARollbackThatFailsSaysSo) {
  target_->applied = {{"v", 5}};
  plan_.budgets.drain_seconds = 0.2;
  source_->resume = Status::Unavailable("source.qmp: connection refused");
  const CutoverReport r = Run();
  EXPECT_EQ(r.rollback, "ROLLBACK FAILED: QMP cont: source.qmp: connection refused");
}

TEST_F(CutoverTest, RollbackNoneLeavesTheSourceAsItIs) {
  target_->applied = {{"v", 5}};
  plan_.budgets.drain_seconds = 0.2;
  plan_.rollback = "none";
  const CutoverReport r = Run();
  EXPECT_EQ(r.rollback, "no rollback (plan says none)");
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "source.Resume"), 0);
}

// --- from the fence on ----------------------------------------------------------------------

TEST_F(CutoverTest, AFenceThatFailsAfterPowerOffCannotBeRolledBack) {
  source_->fence = Status::FailedPrecondition("qmp quit: GenericError: no");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "fence: qmp quit: GenericError: no");
  EXPECT_EQ(r.rollback, kImpossible);
  EXPECT_EQ(log_.calls.back(), "source.Fence");
}

TEST_F(CutoverTest, ARefusedTakeoverAfterAPauseFenceResumesTheSource) {
  source_->fence_keeps_paused = true;
  target_->takeover = TakeoverReply(false, "no root filesystem on v");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error,
            "promote: the pe-agent refused the takeover: no root filesystem on v (check 0.01 s)");
  EXPECT_EQ(r.rollback, kResumed + "; the target stays in the PE");
  EXPECT_EQ(log_.calls.back(), "source.Resume");
}

TEST_F(CutoverTest, ARefusedTakeoverAfterPowerOffCannotBeRolledBack) {
  target_->takeover = TakeoverReply(false, "no root filesystem on v");
  const CutoverReport r = Run();
  EXPECT_EQ(r.rollback, kImpossible);
}

TEST_F(CutoverTest, ATakeoverThatNeverWentOutIsNotAPromotion) {
  target_->takeover_sent = false;
  target_->takeover = Status::Unavailable("tcp://127.0.0.1:7701 did not answer");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "promote: tcp://127.0.0.1:7701 did not answer");
  EXPECT_EQ(r.rollback, kImpossible);
}

// The pe-agent leaves right after answering and ZeroMQ may drop that answer: the engine takes
// the drop for a promotion and lets the health check decide.
TEST_F(CutoverTest, ATakeoverWhoseReplyIsLostIsDecidedByTheHealthCheck) {
  target_->takeover = Status::Unavailable("the pe-agent closed the connection");
  const CutoverReport r = Run();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[6],
            "promote ok: the pe-agent left without its reply (the pe-agent closed the "
            "connection); the health check decides");
  EXPECT_EQ(log_.calls.back(), "health");
}

TEST_F(CutoverTest, ALostReplyAndNoServiceIsAPromotionNotUndone) {
  target_->takeover = Status::Unavailable("the pe-agent closed the connection");
  health = Status::TimedOut(
      "the service at 192.0.2.10:7000 did not answer as expected within "
      "60 s: no answer yet");
  const CutoverReport r = Run();
  EXPECT_EQ(r.error,
            "health: the service at 192.0.2.10:7000 did not answer as expected within 60 s: no "
            "answer yet");
  EXPECT_EQ(r.rollback, NoRollback());
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "source.Resume"), 0);
}

// --- SIGINT at each step --------------------------------------------------------------------

struct CancelCase {
  std::string at;  // the call during which the signal lands ("" = before the run)
  std::string error;
  std::string rollback;  // "" = NoRollback()
};

class CutoverCancelTest : public CutoverTest, public ::testing::WithParamInterface<CancelCase> {};

TEST_P(CutoverCancelTest, StopsAtTheNextCheckAndRollsBackBeforeTheFence) {
  const CancelCase& c = GetParam();
  if (c.at.empty()) {
    cancel_ = true;
  } else {
    log_.at[c.at] = [this] { cancel_ = true; };
  }
  const CutoverReport r = Run();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, c.error);
  EXPECT_EQ(r.rollback, c.rollback.empty() ? NoRollback() : c.rollback);
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, CutoverCancelTest,
    ::testing::Values(
        CancelCase{"", "precheck: stopped by a signal before precheck",
                   "nothing to roll back: the source was not touched"},
        CancelCase{"journal.Status#1", "pre-verify: stopped by a signal before pre-verify",
                   "nothing to roll back: the source was not touched"},
        CancelCase{"target.Checksums v 0+0#1", "quiesce: stopped by a signal before quiesce",
                   "nothing to roll back: the source was not touched"},
        CancelCase{"source.Quiesce#1", "quiesce: stopped by a signal while waiting for the journal",
                   "rolled back: the source VM runs again (QMP cont)"},
        CancelCase{"journal.Status#4", "drain: stopped by a signal before drain",
                   "rolled back: the source VM runs again (QMP cont)"},
        CancelCase{"target.Status#2", "verify: stopped by a signal before verify",
                   "rolled back: the source VM runs again (QMP cont)"},
        CancelCase{"target.Checksums v 4194304+4194304#1",
                   "fence: stopped by a signal before the fence",
                   "rolled back: the source VM runs again (QMP cont); the target stays in the PE"},
        // From the fence on nothing is undone: only the health check's wait is cut short.
        CancelCase{"source.Fence#1",
                   "health: stopped by a signal while waiting for 192.0.2.10:7000 (no answer yet)",
                   ""},
        CancelCase{"target.Takeover v#1",
                   "health: stopped by a signal while waiting for 192.0.2.10:7000 (no answer yet)",
                   ""}));

TEST_F(CutoverTest, ASignalWhileTheTargetDrainsRollsBack) {
  target_->applied = {{"v", 5}};
  log_.at["target.Status#2"] = [this] { cancel_ = true; };
  const CutoverReport r = Run();
  EXPECT_EQ(r.error, "drain: stopped by a signal while the target drained: v applied 5/10");
  EXPECT_EQ(r.rollback, kResumed);
}

// --- the plan's commands (CommandSourceControl, real processes) -----------------------------

TEST_F(CutoverTest, PlanCommandsQuiesceResumeAndFence) {
  const std::string trace = dir_ + "/commands.txt";
  plan_.source_qmp_socket.clear();
  plan_.quiesce = {
      "command", {"sh", "-c", "echo quiesce >> " + trace}, {"sh", "-c", "echo resume >> " + trace}};
  plan_.fence = {"command", {"sh", "-c", "echo fence >> " + trace + "; exit 3"}};
  // The fence command fails: a command fence has no undo.
  const CutoverReport r = RunWith(MakeSourceControl(plan_));
  EXPECT_EQ(Steps(r)[2], "quiesce ok: source quiesced; v final LSN 10");
  EXPECT_EQ(r.error, "fence: " + CommandLine(plan_.fence.command) + " exited 3: ");
  EXPECT_EQ(r.rollback, "ROLLBACK IMPOSSIBLE: the source was fenced by " +
                            CommandLine(plan_.fence.command) +
                            ", which has no undo; the target is still in the PE, not promoted: "
                            "start the source again (its disk is intact and protected; the "
                            "target keeps replicating once its agent reconnects), then cut over "
                            "again");
  std::ifstream in(trace);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "quiesce\nfence\n");
}

TEST_F(CutoverTest, PlanCommandsRollBackWithTheResumeCommand) {
  const std::string trace = dir_ + "/commands.txt";
  plan_.source_qmp_socket.clear();
  plan_.quiesce = {
      "command", {"sh", "-c", "echo quiesce >> " + trace}, {"sh", "-c", "echo resume >> " + trace}};
  plan_.fence = {"command", {"true"}};
  target_->applied = {{"v", 5}};
  plan_.budgets.drain_seconds = 0.2;
  const CutoverReport r = RunWith(MakeSourceControl(plan_));
  EXPECT_EQ(r.rollback, "rolled back: " + CommandLine(plan_.quiesce.resume_command));
  std::ifstream in(trace);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "quiesce\nresume\n");
}

TEST_F(CutoverTest, AQmpSourceThatDoesNotAnswerNamesThePlanKey) {
  const std::string where = plan_.Where("source.qmp_socket");
  auto source = MakeSourceControl(plan_);
  const Status s = source->CheckServing();
  EXPECT_EQ(s.message().rfind(where + ": " + plan_.source_qmp_socket + ": ", 0), 0u) << s.message();
}

// --- the source's agent (AgentSourceControl over a fake relay) ------------------------------

class AgentCutoverTest : public CutoverTest {
 protected:
  void SetUp() override {
    CutoverTest::SetUp();
    plan_.source_qmp_socket.clear();
    plan_.source_devices.clear();  // verification through the agent's hashes
    plan_.quiesce.method = "agent";
    plan_.quiesce.hooks = {{{"psql", "-c", "CHECKPOINT"}, 10}};
    plan_.quiesce.hold_seconds = 0.3;  // renewed every 0.1 s
    plan_.fence.method = "agent";
    plan_.fence.action = "remove-addresses";
    plan_.fence.addresses = {"192.0.2.10/24"};
    channel_ = std::make_shared<testing::FakeAgentChannel>(&log_);
    channel_->final_lsn = {{"v", 10}};
    channel_->devices = {{"v", device_}};
  }

  CutoverReport RunAgent() {
    return RunWith(MakeSourceControl(plan_, channel_), MakeAgentSourceHashes(channel_));
  }

  std::shared_ptr<testing::FakeAgentChannel> channel_;
};

TEST_F(AgentCutoverTest, TheAgentQuiescesVerifiesAndFencesTheSource) {
  const CutoverReport r = RunAgent();
  ASSERT_TRUE(r.ok) << r.error;
  // The source's agent hashes while the target sums: either may be logged first.
  Calls calls = log_.calls;
  for (size_t i = 0; i + 1 < calls.size(); ++i) {
    if (calls[i].rfind("agent.hashes", 0) == 0 && calls[i + 1].rfind("target.Checksums", 0) == 0) {
      std::swap(calls[i], calls[i + 1]);
    }
  }
  EXPECT_EQ(calls,
            Calls({"agent.status", "target.Status", "journal.Status", "target.Takeover v dry-run",
                   "target.WrittenRegions v reset", "target.Checksums v 0+0", "agent.hashes v 2",
                   "agent.quiesce", "journal.Status", "target.Status", "target.WrittenRegions v",
                   "target.Checksums v 4194304+4194304", "agent.hashes v 1",
                   "agent.fence remove 192.0.2.10/24", "target.Takeover v", "health"}));
  ASSERT_EQ(r.final_lsn.size(), 1u);
  EXPECT_EQ(r.final_lsn[0], std::make_pair(std::string("v"), uint64_t{10}));
  const auto steps = Steps(r);
  EXPECT_EQ(steps[2],
            "quiesce ok: source frozen by its agent in 0.012 s (lease 0 s); v final LSN 10");
  EXPECT_EQ(steps[5], "fence ok: the source's agent removed 192.0.2.10/24 from ens192");
  EXPECT_EQ(r.verify.rfind("2 regions (8 MiB) equal", 0), 0u) << r.verify;
}

TEST_F(AgentCutoverTest, DowntimeStartsAfterTheAgentsHooks) {
  channel_->hook_seconds = 0.5;
  const CutoverReport r = RunAgent();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[2],
            "quiesce ok: source frozen by its agent in 0.012 s (lease 0 s); hook psql -c "
            "CHECKPOINT 0.50 s; v final LSN 10");
  const auto& quiesce = r.steps[2];
  EXPECT_NEAR(r.downtime_seconds, r.steps.back().end - quiesce.start - 0.5, 0.2);
}

TEST_F(AgentCutoverTest, AnAgentUnreachableAtPrecheckTouchesNothing) {
  channel_->dead = true;
  const CutoverReport r = RunAgent();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "precheck: volume v: no agent connected; is cdp-agent@lab running on the source? "
            "(journal-server tcp://127.0.0.1:7700)");
  EXPECT_EQ(r.rollback, kNotTouched);
  EXPECT_EQ(log_.calls, Calls({"agent.status"}));
}

TEST_F(AgentCutoverTest, AFailedHookRollsBackWithTheHookNamed) {
  channel_->errors["quiesce"] = ::cdp::Status::FailedPrecondition(
      "pre-freeze hook 1 (psql -c CHECKPOINT) exited 3: psql: error: connection refused");
  const CutoverReport r = RunAgent();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "quiesce: pre-freeze hook 1 (psql -c CHECKPOINT) exited 3: psql: error: connection "
            "refused");
  EXPECT_EQ(r.rollback, kNotTouched);
  // A release goes anyway (nothing was frozen: the agent says so); no fence, no takeover.
  EXPECT_EQ(Steps(r).back().rfind("quiesce FAILED", 0), 0u);
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "agent.release"), 1);
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "target.Takeover v"), 0);
  EXPECT_FALSE(channel_->frozen);
}

TEST_F(AgentCutoverTest, AHookTimeoutAndAFreezePastItsBudgetNameTheirStep) {
  channel_->errors["quiesce"] = ::cdp::Status::TimedOut(
      "pre-freeze hook 1 (psql -c CHECKPOINT) did not finish within 10 s (its process group was "
      "killed): (no output)");
  CutoverReport r = RunAgent();
  EXPECT_EQ(r.error,
            "quiesce: pre-freeze hook 1 (psql -c CHECKPOINT) did not finish within 10 s (its "
            "process group was killed): (no output)");

  SetUp();
  channel_->errors["quiesce"] =
      ::cdp::Status::TimedOut("freeze: volume v: / did not freeze within 5000 ms; thawed");
  r = RunAgent();
  EXPECT_EQ(r.error, "quiesce: freeze: volume v: / did not freeze within 5000 ms; thawed");
  EXPECT_EQ(r.rollback, kNotTouched);
}

TEST_F(AgentCutoverTest, AnAgentThatDiesWhileFrozenRollsBackBeforeTheFence) {
  // The agent dies at the start of the drain; the next renewals fail and the lease passes.
  log_.at["target.Status#2"] = [this] {
    channel_->dead = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
  };
  const CutoverReport r = RunAgent();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.rfind("drain: the source's freeze is no longer held (its lease could not be "
                          "renewed: journal-server: volume v: the agent's session dropped before "
                          "it answered the hold)",
                          0),
            0u)
      << r.error;
  EXPECT_EQ(r.rollback,
            "rolled back: the source's agent is gone (journal-server: volume v: no agent "
            "connected; is the cdp-agent protecting it running on the source?): its thaw "
            "watchdog thaws the source when the agent ends, at the latest when the freeze's "
            "lease passes (0 s after the last renewal)");
  EXPECT_EQ(std::count(log_.calls.begin(), log_.calls.end(), "agent.fence remove 192.0.2.10/24"),
            0);
}

TEST_F(AgentCutoverTest, AReleaseThawsOnRollback) {
  target_->corrupt = {0};  // verify finds a difference
  target_->written = {0};
  const CutoverReport r = RunAgent();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.rfind("verify: volume v: region 0+4194304 differs", 0), 0u) << r.error;
  EXPECT_EQ(r.rollback, "rolled back: the source's agent thawed it (thawed after 1.0 s frozen)");
  EXPECT_FALSE(channel_->frozen);
}

TEST_F(AgentCutoverTest, APowerOffFenceIsConfirmedByTheAgentGoing) {
  plan_.fence.action = "poweroff";
  plan_.fence.addresses.clear();
  const CutoverReport r = RunAgent();
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(Steps(r)[5],
            "fence ok: source powered off by its agent (powering off in 1.0 s (forced, the "
            "filesystems still frozen))");
}

// The agent refuses more than 4096 regions or 256 MiB in one hashes request: the engine splits.
TEST(AgentSourceHashes, RequestsAreSplitWithinTheAgentsLimits) {
  class CountingChannel final : public SourceAgentChannel {
   public:
    Result<wire::v1::SourceReply> Call(const wire::v1::SourceRequest& request, int) override {
      uint64_t bytes = 0;
      for (const auto& r : request.hashes().regions()) bytes += r.length();
      sizes.push_back({request.hashes().regions_size(), bytes});
      wire::v1::SourceReply reply;
      for (const auto& r : request.hashes().regions()) reply.add_xxh3(r.offset() + 1);
      return reply;
    }
    std::vector<std::pair<int, uint64_t>> sizes;
  };
  auto channel = std::make_shared<CountingChannel>();
  auto hashes = MakeAgentSourceHashes(channel);
  std::vector<RegionChecksum> small;
  for (uint64_t i = 0; i < 5000; ++i) small.push_back({i * 4096, 4096, 0});
  ASSERT_TRUE(hashes->Hash("v", &small).ok());
  EXPECT_EQ(channel->sizes,
            (std::vector<std::pair<int, uint64_t>>{{4096, 4096ull * 4096}, {904, 904ull * 4096}}));
  EXPECT_EQ(small[4999].xxh3, 4999ull * 4096 + 1);
  channel->sizes.clear();
  std::vector<RegionChecksum> large = {
      {0, 200 * kMiB, 0}, {200 * kMiB, 200 * kMiB, 0}, {400 * kMiB, 50 * kMiB, 0}};
  ASSERT_TRUE(hashes->Hash("v", &large).ok());
  EXPECT_EQ(channel->sizes,
            (std::vector<std::pair<int, uint64_t>>{{1, 200 * kMiB}, {2, 250 * kMiB}}));
  EXPECT_EQ(large[2].xxh3, 400 * kMiB + 1);
}

}  // namespace
}  // namespace cdp::failover
