#include "cdp/agent/sync_engine.h"

#include <pthread.h>

#include <chrono>

#include "cdp/core/logging.h"

namespace cdp::agent {

SyncEngine::SyncEngine(std::string volume, VolumeCapture* capture, Sender* sender,
                       DirtyBitmap* dirty, std::unique_ptr<BlockDevice> probe, SyncPlan plan,
                       uint32_t chunk_bytes)
    : volume_(std::move(volume)),
      capture_(capture),
      sender_(sender),
      dirty_(dirty),
      probe_(std::move(probe)),
      total_(capture->size()),
      chunk_(chunk_bytes),
      full_active_(plan.full_sync),
      cursor_(plan.full_sync ? plan.cursor : capture->size()),
      skip_zero_(plan.skip_zero),
      decide_skip_zero_(plan.decide_skip_zero_at_handshake) {}

SyncEngine::~SyncEngine() { Stop(); }

void SyncEngine::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "sync");
    Loop();
  });
}

void SyncEngine::Stop() {
  stop_ = true;
  Notify();
  if (thread_.joinable()) thread_.join();
}

void SyncEngine::Notify() {
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

void SyncEngine::OnHandshake(uint64_t durable_lsn) {
  if (decide_skip_zero_.exchange(false)) {
    skip_zero_ = durable_lsn == 0;
    if (durable_lsn != 0) {
      CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": journal already holds LSN "
                    << durable_lsn << " but this agent has no state; full sync sends zero "
                    << "regions too";
    }
  }
  Notify();
}

void SyncEngine::Loop() {
  using namespace std::chrono_literals;
  auto wait = [&](std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, d, [&] { return stop_.load(); });
  };
  bool resyncing = false;
  auto started = std::chrono::steady_clock::now();
  auto last_progress = started;
  if (full_active_) {
    CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": full sync of " << total_
                  << " bytes from offset " << cursor_.load();
  }
  while (!stop_) {
    if (!capture_->lsn_known()) {
      wait(20ms);
      continue;
    }
    if (full_active_) {
      uint64_t cursor = cursor_.load();
      if (cursor < total_ && skip_zero_) {
        auto next = probe_->NextDataOffset(cursor);
        if (next.ok() && *next > cursor) cursor = std::min<uint64_t>(*next, total_);
      }
      if (cursor >= total_) {
        cursor_ = total_;
        full_active_ = false;
        capture_->AddPoint(v1::POINT_SYNC_DONE, "full sync");
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": full sync done in " << secs << " s";
        continue;
      }
      const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(chunk_, total_ - cursor));
      in_progress_bytes_ = len;
      auto r = capture_->CaptureRegion(cursor, len, skip_zero_, [this] { return stop_.load(); });
      in_progress_bytes_ = 0;
      if (!r.ok()) {
        CDP_LOG(error) << "cdp-agent: volume " << volume_ << ": full sync at offset " << cursor
                       << ": " << r.status().ToString() << "; retrying in 1 s";
        wait(1000ms);
        continue;
      }
      if (*r == VolumeCapture::RegionResult::kNoSpace) {
        sender_->WaitForSpace(len + 64, 200);
        continue;
      }
      if (*r == VolumeCapture::RegionResult::kNotReady) {
        wait(20ms);
        continue;
      }
      cursor_ = cursor + len;
      if (std::chrono::steady_clock::now() - last_progress > 5s) {
        last_progress = std::chrono::steady_clock::now();
        CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": full sync "
                      << (cursor_.load() * 100 / total_) << "% (" << cursor_.load() << " of "
                      << total_ << " bytes)";
      }
      continue;
    }

    uint64_t offset = 0, length = 0;
    // Claim "in progress" before taking bits out of the bitmap, so a report never sees a region
    // that is neither dirty, in progress nor queued.
    in_progress_bytes_ = chunk_;
    if (dirty_->TakeRun(chunk_, &offset, &length)) {
      if (!resyncing) {
        resyncing = true;
        CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": resync of dirty regions ("
                      << dirty_->dirty_bytes() + length << " bytes)";
      }
      in_progress_bytes_ = length;
      auto r = capture_->CaptureRegion(offset, static_cast<uint32_t>(length), false,
                                       [this] { return stop_.load(); });
      if (!r.ok() || *r != VolumeCapture::RegionResult::kQueued) {
        dirty_->Mark(offset, length);
        in_progress_bytes_ = 0;
        if (!r.ok()) {
          CDP_LOG(error) << "cdp-agent: volume " << volume_ << ": resync at offset " << offset
                         << ": " << r.status().ToString() << "; retrying in 1 s";
          wait(1000ms);
        } else if (*r == VolumeCapture::RegionResult::kNoSpace) {
          sender_->WaitForSpace(length + 64, 200);
        } else {
          wait(20ms);
        }
        continue;
      }
      in_progress_bytes_ = 0;
      continue;
    }
    in_progress_bytes_ = 0;
    if (resyncing) {
      resyncing = false;
      capture_->OnResyncDone();
      capture_->AddPoint(v1::POINT_SYNC_DONE, "resync");
      CDP_LOG(info) << "cdp-agent: volume " << volume_ << ": resync done";
    }
    wait(50ms);
  }
}

}  // namespace cdp::agent
