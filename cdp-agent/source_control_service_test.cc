// Tests of the agent's source control (source_control_service.h) with a fake GroupFreeze and a
// fake address table, and of the pre-freeze hooks (hook_runner.h) with real commands: the exact
// error a cutover report shows for a hook that exits 3 or outlives its timeout, nothing frozen
// after a failed hook, a freeze past its budget, the lease renewed and released, the fence's
// addresses removed and read back, and block hashes equal to XXH3 of the device's bytes.
#include "cdp/agent/source_control_service.h"

#include <fstream>
#include <map>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cdp/agent/hook_runner.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

class FakeGroupFreeze : public GroupFreeze {
 public:
  Result<std::vector<FrozenVolume>> FreezeAndHold(const std::string& label,
                                                  milliseconds freeze_budget,
                                                  milliseconds hold_limit) override {
    calls.push_back("FreezeAndHold " + label + " " + std::to_string(freeze_budget.count()) + " " +
                    std::to_string(hold_limit.count()));
    if (!freeze_error.ok()) return freeze_error;
    held = true;
    return frozen;
  }
  Status RenewHold(milliseconds hold_limit) override {
    calls.push_back("RenewHold " + std::to_string(hold_limit.count()));
    if (!held) return Status::FailedPrecondition("no freeze is held (the watchdog thawed)");
    return Status::Ok();
  }
  Status Thaw() override {
    calls.push_back("Thaw");
    held = false;
    return Status::Ok();
  }
  milliseconds HeldFor() const override { return milliseconds(held ? 1500 : 0); }

  std::vector<std::string> calls;
  std::vector<FrozenVolume> frozen = {{"db01-sda", 1042}, {"db01-sdb", 77}};
  Status freeze_error;
  bool held = false;
};

class FakeAddressTable : public AddressTable {
 public:
  Result<std::vector<HeldAddress>> List() override { return held; }
  Status Remove(const HeldAddress& h) override {
    removed.push_back(h.address + " " + h.device);
    if (stuck) return Status::Ok();  // says yes, does nothing: the read-back catches it
    held.erase(std::remove_if(held.begin(), held.end(),
                              [&](const HeldAddress& x) {
                                return x.address == h.address && x.device == h.device;
                              }),
               held.end());
    return Status::Ok();
  }
  std::vector<HeldAddress> held = {{"lo", "127.0.0.1/8"}, {"ens192", "192.0.2.10/24"}};
  std::vector<std::string> removed;
  bool stuck = false;
};

v1::SourceRequest QuiesceRequest(std::vector<std::vector<std::string>> hooks,
                                 uint32_t hook_timeout_ms = 5000) {
  v1::SourceRequest r;
  r.set_volume("db01-sda");
  r.set_request_id(3);
  auto* q = r.mutable_quiesce();
  q->add_volumes("db01-sda");
  q->add_volumes("db01-sdb");
  q->set_freeze_budget_ms(2000);
  q->set_hold_ms(30000);
  for (const auto& argv : hooks) {
    auto* h = q->add_hooks();
    for (const auto& a : argv) h->add_argv(a);
    h->set_timeout_ms(hook_timeout_ms);
  }
  return r;
}

class SourceControlServiceTest : public ::testing::Test {
 protected:
  SourceControlDeps Deps() {
    SourceControlDeps d;
    d.volumes = {{"db01-sda", "/dev/null", {"/"}}, {"db01-sdb", "/dev/null", {"/var/lib/pg"}}};
    d.freeze = &freeze_;
    d.addresses = &addresses_;
    d.power_off = [this] {
      powered_off_ = true;
      return Status::Ok();
    };
    return d;
  }
  FakeGroupFreeze freeze_;
  FakeAddressTable addresses_;
  std::atomic<bool> powered_off_{false};
};

TEST(HookRunner, AHookThatExits3IsNamedWithItsLastOutputLine) {
  std::vector<HookRun> runs;
  Status s = RunHooks({{{"true"}, 1000},
                       {{"sh", "-c", "echo checkpointing; echo FATAL: no >&2; exit 3"}, 5000},
                       {{"touch", "/nonexistent/never-run"}, 1000}},
                      &runs);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "pre-freeze hook 2 (sh -c 'echo checkpointing; echo FATAL: no >&2; exit 3') exited 3: "
            "FATAL: no")
      << s.message();
  ASSERT_EQ(runs.size(), 2u);  // the third never ran
  EXPECT_EQ(runs[0].exit_code, 0);
  EXPECT_EQ(runs[1].exit_code, 3);
  EXPECT_EQ(runs[1].output, "checkpointing\nFATAL: no\n");
}

TEST(HookRunner, AHookPastItsTimeoutIsKilledWithItsChildren) {
  cdp::testing::TempDir dir("hook_runner_test");
  const std::string marker = dir.File("child-survived");
  std::vector<HookRun> runs;
  // The shell's background child would create the marker after 1 s unless the group is killed.
  Status s = RunHooks(
      {{{"sh", "-c", "(sleep 1; touch " + marker + ") & echo started; sleep 30"}, 200}}, &runs);
  EXPECT_EQ(s.code(), StatusCode::kTimedOut);
  EXPECT_EQ(s.message(), "pre-freeze hook 1 (sh -c '(sleep 1; touch " + marker +
                             ") & echo started; sleep 30') did not finish within 0.2 s (its "
                             "process group was killed): started");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].exit_code, -1);
  std::this_thread::sleep_for(milliseconds(1500));
  EXPECT_FALSE(std::ifstream(marker).good()) << "the hook's child outlived the timeout";
}

TEST(HookRunner, AMissingProgramAndAnEmptyHookAreNamed) {
  std::vector<HookRun> runs;
  Status s = RunHooks({{{"cdp-no-such-hook", "-x"}, 1000}}, &runs);
  EXPECT_EQ(s.message(),
            "pre-freeze hook 1 (cdp-no-such-hook -x) cannot run: cdp-no-such-hook is not "
            "installed (or not in PATH)");
  EXPECT_EQ(RunHooks({{{}, 1000}}, &runs).message(), "pre-freeze hook 1 has no command");
}

TEST(HookRunner, OutputIsBoundedToItsTail) {
  std::vector<HookRun> runs;
  ASSERT_TRUE(RunHooks({{{"sh", "-c", "yes a | head -c 100000; echo end"}, 5000}}, &runs).ok());
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].output.size(), kHookOutputTail);
  EXPECT_THAT(runs[0].output, ::testing::EndsWith("a\nend\n"));
}

TEST_F(SourceControlServiceTest, QuiesceRunsTheHooksThenFreezesAndReportsEveryFinalLsn) {
  SourceControlService service(Deps());
  v1::SourceReply r = service.Handle(QuiesceRequest({{"true"}}));
  ASSERT_EQ(r.error(), "");
  EXPECT_EQ(r.request_id(), 3u);
  ASSERT_EQ(r.volumes_size(), 2);
  EXPECT_EQ(r.volumes(0).volume(), "db01-sda");
  EXPECT_EQ(r.volumes(0).final_lsn(), 1042u);
  EXPECT_EQ(r.volumes(1).final_lsn(), 77u);
  ASSERT_EQ(r.hooks_size(), 1);
  EXPECT_EQ(r.hooks(0).command(), "true");
  EXPECT_TRUE(r.frozen());
  EXPECT_EQ(freeze_.calls, std::vector<std::string>({"FreezeAndHold cutover 2000 30000"}));

  v1::SourceRequest hold;
  hold.mutable_hold()->set_hold_ms(20000);
  EXPECT_EQ(service.Handle(hold).error(), "");
  v1::SourceRequest release;
  release.mutable_release();
  r = service.Handle(release);
  EXPECT_EQ(r.error(), "");
  EXPECT_EQ(r.done(), "thawed after 1.5 s frozen");
  r = service.Handle(hold);  // the lease of a thawed freeze cannot be renewed
  EXPECT_EQ(r.error(), "the freeze is no longer held: no freeze is held (the watchdog thawed)");
  EXPECT_EQ(r.error_code(), static_cast<int32_t>(StatusCode::kFailedPrecondition));
}

TEST_F(SourceControlServiceTest, AFailedHookFreezesNothingAndSaysWhichHook) {
  SourceControlService service(Deps());
  v1::SourceReply r = service.Handle(QuiesceRequest({{"true"}, {"sh", "-c", "exit 3"}}));
  EXPECT_EQ(r.error(), "pre-freeze hook 2 (sh -c 'exit 3') exited 3: (no output)");
  EXPECT_EQ(r.error_code(), static_cast<int32_t>(StatusCode::kFailedPrecondition));
  EXPECT_EQ(r.hooks_size(), 2);
  EXPECT_TRUE(freeze_.calls.empty());
  EXPECT_FALSE(r.frozen());
}

TEST_F(SourceControlServiceTest, AFreezePastItsBudgetIsTimedOutNamingTheMountPoint) {
  freeze_.freeze_error =
      Status::TimedOut("volume db01-sdb: /var/lib/pg did not freeze within 2000 ms; thawed");
  SourceControlService service(Deps());
  v1::SourceReply r = service.Handle(QuiesceRequest({}));
  EXPECT_EQ(r.error(),
            "freeze: volume db01-sdb: /var/lib/pg did not freeze within 2000 ms; thawed");
  EXPECT_EQ(r.error_code(), static_cast<int32_t>(StatusCode::kTimedOut));
}

TEST_F(SourceControlServiceTest, AVolumeOfAnotherAgentIsRefusedBeforeAnyHook) {
  SourceControlService service(Deps());
  v1::SourceRequest q = QuiesceRequest({{"sh", "-c", "exit 9"}});
  q.mutable_quiesce()->add_volumes("web01-sda");
  v1::SourceReply r = service.Handle(q);
  EXPECT_EQ(r.error(),
            "volume web01-sda is not protected by this agent (db01-sda, db01-sdb): one agent "
            "process must protect every volume of the group to freeze them together");
  EXPECT_EQ(r.hooks_size(), 0);
}

TEST_F(SourceControlServiceTest, WithoutAGroupFreezeQuiesceIsRefusedAndStatusSaysWhy) {
  SourceControlDeps d = Deps();
  d.freeze = nullptr;
  d.no_freeze_reason = "started without --freeze";
  SourceControlService service(d);
  EXPECT_EQ(service.Handle(QuiesceRequest({})).error(),
            "this agent cannot freeze: started without --freeze");
  v1::SourceRequest status;
  status.mutable_status();
  v1::SourceReply r = service.Handle(status);
  EXPECT_FALSE(r.can_freeze());
  EXPECT_EQ(r.volumes_size(), 2);
  EXPECT_EQ(r.volumes(1).mount_points(), "/var/lib/pg");
}

TEST_F(SourceControlServiceTest, FenceRemovesTheAddressesAndReadsThemBack) {
  SourceControlService service(Deps());
  v1::SourceRequest f;
  f.mutable_fence()->set_action(v1::FENCE_REMOVE_ADDRESSES);
  f.mutable_fence()->add_addresses("192.0.2.10/24");
  f.mutable_fence()->add_addresses("192.0.2.11");
  v1::SourceReply r = service.Handle(f);
  ASSERT_EQ(r.error(), "");
  EXPECT_EQ(r.done(), "removed 192.0.2.10/24 from ens192; 192.0.2.11 was not held");
  EXPECT_EQ(addresses_.held.size(), 1u);  // lo's stays

  addresses_.held.push_back({"ens192", "192.0.2.10/24"});
  addresses_.stuck = true;
  r = service.Handle(f);
  EXPECT_EQ(r.error(), "fence: 192.0.2.10/24 is still on ens192 after its removal");
  f.mutable_fence()->set_addresses(0, "db01");
  EXPECT_EQ(service.Handle(f).error(), "fence: 'db01' is not an IPv4 address");
}

TEST_F(SourceControlServiceTest, PowerOffComesAfterTheReply) {
  SourceControlService service(Deps());
  v1::SourceRequest f;
  f.mutable_fence()->set_action(v1::FENCE_POWEROFF);
  v1::SourceReply r = service.Handle(f);
  EXPECT_EQ(r.error(), "");
  EXPECT_EQ(r.done(), "powering off in 1.0 s (forced, the filesystems still frozen)");
  EXPECT_FALSE(powered_off_);  // the reply goes first
  std::this_thread::sleep_for(kPowerOffDelay + milliseconds(500));
  EXPECT_TRUE(powered_off_);
}

TEST_F(SourceControlServiceTest, HashesAreXxh3OfTheDevicesBytesAndHugeRequestsAreRefused) {
  cdp::testing::TempDir dir("source_hashes_test", "/var/tmp");
  const std::string image = dir.File("disk.img");
  std::string bytes(3 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + i / 4096);
  std::ofstream(image, std::ios::binary).write(bytes.data(), bytes.size());
  SourceControlDeps d = Deps();
  d.volumes[0].device = image;
  SourceControlService service(d);
  v1::SourceRequest h;
  h.mutable_hashes()->set_volume("db01-sda");
  for (auto [off, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 1 << 20}, {(1 << 20) + 100, 1500000}, {3 << 20, 0}}) {
    auto* region = h.mutable_hashes()->add_regions();
    region->set_offset(off);
    region->set_length(len);
  }
  v1::SourceReply r = service.Handle(h);
  ASSERT_EQ(r.error(), "");
  ASSERT_EQ(r.xxh3_size(), 3);
  EXPECT_EQ(r.xxh3(0), XXH3_64bits(bytes.data(), 1 << 20));
  EXPECT_EQ(r.xxh3(1), XXH3_64bits(bytes.data() + (1 << 20) + 100, 1500000));
  EXPECT_EQ(r.xxh3(2), XXH3_64bits(bytes.data(), 0));

  h.mutable_hashes()->mutable_regions(0)->set_length(kMaxHashBytes);
  EXPECT_THAT(service.Handle(h).error(),
              HasSubstr("bytes in one request; at most 268435456 (256 MiB): split the request"));
  h.mutable_hashes()->mutable_regions(0)->set_length(1);
  h.mutable_hashes()->mutable_regions(1)->set_offset(3 << 20);
  h.mutable_hashes()->mutable_regions(1)->set_length(1);
  EXPECT_EQ(service.Handle(h).error(),
            "hashes: region 3145728+1 is past the end of volume db01-sda (3145728 bytes)");
  h.mutable_hashes()->set_volume("web01");
  EXPECT_EQ(service.Handle(h).error_code(), static_cast<int32_t>(StatusCode::kNotFound));
}

}  // namespace
}  // namespace cdp::agent
