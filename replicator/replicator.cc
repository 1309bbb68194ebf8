#include "cdp/replicator/replicator.h"

#include <chrono>
#include <filesystem>
#include <thread>

#include "cdp/core/logging.h"
#include "cdp/core/transport.h"
#include "cdp/replicator/image_sink.h"
#include "cdp/replicator/replica_sink.h"

namespace cdp::replicator {

namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

Replicator::Replicator(ReplicatorOptions options) : options_(std::move(options)) {
  if (options_.state_dir.empty() && !IsPeTarget(options_.target)) {
    options_.state_dir = std::filesystem::absolute(options_.target).parent_path().string();
  }
}

Replicator::Replicator(ReplicatorOptions options, std::unique_ptr<ReplicaSink> sink)
    : Replicator(std::move(options)) {
  sink_ = std::move(sink);
}

Status Replicator::Run(const std::atomic<bool>* stop) {
  CDP_RETURN_IF_ERROR(wire::ValidateVolumeName(options_.volume));
  CDP_RETURN_IF_ERROR(ValidateEndpoint(options_.server).WithContext("--server"));
  CDP_RETURN_IF_ERROR(ValidateTarget(options_.target));
  if (!options_.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options_.state_dir, ec);
    if (ec) {
      return Status::IOError("state dir " + options_.state_dir +
                             " cannot be created: " + ec.message());
    }
  }
  if (!sink_) {
    SinkOptions sink_options;
    sink_options.volume = options_.volume;
    sink_options.target = options_.target;
    sink_options.state_dir = options_.state_dir;
    sink_options.io_engine = options_.io_engine;
    sink_ = MakeReplicaSink(sink_options);
  }
  ReplicaSink* const sink = sink_.get();
  bool sink_open = false;
  uint64_t applied = 0;
  CDP_LOG(info) << "replicator: volume " << options_.volume << " -> " << sink->Describe();

  zmq::context_t ctx(1);
  const std::string identity = wire::ProcessIdentity("replicator");
  uint64_t request_id = 0;
  auto last_complaint = Clock::now() - std::chrono::hours(1);
  auto complain = [&](const std::string& what) {
    if (Clock::now() - last_complaint > std::chrono::seconds(30)) {
      last_complaint = Clock::now();
      CDP_LOG(warning) << "replicator: volume " << options_.volume << ": " << what << "; retrying";
    }
  };

  while (!stop->load()) {
    CDP_ASSIGN_OR_RETURN(auto sock, Socket::Connect(ctx, options_.server));
    v1::Hello hello = wire::MakeHello(v1::ROLE_REPLICATOR, identity, options_.volume);
    auto reply = Handshake(*sock, hello, 2000);
    if (!reply.ok()) {
      if (reply.status().code() == StatusCode::kProtocolMismatch) return reply.status();
      complain(reply.status().ToString());
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      continue;
    }
    if (!sink_open) {
      bool permanent = false;
      auto cursor = sink->Open(reply->volume_size(), &permanent);
      if (!cursor.ok()) {
        if (permanent) return cursor.status();
        complain(sink->Describe() + ": " + cursor.status().ToString());
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
      sink_open = true;
      applied = *cursor;
      CDP_LOG(info) << "replicator: volume " << options_.volume << ": " << sink->Describe()
                    << " has applied LSN " << applied << "; resuming after it";
    }
    if (applied > reply->durable_lsn()) {
      return Status::FailedPrecondition(
          "volume " + options_.volume + ": the replica has applied LSN " + std::to_string(applied) +
          " but the journal only has " + std::to_string(reply->durable_lsn()) +
          "; the journal was reset: start from an empty target (" + sink->Describe() +
          ") and remove its cursor");
    }
    CDP_LOG(info) << "replicator: volume " << options_.volume << ": connected to "
                  << options_.server << " (journal at LSN " << reply->durable_lsn() << ", applied "
                  << applied << ")";

    auto send_request = [&](uint64_t from) -> Status {
      v1::Header h;
      auto* req = h.mutable_tail_request();
      req->set_volume(options_.volume);
      req->set_from_lsn(from);
      req->set_max_bytes(options_.max_batch_bytes);
      req->set_wait_ms(options_.wait_ms);
      req->set_applied_lsn(applied);
      req->set_request_id(++request_id);
      return sock->Send(h, {}, 1000);
    };
    auto send_progress = [&]() {
      v1::Header h;
      auto* req = h.mutable_tail_request();
      req->set_volume(options_.volume);
      req->set_applied_lsn(applied);
      req->set_max_bytes(0);
      (void)sock->Send(h, {}, 100);
    };

    uint64_t requested_from = applied + 1;
    if (!send_request(requested_from).ok()) continue;
    bool reconnect = false;
    while (!stop->load() && !reconnect) {
      // Wait in short slices so SIGTERM is honoured promptly; a server silent for longer than
      // the long-poll time plus 3 s is presumed gone.
      const auto silent_since = Clock::now();
      const auto silence_limit = std::chrono::milliseconds(options_.wait_ms + 3000);
      Result<wire::Message> msg = Status::TimedOut("no reply");
      while (!stop->load()) {
        msg = sock->Recv(200);
        if (msg.ok() || !msg.status().IsTimedOut()) break;
        if (Clock::now() - silent_since > silence_limit) break;
      }
      if (stop->load()) break;
      if (!msg.ok()) {
        CDP_LOG(warning) << "replicator: volume " << options_.volume << ": no reply from "
                         << options_.server << " for " << silence_limit.count() << " ms ("
                         << msg.status().message() << "); reconnecting";
        reconnect = true;
        break;
      }
      const v1::Header& h = msg->header;
      if (h.has_error()) {
        Status err = wire::StatusFromError(h.error());
        CDP_LOG(warning) << "replicator: volume " << options_.volume
                         << ": journal-server said: " << err.ToString() << "; reconnecting";
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        reconnect = true;
        break;
      }
      if (!h.has_tail_batch() || h.tail_batch().request_id() != request_id) continue;
      const v1::TailBatch& batch = h.tail_batch();

      // Check the batch completely before touching the target.
      std::vector<ApplyItem> items;
      items.reserve(batch.records_size());
      size_t frame = 0;
      Status bad;
      for (int i = 0; i < batch.records_size() && bad.ok(); ++i) {
        ApplyItem item;
        item.rec = wire::RecordFromProto(batch.records(i));
        if (item.rec.lsn != requested_from + static_cast<uint64_t>(i)) {
          bad = Status::Corruption("expected LSN " + std::to_string(requested_from + i) + ", got " +
                                   std::to_string(item.rec.lsn));
          break;
        }
        if (item.rec.has_payload()) {
          if (frame >= msg->payloads.size()) {
            bad = Status::Corruption("record LSN " + std::to_string(item.rec.lsn) +
                                     " has no payload frame");
            break;
          }
          item.payload = std::string_view(static_cast<const char*>(msg->payloads[frame].data()),
                                          msg->payloads[frame].size());
          ++frame;
        }
        bad = VerifyRecordPayload(item.rec, item.payload);
        items.push_back(std::move(item));
      }
      if (!bad.ok()) {
        CDP_LOG(error) << "replicator: volume " << options_.volume
                       << ": refusing a tail batch: " << bad.message()
                       << "; nothing applied, asking again in 1 s";
        std::this_thread::sleep_for(std::chrono::seconds(1));
        reconnect = true;
        break;
      }
      if (items.empty()) {
        if (!send_request(requested_from).ok()) reconnect = true;
        continue;
      }
      const uint64_t last = items.back().rec.lsn;
      // Read-ahead: the next request travels while this batch is applied.
      requested_from = last + 1;
      if (!send_request(requested_from).ok()) reconnect = true;

      bool permanent = false;
      Status s = sink->ApplyDurably(items, &permanent);
      if (!s.ok()) {
        if (permanent) return s;
        CDP_LOG(error) << "replicator: volume " << options_.volume << ": applying LSN "
                       << items.front().rec.lsn << ".." << last << " to " << sink->Describe()
                       << ": " << s.ToString() << "; retrying in 1 s";
        std::this_thread::sleep_for(std::chrono::seconds(1));
        sink_open = false;  // re-read the cursor: the sink may have applied part of it
        reconnect = true;
        break;
      }
      applied = last;
      send_progress();
    }
  }
  CDP_LOG(info) << "replicator: volume " << options_.volume << ": stopped at applied LSN "
                << applied;
  return Status::Ok();
}

}  // namespace cdp::replicator
