// The freeze cycle of trace mode: ResidualTarget, FreezeStats and TraceCapture's freeze steps
// (freeze_cycle.h).
#include "cdp/agent/freeze_cycle.h"

#include <algorithm>
#include <chrono>
#include <sstream>
#include <thread>

#include "cdp/agent/trace_capture.h"
#include "cdp/core/logging.h"

namespace cdp::agent {

namespace {

// A freeze follows the pre-copy once a syncfs took less than this (little was dirty), or after
// kMaxPrecopyRounds rounds.
constexpr int64_t kQuickSyncNs = 15'000'000;
constexpr int kMaxPrecopyRounds = 4;
// See ResidualTarget.
constexpr uint64_t kMinResidualTarget = 2ull << 20;

uint64_t Percentile(std::vector<uint64_t> v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

uint64_t ResidualTarget(uint64_t buffer_bytes, double read_bytes_per_ns, int freeze_limit_ms) {
  return std::min<uint64_t>(
      buffer_bytes / 8,
      std::max<uint64_t>(kMinResidualTarget,
                         static_cast<uint64_t>(read_bytes_per_ns * freeze_limit_ms * 1e6 / 4)));
}

void FreezeStats::Record(uint64_t us, uint64_t ioctl_us, bool abandoned) {
  std::lock_guard<std::mutex> lock(mu_);
  if (abandoned) {
    totals_.set_freezes_abandoned(totals_.freezes_abandoned() + 1);
    period_abandoned_++;
  } else {
    totals_.set_freezes(totals_.freezes() + 1);
  }
  totals_.set_freeze_last_us(us);
  totals_.set_freeze_max_us(std::max<uint64_t>(totals_.freeze_max_us(), us));
  period_us_.push_back(us);
  if (us_.size() < kWindow) {
    us_.push_back(us);
    ioctl_us_.push_back(ioctl_us);
  } else {
    us_[next_] = us;
    ioctl_us_[next_] = ioctl_us;
    next_ = (next_ + 1) % us_.size();
  }
}

void FreezeStats::Fill(v1::TraceStats* stats) const {
  std::lock_guard<std::mutex> lock(mu_);
  *stats = totals_;
  stats->set_freeze_p50_us(Percentile(us_, 0.50));
  stats->set_freeze_p99_us(Percentile(us_, 0.99));
  stats->set_fifreeze_p50_us(Percentile(ioctl_us_, 0.50));
  stats->set_fifreeze_p99_us(Percentile(ioctl_us_, 0.99));
}

std::string FreezeStats::TakeSummary() {
  std::lock_guard<std::mutex> lock(mu_);
  if (period_us_.empty()) return "";
  std::ostringstream out;
  out << period_us_.size() << " freezes (" << period_abandoned_ << " abandoned), p50 "
      << Percentile(period_us_, 0.5) / 1000.0 << " ms, p99 "
      << Percentile(period_us_, 0.99) / 1000.0 << " ms, max "
      << *std::max_element(period_us_.begin(), period_us_.end()) / 1000.0 << " ms";
  period_us_.clear();
  period_abandoned_ = 0;
  return out.str();
}

bool TraceCapture::MountHeld(const FsFreezer& freezer, const Status& mounted) {
  if (!mounted.IsNotFound()) {
    // Held (other errors are the freeze's to report).
    if (fs_unmounted_.exchange(false)) {
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": " << freezer.mount_path()
                    << " holds the filesystem of " << tracer_->device().path
                    << " again; freezes (consistency points) resume";
    }
    return true;
  }
  if (!fs_unmounted_.exchange(true)) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": " << mounted.message()
                     << "; no freezes, so no consistency points, until the filesystem of "
                     << tracer_->device().path << " is mounted there again (checked every "
                     << options_.checkpoint_interval_ms << " ms); block writes to "
                     << tracer_->device().path << " are still captured";
  }
  return false;
}

Status TraceCapture::UnmountedError() const {
  std::string paths;
  for (const auto& f : freezers_) paths += (paths.empty() ? "" : ", ") + f->mount_path();
  return Status::FailedPrecondition("volume " + options_.volume + ": " + paths +
                                    " no longer holds the filesystem of " + tracer_->device().path +
                                    " (unmounted?); no freeze point until it is mounted there "
                                    "again");
}

std::vector<Freezable*> TraceCapture::Filesystems() {
  std::vector<Freezable*> out;
  for (const auto& f : freezers_) out.push_back(f.get());
  return out;
}

Status TraceCapture::CanCheckpoint() {
  if (stop_) {
    return Status::Aborted("volume " + options_.volume + ": the agent is stopping; no checkpoint");
  }
  if (freezers_.empty()) {
    return Status::FailedPrecondition(
        "volume " + options_.volume +
        ": trace mode without --freeze makes no consistency points; restart the agent with "
        "--freeze MOUNTPOINT");
  }
  if (scan_pending()) {
    return Status::FailedPrecondition(
        "volume " + options_.volume +
        ": a checksum resync of the device is in progress; the first point after it comes "
        "when it finishes");
  }
  if (fs_unmounted_) return UnmountedError();
  return Status::Ok();
}

bool TraceCapture::Prepare(int64_t deadline_ns) {
  if (freezers_.empty() || !output_->lsn_known()) return false;
  for (const auto& f : freezers_) {
    if (!MountHeld(*f, f->CheckMounted())) return false;
  }
  // No freeze during a scan (an unmount is still noticed and reported, above).
  if (scan_active_.load() || scan_restart_.load()) return false;
  // Pre-copy, so the freeze itself has little to do: write back the page cache without blocking
  // writers (syncfs), ship what that wrote until the residual set is small, and repeat while the
  // writeback still took long — each round leaves only what was dirtied during the previous one,
  // which is what FIFREEZE's own flush then has to write with the writers blocked.
  const uint64_t residual_target =
      ResidualTarget(output_->buffer_bytes(), read_bytes_per_ns_, options_.freeze_limit_ms);
  for (int round = 0; round < kMaxPrecopyRounds; ++round) {
    const int64_t t_sync = SteadyNanos();
    for (const auto& f : freezers_) {
      Status synced = f->SyncFs();
      if (!MountHeld(*f, synced)) return false;
      if (!synced.ok()) {
        CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": " << synced.ToString();
      }
    }
    const int64_t sync_ns = SteadyNanos() - t_sync;
    while (!stop_ && SteadyNanos() < deadline_ns) {
      auto drained = tracer_->Drain(event_sink_);
      if (!drained.ok()) return false;
      if (map_.bytes() <= residual_target) break;
      if (!output_->WaitForSpace(options_.read_batch_bytes, 50)) continue;
      auto shipped = TakeAndShip(options_.read_batch_bytes);
      if (!shipped.ok()) return false;
    }
    if (stop_ || map_.bytes() > residual_target) return false;  // too busy now; next interval
    if (sync_ns < kQuickSyncNs) break;
  }
  // The residual set must fit in the send buffer while frozen: wait (unfrozen) for room first.
  return output_->WaitForSpace(
      2 * residual_target + kMaxExtentsPerBatch * kRecordCharge,
      static_cast<int>(std::max<int64_t>(0, (deadline_ns - SteadyNanos()) / 1'000'000)));
}

bool TraceCapture::ChangedSincePoint() {
  // Nothing reached the disk since the last point, even after writing back the page cache.
  return !(events_.load() == events_at_last_point_ && map_.empty() && point_taken_once_);
}

uint64_t TraceCapture::WritesSincePoint() {
  if (!point_taken_once_) return UINT64_MAX;
  return events_.load() - events_at_last_point_;
}

void TraceCapture::FreezeRefused(const Status& why) {
  for (const auto& f : freezers_) {
    if (!MountHeld(*f, f->CheckMounted())) return;
  }
  // Said once per episode (an operator's fsfreeze -f lasts many intervals).
  if (!freeze_refused_) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume
                     << ": no consistency point: " << why.ToString() << "; retrying every interval";
  }
  freeze_refused_ = true;
}

std::string TraceCapture::CaptureResidual(int64_t frozen_at_ns, int64_t limit_ns) {
  // From here to OnThawed nothing may write to the state dir: it may be on a frozen filesystem.
  defer_hash_writes_ = true;
  std::string abandon;
  cycle_ = CycleFigures{};
  cycle_.was_refused = freeze_refused_;  // "works again" is logged in Finish
  freeze_refused_ = false;
  cycle_.frozen_at_ns = frozen_at_ns;
  auto ms = [](int64_t ns) { return std::to_string(static_cast<double>(ns) / 1e6); };
  const int64_t t_frozen = SteadyNanos();
  if (t_frozen - frozen_at_ns > limit_ns) {
    abandon =
        "FIFREEZE itself took " + ms(t_frozen - frozen_at_ns) + " ms: the filesystem's own flush";
  }
  auto drained = tracer_->Drain(event_sink_);
  if (!drained.ok()) abandon = "reading trace events failed: " + drained.status().ToString();
  auto lost = tracer_->LostEvents();
  cycle_.lost = !lost.ok() || *lost > lost_seen_.load();
  if (abandon.empty() && cycle_.lost) abandon = "events were lost";  // handled after the thaw
  if (abandon.empty() && scan_restart_.load()) {
    // The tracker saw a loss meanwhile: no point until the checksum resync it asked for is done.
    abandon = "a checksum resync is pending";
  }
  cycle_.drained_ns = SteadyNanos();
  cycle_.events_frozen = events_.load();  // every change the point will cover
  uint64_t residual = map_.bytes();
  // Reading the residual set must fit in what is left of the limit, at the read-back rate
  // measured so far.
  const double predicted_ns = static_cast<double>(residual) / read_bytes_per_ns_;
  if (abandon.empty() && static_cast<double>(cycle_.drained_ns - frozen_at_ns) + predicted_ns >
                             static_cast<double>(limit_ns)) {
    abandon = "reading the residual " + std::to_string(residual) + " bytes would take ~" +
              std::to_string(predicted_ns / 1e6) + " ms";
  }
  if (abandon.empty()) {
    in_progress_bytes_ = residual + kBlock;
    auto extents = map_.TakeAll();
    residual = 0;
    for (const Extent& e : extents) residual += e.length;
    if (!output_->WaitForSpace(
            residual + extents.size() * (1 + residual / kMaxRecordBytes) * kRecordCharge, 0)) {
      abandon = "send buffer full";
      for (const Extent& e : extents) map_.Add(e.offset, e.length);
    } else {
      auto shipped = ShipExtents(extents);
      if (!shipped.ok()) {
        abandon = "read-back failed: " + shipped.status().ToString();
      } else if (*shipped != residual) {
        abandon = "send buffer full";
      }
    }
    in_progress_bytes_ = 0;
  }
  cycle_.residual = residual;
  cycle_.read_ns = SteadyNanos();
  return abandon;
}

void TraceCapture::OnThawed() {
  if (!defer_hash_writes_.load()) return;
  FlushDeferredInvalidations();
  defer_hash_writes_ = false;
}

std::string TraceCapture::AfterThaw() {
  // A gap recorded since the scan stopped (events lost during this freeze) is closed only by a
  // freeze after the checksum resync it asked for: no point until that resync is done.
  if (scan_restart_.load() || scan_active_.load()) {
    return "history gap: a checksum resync of the device is pending";
  }
  return "";
}

uint64_t TraceCapture::RecordPoint(const std::string& label, const GroupPointMark* group) {
  // Only the parked shipper queues records, so the last LSN is still the one the frozen state
  // ended at; the successful thaw proves the filesystems stayed frozen until now.
  v1::ConsistencyPoint fields;
  if (group != nullptr) {
    fields.set_group(group->group);
    fields.set_group_point_id(group->id);
    for (const FrozenVolume& m : group->members) {
      auto* member = fields.add_group_members();
      member->set_volume(m.volume);
      member->set_lsn(m.lsn);
    }
  }
  const uint64_t point =
      output_->AddPoint(v1::POINT_FREEZE, label, group != nullptr ? &fields : nullptr);
  events_at_last_point_ = cycle_.events_frozen;
  point_taken_once_ = true;
  return point;
}

void TraceCapture::Finish(uint64_t frozen_us, uint64_t fifreeze_us, const std::string& abandon,
                          uint64_t point_lsn) {
  freeze_stats_.Record(frozen_us, fifreeze_us, !abandon.empty());
  if (cycle_.was_refused) {
    CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": freezing works again";
  }
  auto ms = [](int64_t ns) { return static_cast<double>(ns) / 1e6; };
  if (!abandon.empty()) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": freeze abandoned after "
                     << frozen_us / 1000.0 << " ms (" << abandon
                     << "); retrying at the next interval";
    if (cycle_.lost) CheckLostEvents();
  } else {
    CDP_LOG(debug) << "cdp-agent: volume " << options_.volume << ": freeze " << frozen_us / 1000.0
                   << " ms (FIFREEZE " << fifreeze_us / 1000.0 << " ms, drain "
                   << ms(cycle_.drained_ns - cycle_.frozen_at_ns) << " ms, residual "
                   << cycle_.residual << " bytes read and queued in "
                   << ms(cycle_.read_ns - cycle_.drained_ns) << " ms), point at LSN " << point_lsn;
  }
}

void TraceCapture::MaybeLogFreezeSummary() {
  const int64_t now = SteadyNanos();
  if (next_summary_ns_ == 0) next_summary_ns_ = now + 60'000'000'000;
  if (now < next_summary_ns_) return;
  next_summary_ns_ = now + 60'000'000'000;
  const std::string summary = freeze_stats_.TakeSummary();
  if (summary.empty()) return;
  CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": last minute: " << summary;
}

}  // namespace cdp::agent
