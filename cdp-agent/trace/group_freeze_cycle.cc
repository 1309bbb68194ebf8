// GroupFreezeCycle: see group_freeze_cycle.h.
#include "cdp/agent/group_freeze_cycle.h"

#include <pthread.h>

#include <algorithm>

#include "cdp/core/logging.h"
#include "cdp/core/record.h"
#include "cdp/core/test_hooks.h"

namespace cdp::agent {

namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Pre-copy gets this long before a freeze (FreezeMember::Prepare).
constexpr int64_t kPrepareNs = 2'000'000'000;

// Parks every member for the scope, in member order; unparks in reverse.
class ParkAll {
 public:
  explicit ParkAll(const std::vector<FreezeMember*>& members) : members_(members) {
    for (FreezeMember* m : members_) m->Park();
  }
  ~ParkAll() {
    for (auto it = members_.rbegin(); it != members_.rend(); ++it) (*it)->Unpark();
  }

 private:
  const std::vector<FreezeMember*>& members_;
};

}  // namespace

GroupFreezeCycle::GroupFreezeCycle(GroupFreezeCycleOptions options,
                                   std::vector<FreezeMember*> members)
    : options_(std::move(options)), members_(std::move(members)) {}

GroupFreezeCycle::~GroupFreezeCycle() { Stop(); }

void GroupFreezeCycle::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "freeze-cycle");
    Loop();
  });
}

void GroupFreezeCycle::Stop() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    stop_ = true;
  }
  wake_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  Status thawed = Thaw();
  if (!thawed.ok()) CDP_LOG(error) << "cdp-agent: stopping: " << thawed.ToString();
}

void GroupFreezeCycle::RunSoon() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    run_soon_ = true;
  }
  wake_cv_.notify_all();
}

std::vector<Freezable*> GroupFreezeCycle::FreezeOrder() const {
  std::vector<Freezable*> order;
  for (FreezeMember* m : members_) {
    for (Freezable* f : m->Filesystems()) {
      const bool seen = std::any_of(order.begin(), order.end(),
                                    [&](Freezable* o) { return o->fs_dev() == f->fs_dev(); });
      if (!seen) order.push_back(f);
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [](Freezable* a, Freezable* b) { return a->mount_path() < b->mount_path(); });
  return order;
}

void GroupFreezeCycle::Loop() {
  const int64_t interval = int64_t{options_.checkpoint_interval_ms} * 1'000'000;
  int64_t next = SteadyNanos() + interval;
  while (!stop_) {
    {
      std::unique_lock<std::mutex> lock(wake_mu_);
      const auto wait = std::chrono::nanoseconds(std::max<int64_t>(0, next - SteadyNanos()));
      wake_cv_.wait_for(lock, wait, [&] { return stop_.load() || run_soon_.load(); });
      if (stop_) break;
      run_soon_ = false;
    }
    const int64_t start = SteadyNanos();
    {
      std::lock_guard<std::timed_mutex> lock(cycle_mu_);
      HoldExpired();
      if (held_.empty()) (void)RunCycleLocked("", options_.freeze_limit_ms, 0);
    }
    // One interval from the start, but at least 200 ms (or the interval) after the end: a cycle
    // that gave up (busy) must not starve the read-back of what it left in the map.
    next = std::max(start + interval, SteadyNanos() + std::min<int64_t>(interval, 200'000'000));
  }
}

Status GroupFreezeCycle::ThawAll(const std::vector<Freezable*>& frozen) {
  Status first = Status::Ok();
  std::vector<Status> others;
  for (auto it = frozen.rbegin(); it != frozen.rend(); ++it) {
    if (!(*it)->frozen()) continue;
    Status s = (*it)->Thaw();
    if (s.ok()) continue;
    if (first.ok()) {
      first = s;
    } else {
      others.push_back(s);
    }
  }
  // Logged only now that every filesystem is thawed (or left to its watchdog).
  for (const Status& s : others) CDP_LOG(error) << "cdp-agent: " << s.ToString();
  return first;
}

Result<std::vector<FrozenVolume>> GroupFreezeCycle::RunCycle(const std::string& label, int limit_ms,
                                                             int hold_limit_ms) {
  std::lock_guard<std::timed_mutex> lock(cycle_mu_);
  return RunCycleLocked(label, limit_ms, hold_limit_ms);
}

Result<std::vector<FrozenVolume>> GroupFreezeCycle::RunCycleLocked(const std::string& label,
                                                                   int limit_ms,
                                                                   int hold_limit_ms) {
  if (members_.empty()) {
    return Status::FailedPrecondition("no volume of this agent freezes a filesystem (--freeze)");
  }
  const bool held = hold_limit_ms > 0;
  const bool periodic = !held && label.empty();
  auto quiet_now = [&] {
    bool quiet = true;
    for (FreezeMember* m : members_) quiet = quiet && m->WritesSincePoint() <= kQuietWrites;
    return quiet;
  };
  auto last_points = [&] {
    std::vector<FrozenVolume> last;
    for (FreezeMember* m : members_) last.push_back({m->volume(), m->last_point_lsn()});
    return last;
  };
  // A periodic cycle of quiet filesystems backs off (file comment, "Quiet filesystems") — before
  // Prepare, whose syncfs would write back the agent's own state files and so feed the loop.
  if (periodic && SteadyNanos() < quiet_until_ns_ && quiet_now()) return last_points();
  ParkAll parked(members_);
  const int64_t prepare_deadline = SteadyNanos() + kPrepareNs;
  // With several members, a second round: what reached a disk while the others were prepared
  // (their shippers are parked) is pre-copied too, so no residual set grows past its target.
  for (size_t round = 0; round < (members_.size() > 1 ? 2u : 1u); ++round) {
    for (FreezeMember* m : members_) {
      if (!m->Prepare(prepare_deadline + static_cast<int64_t>(round) * kPrepareNs / 4)) {
        return Status::Aborted("volume " + m->volume() +
                               ": not ready for a freeze (busy, a resync, or unmounted; the "
                               "agent's log says which); try again");
      }
    }
  }
  bool changed = held;
  for (FreezeMember* m : members_) changed = changed || m->ChangedSincePoint();
  const bool quiet = quiet_now();
  if (!changed) {
    // Nothing reached any disk since the last points, even after writing back the page caches:
    // they still describe the filesystems, and a freeze would only disturb the applications.
    return last_points();
  }

  const std::vector<Freezable*> order = FreezeOrder();
  const int64_t limit_ns = int64_t{limit_ms} * 1'000'000;
  const int hard_limit_ms = held ? hold_limit_ms : options_.hard_limit_ms;
  const int64_t t0 = SteadyNanos();
  std::vector<Freezable*> frozen;
  for (Freezable* f : order) {
    Status s = f->Freeze(hard_limit_ms);
    if (!s.ok()) {
      Status thawed = ThawAll(frozen);
      for (FreezeMember* m : members_) m->FreezeRefused(s);
      if (!thawed.ok()) CDP_LOG(error) << "cdp-agent: " << thawed.ToString();
      return s;
    }
    frozen.push_back(f);
  }
  const int64_t t_frozen = SteadyNanos();
  // Test builds: a test may make another thread write the state dir (on a frozen filesystem)
  // now; nothing below may wait for it.
  CDP_TEST_SYNC_POINT("agent.freeze_cycle.all_frozen");
  std::vector<std::string> abandon(members_.size());
  for (size_t i = 0; i < members_.size(); ++i) {
    abandon[i] =
        members_[i]->CaptureResidual(t0, held ? int64_t{hard_limit_ms} * 1'000'000 : limit_ns);
  }
  std::vector<FrozenVolume> lsns;
  for (FreezeMember* m : members_) lsns.push_back({m->volume(), m->last_lsn()});
#if CDP_TEST_HOOKS
  if (options_.freeze_hold_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.freeze_hold_ms));
  }
#endif
  if (!held && SteadyNanos() - t0 > limit_ns) {
    for (std::string& a : abandon) {
      if (a.empty()) a = "over the " + std::to_string(limit_ms) + " ms limit";
    }
  }
  if (held) {
    held_ = frozen;
    held_since_ = std::chrono::steady_clock::now();
    held_until_ = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t0)) +
                  std::chrono::milliseconds(hold_limit_ms);
  } else {
    Status thawed = ThawAll(frozen);
    for (FreezeMember* m : members_) m->OnThawed();
    if (!thawed.ok()) {
      CDP_LOG(error) << "cdp-agent: " << thawed.ToString();
      for (std::string& a : abandon) a = thawed.ToString();
    }
  }
  const uint64_t us = static_cast<uint64_t>(SteadyNanos() - t0) / 1000;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (abandon[i].empty()) abandon[i] = members_[i]->AfterThaw();
  }
  // A group point needs every member: one member's reason abandons it for all.
  std::string group_abandon;
  for (size_t i = 0; i < members_.size() && group_abandon.empty(); ++i) {
    if (!abandon[i].empty()) group_abandon = "volume " + members_[i]->volume() + ": " + abandon[i];
  }
  if (members_.size() > 1 && !group_abandon.empty()) {
    for (std::string& a : abandon) {
      if (a.empty()) a = "the group freeze was abandoned (" + group_abandon + ")";
    }
  }
  if (group_abandon.empty()) {
    quiet_streak_ = quiet && periodic ? std::min(quiet_streak_ + 1, 16) : 0;
    const int64_t backoff_ms =
        quiet_streak_ == 0
            ? 0
            : std::min<int64_t>(kMaxQuietBackoffMs, int64_t{options_.checkpoint_interval_ms}
                                                        << std::min(quiet_streak_, 10));
    quiet_until_ns_ = SteadyNanos() + backoff_ms * 1'000'000;
  }
  GroupPointMark mark;
  mark.group = options_.group;
  mark.id = NowNanos() / 1000;
  mark.members = lsns;
  std::vector<FrozenVolume> points;
  for (size_t i = 0; i < members_.size(); ++i) {
    uint64_t point = 0;
    if (group_abandon.empty()) {
      point = members_[i]->RecordPoint(label, members_.size() > 1 ? &mark : nullptr);
      points.push_back({members_[i]->volume(), point});
    }
    members_[i]->Finish(us, static_cast<uint64_t>(t_frozen - t0) / 1000, abandon[i], point);
  }
  if (!group_abandon.empty()) {
    if (held) {
      Status thawed = ThawAll(held_);
      held_.clear();
      for (FreezeMember* m : members_) m->OnThawed();
      if (!thawed.ok()) CDP_LOG(error) << "cdp-agent: " << thawed.ToString();
    }
    return Status::Aborted("freeze abandoned: " + group_abandon);
  }
  return points;
}

Result<std::vector<FrozenVolume>> GroupFreezeCycle::Checkpoint(const std::string& label,
                                                               int timeout_ms) {
  std::unique_lock<std::timed_mutex> lock(cycle_mu_, std::chrono::milliseconds(timeout_ms));
  if (!lock.owns_lock()) {
    return Status::TimedOut("no freeze within " + std::to_string(timeout_ms) + " ms");
  }
  if (stop_) return Status::Aborted("the agent is stopping; no checkpoint");
  HoldExpired();
  if (!held_.empty()) {
    return Status::FailedPrecondition("a held freeze is in progress (a cutover's quiesce)");
  }
  for (FreezeMember* m : members_) CDP_RETURN_IF_ERROR(m->CanCheckpoint());
  return RunCycleLocked(label, options_.freeze_limit_ms, 0);
}

Result<std::vector<FrozenVolume>> GroupFreezeCycle::FreezeAndHold(
    const std::string& label, std::chrono::milliseconds freeze_budget,
    std::chrono::milliseconds hold_limit) {
  std::unique_lock<std::timed_mutex> lock(cycle_mu_, freeze_budget);
  if (!lock.owns_lock()) {
    return Status::TimedOut("a freeze cycle in progress did not end within " +
                            std::to_string(freeze_budget.count()) + " ms");
  }
  HoldExpired();
  if (!held_.empty()) return Status::FailedPrecondition("a freeze is already held");
  for (FreezeMember* m : members_) CDP_RETURN_IF_ERROR(m->CanCheckpoint());
  auto points = RunCycleLocked(label, static_cast<int>(freeze_budget.count()),
                               static_cast<int>(std::max<int64_t>(1, hold_limit.count())));
  if (!points.ok()) return points.status();
  // The held freeze's LSNs: every member, even one whose point merged into an earlier one.
  std::vector<FrozenVolume> lsns;
  for (FreezeMember* m : members_) lsns.push_back({m->volume(), m->last_lsn()});
  return lsns;
}

bool GroupFreezeCycle::HoldExpired() {
  if (held_.empty() || std::chrono::steady_clock::now() < held_until_) return false;
  // The watchdogs thawed (or are thawing) every filesystem: ours says "not frozen" (Aborted).
  std::vector<Freezable*> held;
  held.swap(held_);
  (void)ThawAll(held);
  for (FreezeMember* m : members_) m->OnThawed();
  return true;
}

Status GroupFreezeCycle::RenewHold(std::chrono::milliseconds hold_limit) {
  std::lock_guard<std::timed_mutex> lock(cycle_mu_);
  if (HoldExpired()) {
    return Status::FailedPrecondition(
        "no freeze is held: it passed its hold limit and the watchdogs thawed it");
  }
  if (held_.empty()) return Status::FailedPrecondition("no freeze is held");
  for (Freezable* f : held_) {
    if (!f->frozen()) return Status::FailedPrecondition(f->mount_path() + " is no longer frozen");
    CDP_RETURN_IF_ERROR(f->ExtendHold(static_cast<int>(hold_limit.count())));
  }
  held_until_ = std::chrono::steady_clock::now() + hold_limit;
  return Status::Ok();
}

Status GroupFreezeCycle::Thaw() {
  std::lock_guard<std::timed_mutex> lock(cycle_mu_);
  if (held_.empty()) return Status::Ok();
  std::vector<Freezable*> held;
  held.swap(held_);
  Status s = ThawAll(held);
  for (FreezeMember* m : members_) m->OnThawed();
  // Thawed by the watchdog at the hold limit already: nothing is frozen, which is what was asked.
  if (s.code() == StatusCode::kAborted) return Status::Ok();
  return s;
}

std::chrono::milliseconds GroupFreezeCycle::HeldFor() const {
  std::lock_guard<std::timed_mutex> lock(cycle_mu_);
  if (held_.empty() || std::chrono::steady_clock::now() >= held_until_) {
    return std::chrono::milliseconds(0);
  }
  // At least 1 ms while held: zero means "none".
  return std::max(std::chrono::milliseconds(1),
                  std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - held_since_));
}

}  // namespace cdp::agent
