#include "cdp/pe/pe_client.h"

#include <atomic>
#include <chrono>
#include <cstring>

namespace cdp::pe {

namespace v1 = wire::v1;

Result<std::unique_ptr<PeClient>> PeClient::Connect(const std::string& endpoint, v1::Role role,
                                                    const std::string& volume, uint64_t volume_size,
                                                    int timeout_ms) {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(endpoint));
  std::unique_ptr<PeClient> c(new PeClient());
  // The pe-agent runs inside a VM which under TCG (or on a loaded host) stalls for seconds
  // while it takes in a batch or reads a cold disk: the connection outlives such stalls (with
  // 5 s, an 8 MiB batch was resent over and over, each send stalling the VM past the timeout).
  // A VM that is killed closes its forwarded port: that is seen at once.
  CDP_ASSIGN_OR_RETURN(c->socket_, Socket::Connect(c->ctx_, endpoint, kHeartbeatTimeoutMs));
  v1::Hello hello = wire::MakeHello(
      role, wire::ProcessIdentity(role == v1::ROLE_REPLICATOR ? "replicator" : "cdpctl"), volume);
  hello.set_volume_size(volume_size);
  auto reply = Handshake(*c->socket_, hello, timeout_ms);
  if (!reply.ok()) {
    if (reply.status().IsTimedOut() || reply.status().IsUnavailable()) {
      return Status::Unavailable("pe-agent at " + endpoint + " does not answer (" +
                                 reply.status().message() + "); is the target VM up?");
    }
    return reply.status();
  }
  c->hello_reply_ = *reply;
  // Watch for the connection dropping, so a caller waiting for an answer learns at once that
  // none will come (a killed VM closes its forwarded port).
  static std::atomic<uint64_t> monitors{0};
  const std::string monitor_endpoint =
      "inproc://pe-client-monitor-" + std::to_string(monitors.fetch_add(1));
  if (zmq_socket_monitor(c->socket_->raw().handle(), monitor_endpoint.c_str(),
                         ZMQ_EVENT_DISCONNECTED) == 0) {
    c->monitor_ = zmq::socket_t(c->ctx_, zmq::socket_type::pair);
    c->monitor_.set(zmq::sockopt::linger, 0);
    c->monitor_.connect(monitor_endpoint);
  }
  return c;
}

Result<wire::Message> PeClient::Call(const v1::Header& request,
                                     std::vector<zmq::message_t> payloads,
                                     v1::Header::BodyCase expect, int timeout_ms, bool* permanent,
                                     uint64_t sequence) {
  if (permanent) *permanent = false;
  CDP_RETURN_IF_ERROR(socket_->Send(request, std::move(payloads), timeout_ms));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      return Status::TimedOut("no answer from the pe-agent at " + socket_->endpoint() + " within " +
                              std::to_string(timeout_ms) + " ms");
    }
    if (monitor_) {
      zmq::pollitem_t items[] = {{socket_->raw().handle(), 0, ZMQ_POLLIN, 0},
                                 {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, std::chrono::milliseconds(left));
      if ((items[1].revents & ZMQ_POLLIN) && !(items[0].revents & ZMQ_POLLIN)) {
        return Status::Unavailable("the connection to the pe-agent at " + socket_->endpoint() +
                                   " dropped while waiting for its answer");
      }
      if (!(items[0].revents & ZMQ_POLLIN)) continue;
    }
    auto msg = socket_->Recv(static_cast<int>(left));
    if (!msg.ok()) {
      if (msg.status().IsTimedOut()) continue;
      return msg.status();
    }
    if (msg->header.has_error()) {
      if (permanent) *permanent = msg->header.error().permanent();
      return wire::StatusFromError(msg->header.error());
    }
    if (msg->header.body_case() != expect) continue;
    if (expect == v1::Header::kApplyAck && msg->header.apply_ack().sequence() != sequence) {
      continue;  // the answer to an earlier batch that timed out
    }
    return std::move(*msg);
  }
}

Result<uint64_t> PeClient::Apply(const std::string& volume, std::span<const ApplyItem> items,
                                 int timeout_ms, bool* permanent) {
  v1::Header h;
  auto* batch = h.mutable_apply_batch();
  batch->set_volume(volume);
  batch->set_first_lsn(items.empty() ? 0 : items.front().rec.lsn);
  batch->set_sequence(++sequence_);
  std::vector<zmq::message_t> payloads;
  for (const auto& item : items) {
    *batch->add_records() = wire::RecordToProto(item.rec);
    if (item.rec.has_payload()) {
      payloads.emplace_back(item.payload.data(), item.payload.size());
    }
  }
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, std::move(payloads), v1::Header::kApplyAck, timeout_ms,
                                      permanent, sequence_));
  return msg.header.apply_ack().applied_lsn();
}

Result<v1::PeStatusReply> PeClient::Status(int timeout_ms) {
  v1::Header h;
  h.mutable_pe_status_request();
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, {}, v1::Header::kPeStatusReply, timeout_ms, nullptr));
  return msg.header.pe_status_reply();
}

Result<v1::ChecksumReply> PeClient::Checksums(const std::string& volume,
                                              const std::vector<v1::Region>& regions,
                                              int timeout_ms) {
  v1::Header h;
  auto* req = h.mutable_checksum_request();
  req->set_volume(volume);
  for (const auto& r : regions) *req->add_regions() = r;
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, {}, v1::Header::kChecksumReply, timeout_ms, nullptr));
  return msg.header.checksum_reply();
}

Result<v1::ApplyHoldReply> PeClient::Hold(bool hold, uint32_t max_ms, int timeout_ms) {
  v1::Header h;
  auto* req = h.mutable_apply_hold_request();
  req->set_hold(hold);
  req->set_max_ms(max_ms);
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, {}, v1::Header::kApplyHoldReply, timeout_ms, nullptr));
  return msg.header.apply_hold_reply();
}

Result<v1::WrittenRegionsReply> PeClient::WrittenRegions(const std::string& volume,
                                                         uint64_t region_bytes, bool reset,
                                                         int timeout_ms) {
  v1::Header h;
  auto* req = h.mutable_written_regions_request();
  req->set_volume(volume);
  req->set_region_bytes(region_bytes);
  req->set_reset(reset);
  CDP_ASSIGN_OR_RETURN(auto msg,
                       Call(h, {}, v1::Header::kWrittenRegionsReply, timeout_ms, nullptr));
  return msg.header.written_regions_reply();
}

Result<v1::TakeoverReply> PeClient::Takeover(const v1::TakeoverRequest& request, int timeout_ms) {
  v1::Header h;
  *h.mutable_takeover_request() = request;
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, {}, v1::Header::kTakeoverReply, timeout_ms, nullptr));
  return msg.header.takeover_reply();
}

Result<v1::PrepareBootReply> PeClient::PrepareBoot(const v1::PrepareBootRequest& request,
                                                   int timeout_ms) {
  v1::Header h;
  *h.mutable_prepare_boot_request() = request;
  CDP_ASSIGN_OR_RETURN(auto msg, Call(h, {}, v1::Header::kPrepareBootReply, timeout_ms, nullptr));
  return msg.header.prepare_boot_reply();
}

}  // namespace cdp::pe
