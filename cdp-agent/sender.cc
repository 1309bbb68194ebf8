#include "cdp/agent/sender.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "cdp/core/logging.h"
#include "cdp/core/token_bucket.h"
#include "cdp/core/transport.h"

namespace cdp::agent {

namespace {
using Clock = std::chrono::steady_clock;
int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}
}  // namespace

Sender::Sender(SenderOptions options, HandshakeCallback on_handshake, ReportCallback on_report)
    : options_(std::move(options)),
      on_handshake_(std::move(on_handshake)),
      on_report_(std::move(on_report)) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  writer_epoch_ = options_.writer_epoch;
  instance_id_ = options_.instance_id;
  std::random_device rd;
  while (instance_id_ == 0) instance_id_ = (uint64_t{rd()} << 32) ^ rd();
}

void Sender::NoteRefusal(const Status& status) {
  if (!status.IsPermissionDenied()) return;
  if (!fenced_.exchange(true)) {
    CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": FENCED: " << status.message()
                   << ". Nothing this agent captures from now on is journaled (sync-mode writes "
                      "fail; async writes are tracked as dirty regions)";
  }
  std::lock_guard<std::mutex> lock(mu_);
  space_cv_.notify_all();
  durable_cv_.notify_all();
}

Sender::~Sender() {
  Stop(0);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void Sender::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "sender");
    Loop();
  });
}

void Sender::StartCheckpoint(const v1::CheckpointRequest& request) {
  v1::Header reply;
  auto* r = reply.mutable_checkpoint_reply();
  r->set_volume(options_.volume);
  r->set_request_id(request.request_id());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!on_checkpoint_ || checkpoint_busy_) {
      r->set_error(!on_checkpoint_ ? "this agent does not take checkpoints"
                                   : "volume " + options_.volume +
                                         ": another checkpoint is being taken; try again "
                                         "when it is done");
      replies_.push_back(std::move(reply));
      return;
    }
    checkpoint_busy_ = true;
  }
  JoinCheckpoint();  // the last one has finished (it cleared checkpoint_busy_)
  checkpoint_thread_ = std::thread([this, reply = std::move(reply),
                                    label = request.label()]() mutable {
    pthread_setname_np(pthread_self(), "checkpoint");
    auto lsn = on_checkpoint_(label);
    auto* r = reply.mutable_checkpoint_reply();
    if (lsn.ok()) {
      r->set_lsn(*lsn);
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": checkpoint '" << label
                    << "' at LSN " << *lsn;
    } else {
      r->set_error(lsn.status().message());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies_.push_back(std::move(reply));
      checkpoint_busy_ = false;
    }
    Wake();
  });
}

void Sender::StartSourceRequest(const v1::SourceRequest& request) {
  JoinSourceRequests(false);
  if (!on_source_ || source_threads_.size() >= kMaxSourceRequests) {
    v1::Header reply;
    auto* r = reply.mutable_source_reply();
    r->set_volume(request.volume());
    r->set_request_id(request.request_id());
    r->set_error(!on_source_
                     ? "this agent does not take source-control requests"
                     : "volume " + options_.volume + ": " + std::to_string(kMaxSourceRequests) +
                           " source-control requests are being served (busy); try again");
    r->set_error_code(
        static_cast<int32_t>(!on_source_ ? StatusCode::kNotSupported : StatusCode::kUnavailable));
    std::lock_guard<std::mutex> lock(mu_);
    replies_.push_back(std::move(reply));
    return;
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread t([this, request, done] {
    pthread_setname_np(pthread_self(), "source-control");
    v1::Header reply;
    *reply.mutable_source_reply() = on_source_(request);
    reply.mutable_source_reply()->set_request_id(request.request_id());
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies_.push_back(std::move(reply));
    }
    *done = true;
    Wake();
  });
  source_threads_.push_back({std::move(t), std::move(done)});
}

void Sender::JoinSourceRequests(bool all) {
  for (auto it = source_threads_.begin(); it != source_threads_.end();) {
    if (all || it->done->load()) {
      it->thread.join();
      it = source_threads_.erase(it);
    } else {
      ++it;
    }
  }
}

void Sender::JoinCheckpoint() {
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
}

void Sender::Wake() {
  const uint64_t one = 1;
  ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  (void)n;
}

std::vector<ChangeRecord> Sender::Stop(int drain_ms) {
  if (thread_.joinable()) {
    drain_ms_ = drain_ms;
    stop_ = true;
    Wake();
    thread_.join();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    space_cv_.notify_all();
    durable_cv_.notify_all();
  }
  // A checkpoint still running returns: a trace-mode one once the capture stops (Agent::StopTrace
  // stops it first) or after its own timeout; an NBD-mode one once the writers waiting in
  // VolumeCapture see the sender stopped. Its point, if any, is not sent.
  JoinCheckpoint();
  JoinSourceRequests(true);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ChangeRecord> left;
  for (auto& e : queue_) left.push_back(std::move(e.rec));
  queue_.clear();
  queued_bytes_ = 0;
  return left;
}

std::vector<ChangeRecord> Sender::Rebase(uint64_t durable_lsn) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ChangeRecord> out;
  for (auto& e : queue_) out.push_back(std::move(e.rec));
  queue_.clear();
  queued_bytes_ = 0;
  durable_lsn_ = durable_lsn;
  ++generation_;
  space_cv_.notify_all();
  durable_cv_.notify_all();
  return out;
}

uint64_t Sender::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

Sender::Reservation& Sender::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    sender_ = std::exchange(other.sender_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void Sender::Reservation::Release() {
  if (sender_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(sender_->mu_);
    sender_->reserved_bytes_ -= bytes_;
    sender_->space_cv_.notify_all();
  }
  sender_ = nullptr;
  bytes_ = 0;
}

void Sender::AdvanceTicketLocked() {
  ++serving_ticket_;
  while (abandoned_tickets_.erase(serving_ticket_) > 0) ++serving_ticket_;
}

Result<Sender::Reservation> Sender::Reserve(uint64_t bytes, const std::function<bool()>& give_up) {
  if (bytes > options_.buffer_bytes) {
    return Status::InvalidArgument("volume " + options_.volume + ": a record of " +
                                   std::to_string(bytes) + " bytes can never fit in the " +
                                   std::to_string(options_.buffer_bytes) + "-byte send buffer");
  }
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t ticket = next_ticket_++;
  auto last_complaint = Clock::now();
  while (true) {
    if (stopping_ || give_up() || fenced_.load()) {
      // Give the turn away (or leave it to be skipped) so that the waiters behind go on.
      if (serving_ticket_ == ticket) {
        AdvanceTicketLocked();
      } else {
        abandoned_tickets_.insert(ticket);
      }
      space_cv_.notify_all();
      if (fenced_.load() && !stopping_) {
        return Status::IOError("volume " + options_.volume +
                               ": this agent is fenced (another agent writes the volume); the "
                               "write cannot become durable");
      }
      return Status::Aborted("volume " + options_.volume +
                             ": agent stopping while the write waited for send buffer space");
    }
    if (serving_ticket_ == ticket && FitsLocked(bytes)) break;
    space_cv_.wait_for(lock, std::chrono::milliseconds(200));
    if (MsSince(last_complaint) >= 10000) {
      last_complaint = Clock::now();
      // Sync mode keeps the source's writes blocked, as it promises; say why.
      CDP_LOG(warning) << "cdp-agent: volume " << options_.volume
                       << ": sync mode waiting for send buffer space ("
                       << (connected_.load() ? "the journal-server is slow to make records durable"
                                             : "the journal-server is not reachable")
                       << "; " << queued_bytes_ << " bytes queued)";
    }
  }
  reserved_bytes_ += bytes;
  AdvanceTicketLocked();
  space_cv_.notify_all();  // the next waiter's turn
  Reservation r;
  r.sender_ = this;
  r.bytes_ = bytes;
  return r;
}

bool Sender::EnqueueReserved(ChangeRecord rec, Reservation reservation) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;  // the reservation is released on return
    reserved_bytes_ -= reservation.bytes_;
    reservation.sender_ = nullptr;
    queued_bytes_ += Charge(rec);
    queue_.push_back(Entry{std::move(rec)});
  }
  Wake();
  return true;
}

bool Sender::TryEnqueue(ChangeRecord rec) {
  const uint64_t charge = Charge(rec);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || fenced_.load() || serving_ticket_ != next_ticket_ || !FitsLocked(charge)) {
      return false;
    }
    queued_bytes_ += charge;
    queue_.push_back(Entry{std::move(rec)});
  }
  Wake();
  return true;
}

size_t Sender::TryEnqueueMany(std::span<const ChangeRecord> records) {
  size_t n = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || fenced_.load() || serving_ticket_ != next_ticket_) return 0;
    for (const ChangeRecord& rec : records) {
      const uint64_t charge = Charge(rec);
      if (!FitsLocked(charge)) break;
      queued_bytes_ += charge;
      queue_.push_back(Entry{rec});
      ++n;
    }
  }
  if (n > 0) Wake();
  return n;
}

bool Sender::WaitForSpace(uint64_t bytes, int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return space_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    // A fenced agent queues nothing: its callers wait out the timeout rather than spin.
    return stopping_ || (!fenced_.load() && serving_ticket_ == next_ticket_ && FitsLocked(bytes));
  }) && !stopping_;
}

void Sender::AddPoint(const v1::ConsistencyPoint& point) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    points_.push_back(PendingPoint{point, 0});
  }
  Wake();
}

void Sender::AddGap(const v1::Gap& gap) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    gaps_.push_back(PendingGap{gap, 0});
  }
  Wake();
}

Status Sender::WaitDurable(uint64_t lsn, int timeout_ms, uint64_t generation) {
  std::unique_lock<std::mutex> lock(mu_);
  auto rebased = [&] { return generation != kAnyGeneration && generation != generation_; };
  auto ready = [&] {
    return stopping_ || rebased() || fenced_.load() || durable_lsn_.load() >= lsn;
  };
  if (timeout_ms < 0) {
    durable_cv_.wait(lock, ready);
  } else if (!durable_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) {
    return Status::TimedOut("volume " + options_.volume + ": LSN " + std::to_string(lsn) +
                            " not durable on the journal-server after " +
                            std::to_string(timeout_ms) + " ms");
  }
  if (durable_lsn_.load() < lsn && fenced_.load()) {
    return Status::IOError("volume " + options_.volume + ": LSN " + std::to_string(lsn) +
                           " will not become durable: another agent writes this volume on the "
                           "journal-server and this one is fenced (see the agent's log)");
  }
  if (rebased()) {
    return Status::IOError("volume " + options_.volume + ": LSN " + std::to_string(lsn) +
                           " was dropped: the journal-server lost records it had acknowledged "
                           "(journal reset or restored), so the agent resyncs the whole device; "
                           "this write is not acknowledged");
  }
  if (durable_lsn_.load() < lsn) {
    return Status::Aborted("volume " + options_.volume + ": agent stopping before LSN " +
                           std::to_string(lsn) + " became durable");
  }
  return Status::Ok();
}

uint64_t Sender::pending_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t bytes = 0;
  for (const auto& e : queue_) bytes += e.rec.has_payload() ? e.rec.length : 0;
  return bytes;
}

uint64_t Sender::pending_records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void Sender::Loop() {
  zmq::context_t ctx(1);
  std::unique_ptr<Socket> sock;
  bool handshaken = false;
  uint64_t send_next = 0;   // next LSN to send
  uint64_t sent_bytes = 0;  // charge of queued entries with LSN < send_next
  uint64_t batch_seq = 0;   // sequence of the last ChangeBatch sent
  uint64_t rewound_at = 0;  // batch_seq when we last rewound for a resend_from
  auto last_rx = Clock::now();
  auto last_report = Clock::now() - std::chrono::hours(1);
  auto retry_at = Clock::now();
  auto last_complaint = Clock::now() - std::chrono::hours(1);
  auto drain_deadline = Clock::time_point::max();
  bool in_flight_since_rx = false;
  bool took_over = false;  // --take-over was granted once: later Hellos present the new epoch
  bool sequence_mismatch = false;  // rebase at the next handshake
  // Bandwidth limit, in payload bytes.
  const double rate = static_cast<double>(options_.bandwidth_bytes_per_sec);
  TokenBucket bucket(rate, std::max(static_cast<double>(options_.max_batch_bytes), rate / 10),
                     Clock::now());
  bool throttled = false;

  auto reset_session = [&](bool close_socket) {
    handshaken = false;
    connected_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& p : points_) p.sent_seq = 0;
      for (auto& g : gaps_) g.sent_seq = 0;
    }
    in_flight_since_rx = false;
    if (close_socket) sock.reset();
  };

  while (true) {
    if (stop_) {
      if (drain_deadline == Clock::time_point::max()) {
        drain_deadline = Clock::now() + std::chrono::milliseconds(drain_ms_.load());
      }
      std::lock_guard<std::mutex> lock(mu_);
      // A checkpoint being taken still adds its point and its reply: wait for them too.
      const bool drained = queue_.empty() && points_.empty() && gaps_.empty() &&
                           !checkpoint_busy_ && replies_.empty();
      // A fenced agent's records will never be taken: nothing to wait for.
      if (drained || fenced_.load() || Clock::now() >= drain_deadline) {
        break;
      }
    }

    if (!sock) {
      auto s = Socket::Connect(ctx, options_.server);
      if (!s.ok()) {
        CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": " << s.status().message();
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
      sock = std::move(*s);
    }

    if (!handshaken) {
      if (Clock::now() < retry_at) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      v1::Hello hello = wire::MakeHello(v1::ROLE_AGENT, options_.identity, options_.volume);
      hello.set_volume_size(options_.volume_size);
      hello.set_block_size(options_.block_size);
      hello.set_writer_epoch(writer_epoch_.load());
      hello.set_instance_id(instance_id_);
      hello.set_take_over(options_.take_over && !took_over);
      auto reply = Handshake(*sock, hello, 2000);
      if (!reply.ok()) {
        NoteRefusal(reply.status());
        if (MsSince(last_complaint) > 30000) {
          last_complaint = Clock::now();
          const bool refused = reply.status().code() != StatusCode::kTimedOut &&
                               reply.status().message().rfind("journal-server at ", 0) != 0;
          CDP_LOG(warning) << "cdp-agent: volume " << options_.volume
                           << (refused ? ": journal-server refused this agent ("
                                       : ": journal-server not available (")
                           << reply.status().ToString() << "); capturing on, buffering up to "
                           << options_.buffer_bytes << " bytes, then tracking dirty regions";
        }
        reset_session(/*close_socket=*/true);
        const bool permanent = reply.status().code() == StatusCode::kProtocolMismatch ||
                               reply.status().code() == StatusCode::kFailedPrecondition ||
                               reply.status().code() == StatusCode::kInvalidArgument ||
                               reply.status().code() == StatusCode::kPermissionDenied;
        retry_at = Clock::now() + std::chrono::milliseconds(permanent ? 5000 : 300);
        continue;
      }
      if (reply->writer_epoch() != writer_epoch_.load()) {
        // Durable before any batch goes under it: a restart must present it.
        Status saved = on_writer_epoch_ ? on_writer_epoch_(reply->writer_epoch()) : Status::Ok();
        if (!saved.ok()) {
          CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": writer epoch "
                         << reply->writer_epoch() << " granted but not saved (" << saved.ToString()
                         << "); retrying the handshake in 1 s";
          reset_session(/*close_socket=*/true);
          retry_at = Clock::now() + std::chrono::seconds(1);
          continue;
        }
        CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": writer epoch "
                      << reply->writer_epoch() << " (was " << writer_epoch_.load() << ")";
        writer_epoch_ = reply->writer_epoch();
      }
      took_over = took_over || options_.take_over;
      if (fenced_.exchange(false)) {
        CDP_LOG(warning) << "cdp-agent: volume " << options_.volume
                         << ": the journal-server accepts this agent as the writer again";
      }
      handshaken = true;
      connected_ = true;
      last_rx = Clock::now();
      const uint64_t durable = reply->durable_lsn();
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": connected to "
                    << options_.server << " (protocol v" << reply->version() << ", durable LSN "
                    << durable << ")";
      // The journal holds other records under LSNs this agent sent (a refused resend): its
      // sequence no longer matches, as after a journal loss.
      const bool mismatch = sequence_mismatch;
      bool lost = durable < durable_lsn_.load() || mismatch;
      sequence_mismatch = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        lost = lost || (!queue_.empty() && queue_.front().rec.lsn > durable + 1);
      }
      if (lost) {
        if (mismatch) {
          CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": the journal-server "
                         << "holds other records than this agent's under its LSNs (durable LSN "
                         << durable << "); recording a history gap and resyncing the whole device";
        } else {
          CDP_LOG(error) << "cdp-agent: volume " << options_.volume << ": the journal-server has "
                         << "LSN " << durable << " but had acked up to " << durable_lsn_.load()
                         << " (journal reset or restored?); recording a history gap and "
                         << "resyncing the whole device";
        }
        if (on_journal_loss_) {
          on_journal_loss_(durable);  // calls Rebase under the capture lock
        } else {
          Rebase(durable);
        }
      }
      if (on_handshake_) on_handshake_(durable);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (durable > durable_lsn_.load()) durable_lsn_ = durable;
        while (!queue_.empty() && queue_.front().rec.lsn <= durable) {
          queued_bytes_ -= Charge(queue_.front().rec);
          queue_.pop_front();
        }
        send_next = queue_.empty() ? durable + 1 : queue_.front().rec.lsn;
        sent_bytes = 0;
        space_cv_.notify_all();
        durable_cv_.notify_all();
      }
    }

    // Checkpoint and source-control replies, on the current session (the server answers cdpctl if
    // the request is still pending, and drops a reply to one it has timed out).
    std::vector<v1::Header> replies;
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies.swap(replies_);
    }
    for (const auto& reply : replies) {
      Status sent = sock->Send(reply, {}, 1000);
      if (!sent.ok())
        CDP_LOG(warning) << "cdp-agent: reply to a relayed request: " << sent.ToString();
    }

    // Send what the window (and the bandwidth limit) allows.
    throttled = false;
    while (handshaken) {
      if (!bucket.CanSpend(Clock::now())) {
        throttled = true;
        break;
      }
      v1::Header header;
      std::vector<zmq::message_t> frames;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto* batch = header.mutable_change_batch();
        batch->set_volume(options_.volume);
        uint64_t payload = 0;
        if (!queue_.empty()) {
          const uint64_t front = queue_.front().rec.lsn;
          if (send_next < front) send_next = front;
          size_t i = static_cast<size_t>(send_next - front);
          batch->set_first_lsn(send_next);
          while (i < queue_.size() && sent_bytes < options_.window_bytes &&
                 payload < options_.max_batch_bytes &&
                 static_cast<size_t>(batch->records_size()) < options_.max_batch_records) {
            const ChangeRecord& rec = queue_[i].rec;
            *batch->add_records() = wire::RecordToProto(rec);
            if (rec.has_payload()) {
              frames.push_back(wire::FrameFromShared(rec.payload));
              payload += rec.length;
            }
            sent_bytes += Charge(rec);
            ++i;
          }
        }
        const uint64_t last_sent = send_next + batch->records_size() - 1;
        const uint64_t covered = batch->records_size() > 0 ? last_sent : send_next - 1;
        const uint64_t seq = batch_seq + 1;
        for (auto& p : points_) {
          if (p.sent_seq == 0 && p.point.lsn() <= covered) {
            *batch->add_points() = p.point;
            p.sent_seq = seq;
          }
        }
        for (auto& g : gaps_) {
          if (g.sent_seq != 0) continue;
          v1::Gap* out = batch->add_gaps();
          *out = g.gap;
          if (out->after_lsn() == 0) out->set_after_lsn(send_next - 1);
          g.sent_seq = seq;
        }
        if (batch->records_size() == 0 && batch->points_size() == 0 && batch->gaps_size() == 0) {
          break;
        }
        send_next += batch->records_size();
        batch->set_sequence(++batch_seq);
        bucket.Spend(static_cast<double>(payload));
      }
      CDP_LOG(debug) << "sender: batch seq " << header.change_batch().sequence() << " first "
                     << header.change_batch().first_lsn() << " records "
                     << header.change_batch().records_size();
      Status s = sock->Send(header, std::move(frames), 200);
      if (!s.ok()) {
        CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": " << s.message()
                         << "; reconnecting";
        reset_session(/*close_socket=*/true);
        break;
      }
      if (!in_flight_since_rx) {
        in_flight_since_rx = true;
        last_rx = Clock::now();
      }
    }

    if (handshaken && MsSince(last_report) >= options_.report_interval_ms) {
      v1::Header header;
      auto* r = header.mutable_agent_report();
      r->set_volume(options_.volume);
      if (on_report_) on_report_(r);
      r->set_pending_bytes(pending_bytes());
      r->set_pending_records(pending_records());
      if (sock->Send(header, {}, 100).ok()) {
        if (!in_flight_since_rx) {
          in_flight_since_rx = true;
          last_rx = Clock::now();
        }
      }
      last_report = Clock::now();
    }

    if (!sock) continue;
    zmq::pollitem_t items[2] = {{sock->raw().handle(), 0, ZMQ_POLLIN, 0},
                                {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
    try {
      int wait_ms = options_.report_interval_ms;
      if (throttled) {
        // Until the bucket holds tokens again.
        const auto ns = bucket.TimeUntilPositive(Clock::now()).count();
        wait_ms = std::clamp(static_cast<int>(ns / 1000000) + 1, 1, wait_ms);
      }
      zmq::poll(items, 2, std::chrono::milliseconds(wait_ms));
    } catch (const zmq::error_t&) {
    }
    if (items[1].revents & ZMQ_POLLIN) {
      uint64_t v;
      ssize_t n = ::read(wake_fd_, &v, sizeof(v));
      (void)n;
    }
    bool journal_lost = false;
    while (sock && sock->Readable(0) && !journal_lost) {
      auto msg = sock->Recv(0);
      if (!msg.ok()) break;
      last_rx = Clock::now();
      in_flight_since_rx = false;
      const v1::Header& h = msg->header;
      if (h.has_durable_ack()) {
        const auto& ack = h.durable_ack();
        std::lock_guard<std::mutex> lock(mu_);
        CDP_LOG(debug) << "sender: ack durable " << ack.durable_lsn() << " seq " << ack.sequence()
                       << " resend_from " << ack.resend_from();
        if (ack.durable_lsn() > durable_lsn_.load()) durable_lsn_ = ack.durable_lsn();
        const uint64_t durable = durable_lsn_.load();
        bool trimmed = false;
        while (!queue_.empty() && queue_.front().rec.lsn <= durable) {
          const uint64_t c = Charge(queue_.front().rec);
          queued_bytes_ -= c;
          if (queue_.front().rec.lsn < send_next) sent_bytes -= std::min(sent_bytes, c);
          queue_.pop_front();
          trimmed = true;
        }
        if (ack.sequence() != 0 && ack.resend_from() == 0) {
          // That batch is durable, and with it every point and gap it (or an earlier batch)
          // carried.
          std::erase_if(points_, [&](const PendingPoint& p) {
            return p.sent_seq != 0 && p.sent_seq <= ack.sequence();
          });
          std::erase_if(gaps_, [&](const PendingGap& g) {
            return g.sent_seq != 0 && g.sent_seq <= ack.sequence();
          });
        } else if (ack.sequence() != 0 && ack.sequence() > rewound_at) {
          // The server dropped that batch and everything after it: send their points and gaps
          // again with the resent records.
          // Every point or gap still listed is unacknowledged (an earlier batch may have been
          // the one lost in flight), so all of them go again.
          for (auto& p : points_) p.sent_seq = 0;
          for (auto& g : gaps_) g.sent_seq = 0;
        }
        // Batches sent before our last rewind were dropped the same way; their resend
        // requests are already answered.
        if (ack.resend_from() != 0 && !queue_.empty() &&
            ack.resend_from() < queue_.front().rec.lsn) {
          // The server wants records we no longer hold: it lost acked data. A new session
          // detects that at the handshake and rebases.
          journal_lost = true;
        } else if (ack.resend_from() != 0 && ack.resend_from() < send_next &&
                   ack.sequence() > rewound_at) {
          rewound_at = batch_seq;
          send_next = ack.resend_from();
          sent_bytes = 0;
          for (const auto& e : queue_) {
            if (e.rec.lsn < send_next) sent_bytes += Charge(e.rec);
          }
        }
        if (trimmed) space_cv_.notify_all();
        // Everything is durable: tell the server now, so wait-synced need not wait a period.
        if (trimmed && queue_.empty()) last_report = Clock::now() - std::chrono::hours(1);
        durable_cv_.notify_all();
      } else if (h.has_checkpoint_request()) {
        StartCheckpoint(h.checkpoint_request());
      } else if (h.has_source_request()) {
        StartSourceRequest(h.source_request());
      } else if (h.has_error()) {
        const Status err = wire::StatusFromError(h.error());
        NoteRefusal(err);
        if (err.code() == StatusCode::kFailedPrecondition && !h.error().permanent()) {
          CDP_LOG(info) << "cdp-agent: volume " << options_.volume
                        << ": server lost our session (restarted?); handshaking again";
          reset_session(/*close_socket=*/false);
        } else {
          // A permanent FailedPrecondition in a session: a resend that differs from what the
          // journal holds under its LSN (docs/wire-protocol.md, section 5, step 3).
          if (err.code() == StatusCode::kFailedPrecondition) sequence_mismatch = true;
          CDP_LOG(error) << "cdp-agent: volume " << options_.volume
                         << ": journal-server refused: " << err.ToString()
                         << "; reconnecting in 1 s";
          reset_session(/*close_socket=*/true);
          retry_at = Clock::now() + std::chrono::seconds(1);
        }
      }
    }

    if (journal_lost) {
      reset_session(/*close_socket=*/true);  // the next handshake sees the loss and rebases
      continue;
    }
    if (handshaken && in_flight_since_rx && MsSince(last_rx) > options_.silence_timeout_ms) {
      CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": no reply from "
                       << options_.server << " for " << options_.silence_timeout_ms
                       << " ms; reconnecting and resending everything not yet durable";
      reset_session(/*close_socket=*/true);
    }
  }
  connected_ = false;
}

}  // namespace cdp::agent
