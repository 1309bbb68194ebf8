#include "cdp/journal/retention.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/record_apply.h"
#include "cdp/core/time_text.h"
#include "cdp/journal/point_choice.h"

namespace cdp::journal {

namespace {
constexpr uint64_t kFoldReadBytes = 16ull << 20;  // records read and applied per step
constexpr size_t kFoldReadRecords = 4096;
}  // namespace

namespace {
constexpr auto kMaxRetryPause = std::chrono::minutes(5);

class FsyncFoldSync : public FoldSync {
 public:
  Status SyncDirectory(const std::string& dir) override { return cdp::SyncDirectory(dir); }
};
}  // namespace

FoldSync* DefaultFoldSync() {
  static FsyncFoldSync sync;
  return &sync;
}

RetentionWorker::RetentionWorker(JournalStore* store, RetentionOptions options, FoldSync* sync)
    : store_(store), options_(options), sync_(sync) {}

RetentionWorker::~RetentionWorker() { Stop(); }

void RetentionWorker::Start() { thread_ = std::thread([this] { Loop(); }); }

void RetentionWorker::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stopping_ = true;
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t RetentionWorker::WindowSeconds(const VolumeInfo& v) const {
  return v.window_s ? *v.window_s : options_.default_window_s;
}

uint64_t RetentionWorker::MaxBytes(const VolumeInfo& v) const {
  return v.max_bytes ? *v.max_bytes : options_.default_max_bytes;
}

uint64_t RetentionWorker::HistoryStart(const std::string& volume) const {
  auto v = store_->GetVolume(volume);
  uint64_t start = v.ok() ? std::max(v->base_lsn, v->fold_target) : 0;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = folding_to_.find(volume);
  if (it != folding_to_.end()) start = std::max(start, it->second);
  return start;
}

Result<uint64_t> RetentionWorker::Pin(const std::string& volume, uint64_t lsn) {
  const uint64_t start = HistoryStart(volume);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = folding_to_.find(volume);
  const uint64_t folding = it == folding_to_.end() ? 0 : it->second;
  if (lsn < std::max(start, folding)) {
    return Status::FailedPrecondition("volume " + volume + ": LSN " + std::to_string(lsn) +
                                      " has just been folded into the base image by retention "
                                      "(history now starts at LSN " +
                                      std::to_string(std::max(start, folding)) + ")");
  }
  const uint64_t token = next_token_++;
  pins_[token] = PinEntry{volume, lsn};
  return token;
}

void RetentionWorker::Unpin(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  pins_.erase(token);
}

void RetentionWorker::Loop() {
  while (true) {
    (void)RunOnce();  // failures are logged and recorded per volume
    std::unique_lock<std::mutex> lock(mu_);
    if (wake_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_; })) return;
  }
}

std::string RetentionWorker::LastError(const std::string& volume) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(volume);
  return it == failures_.end() ? std::string() : it->second.error;
}

Status RetentionWorker::RunOnce() {
  Status first;
  for (const VolumeInfo& listed : store_->ListVolumes()) {
    if (stopping_) return first;
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = failures_.find(listed.name);
      if (it != failures_.end() && now < it->second.retry_at) continue;
    }
    Status s = FoldVolume(listed);
    std::lock_guard<std::mutex> lock(mu_);
    if (s.ok()) {
      if (failures_.erase(listed.name) > 0) {
        CDP_LOG(info) << "retention: volume " << listed.name << ": folding works again";
      }
      continue;
    }
    Failure& f = failures_[listed.name];
    const std::string error = s.ToString();
    if (f.error != error) {
      // One line per distinct failure, not one a pass: the disk may be filling meanwhile.
      CDP_LOG(error) << "retention: volume " << listed.name << ": " << error
                     << "; its history is not folded (the journal grows) until this is fixed; "
                        "other volumes go on; retrying with a growing pause up to "
                     << kMaxRetryPause.count() << " min";
      f.error = error;
      f.pause = std::chrono::seconds(1);
    } else {
      f.pause = std::min<std::chrono::seconds>(f.pause * 2, kMaxRetryPause);
    }
    f.retry_at = now + f.pause;
    if (first.ok()) first = s;
  }
  return first;
}

Status RetentionWorker::FoldVolume(const VolumeInfo& listed) {
  if (listed.fold_target > listed.base_lsn) {
    CDP_LOG(info) << "retention: volume " << listed.name << ": finishing the fold to LSN "
                  << listed.fold_target << " an earlier run left";
    return Fold(listed, false);
  }
  bool early = false;
  CDP_ASSIGN_OR_RETURN(uint64_t target, ChooseTarget(listed, &early));
  if (target == 0) return Status::Ok();
  Status begun = store_->BeginFold(listed.name, target);
  if (!begun.ok()) {
    // Nothing was recorded: the claim ChooseTarget made (Pin refuses below it) goes too.
    std::lock_guard<std::mutex> lock(mu_);
    folding_to_.erase(listed.name);
    return begun;
  }
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, store_->GetVolume(listed.name));
  return Fold(v, early);
}

Result<uint64_t> RetentionWorker::ChooseTarget(const VolumeInfo& v, bool* early) {
  const uint64_t window = WindowSeconds(v);
  const uint64_t cap = MaxBytes(v);
  if (window == 0 && (cap == 0 || v.journal_bytes <= cap)) return uint64_t{0};
  uint64_t limit = v.durable_lsn;
  if (v.applied_lsn > 0) limit = std::min(limit, v.applied_lsn);  // the replica still needs them
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [token, pin] : pins_) {
      if (pin.volume == v.name) limit = std::min(limit, pin.lsn);
    }
    // Claim the limit now: a Pin below it from here on is refused.
    if (limit <= v.base_lsn) return uint64_t{0};
    folding_to_[v.name] = limit;
  }
  auto release = [&](uint64_t target) {
    std::lock_guard<std::mutex> lock(mu_);
    if (target == 0) {
      folding_to_.erase(v.name);
    } else {
      folding_to_[v.name] = target;
    }
    return target;
  };

  uint64_t by_window = 0;
  if (window > 0) {
    const uint64_t now = NowNanos();
    const uint64_t now_s = now / 1'000'000'000ull;
    const uint64_t cutoff = window < now_s ? now - window * 1'000'000'000ull : 0;
    std::vector<v1::ConsistencyPoint> points;
    std::vector<v1::Gap> gaps;
    Status read = store_->ReadPoints(v.name, v.base_lsn, UINT64_MAX, &points);
    if (read.ok()) read = store_->ReadGaps(v.name, &gaps);
    if (!read.ok()) {
      release(0);
      return read;
    }
    const auto windows = UnrestorableWindows(points, gaps, v.base_lsn);
    for (const auto& p : points) {
      if (p.time_ns() >= cutoff || p.lsn() > limit) break;
      if (p.lsn() > v.base_lsn && WindowContaining(windows, p.lsn()) == nullptr) {
        by_window = p.lsn();
      }
    }
  }
  uint64_t by_cap = 0;
  if (cap > 0 && v.journal_bytes > cap) {
    const uint64_t need = v.journal_bytes - cap / 10 * 9;
    uint64_t freed = 0;
    Status scan = store_->ScanRecordHeaders(
        v.name, v.base_lsn + 1, limit, [&](const ChangeRecord& rec) {
          freed += kRecordOverhead + (rec.has_payload() ? rec.length : 0);
          by_cap = rec.lsn;
          return freed >= need ? Status::Aborted("enough") : Status::Ok();
        });
    if (!scan.ok() && scan.code() != StatusCode::kAborted) {
      release(0);
      return scan;
    }
    // A gap recorded right after the target would share its key with a gap the fold carries
    // over to the target: fold one record less instead.
    std::vector<v1::Gap> gaps;
    if (store_->ReadGaps(v.name, &gaps).ok()) {
      for (auto g = gaps.rbegin(); g != gaps.rend(); ++g) {
        if (g->after_lsn() == by_cap && by_cap > v.base_lsn + 1) --by_cap;
      }
    }
    if (freed < need) {
      CDP_LOG(warning) << "retention: volume " << v.name << ": journal at " << v.journal_bytes
                       << " bytes, over its cap of " << cap << ", and only LSN " << limit
                       << " may be folded (the replica's applied LSN or an open image holds the "
                          "rest)";
    }
  }
  *early = by_cap > by_window;
  return release(std::max(by_window, by_cap));
}

Status RetentionWorker::Fold(const VolumeInfo& v, bool early) {
  const auto started = std::chrono::steady_clock::now();
  const uint64_t target = v.fold_target;
  {
    std::lock_guard<std::mutex> lock(mu_);
    folding_to_[v.name] = std::max(folding_to_[v.name], target);
  }
  const std::string path = store_->BaseImagePath(v.id);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  BlockDeviceOptions o;
  o.writable = true;
  o.create_size = v.size_bytes;
  CDP_ASSIGN_OR_RETURN(auto base, OpenBlockDevice(path, o));
  RecordApplier applier(base.get(), /*direct=*/false);
  CDP_LOG(info) << "retention: volume " << v.name << ": folding LSN " << v.base_lsn + 1 << ".."
                << target << " into the base image " << path;

  // Points and gaps before the fold: which gaps are still open at the target.
  std::vector<v1::ConsistencyPoint> points;
  std::vector<v1::Gap> gaps;
  CDP_RETURN_IF_ERROR(store_->ReadPoints(v.name, 0, UINT64_MAX, &points));
  CDP_RETURN_IF_ERROR(store_->ReadGaps(v.name, &gaps));

  uint64_t next = v.base_lsn + 1, freed = 0, records = 0, payload = 0, target_time = 0;
  while (next <= target) {
    std::vector<ChangeRecord> batch;
    CDP_RETURN_IF_ERROR(
        store_->ReadRecords(v.name, next, kFoldReadBytes, kFoldReadRecords, &batch));
    std::vector<ApplyItem> items;
    uint64_t bytes = 0;
    for (const auto& rec : batch) {
      if (rec.lsn > target) break;
      if (rec.lsn != next + items.size()) {
        return Status::Corruption("retention: volume " + v.name + ": LSN " +
                                  std::to_string(next + items.size()) +
                                  " is missing from the journal");
      }
      items.push_back(ApplyItem{rec, rec.payload ? std::string_view(*rec.payload) : ""});
      bytes += rec.has_payload() ? rec.length : 0;
      freed += kRecordOverhead + (rec.has_payload() ? rec.length : 0);
      target_time = rec.time_ns;
    }
    if (items.empty()) {
      return Status::Corruption("retention: volume " + v.name + ": LSN " + std::to_string(next) +
                                " is missing from the journal");
    }
    CDP_RETURN_IF_ERROR(applier.Apply(items).WithContext("retention: base image " + path));
    next += items.size();
    records += items.size();
    payload += bytes;
    if (options_.fold_mb_per_s > 0) {
      const double due = static_cast<double>(payload) / (options_.fold_mb_per_s * 1e6);
      const double spent =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      if (due > spent) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait_for(lock, std::chrono::duration<double>(due - spent), [&] { return stop_; });
      }
    }
    if (stopping_) return Status::Ok();  // finished at the next start
  }
  CDP_RETURN_IF_ERROR(base->Flush().WithContext("retention: syncing base image " + path));
  // The image's directory entry (and base/'s, when this fold created it) must be durable too
  // before the records are deleted: a crash would otherwise lose the image, and the next fold
  // would recreate it as zeroes.
  const std::filesystem::path base_dir = std::filesystem::path(path).parent_path();
  CDP_RETURN_IF_ERROR(sync_->SyncDirectory(base_dir.string())
                          .WithContext("retention: syncing the base image directory"));
  CDP_RETURN_IF_ERROR(sync_->SyncDirectory(base_dir.parent_path().string())
                          .WithContext("retention: syncing the journal's data directory"));

  // Gaps before the target whose windows are still open at it carry over, starting there.
  std::vector<v1::Gap> carried;
  for (const auto& w : UnrestorableWindows(points, gaps, v.base_lsn)) {
    if (w.after_lsn >= target || (w.ended && w.end_lsn <= target)) continue;
    v1::Gap g;
    g.set_after_lsn(target);
    g.set_time_ns(NowNanos());
    g.set_reason(w.reason);
    if (w.reason == kInitialSyncReason) {
      g.set_ends_at("initial");
    } else {
      for (const auto& original : gaps) {
        if (original.after_lsn() == w.after_lsn && original.reason() == w.reason) {
          g.set_ends_at(original.ends_at());
          g.set_time_ns(original.time_ns());
        }
      }
    }
    carried.push_back(std::move(g));
  }
  CDP_RETURN_IF_ERROR(store_->FinishFold(v.name, carried, freed, early, target_time));
  {
    std::lock_guard<std::mutex> lock(mu_);
    folding_to_.erase(v.name);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  CDP_LOG(info) << "retention: volume " << v.name << ": folded LSN " << v.base_lsn + 1 << ".."
                << target << " (" << records << " records, " << payload
                << " payload bytes) into the base image in " << secs << " s";
  if (early) {
    CDP_LOG(warning) << "retention: volume " << v.name << ": the journal was over its size cap ("
                     << MaxBytes(v) << " bytes): history up to LSN " << target << " ("
                     << FormatRfc3339(target_time)
                     << ") was folded before its window ended; points before it can no longer "
                        "be restored";
  }
  Status compacted = store_->CompactBefore(v.id, target + 1);
  if (!compacted.ok()) CDP_LOG(warning) << "retention: " << compacted.ToString();
  return Status::Ok();
}

}  // namespace cdp::journal
