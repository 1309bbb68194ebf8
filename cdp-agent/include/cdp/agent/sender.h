// Sender: ships captured change records to the journal-server and keeps every record until the
// server says it is durable.
//
// The capture side appends records (contiguous LSNs) with TryEnqueue while holding its capture
// lock, so queue order is LSN order. A sender thread owns the ZeroMQ DEALER: it performs the
// Hello handshake, sends ChangeBatches inside a window of in-flight bytes, trims the queue on
// DurableAck, resends from the server's resend_from or after a reconnect (the server drops
// duplicates), and sends an AgentReport every report interval (which doubles as heartbeat).
// A server that stays silent while batches are in flight is reconnected with a fresh socket
// (lazy pirate); nothing is lost because nothing leaves the queue before it is durable.
//
// One writer per volume (docs/wire-protocol.md, section 4): each Hello presents the writer epoch
// the agent holds; a new one granted is handed to SetWriterEpochCallback (to be saved) before
// any batch goes. A server that says another agent is the writer (PermissionDenied) fences this
// one: nothing more is queued and waits for durability fail (fenced()).
//
// Callbacks that run on the sender thread (handshake, journal loss, writer epoch) may take the
// capture lock; so nothing may wait for this thread while holding it — sync-mode writers take
// their buffer space with Reserve before the lock.
//
// Thread-safety: every public method is thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "cdp.pb.h"
#include "cdp/core/record.h"
#include "cdp/core/status.h"

namespace cdp::agent {

struct SenderOptions {
  std::string server;  // tcp://HOST:PORT
  std::string volume;
  uint64_t volume_size = 0;
  uint32_t block_size = 512;
  std::string identity;
  uint64_t buffer_bytes = 32ull << 20;    // cap of captured-but-not-durable bytes
  uint64_t max_batch_bytes = 1ull << 20;  // payload bytes per ChangeBatch
  size_t max_batch_records = 1024;
  uint64_t window_bytes = 8ull << 20;  // bytes sent but not yet acked
  // Payload bytes per second on the wire (token bucket, bursts up to max(1 MiB, 1/10 s));
  // 0 = unlimited. Records wait in the buffer meanwhile, so a limit below the write rate fills it.
  uint64_t bandwidth_bytes_per_sec = 0;
  int report_interval_ms = 100;  // also sent at once when the queue drains
  // One writer per volume (docs/wire-protocol.md): the writer epoch the state dir holds (0:
  // none), this process's random instance id (0: the Sender draws one), and whether to take the
  // volume over from the agent that writes it now (cdp-agent --take-over; asked once, in the
  // first Hello).
  uint64_t writer_epoch = 0;
  uint64_t instance_id = 0;
  bool take_over = false;
  int silence_timeout_ms = 10000;  // reconnect when sent messages get no reply (black hole)
};

class Sender {
 public:
  // Called on the sender thread after every successful handshake with the server's durable LSN.
  using HandshakeCallback = std::function<void(uint64_t durable_lsn)>;
  // Fills the volume's AgentReport fields that only the capture side knows.
  using ReportCallback = std::function<void(v1::AgentReport*)>;

  Sender(SenderOptions options, HandshakeCallback on_handshake, ReportCallback on_report);
  ~Sender();

  // Called on the sender thread when the server has lost records it had acked (its journal was
  // reset or restored from an older copy): the server's durable LSN is below one it acked
  // before, or it asks for records this agent no longer holds. The callee must rebase the LSN
  // sequence on `durable_lsn` (see VolumeCapture::RebaseAfterJournalLoss). Set before Start().
  void SetJournalLossCallback(std::function<void(uint64_t durable_lsn)> callback) {
    on_journal_loss_ = std::move(callback);
  }

  // Called on the sender thread when the server grants a writer epoch other than the one held:
  // the callee must make it durable (the agent's state dir) before it returns OK; on an error
  // the session is dropped and the handshake retried, and no batch is sent meanwhile. Set
  // before Start().
  void SetWriterEpochCallback(std::function<Status(uint64_t epoch)> callback) {
    on_writer_epoch_ = std::move(callback);
  }

  // Called when the journal-server relays `cdpctl checkpoint`: makes an operator point and
  // returns its LSN (the point must be queued with AddPoint before it returns). It runs on a
  // checkpoint thread of its own, one request at a time, so it may block (a trace-mode freeze
  // waits for its records to fit in this buffer) while the sender thread goes on sending and
  // taking acks; a request arriving while one runs is refused ("try again"). The reply goes
  // back on the sender thread. Unset: checkpoints are refused. Set before Start().
  void SetCheckpointCallback(std::function<Result<uint64_t>(const std::string& label)> callback) {
    on_checkpoint_ = std::move(callback);
  }

  // Called when the journal-server relays a source-control request (the cutover's quiesce, hold,
  // release, fence, hashes, status; source_control_service.h): returns the reply. Each request
  // runs on a thread of its own (a lease renewal must not wait behind a quiesce's hooks or a
  // hashes read), at most kMaxSourceRequests at once (more are refused, "busy"); the reply goes
  // back on the sender thread, on the current session. Unset: every request is refused ("this
  // agent does not take source-control requests"). Set before Start().
  void SetSourceCallback(std::function<v1::SourceReply(const v1::SourceRequest&)> callback) {
    on_source_ = std::move(callback);
  }
  static constexpr int kMaxSourceRequests = 4;

  // Starts the sender thread. Connection happens in the background.
  void Start();
  // Stops the thread after trying, until `drain_ms` has passed, to get every queued record
  // durable. Returns the records that are still not durable (the caller saves their ranges
  // in the dirty bitmap). Idempotent.
  std::vector<ChangeRecord> Stop(int drain_ms);

  // Buffer space held for one record that is not queued yet. Sync-mode writers take it before
  // their capture lock (Reserve may wait for the sender thread to free space, and the sender
  // thread's callbacks take that lock), then queue the record into it with EnqueueReserved.
  // Released when destroyed unused. Move-only; must not outlive the Sender.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }
    uint64_t bytes() const { return bytes_; }
    void Release();

   private:
    friend class Sender;
    Sender* sender_ = nullptr;
    uint64_t bytes_ = 0;
  };

  // Waits, first come first served, until `bytes` fit in the buffer next to what is queued and
  // reserved, and reserves them. Aborted when the sender stops or give_up() returns true
  // (asked once the call has its place in line, and before every check for room after that:
  // at least every 200 ms, under the sender's lock); InvalidArgument when `bytes` exceeds the
  // whole buffer. While a Reserve waits, TryEnqueue and WaitForSpace leave the space to it.
  // REQUIRES: the caller holds no lock that a sender-thread callback takes.
  Result<Reservation> Reserve(uint64_t bytes, const std::function<bool()>& give_up);

  // Appends a record into `reservation`. REQUIRES: as TryEnqueue, and Charge(rec) <=
  // reservation.bytes(). False (nothing queued, the reservation released) once Stop has begun.
  bool EnqueueReserved(ChangeRecord rec, Reservation reservation);

  // Appends a record. REQUIRES: rec.lsn is one more than the last enqueued LSN (or the first
  // after a handshake). False, and nothing queued, when it does not fit in the buffer or a
  // Reserve is waiting for space.
  bool TryEnqueue(ChangeRecord rec);
  // Appends records[0..n) for the largest n whose records all fit, under one lock and with one
  // wake-up of the sender thread. Same REQUIRES as TryEnqueue for each. Returns n.
  size_t TryEnqueueMany(std::span<const ChangeRecord> records);
  // Waits until `bytes` fit in the buffer (and no Reserve waits, and the agent is not fenced)
  // or timeout_ms passes; true if they fit.
  bool WaitForSpace(uint64_t bytes, int timeout_ms);
  // Attaches a consistency point; it travels with the batch carrying its LSN (or later).
  void AddPoint(const v1::ConsistencyPoint& point);
  // Records a history gap, sent with the next batch.
  void AddGap(const v1::Gap& gap);

  // Rebases the LSN sequence after the journal lost records it had acked: removes and returns
  // every queued record, sets the durable LSN to `durable_lsn` and starts a new generation, so
  // that waiters for LSNs of the old sequence fail instead of being answered by the new
  // records that reuse those numbers. Called by the journal-loss callback, under the capture
  // lock that orders LSNs (VolumeCapture::RebaseAfterJournalLoss).
  std::vector<ChangeRecord> Rebase(uint64_t durable_lsn);

  // The LSN sequence's generation: it changes at every Rebase. Read it under the same capture
  // lock that assigns the LSN, and pass it to WaitDurable.
  uint64_t generation() const;

  // Value of `generation` for WaitDurable that ignores rebases.
  static constexpr uint64_t kAnyGeneration = UINT64_MAX;

  // Waits until every LSN <= lsn is durable on the server. TimedOut after timeout_ms (-1:
  // forever), Aborted when the sender stops first, IOError when the sequence was rebased since
  // `generation` (the record was dropped and is resent by the resync; it will not be acked).
  Status WaitDurable(uint64_t lsn, int timeout_ms, uint64_t generation = kAnyGeneration);

  uint64_t durable_lsn() const { return durable_lsn_.load(); }
  // The buffer's capacity (SenderOptions::buffer_bytes).
  uint64_t buffer_bytes() const { return options_.buffer_bytes; }
  // True once Stop has begun: nothing more is accepted.
  bool stopped() const { return stop_.load(); }
  bool connected() const { return connected_.load(); }
  // True once the journal-server refused this agent because another agent writes the volume
  // (PermissionDenied): sync-mode waits and reservations fail from then on (the writes cannot
  // become durable) and TryEnqueue takes nothing (async writes go to the dirty bitmap); what is
  // queued stays. Cleared by a later accepted handshake.
  bool fenced() const { return fenced_.load(); }
  uint64_t writer_epoch() const { return writer_epoch_.load(); }
  // Bytes and records captured but not yet durable.
  uint64_t pending_bytes() const;
  uint64_t pending_records() const;
  // Buffer bytes a record costs beyond its payload.
  static constexpr uint64_t kRecordOverhead = 64;
  // Charge for one record in the buffer: its payload plus fixed overhead.
  static uint64_t Charge(const ChangeRecord& rec) {
    return (rec.has_payload() ? rec.length : 0) + kRecordOverhead;
  }

 private:
  struct Entry {
    ChangeRecord rec;
  };
  void Loop();
  void Wake();
  // The next waiting Reserve's turn, past abandoned tickets. REQUIRES: mu_ held.
  void AdvanceTicketLocked();
  // True when `bytes` more fit next to what is queued and reserved. REQUIRES: mu_ held.
  bool FitsLocked(uint64_t bytes) const {
    return queued_bytes_ + reserved_bytes_ + bytes <= options_.buffer_bytes;
  }
  // Runs on_checkpoint_ for `request` on checkpoint_thread_, or queues a refusal at once when
  // one is running or none is set. Called on the sender thread.
  void StartCheckpoint(const v1::CheckpointRequest& request);
  void JoinCheckpoint();
  // Runs on_source_ for `request` on a thread of its own, or queues a refusal. Called on the
  // sender thread.
  void StartSourceRequest(const v1::SourceRequest& request);
  // Joins the source-request threads that are done (all of them when `all`, waiting).
  void JoinSourceRequests(bool all);

  const SenderOptions options_;
  HandshakeCallback on_handshake_;
  ReportCallback on_report_;
  std::function<void(uint64_t)> on_journal_loss_;
  std::function<Status(uint64_t)> on_writer_epoch_;
  // Records a refusal by the server: PermissionDenied fences this agent (see fenced()).
  void NoteRefusal(const Status& status);
  std::function<Result<uint64_t>(const std::string& label)> on_checkpoint_;

  std::thread checkpoint_thread_;  // touched by the sender thread, and by Stop after it ends
  std::function<v1::SourceReply(const v1::SourceRequest&)> on_source_;
  struct SourceThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<SourceThread> source_threads_;  // touched by the sender thread, and by Stop after

  mutable std::mutex mu_;
  bool checkpoint_busy_ = false;          // GUARDED_BY(mu_): checkpoint_thread_ is working
  std::vector<v1::Header> replies_;       // GUARDED_BY(mu_): checkpoint replies to send
  std::condition_variable space_cv_;    // signalled when the buffer shrinks
  std::condition_variable durable_cv_;  // signalled when durable_lsn_ advances
  std::deque<Entry> queue_;             // GUARDED_BY(mu_), ascending contiguous LSNs
  uint64_t queued_bytes_ = 0;           // GUARDED_BY(mu_)
  uint64_t reserved_bytes_ = 0;         // GUARDED_BY(mu_): held by Reservations
  // Reserve's turns: the waiter holding ticket serving_ticket_ goes next; next_ticket_ is the
  // next one handed out (equal: nobody waits). Tickets given up are skipped.
  uint64_t next_ticket_ = 0;              // GUARDED_BY(mu_)
  uint64_t serving_ticket_ = 0;           // GUARDED_BY(mu_)
  std::set<uint64_t> abandoned_tickets_;  // GUARDED_BY(mu_)
  uint64_t generation_ = 0;               // GUARDED_BY(mu_), see Rebase
  // Points and gaps wait here until the batch that carried them is acked (sent_seq = that
  // batch's sequence; 0 = not sent on this session).
  struct PendingPoint {
    v1::ConsistencyPoint point;
    uint64_t sent_seq = 0;
  };
  struct PendingGap {
    v1::Gap gap;
    uint64_t sent_seq = 0;
  };
  std::vector<PendingPoint> points_;  // GUARDED_BY(mu_)
  std::vector<PendingGap> gaps_;      // GUARDED_BY(mu_)
  bool stopping_ = false;             // GUARDED_BY(mu_)

  std::atomic<uint64_t> durable_lsn_{0};
  std::atomic<bool> connected_{false};
  std::atomic<bool> fenced_{false};
  std::atomic<uint64_t> writer_epoch_{0};
  uint64_t instance_id_ = 0;  // options_.instance_id, or a random one
  std::atomic<bool> stop_{false};
  std::atomic<int> drain_ms_{0};
  int wake_fd_ = -1;  // eventfd that wakes the sender thread
  std::thread thread_;
};

}  // namespace cdp::agent
