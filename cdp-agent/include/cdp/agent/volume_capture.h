// VolumeCapture: the in-line capture of one volume. Implements nbd::ExportTarget for the NBD
// server: every write, trim and write-zeroes is applied to the backing device and, under one
// capture lock, given the next LSN and queued in the Sender — so the journal's LSN order is the
// order in which the device saw the writes. FLUSH makes the device stable and records a consistency
// point.
//
// When a record does not fit in the Sender's buffer, or the LSN base is not known yet (no
// handshake since start), async mode marks its regions in the DirtyBitmap instead (the source
// never stalls) and the resync sends them later; sync mode waits, because a sync-mode write
// completes only once the journal has it durable. It waits before taking the capture lock, for
// the LSN base and then for a Sender::Reservation: the sender thread's callbacks (OnHandshake,
// RebaseAfterJournalLoss) take the capture lock, and only the sender thread frees buffer space,
// so nothing may wait for the sender while holding it.
//
// Lock order: mu_ (the capture lock), then the Sender's lock. lsn_mu_ is taken alone.
//
// The same lock makes the full sync and the resync safe while clients write: CaptureRegion
// reads a region and queues it as one record atomically with respect to writes.
//
// Thread-safety: all methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "cdp/agent/dirty_bitmap.h"
#include "cdp/agent/sender.h"
#include "cdp/core/block_device.h"
#include "cdp/nbd/export_target.h"

namespace cdp::agent {

enum class AckMode { kAsync, kSync };

// Parses "async" / "sync".
Result<AckMode> ParseAckMode(const std::string& text);

class VolumeCapture : public nbd::ExportTarget {
 public:
  // `device` (written under the capture lock) and `read_device` (for client reads) refer to the
  // same path. `sender` and `dirty` are not owned and must outlive this object.
  VolumeCapture(std::string volume, std::unique_ptr<BlockDevice> device,
                std::unique_ptr<BlockDevice> read_device, Sender* sender, DirtyBitmap* dirty,
                AckMode mode);

  uint64_t size() const override { return size_; }
  uint32_t block_size() const override { return block_size_; }
  Status Read(uint64_t offset, std::span<char> buf) override;
  Status Write(uint64_t offset, SharedBytes data, bool fua) override;
  Status Trim(uint64_t offset, uint32_t length) override;
  Status WriteZeroes(uint64_t offset, uint32_t length, bool fua) override;
  Status Flush() override;

  // Sets the LSN base once the server's durable LSN is known: the next LSN is
  // max(durable_lsn, last handed out) + 1. Until the first call, async writes go to the bitmap.
  void OnHandshake(uint64_t durable_lsn);
  bool lsn_known() const { return lsn_known_.load(); }

  enum class RegionResult { kQueued, kSkippedZero, kNoSpace, kNotReady };
  // Reads [offset, offset+length) and queues it as one record (a write, or a write-zeroes when
  // the region is all zeroes and skip_zero is false), atomically with respect to client writes.
  // kSkippedZero: all zeroes and skip_zero. kNoSpace: the Sender buffer is full (async mode;
  // nothing queued: wait and retry) or, in sync mode, the wait for room ended (give_up() true,
  // polled every 200 ms, the agent stopping or fenced). kNotReady: the LSN base is not known
  // yet. In sync mode the region takes its room with Sender::Reserve, in turn with the clients'
  // writes, before the capture lock.
  Result<RegionResult> CaptureRegion(uint64_t offset, uint32_t length, bool skip_zero,
                                     const std::function<bool()>& give_up = [] { return false; });

  // Trace mode: queues records that were built from device content read back by the caller
  // (never written through this object), assigning each the next LSN in order, under the capture
  // lock. Stops at the first record that does not fit in the Sender buffer. Returns how many
  // were queued (their lsn fields are set); 0 when the LSN base is not known yet.
  size_t QueueRecords(std::span<ChangeRecord> records);

  // Records a history gap after the last LSN handed out (trace mode: events were lost). The
  // window ends at the first freeze point after it (Gap.ends_at "freeze"): the caller makes no
  // freeze point until the checksum resync the gap asks for has finished.
  void RecordGap(const std::string& reason);

  // `cdpctl checkpoint`: an operator point (label `label`) at the last LSN handed out, which is
  // crash-consistent in NBD mode (writes are journaled in the order they completed). When a
  // point already sits (or may sit) at that LSN — a flush, a sync point, an earlier checkpoint —
  // the point is sent with merge_labels set: the journal keeps that point and adds `label` to
  // its operator labels (docs/journal-format.md), so the label is never dropped.
  // Unavailable before the first handshake; FailedPrecondition when nothing was captured yet.
  Result<uint64_t> AddOperatorPoint(const std::string& label);

  // LSN of the last point made (0 when none). Thread-safe.
  uint64_t last_point_lsn() const;

  // Records a consistency point at the last LSN handed out (if any record came since the last
  // point, or it is a sync-done point, or it has a label: then it is sent with merge_labels and
  // the journal adds the label to the point already there). Returns that LSN (0 when none).
  // `group`, when not null, carries a group point's fields (group, group_point_id,
  // group_members), copied into the point; such a point is sent even where a point already sits
  // (merge_labels: the journal marks that point as this volume's member).
  uint64_t AddPoint(v1::PointOrigin origin, const std::string& label,
                    const v1::ConsistencyPoint* group = nullptr);

  // Starts a shutdown: writes waiting for durability (sync mode) keep waiting until drain_ms
  // has passed, then fail with Aborted (the client sees EIO and the region is resynced after
  // the restart); sync-mode writes still waiting for buffer space fail then without being
  // applied. Call before stopping the NBD server so its threads can finish.
  void BeginShutdown(int drain_ms);

  // The journal lost records it had acked: drop what the Sender holds, mark the whole device
  // dirty (the journal no longer matches the device), record a gap, and continue the LSN
  // sequence from durable_lsn (Sender::Rebase). Sync-mode writes still waiting for their LSN
  // fail with IOError (their LSNs are handed out again, to other records). Called on the Sender
  // thread, without Sender locks held.
  void RebaseAfterJournalLoss(uint64_t durable_lsn);

  // Called by the sync engine when no dirty region is left: the next overflow opens a new gap.
  void OnResyncDone();

  uint64_t captured_lsn() const { return last_lsn_.load(); }
  uint64_t captured_bytes() const { return captured_bytes_.load(); }
  AckMode mode() const { return mode_; }

 private:
  // What a write holds from admission to queueing: sync mode's buffer space, and the Sender
  // generation its LSN belongs to.
  struct Admission {
    Sender::Reservation reservation;
    uint64_t generation = Sender::kAnyGeneration;
  };
  // Sync mode: waits, without the capture lock, until the LSN base is known and `charge` bytes
  // are reserved in the Sender. Aborted when the agent stops (or give_up() says so) meanwhile,
  // IOError when it is fenced; nothing was applied then. Async mode: nothing to do.
  Status Admit(uint64_t charge, Admission* admission,
               const std::function<bool()>& give_up = [] { return false; });
  // Queues `rec` (LSN assigned here) — in sync mode into admission's reservation, recording the
  // generation. REQUIRES: mu_ held. Returns its LSN, 0 when it went to the bitmap instead, or
  // UINT64_MAX when the sender stopped (sync mode: never journaled).
  uint64_t QueueLocked(ChangeRecord rec, Admission* admission);
  // Sync mode: waits until `lsn` of `generation` is durable.
  Status WaitSync(uint64_t lsn, uint64_t generation);
  // Trim and WriteZeroes: a range change without payload.
  Status WriteRange(RecordKind kind, uint64_t offset, uint32_t length, bool fua);

  const std::string volume_;
  const uint64_t size_;
  const uint32_t block_size_;
  Sender* const sender_;
  DirtyBitmap* const dirty_;
  const AckMode mode_;

  mutable std::mutex mu_;                     // the capture lock: device writes + LSN order
  std::unique_ptr<BlockDevice> device_;  // GUARDED_BY(mu_)
  std::mutex lsn_mu_;                    // for lsn_cv_ only
  std::condition_variable lsn_cv_;       // signalled when the LSN base becomes known
  std::mutex read_mu_;
  std::unique_ptr<BlockDevice> read_device_;  // GUARDED_BY(read_mu_)

  std::atomic<bool> lsn_known_{false};
  std::atomic<uint64_t> last_lsn_{0};  // written under mu_
  uint64_t last_point_lsn_ = 0;        // GUARDED_BY(mu_)
  std::atomic<uint64_t> captured_bytes_{0};
  // Set by BeginShutdown: waits for durability end at this time.
  std::atomic<int64_t> shutdown_deadline_ns_{0};
  bool overflow_gap_open_ = false;  // GUARDED_BY(mu_): a gap was recorded for bitmap marks
  bool ShutdownExpired() const;
  // Marks the range dirty and records a history gap if none is open. REQUIRES: mu_ held.
  void MarkDirtyLocked(uint64_t offset, uint64_t length, const char* why);
};

}  // namespace cdp::agent
