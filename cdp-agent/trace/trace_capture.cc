#include "cdp/agent/trace_capture.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "cdp/core/logging.h"

namespace cdp::agent {

namespace {

constexpr uint64_t kBlock = BlockHashStore::kBlockSize;
constexpr uint64_t kMaxRecordBytes = 1 << 20;  // payload per record
constexpr uint64_t kScanChunk = 1 << 20;
constexpr uint64_t kRecordCharge = 64;  // Sender::Charge overhead per record
constexpr size_t kMaxExtentsPerBatch = 256;
constexpr int kEventCoalesceMs = 50;
constexpr uint64_t kSettleNs = 100'000'000;
// A freeze follows the pre-copy once a syncfs took less than this (little was dirty), or after
// kMaxPrecopyRounds rounds.
constexpr int64_t kQuickSyncNs = 15'000'000;
constexpr int kMaxPrecopyRounds = 4;
// Pre-copy before a freeze until at most this much is dirty (or what the measured read-back rate
// reads in a quarter of the freeze limit, if more); more would make the freeze long.
constexpr uint64_t kMinResidualTarget = 2ull << 20;

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool AllZero(const char* data, size_t length) {
  size_t i = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    if (w != 0) return false;
  }
  for (; i < length; ++i) {
    if (data[i] != 0) return false;
  }
  return true;
}

uint64_t Percentile(std::vector<uint64_t> v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

TraceCapture::TraceCapture(TraceCaptureOptions options, VolumeCapture* capture, Sender* sender,
                           BlockHashStore* hashes, std::unique_ptr<BlockDevice> reader,
                           std::unique_ptr<BlockTracer> tracer, std::unique_ptr<FsFreezer> freezer,
                           ScanPlan plan, uint64_t lost_events_baseline)
    : options_(std::move(options)),
      capture_(capture),
      sender_(sender),
      hashes_(hashes),
      reader_(std::move(reader)),
      tracer_(std::move(tracer)),
      freezer_(std::move(freezer)),
      size_(capture->size()),
      map_(capture->size(), BlockHashStore::kBlockSize),
      scan_active_(plan.active),
      initial_done_(!(plan.active && plan.initial)),
      scan_cursor_(plan.active ? plan.cursor : capture->size()),
      skip_zero_(plan.skip_zero),
      decide_skip_zero_(plan.decide_skip_zero_at_handshake),
      lost_baseline_(lost_events_baseline),
      lost_seen_(lost_events_baseline) {}

TraceCapture::~TraceCapture() {
  stop_ = true;
  wake_cv_.notify_all();
  {
    std::lock_guard<std::mutex> lock(checkpoint_mu_);  // a waiting Checkpoint returns now
    checkpoint_cv_.notify_all();
  }
  if (tracker_.joinable()) tracker_.join();
  if (shipper_.joinable()) shipper_.join();
}

void TraceCapture::Start() {
  next_freeze_ns_ = SteadyNanos() + int64_t{options_.checkpoint_interval_ms} * 1000000;
  tracker_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "trace-events");
    TrackerLoop();
  });
  shipper_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "trace-readback");
    ShipperLoop();
  });
  if (scan_active_.load()) {
    CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": "
                  << (initial_done_.load() ? "checksum resync" : "initial full sync") << " of "
                  << size_ << " bytes from offset " << scan_cursor_.load();
  }
  // The agent itself must not keep the filesystem busy; its state files would (the root
  // filesystem is never unmounted while it runs, so state there is fine).
  struct stat state_st, root_st;
  if (freezer_ && stat(hashes_->path().c_str(), &state_st) == 0 &&
      state_st.st_dev == freezer_->fs_dev() &&
      !(stat("/", &root_st) == 0 && root_st.st_dev == freezer_->fs_dev())) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": the state dir ("
                     << hashes_->path() << ") is on the filesystem at " << freezer_->mount_path()
                     << ": its open files keep " << freezer_->mount_path()
                     << " from being unmounted while the agent runs; use a --state-dir on "
                     << "another filesystem";
  }
}

std::vector<Extent> TraceCapture::Stop() {
  {
    std::lock_guard<std::mutex> lock(checkpoint_mu_);  // a waiting Checkpoint returns now
    stop_ = true;
    checkpoint_cv_.notify_all();
  }
  wake_cv_.notify_all();
  if (tracker_.joinable()) tracker_.join();
  if (shipper_.joinable()) shipper_.join();
  if (tracer_) {
    auto drained = tracer_->Drain(event_sink_);
    if (!drained.ok()) {
      OnEventsLost("reading trace events at stop failed: " + drained.status().ToString());
    }
    CheckLostEvents();
    // Keep tracing while no agent runs: the next start resumes from the buffered events.
    tracer_->Detach();
  }
  std::lock_guard<std::mutex> lock(checkpoint_mu_);  // see Checkpoint
  freezer_.reset();
  return map_.TakeAll();
}

void TraceCapture::OnHandshake(uint64_t durable_lsn) {
  if (decide_skip_zero_.exchange(false)) {
    skip_zero_ = durable_lsn == 0;
    if (durable_lsn != 0) {
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": journal already holds LSN "
                    << durable_lsn << " but this agent has no state; the full sync sends zero "
                    << "blocks too";
    }
  }
  wake_cv_.notify_all();
}

void TraceCapture::OnJournalLoss() {
  {
    std::lock_guard<std::mutex> lock(hash_mu_);
    pending_hashes_.clear();
    latest_lsn_.clear();
    ++hash_generation_;
    Status s = hashes_->InvalidateAll();
    if (!s.ok()) {
      CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
    }
  }
  skip_zero_ = false;
  scan_restart_ = true;
  wake_cv_.notify_all();
}

void TraceCapture::Wait(int ms) {
  std::unique_lock<std::mutex> lock(wake_mu_);
  wake_cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stop_.load(); });
}

void TraceCapture::TrackerLoop() {
  int64_t next_check = SteadyNanos() + 1000000000;
  while (!stop_) {
    Status waited = tracer_->WaitForEvents(100);
    if (!waited.ok()) {
      CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << waited.ToString();
      Wait(1000);
      continue;
    }
    // Let completions gather for a moment: one read (and one wake-up of the read-back thread)
    // per burst rather than per event. A freeze drains on its own, so this adds no delay there.
    Wait(kEventCoalesceMs);
    reading_ = true;
    auto n = tracer_->Drain(event_sink_);
    reading_ = false;
    if (!n.ok()) {
      OnEventsLost("reading trace events failed: " + n.status().ToString());
      Wait(1000);
    } else if (*n > 0) {
      wake_cv_.notify_all();
    }
    if (SteadyNanos() >= next_check) {
      next_check = SteadyNanos() + 1000000000;
      CheckLostEvents();
    }
  }
}

void TraceCapture::CheckLostEvents() {
  auto lost = tracer_->LostEvents();
  if (!lost.ok()) {
    OnEventsLost("cannot read the trace buffer's statistics: " + lost.status().ToString());
    return;
  }
  // Two threads check (tracker, freeze cycle): only the one that advances the counter reports.
  uint64_t seen = lost_seen_.load();
  while (*lost > seen) {
    if (lost_seen_.compare_exchange_weak(seen, *lost)) {
      OnEventsLost("trace buffer overrun: the kernel dropped " + std::to_string(*lost - seen) +
                   " block events (raise --trace-buffer-kb)");
      return;
    }
  }
  auto enabled = tracer_->StillEnabled();
  if (!enabled.ok() || !*enabled) {
    OnEventsLost(enabled.ok() ? "block tracing was turned off in " + tracer_->instance_path() +
                                    " by someone else; turned it back on"
                              : "cannot check the trace instance: " + enabled.status().ToString());
    if (enabled.ok()) {
      Status s = tracer_->Reenable();
      if (!s.ok()) CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
    }
  }
}

Result<uint64_t> TraceCapture::Checkpoint(const std::string& label, int timeout_ms) {
  // Under checkpoint_mu_: Stop() sets stop_ and releases the freezer under it, so a request that
  // comes in while the agent stops is refused rather than racing it.
  std::unique_lock<std::mutex> lock(checkpoint_mu_);
  const Status stopping =
      Status::Aborted("volume " + options_.volume + ": the agent is stopping; no checkpoint");
  if (stop_) return stopping;
  if (!freezer_) {
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
  checkpoint_label_ = label;
  checkpoint_seq_++;
  checkpoint_done_ = false;
  checkpoint_wanted_ = true;
  if (!checkpoint_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                               [&] { return checkpoint_done_ || stop_.load(); }) ||
      !checkpoint_done_) {
    checkpoint_wanted_ = false;
    if (stop_) return stopping;
    return Status::TimedOut("volume " + options_.volume + ": no freeze within " +
                            std::to_string(timeout_ms) + " ms");
  }
  return checkpoint_result_;
}

void TraceCapture::OnEventsLost(const std::string& reason) {
  capture_->RecordGap(reason + "; checksum resync of the whole device");
  scan_restart_ = true;
  wake_cv_.notify_all();
}

void TraceCapture::ShipperLoop() {
  while (!stop_) {
    if (!capture_->lsn_known()) {
      Wait(20);
      continue;
    }
    ApplyDurableHashes();
    MaybeLogFreezeSummary();
    if (SteadyNanos() >= next_trim_ns_) {
      next_trim_ns_ = SteadyNanos() + 10'000'000'000;
      hashes_->TrimResident();
    }
    if (scan_restart_.exchange(false)) {
      scan_cursor_ = 0;
      if (!scan_active_.exchange(true)) {
        CDP_LOG(info) << "cdp-agent: volume " << options_.volume
                      << ": checksum resync of the whole device (" << size_ << " bytes)";
      }
    }
    const bool checkpoint = checkpoint_wanted_.load();
    if (freezer_ && scan_active_.load() && SteadyNanos() >= next_freeze_ns_) {
      // No freeze during a scan, but an unmount is still noticed and reported.
      MountHeld(freezer_->CheckMounted());
      next_freeze_ns_ = SteadyNanos() + int64_t{options_.checkpoint_interval_ms} * 1000000;
    }
    if (freezer_ && !scan_active_.load() && (checkpoint || SteadyNanos() >= next_freeze_ns_)) {
      const int64_t start = SteadyNanos();
      const int64_t interval = int64_t{options_.checkpoint_interval_ms} * 1000000;
      if (checkpoint) {
        std::lock_guard<std::mutex> lock(checkpoint_mu_);
        freeze_label_ = checkpoint_label_;
        checkpoint_taken_seq_ = checkpoint_seq_;
        checkpoint_wanted_ = false;
      }
      const uint64_t point_before = capture_->last_point_lsn();
      FreezeCycle();
      if (checkpoint) {
        const uint64_t point = capture_->last_point_lsn();
        std::lock_guard<std::mutex> lock(checkpoint_mu_);
        freeze_label_.clear();
        if (point != point_before ||
            (events_.load() == events_at_last_point_ && map_.empty() && point != 0)) {
          checkpoint_result_ = point;  // a new freeze point, or nothing changed since the last
        } else if (fs_unmounted_) {
          checkpoint_result_ = UnmountedError();
        } else {
          checkpoint_result_ = Status::Aborted(
              "volume " + options_.volume +
              ": the freeze for the checkpoint was abandoned or put off (the agent's log says "
              "why); try again");
        }
        // A request that timed out meanwhile gets nothing: only the one this cycle was for.
        checkpoint_done_ = checkpoint_taken_seq_ == checkpoint_seq_;
        checkpoint_cv_.notify_all();
      }
      // One interval from the start, but at least 200 ms (or the interval) after the end: a
      // cycle that gave up (busy) must not starve the read-back of what it left in the map.
      next_freeze_ns_ =
          std::max(start + interval, SteadyNanos() + std::min<int64_t>(interval, 200'000'000));
      continue;
    }
    const uint64_t batch = options_.read_batch_bytes;
    // Rate-aware read-back: let changes settle for a moment unless a batch's worth is waiting —
    // a block rewritten meanwhile is read once, and reads, records and acks go in fewer, larger
    // rounds. The wait is a small part of the lag; a freeze reads its residual set at once.
    const uint64_t since = map_.dirty_since_ns();
    const bool settled = since != 0 && (map_.bytes() >= batch / 4 ||
                                        NowNanos() - since >= kSettleNs || scan_active_.load());
    if (settled) {
      if (!sender_->WaitForSpace(batch + kMaxExtentsPerBatch * kRecordCharge, 50)) continue;
      auto shipped = TakeAndShip(batch);
      if (!shipped.ok()) {
        CDP_LOG(error) << "cdp-agent: volume " << options_.volume
                       << ": read-back failed: " << shipped.status().ToString()
                       << "; retrying in 1 s";
        Wait(1000);
      }
      continue;
    }
    if (scan_active_.load()) {
      auto stepped = ScanStep();
      if (!stepped.ok()) {
        CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": device scan at offset "
                       << scan_cursor_.load() << ": " << stepped.status().ToString()
                       << "; retrying in 1 s";
        Wait(1000);
      } else if (!*stepped) {
        sender_->WaitForSpace(kScanChunk + 1024, 100);
      }
      continue;
    }
    Wait(map_.empty() ? 50 : 10);
  }
}

Result<uint64_t> TraceCapture::TakeAndShip(uint64_t max_bytes) {
  // Claim "in progress" before taking, so a report never sees a change that is neither in the
  // map, in progress nor queued.
  in_progress_bytes_ = max_bytes;
  auto shipped = ShipExtents(map_.Take(max_bytes, kMaxExtentsPerBatch));
  in_progress_bytes_ = 0;
  return shipped;
}

Result<uint64_t> TraceCapture::ShipExtents(const std::vector<Extent>& extents) {
  uint64_t total = 0;
  for (const Extent& e : extents) total += (e.length + kBlock - 1) / kBlock * kBlock;
  if (total == 0) return uint64_t{0};
  // One buffer reused across batches (a freeze's residual set may need a larger one-off).
  AlignedBuffer oversized;
  if (readback_buffer_.size() < options_.read_batch_bytes) {
    readback_buffer_ = AlignedBuffer(options_.read_batch_bytes);
  }
  if (total > readback_buffer_.size()) oversized = AlignedBuffer(total);
  AlignedBuffer& buf = oversized.size() > 0 ? oversized : readback_buffer_;
  std::vector<ReadOp> ops;
  ops.reserve(extents.size());
  uint64_t pos = 0;
  for (const Extent& e : extents) {
    ops.push_back({e.offset, std::span<char>(buf.data() + pos, e.length)});
    pos += (e.length + kBlock - 1) / kBlock * kBlock;
  }
  const int64_t t0 = SteadyNanos();
  Status read = reader_->ReadBatch(ops);
  if (!read.ok()) {
    for (const Extent& e : extents) map_.Add(e.offset, e.length);
    return read;
  }
  // The read-back rate, for predicting how long a freeze's residual read takes (EWMA).
  const double rate = static_cast<double>(total) / static_cast<double>(SteadyNanos() - t0 + 1);
  read_bytes_per_ns_ = 0.8 * read_bytes_per_ns_ + 0.2 * rate;
  readback_bytes_ += total;
  uint64_t queued = 0;
  pos = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    const Extent& e = extents[i];
    const char* data = buf.data() + pos;
    pos += (e.length + kBlock - 1) / kBlock * kBlock;
    std::vector<uint64_t> hashes;
    hashes.reserve((e.length + kBlock - 1) / kBlock);
    for (uint64_t off = 0; off < e.length; off += kBlock) {
      hashes.push_back(BlockHashStore::Hash(data + off, std::min(kBlock, e.length - off)));
    }
    const uint64_t left = QueueContent(e.offset, data, e.length, std::move(hashes));
    queued += e.length - left;
    if (left > 0) {
      // The Sender is full: this extent's tail and every later extent go back to the map.
      map_.Add(e.offset + e.length - left, left);
      for (size_t j = i + 1; j < extents.size(); ++j) map_.Add(extents[j].offset, extents[j].length);
      break;
    }
  }
  return queued;
}

uint64_t TraceCapture::QueueContent(uint64_t offset, const char* data, uint64_t length,
                                    std::vector<uint64_t> hashes) {
  // Entries become unknown before the records exist: see block_hashes.h.
  Status inv = hashes_->Invalidate(offset, length);
  if (!inv.ok()) {
    CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << inv.ToString();
    return length;
  }
  std::vector<ChangeRecord> records;
  for (uint64_t off = 0; off < length; off += kMaxRecordBytes) {
    const uint64_t n = std::min(kMaxRecordBytes, length - off);
    ChangeRecord rec;
    if (AllZero(data + off, n)) {
      rec.time_ns = NowNanos();
      rec.offset = offset + off;
      rec.length = n;
      rec.kind = RecordKind::kWriteZeroes;
    } else {
      rec = MakeWriteRecord(0, NowNanos(), offset + off,
                            std::make_shared<std::string>(data + off, n));
    }
    records.push_back(std::move(rec));
  }
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(hash_mu_);
    generation = hash_generation_;
  }
  const size_t queued = capture_->QueueRecords(records);
  std::lock_guard<std::mutex> lock(hash_mu_);
  if (generation == hash_generation_) {
    for (size_t i = 0; i < queued; ++i) {
      const ChangeRecord& rec = records[i];
      PendingHashes p;
      p.lsn = rec.lsn;
      p.first_block = rec.offset / kBlock;
      const size_t first = (rec.offset - offset) / kBlock;
      const size_t count = (rec.length + kBlock - 1) / kBlock;
      p.hashes.assign(hashes.begin() + static_cast<std::ptrdiff_t>(first),
                      hashes.begin() + static_cast<std::ptrdiff_t>(first + count));
      for (size_t b = 0; b < count; ++b) latest_lsn_[p.first_block + b] = rec.lsn;
      pending_hashes_.push_back(std::move(p));
    }
  }
  if (queued == records.size()) return 0;
  return length - (records[queued].offset - offset);
}

void TraceCapture::ApplyDurableHashes() {
  const uint64_t durable = sender_->durable_lsn();
  std::lock_guard<std::mutex> lock(hash_mu_);
  while (!pending_hashes_.empty() && pending_hashes_.front().lsn <= durable) {
    PendingHashes& p = pending_hashes_.front();
    // Write runs of blocks whose latest record is this one; a block with a newer record in
    // flight keeps its unknown entry until that one is durable.
    size_t i = 0;
    while (i < p.hashes.size()) {
      const uint64_t block = p.first_block + i;
      auto it = latest_lsn_.find(block);
      if (it == latest_lsn_.end() || it->second != p.lsn) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < p.hashes.size()) {
        auto jt = latest_lsn_.find(p.first_block + j);
        if (jt == latest_lsn_.end() || jt->second != p.lsn) break;
        latest_lsn_.erase(jt);
        ++j;
      }
      Status s = hashes_->Set(block, std::span<const uint64_t>(p.hashes.data() + i, j - i));
      if (!s.ok()) {
        // The entries stay unknown: a later resync sends those blocks again.
        CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
      }
      i = j;
    }
    pending_hashes_.pop_front();
  }
}

Result<bool> TraceCapture::ScanStep() {
  const uint64_t cursor = scan_cursor_.load();
  if (cursor >= size_) {
    scan_active_ = false;
    const bool was_initial = !initial_done_.exchange(true);
    CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": "
                  << (was_initial ? "initial full sync" : "checksum resync") << " done: read "
                  << scan_read_bytes_.load() << " bytes, sent " << scan_sent_bytes_.load()
                  << " bytes";
    capture_->OnResyncDone();
    // The next freeze cycle records the first consistency point after it.
    next_freeze_ns_ = 0;
    return true;
  }
  const uint64_t len = std::min(kScanChunk, size_ - cursor);
  if (!sender_->WaitForSpace(len + (len / kBlock) * kRecordCharge, 0)) return false;
  if (scan_buffer_.size() < kScanChunk) scan_buffer_ = AlignedBuffer(kScanChunk);
  in_progress_bytes_ = len;
  Status read = reader_->ReadAt(cursor, std::span<char>(scan_buffer_.data(), len));
  if (!read.ok()) {
    in_progress_bytes_ = 0;
    return read;
  }
  scan_read_bytes_ += len;
  const char* data = scan_buffer_.data();
  const uint64_t first_block = cursor / kBlock;
  const size_t nblocks = static_cast<size_t>((len + kBlock - 1) / kBlock);
  std::vector<uint64_t> stored(nblocks);
  CDP_RETURN_IF_ERROR(hashes_->Get(first_block, stored));
  std::vector<uint64_t> now(nblocks);
  std::vector<char> send(nblocks, 0);
  const bool skip_zero = skip_zero_.load();
  std::vector<std::pair<size_t, uint64_t>> known_zero;  // block index, hash
  for (size_t b = 0; b < nblocks; ++b) {
    const uint64_t off = b * kBlock;
    const size_t n = static_cast<size_t>(std::min(kBlock, len - off));
    now[b] = BlockHashStore::Hash(data + off, n);
    if (stored[b] == now[b]) continue;
    if (skip_zero && stored[b] == BlockHashStore::kUnknown && AllZero(data + off, n)) {
      // The journal started empty, so it holds zeroes for this block unless a record for it was
      // shipped: one in flight, or one whose extent is still waiting in the map.
      bool shipped;
      {
        std::lock_guard<std::mutex> lock(hash_mu_);
        shipped = latest_lsn_.count(first_block + b) > 0;
      }
      if (!shipped && !map_.Overlaps(cursor + off, n)) {
        known_zero.emplace_back(b, now[b]);
        continue;
      }
    }
    send[b] = 1;
  }
  for (const auto& [b, h] : known_zero) {
    Status s = hashes_->Set(first_block + b, std::span<const uint64_t>(&h, 1));
    if (!s.ok()) return s;
  }
  size_t b = 0;
  while (b < nblocks) {
    if (!send[b]) {
      ++b;
      continue;
    }
    size_t e = b;
    while (e < nblocks && send[e]) ++e;
    const uint64_t off = b * kBlock;
    const uint64_t run = std::min<uint64_t>(e * kBlock, len) - off;
    const uint64_t left =
        QueueContent(cursor + off, data + off, run,
                     std::vector<uint64_t>(now.begin() + static_cast<std::ptrdiff_t>(b),
                                           now.begin() + static_cast<std::ptrdiff_t>(e)));
    scan_sent_bytes_ += run - left;
    if (left > 0) map_.Add(cursor + off + run - left, left);  // the extent path sends it
    b = e;
  }
  scan_cursor_ = cursor + len;
  in_progress_bytes_ = 0;
  return true;
}

bool TraceCapture::MountHeld(const Status& mounted) {
  if (!mounted.IsNotFound()) {
    // Held (other errors are the freeze's to report).
    if (fs_unmounted_.exchange(false)) {
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": " << freezer_->mount_path()
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
  return Status::FailedPrecondition(
      "volume " + options_.volume + ": " + freezer_->mount_path() +
      " no longer holds the filesystem of " + tracer_->device().path +
      " (unmounted?); no freeze point until it is mounted there again");
}

void TraceCapture::FreezeCycle() {
  if (!MountHeld(freezer_->CheckMounted())) return;
  // Pre-copy, so the freeze itself has little to do: write back the page cache without blocking
  // writers (syncfs), ship what that wrote until the residual set is small, and repeat while the
  // writeback still took long — each round leaves only what was dirtied during the previous one,
  // which is what FIFREEZE's own flush then has to write with the writers blocked.
  const int64_t precopy_deadline = SteadyNanos() + 2'000'000'000;
  // Bounded by an eighth of the send buffer: the residual must fit in it while frozen.
  const uint64_t residual_target = std::min<uint64_t>(
      sender_->buffer_bytes() / 8,
      std::max<uint64_t>(kMinResidualTarget,
                         static_cast<uint64_t>(read_bytes_per_ns_ * options_.freeze_limit_ms *
                                               1e6 / 4)));
  for (int round = 0; round < kMaxPrecopyRounds; ++round) {
    const int64_t t_sync = SteadyNanos();
    Status synced = freezer_->SyncFs();
    if (!MountHeld(synced)) return;
    if (!synced.ok()) {
      CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": " << synced.ToString();
    }
    const int64_t sync_ns = SteadyNanos() - t_sync;
    while (!stop_ && SteadyNanos() < precopy_deadline) {
      auto drained = tracer_->Drain(event_sink_);
      if (!drained.ok()) return;
      if (map_.bytes() <= residual_target) break;
      if (!sender_->WaitForSpace(options_.read_batch_bytes, 50)) continue;
      auto shipped = TakeAndShip(options_.read_batch_bytes);
      if (!shipped.ok()) return;
    }
    if (stop_ || map_.bytes() > residual_target) return;  // too busy now; try next interval
    if (sync_ns < kQuickSyncNs) break;
  }
  // The residual set must fit in the send buffer while frozen: wait (unfrozen) for room first.
  if (!sender_->WaitForSpace(2 * residual_target + kMaxExtentsPerBatch * kRecordCharge,
                             static_cast<int>(std::max<int64_t>(
                                 0, (precopy_deadline - SteadyNanos()) / 1'000'000)))) {
    return;  // the journal-server is behind; try at the next interval
  }
  // Nothing reached the disk since the last point, even after writing back the page cache: the
  // last point still describes the filesystem, and a freeze would only disturb the application.
  const uint64_t events = events_.load();
  if (events == events_at_last_point_ && map_.empty() && point_taken_once_) return;

  const int64_t t0 = SteadyNanos();
  const uint64_t limit_ns = uint64_t(options_.freeze_limit_ms) * 1000000;
  Status frozen = freezer_->Freeze();
  if (!MountHeld(frozen)) return;
  if (!frozen.ok()) {
    // Said once per episode (an operator's fsfreeze -f lasts many intervals).
    if (!freeze_refused_) {
      CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": no consistency point: "
                       << frozen.ToString() << "; retrying every interval";
    }
    freeze_refused_ = true;
    return;
  }
  if (freeze_refused_) {
    CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": freezing works again";
    freeze_refused_ = false;
  }
  std::string abandon;
  const int64_t t_frozen = SteadyNanos();
  auto ms = [](int64_t ns) { return static_cast<double>(ns) / 1e6; };
  if (uint64_t(t_frozen - t0) > limit_ns) {
    abandon = "FIFREEZE itself took " + std::to_string(ms(t_frozen - t0)) +
              " ms: the filesystem's own flush";
  }
  auto drained = tracer_->Drain(event_sink_);
  if (!drained.ok()) abandon = "reading trace events failed: " + drained.status().ToString();
  auto lost = tracer_->LostEvents();
  if (abandon.empty() && (!lost.ok() || *lost > lost_seen_.load())) {
    abandon = "events were lost";  // handled after the thaw
  }
  if (abandon.empty() && scan_restart_.load()) {
    // The tracker saw a loss meanwhile: no point until the checksum resync it asked for is done.
    abandon = "a checksum resync is pending";
  }
  const int64_t t_drained = SteadyNanos();
  const uint64_t events_frozen = events_.load();  // every change the point will cover
  uint64_t residual = map_.bytes();
  // Reading the residual set must fit in what is left of the limit, at the read-back rate
  // measured so far.
  const double predicted_ns = static_cast<double>(residual) / read_bytes_per_ns_;
  if (abandon.empty() &&
      static_cast<double>(t_drained - t0) + predicted_ns > static_cast<double>(limit_ns)) {
    abandon = "reading the residual " + std::to_string(residual) + " bytes would take ~" +
              std::to_string(predicted_ns / 1e6) + " ms";
  }
  if (abandon.empty()) {
    in_progress_bytes_ = residual + kBlock;
    auto extents = map_.TakeAll();
    residual = 0;
    for (const Extent& e : extents) residual += e.length;
    if (!sender_->WaitForSpace(residual + extents.size() * (1 + residual / kMaxRecordBytes) *
                                              kRecordCharge,
                               0)) {
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
  const int64_t t_read = SteadyNanos();
  if (options_.freeze_hold_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.freeze_hold_ms));
  }
  if (abandon.empty() && uint64_t(SteadyNanos() - t0) > limit_ns) {
    abandon = "over the " + std::to_string(options_.freeze_limit_ms) + " ms limit";
  }
  Status thawed = freezer_->Thaw();
  const uint64_t us = uint64_t(SteadyNanos() - t0) / 1000;
  if (!thawed.ok()) {
    abandon = thawed.ToString();
    CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << thawed.ToString();
  }
  // A gap recorded since the scan stopped (events lost during this freeze) is closed only by a
  // freeze after the checksum resync it asked for: no point until that resync is done.
  if (abandon.empty() && (scan_restart_.load() || scan_active_.load())) {
    abandon = "history gap: a checksum resync of the device is pending";
  }
  uint64_t point = 0;
  if (abandon.empty()) {
    // Only this thread queues records, so the last LSN is still the one the frozen state
    // ended at; the successful thaw proves the filesystem stayed frozen until now.
    point = capture_->AddPoint(v1::POINT_FREEZE, freeze_label_);
    events_at_last_point_ = events_frozen;
    point_taken_once_ = true;
  }
  RecordFreeze(us, uint64_t(t_frozen - t0) / 1000, !abandon.empty());
  if (!abandon.empty()) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": freeze abandoned after "
                     << us / 1000.0 << " ms (" << abandon << "); retrying at the next interval";
    if (!lost.ok() || *lost > lost_seen_.load()) CheckLostEvents();
  } else {
    CDP_LOG(debug) << "cdp-agent: volume " << options_.volume << ": freeze " << us / 1000.0
                   << " ms (FIFREEZE " << ms(t_frozen - t0) << " ms, drain "
                   << ms(t_drained - t_frozen) << " ms, residual " << residual
                   << " bytes read and queued in " << ms(t_read - t_drained)
                   << " ms), point at LSN " << point;
  }
}

void TraceCapture::RecordFreeze(uint64_t us, uint64_t ioctl_us, bool abandoned) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  if (abandoned) {
    stats_.set_freezes_abandoned(stats_.freezes_abandoned() + 1);
    minute_abandoned_++;
  } else {
    stats_.set_freezes(stats_.freezes() + 1);
  }
  stats_.set_freeze_last_us(us);
  stats_.set_freeze_max_us(std::max<uint64_t>(stats_.freeze_max_us(), us));
  minute_us_.push_back(us);
  if (freeze_us_.size() < 1024) {
    freeze_us_.push_back(us);
    ioctl_us_.push_back(ioctl_us);
  } else {
    freeze_us_[freeze_next_] = us;
    ioctl_us_[freeze_next_] = ioctl_us;
    freeze_next_ = (freeze_next_ + 1) % freeze_us_.size();
  }
}

void TraceCapture::MaybeLogFreezeSummary() {
  const int64_t now = SteadyNanos();
  if (next_summary_ns_ == 0) next_summary_ns_ = now + 60'000'000'000;
  if (now < next_summary_ns_) return;
  next_summary_ns_ = now + 60'000'000'000;
  std::lock_guard<std::mutex> lock(stats_mu_);
  if (minute_us_.empty()) return;
  CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": last minute: "
                << minute_us_.size() << " freezes (" << minute_abandoned_
                << " abandoned), p50 " << Percentile(minute_us_, 0.5) / 1000.0 << " ms, p99 "
                << Percentile(minute_us_, 0.99) / 1000.0 << " ms, max "
                << *std::max_element(minute_us_.begin(), minute_us_.end()) / 1000.0 << " ms";
  minute_us_.clear();
  minute_abandoned_ = 0;
}

void TraceCapture::FillReport(v1::AgentReport* r) {
  const bool pending_events = reading_.load() || tracer_->HasPending();
  r->set_capture_mode("trace");
  r->set_dirty_bytes(map_.bytes() + in_progress_bytes_.load() + (pending_events ? kBlock : 0));
  r->set_dirty_since_ns(map_.dirty_since_ns());
  const bool scanning = scan_active_.load() || scan_restart_.load();
  r->set_resync_active(scanning && initial_done_.load());
  r->set_initial_sync_done(initial_done_.load());
  r->set_initial_sync_total(size_);
  r->set_initial_sync_done_bytes(initial_done_.load() ? size_ : scan_cursor_.load());
  v1::TraceStats* t = r->mutable_trace();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    *t = stats_;
    t->set_freeze_p50_us(Percentile(freeze_us_, 0.50));
    t->set_freeze_p99_us(Percentile(freeze_us_, 0.99));
    t->set_fifreeze_p50_us(Percentile(ioctl_us_, 0.50));
    t->set_fifreeze_p99_us(Percentile(ioctl_us_, 0.99));
  }
  t->set_lost_events(lost_seen_.load() - lost_baseline_.load());
  t->set_events(events_.load());
  t->set_readback_bytes(readback_bytes_.load());
  t->set_resync_read_bytes(scan_read_bytes_.load());
  t->set_resync_sent_bytes(scan_sent_bytes_.load());
  t->set_resync_active(scanning);
  t->set_freeze_fs_unmounted(fs_unmounted_.load());
}

}  // namespace cdp::agent
