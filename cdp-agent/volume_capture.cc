#include "cdp/agent/volume_capture.h"

#include <algorithm>
#include <cstring>

#include "cdp/core/logging.h"

namespace cdp::agent {

Result<AckMode> ParseAckMode(const std::string& text) {
  if (text == "async") return AckMode::kAsync;
  if (text == "sync") return AckMode::kSync;
  return Status::InvalidArgument("bad --ack '" + text + "': expected async or sync");
}

VolumeCapture::VolumeCapture(std::string volume, std::unique_ptr<BlockDevice> device,
                             std::unique_ptr<BlockDevice> read_device, Sender* sender,
                             DirtyBitmap* dirty, AckMode mode)
    : volume_(std::move(volume)),
      size_(device->size()),
      block_size_(device->logical_block_size()),
      sender_(sender),
      dirty_(dirty),
      mode_(mode),
      device_(std::move(device)),
      read_device_(std::move(read_device)) {}

void VolumeCapture::OnHandshake(uint64_t durable_lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!lsn_known_.load() || durable_lsn > last_lsn_.load()) {
    last_lsn_ = std::max(last_lsn_.load(), durable_lsn);
    if (!lsn_known_.load()) last_point_lsn_ = last_lsn_.load();
  }
  lsn_known_ = true;
  lsn_cv_.notify_all();
}

void VolumeCapture::BeginShutdown(int drain_ms) {
  const int64_t now = static_cast<int64_t>(NowNanos());
  shutdown_deadline_ns_ = now + int64_t{drain_ms} * 1000000;
  lsn_cv_.notify_all();
}

bool VolumeCapture::ShutdownExpired() const {
  const int64_t deadline = shutdown_deadline_ns_.load();
  return deadline != 0 && static_cast<int64_t>(NowNanos()) >= deadline;
}

void VolumeCapture::RebaseAfterJournalLoss(uint64_t durable_lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& rec : sender_->DropQueued()) dirty_->Mark(rec.offset, rec.length);
  dirty_->MarkAll();
  last_lsn_ = durable_lsn;
  last_point_lsn_ = durable_lsn;
  overflow_gap_open_ = true;
  v1::Gap gap;
  gap.set_after_lsn(durable_lsn);
  gap.set_time_ns(NowNanos());
  gap.set_reason("journal lost records it had acknowledged; full resync");
  gap.set_ends_at("resync");  // the bitmap is all dirty: the resync sends everything
  sender_->AddGap(gap);
}

void VolumeCapture::OnResyncDone() {
  std::lock_guard<std::mutex> lock(mu_);
  overflow_gap_open_ = false;
}

void VolumeCapture::MarkDirtyLocked(uint64_t offset, uint64_t length, const char* why) {
  dirty_->Mark(offset, length);
  if (overflow_gap_open_) return;
  overflow_gap_open_ = true;
  v1::Gap gap;
  gap.set_after_lsn(lsn_known_.load() ? last_lsn_.load() : 0);
  gap.set_time_ns(NowNanos());
  gap.set_reason(why);
  gap.set_ends_at("resync");
  sender_->AddGap(gap);
  CDP_LOG(warning) << "cdp-agent: volume " << volume_ << ": " << why
                   << "; tracking dirty regions for a resync (history gap after LSN "
                   << gap.after_lsn() << ")";
}

uint64_t VolumeCapture::QueueLocked(ChangeRecord rec) {
  const uint64_t offset = rec.offset;
  const uint64_t length = rec.length;
  if (mode_ == AckMode::kSync) {
    // Sync mode: the write may not complete before it is durable, so wait for room instead of
    // falling back to the bitmap.
    // The caller holds mu_ through a lock_guard; borrow it to wait, then hand it back.
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    // Poll the shutdown deadline: nothing signals when it passes.
    while (!lsn_known_.load() && !ShutdownExpired()) {
      lsn_cv_.wait_for(lock, std::chrono::milliseconds(200));
    }
    lock.release();
    while (true) {
      if (sender_->stopped() || ShutdownExpired()) {
        // Shutting down: the write cannot become durable; WaitSync then fails it (Aborted), and
        // the region is resynced after the restart.
        dirty_->Mark(offset, length);
        return UINT64_MAX;
      }
      rec.lsn = last_lsn_.load() + 1;
      ChangeRecord copy = rec;
      if (sender_->TryEnqueue(std::move(copy))) break;
      if (!sender_->WaitForSpace(Sender::Charge(rec), 1000) && !sender_->connected()) {
        // Still waiting: the journal-server is away. Keep the source's writes blocked, as sync
        // mode promises, and say so.
        CDP_LOG(warning) << "cdp-agent: volume " << volume_
                         << ": sync mode waiting for journal-server buffer space";
      }
    }
  } else {
    if (!lsn_known_.load()) {
      MarkDirtyLocked(offset, length, "journal-server not reached yet since start");
      return 0;
    }
    rec.lsn = last_lsn_.load() + 1;
    if (!sender_->TryEnqueue(rec)) {
      MarkDirtyLocked(offset, length, "send buffer full (journal-server slow or unreachable)");
      return 0;
    }
  }
  last_lsn_ = rec.lsn;
  captured_bytes_ += length;
  return rec.lsn;
}

Status VolumeCapture::WaitSync(uint64_t lsn) {
  if (mode_ != AckMode::kSync || lsn == 0) return Status::Ok();
  while (true) {
    Status s = sender_->WaitDurable(lsn, 200);
    if (!s.IsTimedOut()) return s;
    if (ShutdownExpired() || lsn == UINT64_MAX) {
      return Status::Aborted("volume " + volume_ +
                             ": agent stopping before the write became durable" +
                             (lsn == UINT64_MAX ? std::string(" (it was never journaled)")
                                                : " (LSN " + std::to_string(lsn) + ")"));
    }
  }
}

Status VolumeCapture::Read(uint64_t offset, std::span<char> buf) {
  std::lock_guard<std::mutex> lock(read_mu_);
  return read_device_->ReadAt(offset, buf);
}

Status VolumeCapture::Write(uint64_t offset, Payload data, bool fua) {
  uint64_t lsn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(
        device_->WriteAt(offset, std::span<const char>(data->data(), data->size())));
    if (fua) CDP_RETURN_IF_ERROR(device_->Flush());
    lsn = QueueLocked(MakeWriteRecord(0, NowNanos(), offset, std::move(data)));
  }
  return WaitSync(lsn);
}

Status VolumeCapture::Trim(uint64_t offset, uint32_t length) {
  uint64_t lsn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(device_->Discard(offset, length));
    ChangeRecord rec;
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = RecordKind::kDiscard;
    lsn = QueueLocked(std::move(rec));
  }
  return WaitSync(lsn);
}

Status VolumeCapture::WriteZeroes(uint64_t offset, uint32_t length, bool fua) {
  uint64_t lsn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(device_->WriteZeroes(offset, length));
    if (fua) CDP_RETURN_IF_ERROR(device_->Flush());
    ChangeRecord rec;
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = RecordKind::kWriteZeroes;
    lsn = QueueLocked(std::move(rec));
  }
  return WaitSync(lsn);
}

Status VolumeCapture::Flush() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(device_->Flush());
  }
  AddPoint(v1::POINT_FLUSH, "");
  return WaitSync(last_lsn_.load());
}

size_t VolumeCapture::QueueRecords(std::span<ChangeRecord> records) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!lsn_known_.load()) return 0;
  uint64_t lsn = last_lsn_.load();
  for (ChangeRecord& rec : records) rec.lsn = ++lsn;
  const size_t queued = sender_->TryEnqueueMany(records);
  for (size_t i = 0; i < queued; ++i) captured_bytes_ += records[i].length;
  last_lsn_ = last_lsn_.load() + queued;
  return queued;
}

void VolumeCapture::RecordGap(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  v1::Gap gap;
  gap.set_after_lsn(lsn_known_.load() ? last_lsn_.load() : 0);
  gap.set_time_ns(NowNanos());
  gap.set_reason(reason);
  gap.set_ends_at("freeze");  // trace mode: the first freeze after the checksum resync
  sender_->AddGap(gap);
  CDP_LOG(warning) << "cdp-agent: volume " << volume_ << ": " << reason
                   << " (history gap after LSN " << gap.after_lsn() << ")";
}

uint64_t VolumeCapture::last_point_lsn() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_point_lsn_;
}

Result<uint64_t> VolumeCapture::AddOperatorPoint(const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!lsn_known_.load()) {
    return Status::Unavailable("volume " + volume_ +
                               ": the agent has not reached the journal-server since it started");
  }
  const uint64_t lsn = last_lsn_.load();
  if (lsn == 0) return Status::FailedPrecondition("volume " + volume_ + ": nothing written yet");
  if (lsn == last_point_lsn_) return lsn;
  last_point_lsn_ = lsn;
  v1::ConsistencyPoint p;
  p.set_lsn(lsn);
  p.set_time_ns(NowNanos());
  p.set_origin(v1::POINT_OPERATOR);
  p.set_label(label);
  sender_->AddPoint(p);
  return lsn;
}

uint64_t VolumeCapture::AddPoint(v1::PointOrigin origin, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t lsn = last_lsn_.load();
  // A sync-done point replaces a point already at its LSN (same key in the journal): it is what
  // ends a history gap or the initial sync (docs/journal-format.md, section 9), so it is never
  // dropped, even at LSN 0 (an initial sync of an all-zero volume sends nothing).
  const bool sync_done = origin == v1::POINT_SYNC_DONE;
  if (!lsn_known_.load() || (lsn == 0 && !sync_done) || (lsn == last_point_lsn_ && !sync_done)) {
    return 0;
  }
  last_point_lsn_ = lsn;
  v1::ConsistencyPoint p;
  p.set_lsn(lsn);
  p.set_time_ns(NowNanos());
  p.set_origin(origin);
  p.set_label(label);
  sender_->AddPoint(p);
  return lsn;
}

Result<VolumeCapture::RegionResult> VolumeCapture::CaptureRegion(uint64_t offset, uint32_t length,
                                                                 bool skip_zero) {
  if (!lsn_known_.load()) return RegionResult::kNotReady;
  auto buf = std::make_shared<std::string>(length, '\0');
  std::lock_guard<std::mutex> lock(mu_);
  CDP_RETURN_IF_ERROR(device_->ReadAt(offset, std::span<char>(buf->data(), length)));
  const bool zero = IsAllZero(*buf);
  if (zero && skip_zero) return RegionResult::kSkippedZero;
  ChangeRecord rec;
  if (zero) {
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = RecordKind::kWriteZeroes;
  } else {
    rec = MakeWriteRecord(0, NowNanos(), offset, std::move(buf));
  }
  rec.lsn = last_lsn_.load() + 1;
  if (!sender_->TryEnqueue(rec)) return RegionResult::kNoSpace;
  last_lsn_ = rec.lsn;
  return RegionResult::kQueued;
}

}  // namespace cdp::agent
