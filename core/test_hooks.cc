// The registry behind CDP_TEST_SYNC_POINT and CDP_TEST_KILL_POINT: see test_hooks.h.
// Compiled empty without CDP_TEST_HOOKS, so that no build for users carries it.
#include "cdp/core/test_hooks.h"

#if CDP_TEST_HOOKS

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <set>

namespace cdp::test_hooks {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, std::function<void()>, std::less<>> callbacks;  // GUARDED_BY(mu)
  std::set<std::string, std::less<>> armed_kill_points;                 // GUARDED_BY(mu)
};

Registry& TheRegistry() {
  static Registry* registry = new Registry;  // never destroyed: points may run during exit
  return *registry;
}

}  // namespace

void SyncPoint(std::string_view name) {
  std::function<void()> callback;
  {
    Registry& r = TheRegistry();
    std::lock_guard lock(r.mu);
    auto it = r.callbacks.find(name);
    if (it == r.callbacks.end()) return;
    callback = it->second;
  }
  callback();
}

void KillPoint(std::string_view name) {
  const char* env = std::getenv("CDP_TEST_KILL_POINT");
  bool armed = env != nullptr && name == env;
  if (!armed) {
    Registry& r = TheRegistry();
    std::lock_guard lock(r.mu);
    armed = r.armed_kill_points.count(name) > 0;
  }
  if (!armed) return;
  const std::string line = "test kill point " + std::string(name) + ": SIGKILL\n";
  // Best effort: the kill is the point, the line only tells a reader of the log why.
  [[maybe_unused]] const ssize_t written = write(STDERR_FILENO, line.data(), line.size());
  kill(getpid(), SIGKILL);
}

void SetSyncPointCallback(std::string name, std::function<void()> callback) {
  Registry& r = TheRegistry();
  std::lock_guard lock(r.mu);
  r.callbacks[std::move(name)] = std::move(callback);
}

void ClearAllTestPoints() {
  Registry& r = TheRegistry();
  std::lock_guard lock(r.mu);
  r.callbacks.clear();
  r.armed_kill_points.clear();
}

void ArmKillPoint(std::string name) {
  Registry& r = TheRegistry();
  std::lock_guard lock(r.mu);
  r.armed_kill_points.insert(std::move(name));
}

}  // namespace cdp::test_hooks

#endif  // CDP_TEST_HOOKS
