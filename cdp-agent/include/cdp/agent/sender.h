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
// Thread-safety: every public method is thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
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

  // Called when the journal-server relays `cdpctl checkpoint`: makes an operator point and
  // returns its LSN (the point must be queued with AddPoint before it returns). It runs on a
  // checkpoint thread of its own, one request at a time, so it may block (a trace-mode freeze
  // waits for its records to fit in this buffer) while the sender thread goes on sending and
  // taking acks; a request arriving while one runs is refused ("try again"). The reply goes
  // back on the sender thread. Unset: checkpoints are refused. Set before Start().
  void SetCheckpointCallback(std::function<Result<uint64_t>(const std::string& label)> callback) {
    on_checkpoint_ = std::move(callback);
  }

  // Starts the sender thread. Connection happens in the background.
  void Start();
  // Stops the thread after trying, until `drain_ms` has passed, to get every queued record
  // durable. Returns the records that are still not durable (the caller saves their ranges
  // in the dirty bitmap). Idempotent.
  std::vector<ChangeRecord> Stop(int drain_ms);

  // Appends a record. REQUIRES: rec.lsn is one more than the last enqueued LSN (or the first
  // after a handshake). False, and nothing queued, when it does not fit in the buffer.
  bool TryEnqueue(ChangeRecord rec);
  // Appends records[0..n) for the largest n whose records all fit, under one lock and with one
  // wake-up of the sender thread. Same REQUIRES as TryEnqueue for each. Returns n.
  size_t TryEnqueueMany(std::span<const ChangeRecord> records);
  // Waits until `bytes` fit in the buffer or timeout_ms passes; true if they fit.
  bool WaitForSpace(uint64_t bytes, int timeout_ms);
  // Attaches a consistency point; it travels with the batch carrying its LSN (or later).
  void AddPoint(const v1::ConsistencyPoint& point);
  // Records a history gap, sent with the next batch.
  void AddGap(const v1::Gap& gap);

  // Removes and returns every queued record (for a rebase after journal loss).
  std::vector<ChangeRecord> DropQueued();

  // Waits until every LSN <= lsn is durable on the server. TimedOut after timeout_ms (-1:
  // forever) or Aborted when the sender stops first.
  Status WaitDurable(uint64_t lsn, int timeout_ms);

  uint64_t durable_lsn() const { return durable_lsn_.load(); }
  // The buffer's capacity (SenderOptions::buffer_bytes).
  uint64_t buffer_bytes() const { return options_.buffer_bytes; }
  // True once Stop has begun: nothing more is accepted.
  bool stopped() const { return stop_.load(); }
  bool connected() const { return connected_.load(); }
  // Bytes and records captured but not yet durable.
  uint64_t pending_bytes() const;
  uint64_t pending_records() const;
  // Charge for one record in the buffer: its payload plus fixed overhead.
  static uint64_t Charge(const ChangeRecord& rec) {
    return (rec.has_payload() ? rec.length : 0) + 64;
  }

 private:
  struct Entry {
    ChangeRecord rec;
  };
  void Loop();
  void Wake();
  // Runs on_checkpoint_ for `request` on checkpoint_thread_, or queues a refusal at once when
  // one is running or none is set. Called on the sender thread.
  void StartCheckpoint(const v1::CheckpointRequest& request);
  void JoinCheckpoint();

  const SenderOptions options_;
  HandshakeCallback on_handshake_;
  ReportCallback on_report_;
  std::function<void(uint64_t)> on_journal_loss_;
  std::function<Result<uint64_t>(const std::string& label)> on_checkpoint_;

  std::thread checkpoint_thread_;  // touched by the sender thread, and by Stop after it ends

  mutable std::mutex mu_;
  bool checkpoint_busy_ = false;          // GUARDED_BY(mu_): checkpoint_thread_ is working
  std::vector<v1::Header> replies_;       // GUARDED_BY(mu_): checkpoint replies to send
  std::condition_variable space_cv_;    // signalled when the buffer shrinks
  std::condition_variable durable_cv_;  // signalled when durable_lsn_ advances
  std::deque<Entry> queue_;             // GUARDED_BY(mu_), ascending contiguous LSNs
  uint64_t queued_bytes_ = 0;           // GUARDED_BY(mu_)
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
  std::atomic<bool> stop_{false};
  std::atomic<int> drain_ms_{0};
  int wake_fd_ = -1;  // eventfd that wakes the sender thread
  std::thread thread_;
};

}  // namespace cdp::agent
