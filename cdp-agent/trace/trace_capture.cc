#include "cdp/agent/trace_capture.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "cdp/core/block_device.h"
#include "cdp/core/logging.h"

namespace cdp::agent {

namespace {

constexpr int kEventCoalesceMs = 50;
constexpr uint64_t kSettleNs = 100'000'000;

}  // namespace

int64_t TraceCapture::SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

TraceCapture::TraceCapture(TraceCaptureOptions options, TraceOutput* output, BlockHashStore* hashes,
                           std::unique_ptr<BlockDevice> reader, std::unique_ptr<BlockTracer> tracer,
                           std::vector<std::unique_ptr<FsFreezer>> freezers, ScanPlan plan,
                           uint64_t lost_events_baseline)
    : options_(std::move(options)),
      output_(output),
      hashes_(hashes),
      reader_(std::move(reader)),
      tracer_(std::move(tracer)),
      freezers_(std::move(freezers)),
      size_(output->size()),
      map_(output->size(), BlockHashStore::kBlockSize),
      scan_active_(plan.active),
      initial_done_(!(plan.active && plan.initial)),
      scan_cursor_(plan.active ? plan.cursor : output->size()),
      skip_zero_(plan.skip_zero),
      decide_skip_zero_(plan.decide_skip_zero_at_handshake),
      lost_baseline_(lost_events_baseline),
      lost_seen_(lost_events_baseline) {}

TraceCapture::~TraceCapture() {
  stop_ = true;
  wake_cv_.notify_all();
  if (tracker_.joinable()) tracker_.join();
  if (shipper_.joinable()) shipper_.join();
}

void TraceCapture::Start() {
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
  for (const auto& freezer : freezers_) {
    if (stat(hashes_->path().c_str(), &state_st) == 0 && state_st.st_dev == freezer->fs_dev() &&
        !(stat("/", &root_st) == 0 && root_st.st_dev == freezer->fs_dev())) {
      CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": the state dir ("
                       << hashes_->path() << ") is on the filesystem at " << freezer->mount_path()
                       << ": its open files keep " << freezer->mount_path()
                       << " from being unmounted while the agent runs; use a --state-dir on "
                       << "another filesystem";
    }
  }
}

std::vector<Extent> TraceCapture::Stop() {
  stop_ = true;
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
  OnThawed();  // a freeze held at stop was thawed by the cycle's Stop
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
  }
  // Outside hash_mu_: the hash file may be on a frozen filesystem, and a freeze's read-back
  // takes hash_mu_. An entry set meanwhile is for a record of the new generation: still true.
  Status s = hashes_->InvalidateAll();
  if (!s.ok()) {
    CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
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
      if (!s.ok())
        CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
    }
  }
}

void TraceCapture::OnEventsLost(const std::string& reason) {
  output_->RecordGap(reason + "; checksum resync of the whole device");
  scan_restart_ = true;
  wake_cv_.notify_all();
}

void TraceCapture::Park() {
  park_wanted_ = true;
  park_mu_.lock();
  park_wanted_ = false;
}

void TraceCapture::ShipperLoop() {
  while (!stop_) {
    while (park_wanted_.load() && !stop_) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    int wait_ms;
    {
      std::lock_guard<std::mutex> parked(park_mu_);
      wait_ms = ShipOnce();
    }
    if (wait_ms > 0) Wait(wait_ms);
  }
}

int TraceCapture::ShipOnce() {
  if (!output_->lsn_known()) return 20;
  // Hash updates are written in batches: each batch dirties the hash file, which the filesystem
  // then writes — and when the state dir is on a traced filesystem (the root), the agent journals
  // its own write, whose hash it then updates... Batching bounds that to one round per period.
  if (SteadyNanos() >= next_hash_apply_ns_) {
    next_hash_apply_ns_ = SteadyNanos() + kHashApplyPeriodNs;
    ApplyDurableHashes();
  }
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
  const uint64_t batch = options_.read_batch_bytes;
  // Rate-aware read-back: let changes settle for a moment unless a batch's worth is waiting —
  // a block rewritten meanwhile is read once, and reads, records and acks go in fewer, larger
  // rounds. The wait is a small part of the lag; a freeze reads its residual set at once.
  const uint64_t since = map_.dirty_since_ns();
  const bool settled = since != 0 && (map_.bytes() >= batch / 4 ||
                                      NowNanos() - since >= kSettleNs || scan_active_.load());
  if (settled) {
    if (!output_->WaitForSpace(batch + kMaxExtentsPerBatch * kRecordCharge, 50)) return 0;
    auto shipped = TakeAndShip(batch);
    if (!shipped.ok()) {
      CDP_LOG(error) << "cdp-agent: volume " << options_.volume
                     << ": read-back failed: " << shipped.status().ToString()
                     << "; retrying in 1 s";
      return 1000;
    }
    return 0;
  }
  if (scan_active_.load()) {
    auto stepped = ScanStep();
    if (!stepped.ok()) {
      CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": device scan at offset "
                     << scan_cursor_.load() << ": " << stepped.status().ToString()
                     << "; retrying in 1 s";
      return 1000;
    }
    if (!*stepped) output_->WaitForSpace(kScanChunk + 1024, 100);
    return 0;
  }
  return map_.empty() ? 50 : 10;
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
      for (size_t j = i + 1; j < extents.size(); ++j)
        map_.Add(extents[j].offset, extents[j].length);
      break;
    }
  }
  return queued;
}

uint64_t TraceCapture::QueueContent(uint64_t offset, const char* data, uint64_t length,
                                    std::vector<uint64_t> hashes) {
  // Entries become unknown before the records exist: see block_hashes.h. While frozen, in
  // memory first (the hash file may be on the frozen filesystem), written at the thaw.
  Status inv = Status::Ok();
  if (defer_hash_writes_.load()) {
    std::lock_guard<std::mutex> lock(hash_mu_);
    deferred_invalidations_.push_back({offset, length});
  } else {
    inv = hashes_->Invalidate(offset, length);
  }
  if (!inv.ok()) {
    CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << inv.ToString();
    return length;
  }
  std::vector<ChangeRecord> records;
  for (uint64_t off = 0; off < length; off += kMaxRecordBytes) {
    const uint64_t n = std::min(kMaxRecordBytes, length - off);
    ChangeRecord rec;
    if (IsAllZero(std::span<const char>(data + off, n))) {
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
  const size_t queued = output_->QueueRecords(records);
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

void TraceCapture::FlushDeferredInvalidations() {
  std::lock_guard<std::mutex> lock(hash_mu_);
  for (const Extent& e : deferred_invalidations_) {
    Status s = hashes_->Invalidate(e.offset, e.length);
    if (!s.ok()) CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.ToString();
  }
  deferred_invalidations_.clear();
}

void TraceCapture::ApplyDurableHashes() {
  // Not while frozen: the hash file may be on the frozen filesystem (OnThawed ends it).
  if (defer_hash_writes_.load()) return;
  const uint64_t durable = output_->durable_lsn();
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
  freeze_stats_.Fill(t);
  t->set_lost_events(lost_seen_.load() - lost_baseline_.load());
  t->set_events(events_.load());
  t->set_readback_bytes(readback_bytes_.load());
  t->set_resync_read_bytes(scan_read_bytes_.load());
  t->set_resync_sent_bytes(scan_sent_bytes_.load());
  t->set_resync_active(scanning);
  t->set_freeze_fs_unmounted(fs_unmounted_.load());
}

}  // namespace cdp::agent
