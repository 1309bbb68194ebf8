#include "cdp/journal/source_relay.h"

#include <algorithm>

#include "cdp/core/logging.h"

namespace cdp::journal {

namespace v1 = wire::v1;

std::string SourceRelay::RequestName(const v1::SourceRequest& request) {
  switch (request.body_case()) {
    case v1::SourceRequest::kQuiesce:
      return "quiesce";
    case v1::SourceRequest::kHold:
      return "hold";
    case v1::SourceRequest::kRelease:
      return "release";
    case v1::SourceRequest::kFence:
      return "fence";
    case v1::SourceRequest::kHashes:
      return "hashes";
    case v1::SourceRequest::kStatus:
      return "status";
    case v1::SourceRequest::BODY_NOT_SET:
      break;
  }
  return "";
}

void SourceRelay::HandleRequest(const std::string& client, const v1::SourceRequest& request) {
  const std::string what = RequestName(request);
  if (what.empty()) {
    (void)outbox_->SendError(
        client,
        Status::InvalidArgument("journal-server: a source request for volume " + request.volume() +
                                " with no body (quiesce, hold, release, "
                                "fence, hashes or status)"),
        true);
    return;
  }
  const std::string hint = "is the cdp-agent protecting it running on the source?";
  const std::string agent = LiveWriterOrAnswer(client, request.volume(), hint);
  if (agent.empty()) return;
  const uint64_t id = next_request_++;
  v1::Header forward;
  *forward.mutable_source_request() = request;
  forward.mutable_source_request()->set_request_id(id);
  Status s = outbox_->SendTo(agent, forward, {});
  if (s.IsUnavailable()) {
    // Its connection closed since its last report (killed, restarted): no agent, as above.
    (void)outbox_->SendError(client,
                             Status::Unavailable("journal-server: volume " + request.volume() +
                                                 ": no agent connected; " + hint),
                             false);
    return;
  }
  if (!s.ok()) {
    (void)outbox_->SendError(client, s.WithContext("journal-server: relaying to the agent"), false);
    return;
  }
  const std::chrono::milliseconds timeout =
      request.reply_timeout_ms() == 0
          ? kDefaultTimeout
          : std::min(kMaxTimeout, std::chrono::milliseconds(request.reply_timeout_ms()));
  pending_[id] = PendingRequest{client,  request.request_id(),  request.volume(), agent, what,
                                timeout, Clock::now() + timeout};
}

void SourceRelay::HandleReply(const std::string& agent, const v1::SourceReply& reply) {
  auto it = pending_.find(reply.request_id());
  if (it == pending_.end()) return;  // answered already (timed out, or the session dropped)
  if (it->second.agent != agent) {
    CDP_LOG(warning) << "journal-server: source " << it->second.what << " reply from "
                     << outbox_->PeerName(agent) << ", not the agent of volume "
                     << it->second.volume << "; ignored";
    return;
  }
  v1::Header h;
  *h.mutable_source_reply() = reply;
  h.mutable_source_reply()->set_request_id(it->second.client_request_id);
  (void)outbox_->SendTo(it->second.client, h, {});
  pending_.erase(it);
}

void SourceRelay::ServePending() {
  const auto now = Clock::now();
  for (auto it = pending_.begin(); it != pending_.end();) {
    const PendingRequest& p = it->second;
    if (agents_->WriterOf(p.volume) != p.agent || !agents_->WriterAlive(p.volume)) {
      (void)outbox_->SendError(
          p.client,
          Status::Unavailable("journal-server: volume " + p.volume +
                              ": the agent's session dropped before it answered the " + p.what +
                              " (the agent stopped reporting: killed, restarted, or its link "
                              "cut); a freeze it holds thaws when its lease passes"),
          false);
      it = pending_.erase(it);
    } else if (now > p.deadline) {
      (void)outbox_->SendError(p.client,
                               Status::TimedOut("journal-server: volume " + p.volume +
                                                ": the agent did not answer the " + p.what +
                                                " within " + Within(p.timeout)),
                               false);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace cdp::journal
