// Named test points, after RocksDB's TEST_SYNC_POINT and kill points (docs/testing.md).
//
// Code marks a place a test may want to stop or crash at with a name:
//
//   CDP_TEST_SYNC_POINT("journal.group_commit.before_fsync");
//   CDP_TEST_KILL_POINT("journal.group_commit.after_fsync");
//
// Without -DCDP_TEST_HOOKS=ON (every user's build, every release) both macros compile to nothing:
// no call, no name, no string in the binary (a ctest of the hook-free build checks the strings).
// With it (deploy/build.sh's build/, the one the tests use), they call the registry below:
//   - a sync point runs the callback a unit test registered for its name, on the thread that
//     reached it (to hold that thread, count visits, or inject a fault);
//   - a kill point sends SIGKILL to its own process when armed: when the environment variable
//     CDP_TEST_KILL_POINT equals its name (an integration test starting a real process), or
//     after ArmKillPoint(name) (a death test in a unit test). It says which point on stderr first.
//
// Names are "component.place" in lower case; a name says where, not what the test checks.
#pragma once

#if CDP_TEST_HOOKS

#include <functional>
#include <string>
#include <string_view>

namespace cdp::test_hooks {

// Runs the callback registered for `name`, if any, on the calling thread. The registry's lock
// is not held during the callback, so it may block or register other callbacks. Thread-safe.
void SyncPoint(std::string_view name);

// Sends SIGKILL to this process, after one line on stderr naming the point, when `name` is
// armed (the environment variable CDP_TEST_KILL_POINT equals it, or ArmKillPoint(name) was
// called); returns otherwise. The environment is read on every call. Thread-safe.
void KillPoint(std::string_view name);

// Registers `callback` for the sync point `name`, replacing any earlier one. Thread-safe.
void SetSyncPointCallback(std::string name, std::function<void()> callback);

// Removes every sync point callback and disarms every kill point armed by ArmKillPoint
// (not the environment variable). Tests call it in TearDown. Thread-safe.
void ClearAllTestPoints();

// Arms the kill point `name` in this process (for death tests). Thread-safe.
void ArmKillPoint(std::string name);

}  // namespace cdp::test_hooks

#define CDP_TEST_SYNC_POINT(name) ::cdp::test_hooks::SyncPoint(name)
#define CDP_TEST_KILL_POINT(name) ::cdp::test_hooks::KillPoint(name)

#else

#define CDP_TEST_SYNC_POINT(name) \
  do {                            \
  } while (false)
#define CDP_TEST_KILL_POINT(name) \
  do {                            \
  } while (false)

#endif
