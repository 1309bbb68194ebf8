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
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lsn_known_.load() || durable_lsn > last_lsn_.load()) {
      last_lsn_ = std::max(last_lsn_.load(), durable_lsn);
      if (!lsn_known_.load()) last_point_lsn_ = last_lsn_.load();
    }
    lsn_known_ = true;
  }
  std::lock_guard<std::mutex> lock(lsn_mu_);
  lsn_cv_.notify_all();
}

void VolumeCapture::BeginShutdown(int drain_ms) {
  const int64_t now = static_cast<int64_t>(NowNanos());
  shutdown_deadline_ns_ = now + int64_t{drain_ms} * 1000000;
  std::lock_guard<std::mutex> lock(lsn_mu_);
  lsn_cv_.notify_all();
}

bool VolumeCapture::ShutdownExpired() const {
  const int64_t deadline = shutdown_deadline_ns_.load();
  return deadline != 0 && static_cast<int64_t>(NowNanos()) >= deadline;
}

void VolumeCapture::RebaseAfterJournalLoss(uint64_t durable_lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  // Writes still waiting for their LSN to become durable (sync mode) fail: their LSNs are
  // handed out again from durable_lsn + 1, to other records.
  for (const auto& rec : sender_->Rebase(durable_lsn)) dirty_->Mark(rec.offset, rec.length);
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

Status VolumeCapture::Admit(uint64_t charge, Admission* admission,
                            const std::function<bool()>& give_up) {
  if (mode_ != AckMode::kSync) return Status::Ok();
  // Sync mode: the write may not complete before it is durable, so it waits for room instead of
  // falling back to the bitmap — before the capture lock, which the sender thread's callbacks
  // take (OnHandshake, RebaseAfterJournalLoss) and so must never be held while waiting on it.
  auto stopping = [&] { return sender_->stopped() || ShutdownExpired() || give_up(); };
  {
    std::unique_lock<std::mutex> lock(lsn_mu_);
    // Poll the shutdown deadline and the fence: nothing signals when they change.
    while (!lsn_known_.load() && !stopping() && !sender_->fenced()) {
      lsn_cv_.wait_for(lock, std::chrono::milliseconds(200));
    }
  }
  auto reserved = sender_->Reserve(charge, stopping);  // IOError at once when fenced
  if (!reserved.ok()) {
    return reserved.status().WithContext("volume " + volume_ + ": write not applied");
  }
  admission->reservation = std::move(*reserved);
  return Status::Ok();
}

uint64_t VolumeCapture::QueueLocked(ChangeRecord rec, Admission* admission) {
  const uint64_t offset = rec.offset;
  const uint64_t length = rec.length;
  if (mode_ == AckMode::kSync) {
    rec.lsn = last_lsn_.load() + 1;
    admission->generation = sender_->generation();
    if (!sender_->EnqueueReserved(rec, std::move(admission->reservation))) {
      // Stopping: the write cannot become durable; WaitSync fails it (Aborted), and the region
      // is resynced after the restart.
      dirty_->Mark(offset, length);
      return UINT64_MAX;
    }
  } else {
    if (!lsn_known_.load()) {
      MarkDirtyLocked(offset, length, "journal-server not reached yet since start");
      return 0;
    }
    rec.lsn = last_lsn_.load() + 1;
    if (!sender_->TryEnqueue(rec)) {
      MarkDirtyLocked(offset, length,
                      sender_->fenced() ? "this agent is fenced (another agent writes the volume)"
                                        : "send buffer full (journal-server slow or unreachable)");
      return 0;
    }
  }
  last_lsn_ = rec.lsn;
  captured_bytes_ += length;
  return rec.lsn;
}

Status VolumeCapture::WaitSync(uint64_t lsn, uint64_t generation) {
  if (mode_ != AckMode::kSync || lsn == 0) return Status::Ok();
  while (true) {
    Status s = sender_->WaitDurable(lsn, 200, generation);
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

Status VolumeCapture::Write(uint64_t offset, SharedBytes data, bool fua) {
  Admission admission;
  CDP_RETURN_IF_ERROR(Admit(Sender::kRecordOverhead + data->size(), &admission));
  uint64_t lsn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(
        device_->WriteAt(offset, std::span<const char>(data->data(), data->size())));
    if (fua) CDP_RETURN_IF_ERROR(device_->Flush());
    lsn = QueueLocked(MakeWriteRecord(0, NowNanos(), offset, std::move(data)), &admission);
  }
  return WaitSync(lsn, admission.generation);
}

Status VolumeCapture::Trim(uint64_t offset, uint32_t length) {
  return WriteRange(RecordKind::kDiscard, offset, length, /*fua=*/false);
}

Status VolumeCapture::WriteZeroes(uint64_t offset, uint32_t length, bool fua) {
  return WriteRange(RecordKind::kWriteZeroes, offset, length, fua);
}

Status VolumeCapture::WriteRange(RecordKind kind, uint64_t offset, uint32_t length, bool fua) {
  Admission admission;
  CDP_RETURN_IF_ERROR(Admit(Sender::kRecordOverhead, &admission));
  uint64_t lsn = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (kind == RecordKind::kDiscard) {
      CDP_RETURN_IF_ERROR(device_->Discard(offset, length));
    } else {
      CDP_RETURN_IF_ERROR(device_->WriteZeroes(offset, length));
    }
    if (fua) CDP_RETURN_IF_ERROR(device_->Flush());
    ChangeRecord rec;
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = kind;
    lsn = QueueLocked(std::move(rec), &admission);
  }
  return WaitSync(lsn, admission.generation);
}

Status VolumeCapture::Flush() {
  uint64_t lsn = 0;
  uint64_t generation = Sender::kAnyGeneration;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CDP_RETURN_IF_ERROR(device_->Flush());
    lsn = last_lsn_.load();
    if (mode_ == AckMode::kSync) generation = sender_->generation();
  }
  AddPoint(v1::POINT_FLUSH, "");
  // Every write before the flush must be durable; a rebase since then dropped some of them.
  return WaitSync(lsn, generation);
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
  v1::ConsistencyPoint p;
  p.set_lsn(lsn);
  p.set_time_ns(NowNanos());
  p.set_origin(v1::POINT_OPERATOR);
  p.set_label(label);
  // A point at this LSN (a flush, a sync point, an earlier checkpoint, or one of the last run's
  // at the durable LSN) stays what it is; the journal adds the label to it.
  p.set_merge_labels(lsn == last_point_lsn_);
  last_point_lsn_ = lsn;
  sender_->AddPoint(p);
  return lsn;
}

uint64_t VolumeCapture::AddPoint(v1::PointOrigin origin, const std::string& label,
                                 const v1::ConsistencyPoint* group) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t lsn = last_lsn_.load();
  // A sync-done point replaces a point already at its LSN (same key in the journal): it is what
  // ends a history gap or the initial sync (docs/journal-format.md, section 9), so it is never
  // dropped, even at LSN 0 (an initial sync of an all-zero volume sends nothing).
  const bool sync_done = origin == v1::POINT_SYNC_DONE;
  // A labelled point (a trace-mode checkpoint) where a point already sits is still sent: the
  // journal adds its label to that point (merge_labels), so no label given is dropped.
  const bool labelled = (!label.empty() || group != nullptr) && lsn != 0;
  if (!lsn_known_.load() || (lsn == 0 && !sync_done) ||
      (lsn == last_point_lsn_ && !sync_done && !labelled)) {
    return 0;
  }
  v1::ConsistencyPoint p;
  if (group != nullptr) {
    p.set_group(group->group());
    p.set_group_point_id(group->group_point_id());
    *p.mutable_group_members() = group->group_members();
  }
  p.set_lsn(lsn);
  p.set_time_ns(NowNanos());
  p.set_origin(origin);
  p.set_label(label);
  // A sync-done point replacing one at its LSN keeps that point's operator labels.
  p.set_merge_labels(lsn == last_point_lsn_);
  last_point_lsn_ = lsn;
  sender_->AddPoint(p);
  return lsn;
}

Result<VolumeCapture::RegionResult> VolumeCapture::CaptureRegion(
    uint64_t offset, uint32_t length, bool skip_zero, const std::function<bool()>& give_up) {
  if (!lsn_known_.load()) return RegionResult::kNotReady;
  // Sync mode: the region waits its turn for room with the clients' writes (Reserve is first
  // come first served), so a steady load of sync writes cannot starve the sync.
  Admission admission;
  if (mode_ == AckMode::kSync) {
    Status admitted = Admit(Sender::kRecordOverhead + length, &admission, give_up);
    if (!admitted.ok()) return RegionResult::kNoSpace;
  }
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
  if (mode_ == AckMode::kSync) {
    if (!sender_->EnqueueReserved(rec, std::move(admission.reservation))) {
      return RegionResult::kNoSpace;  // stopping
    }
  } else if (!sender_->TryEnqueue(rec)) {
    return RegionResult::kNoSpace;
  }
  last_lsn_ = rec.lsn;
  return RegionResult::kQueued;
}

}  // namespace cdp::agent
