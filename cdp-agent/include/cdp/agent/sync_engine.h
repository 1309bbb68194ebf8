// SyncEngine: the background thread that ships device content the journal does not have yet —
// the initial full sync (sequential, holes and zero regions skipped when the journal started
// empty) and the resync of regions marked in the DirtyBitmap. Every region goes through
// VolumeCapture::CaptureRegion, so concurrent client writes stay correctly ordered and the copy
// converges while the source is written. It waits for Sender buffer space instead of dropping
// anything, and never blocks client writes for longer than one region read.
//
// Thread-safety: public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cdp/agent/dirty_bitmap.h"
#include "cdp/agent/sender.h"
#include "cdp/agent/volume_capture.h"
#include "cdp/core/block_device.h"

namespace cdp::agent {

struct SyncPlan {
  bool full_sync = true;  // run the full sync from `cursor`
  uint64_t cursor = 0;
  bool skip_zero = true;  // zero regions may be skipped (the journal's base is all zeroes)
  bool decide_skip_zero_at_handshake = false;  // fresh state: skip zeroes only if the journal
                                               // is empty for this volume
};

class SyncEngine {
 public:
  // `probe` is a device handle used only by this engine (hole detection). Others are not owned.
  SyncEngine(std::string volume, VolumeCapture* capture, Sender* sender, DirtyBitmap* dirty,
             std::unique_ptr<BlockDevice> probe, SyncPlan plan, uint32_t chunk_bytes = 1 << 20);
  ~SyncEngine();

  void Start();
  // Stops after the region in progress (which is put back in the bitmap if not queued).
  void Stop();

  // Called from the handshake callback before VolumeCapture::OnHandshake.
  void OnHandshake(uint64_t durable_lsn);

  bool full_sync_done() const { return !full_active_.load(); }
  uint64_t cursor() const { return cursor_.load(); }
  // Whether the full sync may skip zero regions. False while the decision waits for the first
  // handshake: a state saved then makes the next run send zeroes, which is always correct (the
  // journal may hold older data of the volume).
  bool skip_zero() const { return skip_zero_.load() && !decide_skip_zero_.load(); }
  bool resync_active() const { return in_progress_bytes_.load() > 0; }
  uint64_t in_progress_bytes() const { return in_progress_bytes_.load(); }
  uint64_t total_bytes() const { return total_; }
  // Wakes the engine (after bitmap marks).
  void Notify();

 private:
  void Loop();

  const std::string volume_;
  VolumeCapture* const capture_;
  Sender* const sender_;
  DirtyBitmap* const dirty_;
  std::unique_ptr<BlockDevice> probe_;
  const uint64_t total_;
  const uint32_t chunk_;
  std::atomic<bool> full_active_;
  std::atomic<uint64_t> cursor_;
  std::atomic<bool> skip_zero_;
  std::atomic<bool> decide_skip_zero_;
  std::atomic<uint64_t> in_progress_bytes_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace cdp::agent
