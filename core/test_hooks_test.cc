// The test point registry (built only with -DCDP_TEST_HOOKS=ON).
#include "cdp/core/test_hooks.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <string>
#include <thread>
#include <vector>

namespace cdp::test_hooks {
namespace {

class TestHooksTest : public ::testing::Test {
 protected:
  void TearDown() override {
    ClearAllTestPoints();
    unsetenv("CDP_TEST_KILL_POINT");
  }
};

TEST_F(TestHooksTest, SyncPointRunsTheCallbackOfItsNameOnly) {
  std::vector<std::string> visits;
  SetSyncPointCallback("a.one", [&] { visits.push_back("one"); });
  SetSyncPointCallback("a.two", [&] { visits.push_back("two"); });
  CDP_TEST_SYNC_POINT("a.one");
  CDP_TEST_SYNC_POINT("a.unregistered");
  CDP_TEST_SYNC_POINT("a.two");
  CDP_TEST_SYNC_POINT("a.one");
  EXPECT_EQ(visits, (std::vector<std::string>{"one", "two", "one"}));
}

TEST_F(TestHooksTest, SetSyncPointCallbackReplacesAndClearRemoves) {
  int first = 0, second = 0;
  SetSyncPointCallback("a.point", [&] { ++first; });
  SetSyncPointCallback("a.point", [&] { ++second; });
  CDP_TEST_SYNC_POINT("a.point");
  ClearAllTestPoints();
  CDP_TEST_SYNC_POINT("a.point");
  EXPECT_EQ(first, 0);
  EXPECT_EQ(second, 1);
}

TEST_F(TestHooksTest, SyncPointCallbackMayRegisterAnotherWithoutDeadlock) {
  int inner = 0;
  SetSyncPointCallback("a.outer", [&] { SetSyncPointCallback("a.inner", [&] { ++inner; }); });
  CDP_TEST_SYNC_POINT("a.outer");
  CDP_TEST_SYNC_POINT("a.inner");
  EXPECT_EQ(inner, 1);
}

TEST_F(TestHooksTest, SyncPointRunsOnTheThreadThatReachesIt) {
  std::thread::id seen;
  SetSyncPointCallback("a.thread", [&] { seen = std::this_thread::get_id(); });
  std::thread worker([] { CDP_TEST_SYNC_POINT("a.thread"); });
  const std::thread::id worker_id = worker.get_id();
  worker.join();
  EXPECT_EQ(seen, worker_id);
}

TEST_F(TestHooksTest, KillPointNotArmedReturnsSilently) {
  EXPECT_EXIT(
      {
        ArmKillPoint("a.armed");
        setenv("CDP_TEST_KILL_POINT", "a.from_env", 1);
        CDP_TEST_KILL_POINT("a.other");
        CDP_TEST_KILL_POINT("a.arme");  // a prefix of an armed name is another name
        CDP_TEST_KILL_POINT("a.from_en");
        exit(3);
      },
      ::testing::ExitedWithCode(3), "^$");
}

TEST_F(TestHooksTest, ArmedKillPointKillsWithSigkillAndNamesItself) {
  EXPECT_EXIT(
      {
        ArmKillPoint("a.armed");
        CDP_TEST_KILL_POINT("a.armed");
        exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "^test kill point a.armed: SIGKILL\n$");
}

TEST_F(TestHooksTest, KillPointNamedByTheEnvironmentKills) {
  EXPECT_EXIT(
      {
        setenv("CDP_TEST_KILL_POINT", "a.from_env", 1);
        CDP_TEST_KILL_POINT("a.from_env");
        exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "^test kill point a.from_env: SIGKILL\n$");
}

TEST_F(TestHooksTest, ClearDisarmsKillPoints) {
  EXPECT_EXIT(
      {
        ArmKillPoint("a.armed");
        ClearAllTestPoints();
        CDP_TEST_KILL_POINT("a.armed");
        exit(3);
      },
      ::testing::ExitedWithCode(3), "^$");
}

}  // namespace
}  // namespace cdp::test_hooks
