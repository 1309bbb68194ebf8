// TraceCapture: trace mode — protects a block device that is mounted and in use, without a
// kernel module and without a reboot (DESIGN.md §4). Two threads:
//
//   tracker  BlockTracer events (completed writes, discards, write-zeroes) -> DirtyExtentMap.
//            Once a second it checks the kernel's lost-event counters; any loss records a
//            history gap and starts a checksum resync.
//   shipper  takes extents from the map in elevator order, reads them back with io_uring and
//            O_DIRECT in batches, and queues them as records through VolumeCapture (which gives
//            them LSNs) into the Sender. It reads only what the Sender buffer can take, so a slow
//            or absent journal-server leaves changes in the map: the map is the fallback, no
//            change is ever dropped. Between reads it runs the device scan and the freeze cycle.
//
// Device scan (the initial full sync, or a checksum resync after lost events or a crash): reads
// the whole device in 1 MiB chunks, hashes every 4 KiB block and sends only the blocks whose hash
// differs from the BlockHashStore (what the journal durably holds). Writes during the scan are
// tracked as usual, so the copy converges while the filesystem is written.
//
// Freeze cycle (with freezers: the filesystems on the device, --freeze): TraceCapture is a
// FreezeMember (group_freeze_cycle.h) and the agent's GroupFreezeCycle drives it, alone or with
// the process's other volumes: every checkpoint interval, once no scan runs: syncfs (writeback
// without blocking writers), pre-copy until the map is small, then FIFREEZE of every filesystem,
// drain the events, check that none was lost, read back the residual set, queue it, FITHAW; only
// when the thaw proves the filesystems stayed frozen is a consistency point (POINT_FREEZE)
// recorded at the last LSN. A freeze that would exceed freeze_limit_ms, or whose residual set
// does not fit in the Sender buffer, is abandoned: thawed at once, no point, retried at the next
// interval. The cycle thread runs these phases while the shipper is parked (Park/Unpark: the
// shipper holds park_mu_ for each batch of work and lets go between them).
//
// While frozen, nothing here writes to the state dir (which may be on the frozen filesystem):
// the block hashes of the residual set are invalidated in memory and written once thawed
// (DeferHashWrites), and nothing is logged.
//
// Unmounting: the freezer holds the filesystem only for a syncfs and during a freeze, so it can
// be unmounted while the agent runs. Every interval (during a device scan too) the cycle checks
// that each --freeze path still holds its filesystem; while one does not (unmounted, or another
// filesystem mounted there) there are no freezes and so no consistency points, block writes to
// the device are still captured (fsck, dd), the change is logged once each way and reported
// (TraceStats.freeze_fs_unmounted), and freezing resumes once the same filesystem is mounted
// there again.
//
// Block hashes are kept honest (see block_hashes.h): entries are invalidated before a record is
// queued and set only once the journal has it durable, in LSN order, and only if no newer record
// for the block is still in flight.
//
// Where the pieces are (all in library cdp_trace, cdp-agent/trace/; the agent wires them up in
// agent.cc, and TraceOutput keeps this library off the sender):
//
//   block_tracer.{h,cc}   the tracefs instance and its event pipe           (BlockTracer)
//   extent_map.{h,cc}     the dirty extents not read back yet               (DirtyExtentMap)
//   block_hashes.{h,cc}   what the journal durably holds, per 4 KiB block   (BlockHashStore)
//   fs_freezer.{h,cc}     FIFREEZE/FITHAW with the thaw watchdog            (FsFreezer)
//   trace_capture.cc      the two threads, read-back, hashes, reports       (TraceCapture)
//   device_scan.{h,cc}    the device scan: PlanScanChunk, TraceCapture::ScanStep
//   freeze_cycle.{h,cc}   the freeze cycle's parts: ResidualTarget, FreezeStats, and
//                         TraceCapture's FreezeMember phases
//   group_freeze_cycle.{h,cc}  the cycle that drives them, for one volume or a group
//
// Thread-safety: public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cdp.pb.h"
#include "cdp/agent/block_hashes.h"
#include "cdp/agent/block_tracer.h"
#include "cdp/agent/extent_map.h"
#include "cdp/agent/freeze_cycle.h"
#include "cdp/agent/fs_freezer.h"
#include "cdp/agent/group_freeze_cycle.h"
#include "cdp/core/block_device.h"
#include "cdp/core/record.h"

namespace cdp::agent {

// Where trace mode puts what it captured: the agent's VolumeCapture (which gives records their
// LSNs and records points and gaps) over its Sender (the bounded buffer to the journal-server).
// An interface so that trace mode (library cdp_trace) does not depend on the sender; the agent
// implements it over both (agent.cc), and a test may fake it. Called from TraceCapture's threads:
// an implementation must be thread-safe.
class TraceOutput {
 public:
  virtual ~TraceOutput() = default;

  // The volume's size in bytes.
  virtual uint64_t size() const = 0;
  // False until the first handshake told the LSN to continue from (VolumeCapture::lsn_known).
  virtual bool lsn_known() const = 0;
  // Gives `records` the next LSNs and queues them, in order, until the first that does not fit
  // in the buffer (never waiting); returns how many were queued, their lsn fields set; 0 while
  // the LSN base is unknown (VolumeCapture::QueueRecords).
  virtual size_t QueueRecords(std::span<ChangeRecord> records) = 0;
  // Records a history gap after the last LSN handed out: changes were lost, `reason` says why
  // (VolumeCapture::RecordGap).
  virtual void RecordGap(const std::string& reason) = 0;
  // Records a consistency point at the last LSN handed out and returns that LSN, 0 when none
  // (VolumeCapture::AddPoint). `group`, when not null, holds a group point's fields to copy.
  virtual uint64_t AddPoint(v1::PointOrigin origin, const std::string& label,
                            const v1::ConsistencyPoint* group) = 0;
  // The last LSN handed out (VolumeCapture::captured_lsn).
  virtual uint64_t last_lsn() const = 0;
  // The LSN of the last point recorded, 0 for none.
  virtual uint64_t last_point_lsn() const = 0;
  // No dirty region is left (a device scan finished): the next overflow opens a new gap
  // (VolumeCapture::OnResyncDone).
  virtual void OnResyncDone() = 0;
  // Waits at most timeout_ms until the buffer has room for `bytes`; true when it has
  // (Sender::WaitForSpace).
  virtual bool WaitForSpace(uint64_t bytes, int timeout_ms) = 0;
  // The highest LSN the journal-server acknowledged as durable.
  virtual uint64_t durable_lsn() const = 0;
  // The buffer's capacity in bytes.
  virtual uint64_t buffer_bytes() const = 0;
};

struct TraceCaptureOptions {
  std::string volume;
  int checkpoint_interval_ms = 1000;  // between freeze cycles
  int freeze_limit_ms = 200;          // a freeze that would last longer is abandoned
  uint64_t read_batch_bytes = 4ull << 20;  // read-back per io_uring batch
  // Test hook (CDP_AGENT_TEST_FREEZE_HOLD_MS): stay frozen this long. Honoured only in a build
  // with CDP_TEST_HOOKS; ignored otherwise.
  int freeze_hold_ms = 0;
};

// What the device scan must do at start.
struct ScanPlan {
  bool active = false;     // scan the device
  bool initial = false;    // it is the initial full sync (reported as such)
  uint64_t cursor = 0;     // resume from this offset
  bool skip_zero = false;  // blocks of zeroes with an unknown hash need not be sent (the journal
                           // started empty for this volume)
  bool decide_skip_zero_at_handshake = false;  // fresh state: skip_zero = journal empty
};

class TraceCapture : public FreezeMember {
 public:
  // None of the pointers is owned except the unique_ptrs; all must outlive this object.
  // `reader` is the device opened read-only with O_DIRECT. `freezers` may be empty (no points):
  // one per filesystem on the device to freeze.
  TraceCapture(TraceCaptureOptions options, TraceOutput* output, BlockHashStore* hashes,
               std::unique_ptr<BlockDevice> reader, std::unique_ptr<BlockTracer> tracer,
               std::vector<std::unique_ptr<FsFreezer>> freezers, ScanPlan plan,
               uint64_t lost_events_baseline);
  ~TraceCapture() override;

  // Adds extents known dirty at start (a clean restart's saved bitmap).
  void AddDirty(uint64_t offset, uint64_t length) { map_.Add(offset, length); }

  void Start();

  // Called when a device scan finishes, so that the freeze cycle records the first point after
  // it at once (GroupFreezeCycle::RunSoon). Set before Start.
  void SetWakeCycle(std::function<void()> wake) { wake_cycle_ = std::move(wake); }

  // Stops both threads, drains the events still buffered into the map, and leaves the tracefs
  // instance enabled (Detach) so events keep accumulating for the next run. Returns the extents
  // not read back yet; the caller saves them. REQUIRES: the freeze cycle driving this capture
  // has stopped (GroupFreezeCycle::Stop).
  std::vector<Extent> Stop();

  // Called from the Sender's handshake callback.
  void OnHandshake(uint64_t durable_lsn);
  // The journal lost records it had acknowledged: every hash becomes unknown and the scan runs
  // again sending everything (VolumeCapture records the gap).
  void OnJournalLoss();

  // Applies hash updates for records that have become durable (also called at stop).
  void ApplyDurableHashes();

  void FillReport(v1::AgentReport* report);

  // FreezeMember (group_freeze_cycle.h; freeze_cycle.cc): the phases of a freeze cycle.
  const std::string& volume() const override { return options_.volume; }
  void Park() override;
  void Unpark() override { park_mu_.unlock(); }
  std::vector<Freezable*> Filesystems() override;
  // FailedPrecondition without --freeze, while a checksum resync is pending (no point may be
  // made then) or while a --freeze path is unmounted.
  Status CanCheckpoint() override;
  bool Prepare(int64_t deadline_ns) override;
  bool ChangedSincePoint() override;
  uint64_t last_point_lsn() override { return output_->last_point_lsn(); }
  uint64_t WritesSincePoint() override;
  std::string CaptureResidual(int64_t frozen_at_ns, int64_t limit_ns) override;
  uint64_t last_lsn() override { return output_->last_lsn(); }
  void OnThawed() override;
  std::string AfterThaw() override;
  uint64_t RecordPoint(const std::string& label, const GroupPointMark* group) override;
  void Finish(uint64_t frozen_us, uint64_t fifreeze_us, const std::string& abandon,
              uint64_t point_lsn) override;
  void FreezeRefused(const Status& why) override;

  // The scan still to do, for the state saved at a clean stop: whether one is pending (running
  // or requested) and the offset it would resume from.
  bool scan_pending() const { return scan_active_.load() || scan_restart_.load(); }
  uint64_t scan_resume_offset() const {
    return scan_restart_.load() ? 0 : scan_active_.load() ? scan_cursor_.load() : size_;
  }
  bool initial_sync_done() const { return initial_done_.load(); }
  // False while the decision waits for the first handshake (see SyncEngine::skip_zero).
  bool scan_skip_zero() const { return skip_zero_.load() && !decide_skip_zero_.load(); }
  // Lost-event counter of the tracefs instance as last read (saved for a clean restart).
  uint64_t lost_events_seen() const { return lost_seen_.load(); }

 private:
  static constexpr uint64_t kBlock = BlockHashStore::kBlockSize;
  static constexpr uint64_t kMaxRecordBytes = 1 << 20;  // payload per record
  static constexpr uint64_t kScanChunk = 1 << 20;       // device scan: read per step
  static constexpr uint64_t kRecordCharge = 64;         // Sender::Charge overhead per record
  static constexpr size_t kMaxExtentsPerBatch = 256;
  // Durable records' block hashes are written to the hash file at most this often (ShipOnce):
  // a crash loses at most this much hash progress (those blocks are resent by the resync, which
  // test_trace_agent_crash bounds). The loop of the agent journaling its own hash-file writes is
  // bounded by the quiet back-off on an idle filesystem, so a longer period buys nothing there.
  static constexpr int64_t kHashApplyPeriodNs = 2'000'000'000;

  static int64_t SteadyNanos();

  struct PendingHashes {
    uint64_t lsn = 0;
    uint64_t first_block = 0;
    std::vector<uint64_t> hashes;
  };

  void TrackerLoop();
  void ShipperLoop();
  // Reads back `extents`, queues them. Extents that could not be queued go back to the map.
  // Returns the number of bytes queued; an error leaves every extent in the map.
  Result<uint64_t> ShipExtents(const std::vector<Extent>& extents);
  // Builds records for [offset, offset+length) from `data` and queues them; returns the bytes
  // that did not fit (from the first unqueued record to the end), which the caller re-marks.
  uint64_t QueueContent(uint64_t offset, const char* data, uint64_t length,
                        std::vector<uint64_t> hashes);
  // One chunk of the device scan (device_scan.cc). Returns false when the Sender has no room
  // (retry later).
  Result<bool> ScanStep();
  // One round of the shipper's work, under park_mu_: how long to wait before the next (ms).
  int ShipOnce();
  // Takes the result of FsFreezer::CheckMounted (or of a SyncFs/Freeze) of `freezer`: false
  // when its --freeze path no longer holds the filesystem (NotFound). Logs when that changes,
  // and keeps fs_unmounted_ for reports and checkpoints. Parked.
  bool MountHeld(const FsFreezer& freezer, const Status& mounted);
  // Checkpoint's refusal while a filesystem is not mounted at its --freeze path.
  Status UnmountedError() const;
  // Writes the hash invalidations deferred during a freeze (see DeferHashWrites).
  void FlushDeferredInvalidations();
  void CheckLostEvents();
  void OnEventsLost(const std::string& reason);
  void StartScan(bool send_zero_blocks);
  // Logs the freezes of the last minute (count, abandoned, p50/p99) at info, once a minute.
  void MaybeLogFreezeSummary();
  // Takes up to max_bytes from the map and ships them, counted as in progress meanwhile.
  Result<uint64_t> TakeAndShip(uint64_t max_bytes);
  void Wait(int ms);

  const TraceCaptureOptions options_;
  TraceOutput* const output_;
  BlockHashStore* const hashes_;
  std::unique_ptr<BlockDevice> reader_;
  std::unique_ptr<BlockTracer> tracer_;
  std::vector<std::unique_ptr<FsFreezer>> freezers_;
  const uint64_t size_;
  DirtyExtentMap map_;

  std::atomic<bool> stop_{false};
  std::function<void()> wake_cycle_;
  // Held by the shipper while it works on the map, the reader, the hashes (ShipOnce), and by the
  // freeze cycle between Park and Unpark: the fields below marked "parked" are the holder's.
  std::mutex park_mu_;
  // Park is waiting for park_mu_: the shipper lets it in before taking the mutex again (a mutex
  // is not fair, and a busy shipper would take it back at once).
  std::atomic<bool> park_wanted_{false};
  // Frozen (CaptureResidual): hash invalidations wait here instead of touching the hash file,
  // which may be on the frozen filesystem; FlushDeferredInvalidations writes them after the
  // thaw. Parked.
  // Set by CaptureResidual, cleared by OnThawed; ApplyDurableHashes waits for it too.
  std::atomic<bool> defer_hash_writes_{false};
  std::vector<Extent> deferred_invalidations_;  // GUARDED_BY(hash_mu_)
  // Per-cycle figures between CaptureResidual and Finish (parked).
  struct CycleFigures {
    int64_t frozen_at_ns = 0, drained_ns = 0, read_ns = 0;
    uint64_t residual = 0, events_frozen = 0;
    bool lost = false;
    bool was_refused = false;  // the freeze before this one was refused
  } cycle_;

  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  std::thread tracker_;
  std::thread shipper_;

  // Scan state: written by the shipper; a restart request comes from the tracker.
  std::atomic<bool> scan_active_;
  std::atomic<bool> scan_restart_{false};
  std::atomic<bool> initial_done_;
  std::atomic<uint64_t> scan_cursor_;
  std::atomic<bool> skip_zero_;
  std::atomic<bool> decide_skip_zero_;
  std::atomic<uint64_t> in_progress_bytes_{0};

  // Hash bookkeeping (shipper thread, and Stop after it joined).
  std::mutex hash_mu_;
  std::deque<PendingHashes> pending_hashes_;             // GUARDED_BY(hash_mu_), LSN order
  std::unordered_map<uint64_t, uint64_t> latest_lsn_;  // GUARDED_BY(hash_mu_): block -> LSN
  uint64_t hash_generation_ = 0;  // GUARDED_BY(hash_mu_): bumped when the journal lost records

  // Lost-event accounting.
  std::atomic<uint64_t> lost_baseline_;  // instance counter when this run started tracking
  std::atomic<uint64_t> lost_seen_;

  // Figures for reports.
  FreezeStats freeze_stats_;
  int64_t next_summary_ns_ = 0;  // shipper thread
  int64_t next_trim_ns_ = 0;     // shipper thread
  int64_t next_hash_apply_ns_ = 0;  // shipper thread: see ShipOnce
  std::atomic<uint64_t> events_{0};
  std::atomic<uint64_t> readback_bytes_{0};
  std::atomic<uint64_t> scan_read_bytes_{0};
  std::atomic<uint64_t> scan_sent_bytes_{0};
  std::atomic<bool> reading_{false};
  // The --freeze path did not hold the filesystem at the last check (written by the shipper).
  std::atomic<bool> fs_unmounted_{false};
  // Every trace event read, by whichever thread reads: into the map, counted.
  const BlockTracer::Sink event_sink_ = [this](const BlockEvent& e) {
    map_.Add(e.offset, e.length);
    events_++;
  };  // the tracker is moving events from the pipe to the map

  // Parked (the shipper, or the freeze cycle).
  uint64_t events_at_last_point_ = 0;
  bool point_taken_once_ = false;
  bool freeze_refused_ = false;  // the last Freeze failed (e.g. frozen by someone else)
  AlignedBuffer scan_buffer_;
  AlignedBuffer readback_buffer_;
  double read_bytes_per_ns_ = 0.2;  // read-back rate (EWMA), 200 MB/s until measured
};

}  // namespace cdp::agent
