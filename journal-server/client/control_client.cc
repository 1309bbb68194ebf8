#include "cdp/journal/control_client.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

namespace cdp::journal {

namespace v1 = wire::v1;

Result<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& server,
                                                              int timeout_ms) {
  std::unique_ptr<ControlClient> c(new ControlClient());
  CDP_ASSIGN_OR_RETURN(c->socket_, Socket::Connect(c->ctx_, server));
  auto reply = Handshake(
      *c->socket_, wire::MakeHello(v1::ROLE_CONTROL, wire::ProcessIdentity("cdpctl")), timeout_ms);
  if (!reply.ok()) {
    if (reply.status().IsTimedOut() || reply.status().IsUnavailable()) {
      return ::cdp::Status::Unavailable("journal-server at " + server + " does not answer (" +
                                        reply.status().message() + "); is it running?");
    }
    return reply.status();
  }
  return c;
}

Result<wire::Message> ControlClient::Call(const v1::Header& request, v1::Header::BodyCase expect,
                                          int timeout_ms) {
  CDP_RETURN_IF_ERROR(socket_->Send(request, {}, timeout_ms));
  return Receive(expect, timeout_ms);
}

Result<wire::Message> ControlClient::Receive(v1::Header::BodyCase expect, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) return ::cdp::Status::TimedOut("no reply from " + socket_->endpoint());
    auto msg = socket_->Recv(static_cast<int>(left));
    if (!msg.ok()) {
      if (msg.status().IsTimedOut()) continue;
      return msg.status();
    }
    if (msg->header.has_error()) return wire::StatusFromError(msg->header.error());
    if (msg->header.body_case() == expect) return std::move(*msg);
  }
}

Result<v1::StatusReply> ControlClient::Status(int timeout_ms) {
  v1::Header h;
  h.mutable_status_request();
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, v1::Header::kStatusReply, timeout_ms));
  return msg.header.status_reply();
}

Result<std::vector<v1::ConsistencyPoint>> ControlClient::Points(const std::string& volume,
                                                                int timeout_ms) {
  std::vector<v1::ConsistencyPoint> out;
  uint64_t from = 0;
  while (true) {
    v1::Header h;
    h.mutable_points_request()->set_volume(volume);
    h.mutable_points_request()->set_from_lsn(from);
    CDP_ASSIGN_OR_RETURN(auto msg, Call(h, v1::Header::kPointsReply, timeout_ms));
    const v1::PointsReply& reply = msg.header.points_reply();
    for (const auto& p : reply.points()) out.push_back(p);
    if (!reply.truncated() || reply.points_size() == 0) return out;
    from = reply.points(reply.points_size() - 1).lsn() + 1;
  }
}

Result<v1::ConsistencyPoint> ControlClient::Checkpoint(const std::string& volume,
                                                       const std::string& label, int timeout_ms) {
  v1::Header h;
  h.mutable_checkpoint_request()->set_volume(volume);
  h.mutable_checkpoint_request()->set_label(label);
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, v1::Header::kCheckpointReply, timeout_ms));
  return msg.header.checkpoint_reply().point();
}

Result<v1::SourceReply> ControlClient::Source(v1::SourceRequest request, int timeout_ms) {
  const uint64_t id = next_source_request_++;
  request.set_request_id(id);
  request.set_reply_timeout_ms(
      static_cast<uint32_t>(std::max(1, timeout_ms - std::min(1000, timeout_ms / 10))));
  v1::Header h;
  *h.mutable_source_request() = std::move(request);
  CDP_RETURN_IF_ERROR(socket_->Send(h, {}, timeout_ms));
  while (true) {
    // A reply to an earlier request that timed out here is skipped.
    CDP_ASSIGN_OR_RETURN(auto msg, Receive(v1::Header::kSourceReply, timeout_ms));
    v1::SourceReply reply = msg.header.source_reply();
    if (reply.request_id() != id) continue;
    if (!reply.error().empty()) {
      const auto code = reply.error_code() == 0 ? StatusCode::kFailedPrecondition
                                                : static_cast<StatusCode>(reply.error_code());
      return ::cdp::Status(code, reply.error());
    }
    return reply;
  }
}

Result<v1::RetentionReply> ControlClient::Retention(const std::string& volume,
                                                    std::optional<uint64_t> window_s,
                                                    std::optional<uint64_t> max_bytes,
                                                    int timeout_ms) {
  v1::Header h;
  auto* request = h.mutable_retention_request();
  request->set_volume(volume);
  if (window_s) request->set_window_s(*window_s);
  if (max_bytes) request->set_max_bytes(*max_bytes);
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, v1::Header::kRetentionReply, timeout_ms));
  return msg.header.retention_reply();
}

Result<v1::ImageOpenReply> ControlClient::OpenImage(const std::string& volume, uint64_t at_lsn,
                                                    uint64_t at_time_ns, int timeout_ms) {
  v1::Header h;
  auto* request = h.mutable_image_open_request();
  request->set_volume(volume);
  request->set_at_lsn(at_lsn);
  request->set_at_time_ns(at_time_ns);
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, v1::Header::kImageOpenReply, timeout_ms));
  return msg.header.image_open_reply();
}

::cdp::Status ControlClient::SendImageRead(uint64_t image_id, uint64_t offset, uint32_t length,
                                           int timeout_ms) {
  v1::Header h;
  auto* request = h.mutable_image_read_request();
  request->set_image_id(image_id);
  request->set_offset(offset);
  request->set_length(length);
  return socket_->Send(h, {}, timeout_ms);
}

void ControlClient::CloseImage(uint64_t image_id) {
  v1::Header h;
  h.mutable_image_close_request()->set_image_id(image_id);
  (void)Call(h, v1::Header::kImageCloseReply, 2000);
}

Result<v1::ImageReadReply> ControlClient::ReceiveImageRead(std::string* data, int timeout_ms) {
  data->clear();
  CDP_ASSIGN_OR_RETURN(wire::Message msg, Receive(v1::Header::kImageReadReply, timeout_ms));
  const v1::ImageReadReply& reply = msg.header.image_read_reply();
  if (!reply.zero()) {
    if (msg.payloads.size() != 1 || msg.payloads[0].size() != reply.length()) {
      return ::cdp::Status::Corruption("image read reply at offset " +
                                       std::to_string(reply.offset()) + " carries " +
                                       std::to_string(msg.payloads.size()) + " frame(s), not the " +
                                       std::to_string(reply.length()) + " bytes it announces");
    }
    data->assign(static_cast<const char*>(msg.payloads[0].data()), msg.payloads[0].size());
  }
  return reply;
}

std::string NotSyncedReason(const v1::VolumeStatus& v, uint64_t min_report_sequence) {
  if (!v.agent_connected()) return "agent not connected";
  if (v.report_sequence() < min_report_sequence) return "waiting for a fresh agent report";
  if (!v.initial_sync_done()) return "initial sync running";
  if (v.trace().resync_active()) return "checksum resync running";
  if (v.dirty_bytes() > 0) return "resync of " + std::to_string(v.dirty_bytes()) + " dirty bytes";
  if (v.pending_records() > 0) {
    return std::to_string(v.pending_records()) + " records not yet durable";
  }
  if (v.durable_lsn() < v.captured_lsn()) return "journal behind the agent";
  if (v.applied_lsn() < v.captured_lsn()) {
    return std::string(v.replicator_connected() ? "" : "replicator not connected; ") +
           "replica at LSN " + std::to_string(v.applied_lsn()) + " of " +
           std::to_string(v.captured_lsn());
  }
  return "";
}

::cdp::Status WaitSynced(const std::string& server, const std::string& volume, double timeout_s,
                         std::ostream& progress) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  CDP_ASSIGN_OR_RETURN(auto client, ControlClient::Connect(server, 5000));
  uint64_t min_sequence = 0;
  uint64_t last_sequence = 0;
  bool first = true;
  auto last_print = start;
  std::string reason = "no status yet";
  v1::VolumeStatus last;
  while (true) {
    auto reply = client->Status(5000);
    if (reply.ok()) {
      const v1::VolumeStatus* v = nullptr;
      for (const auto& x : reply->volumes()) {
        if (x.name() == volume) v = &x;
      }
      if (v == nullptr) {
        // The agent may not have said Hello yet: keep waiting, and say so on timeout.
        std::string known;
        for (const auto& x : reply->volumes()) known += (known.empty() ? "" : ", ") + x.name();
        reason = "unknown volume '" + volume +
                 "' (known: " + (known.empty() ? std::string("none") : known) +
                 "); is its cdp-agent running?";
      } else {
        last = *v;
        // Two more reports guarantee one that the agent built after this wait began. A
        // sequence that goes backwards means the journal-server restarted: count again.
        if (first || v->report_sequence() < last_sequence) {
          min_sequence = v->report_sequence() + 2;
          first = false;
        }
        last_sequence = v->report_sequence();
        reason = NotSyncedReason(*v, min_sequence);
        if (reason.empty()) return ::cdp::Status::Ok();
      }
    } else {
      reason = reply.status().message();
    }
    if (Clock::now() >= deadline) {
      char buf[512];
      std::snprintf(buf, sizeof(buf),
                    "volume %s not synced after %.0f s: %s (captured LSN %llu, durable %llu, "
                    "applied %llu, pending %llu records, dirty %llu bytes)",
                    volume.c_str(), timeout_s, reason.c_str(),
                    static_cast<unsigned long long>(last.captured_lsn()),
                    static_cast<unsigned long long>(last.durable_lsn()),
                    static_cast<unsigned long long>(last.applied_lsn()),
                    static_cast<unsigned long long>(last.pending_records()),
                    static_cast<unsigned long long>(last.dirty_bytes()));
      return ::cdp::Status::TimedOut(buf);
    }
    if (Clock::now() - last_print > std::chrono::seconds(5)) {
      last_print = Clock::now();
      progress << "wait-synced: " << volume << ": " << reason << " (applied LSN "
               << last.applied_lsn() << " of " << last.captured_lsn() << ")" << std::endl;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace cdp::journal
