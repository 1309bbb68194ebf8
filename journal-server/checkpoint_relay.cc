#include "cdp/journal/checkpoint_relay.h"

#include <algorithm>
#include <vector>

#include "cdp/core/logging.h"

namespace cdp::journal {

namespace v1 = wire::v1;

void CheckpointRelay::HandleRequest(const std::string& client,
                                    const v1::CheckpointRequest& request) {
  const std::string agent =
      LiveWriterOrAnswer(client, request.volume(),
                         "a checkpoint is made by the volume's agent: start it, or restore a "
                         "point that exists (cdpctl points)");
  if (agent.empty()) return;
  const uint64_t id = next_request_++;
  v1::Header forward;
  auto* f = forward.mutable_checkpoint_request();
  f->set_volume(request.volume());
  f->set_label(request.label());
  f->set_request_id(id);
  Status s = outbox_->SendTo(agent, forward, {});
  if (!s.ok()) {
    (void)outbox_->SendError(client, s.WithContext("journal-server: relaying to the agent"), false);
    return;
  }
  pending_[id] =
      PendingCheckpoint{client, request.volume(), request.label(), 0, Clock::now() + timeout_};
}

void CheckpointRelay::HandleReply(const std::string& agent, const v1::CheckpointReply& reply) {
  auto it = pending_.find(reply.request_id());
  if (it == pending_.end()) return;  // expired
  if (agents_->WriterOf(it->second.volume) != agent) {
    CDP_LOG(warning) << "journal-server: checkpoint reply from " << outbox_->PeerName(agent)
                     << ", not the agent of volume " << it->second.volume << "; ignored";
    return;
  }
  if (!reply.error().empty() || reply.lsn() == 0) {
    (void)outbox_->SendError(
        it->second.client,
        Status::FailedPrecondition(
            "journal-server: the agent of volume " + it->second.volume +
            " made no point: " + (reply.error().empty() ? "no LSN" : reply.error())),
        true);
    pending_.erase(it);
    return;
  }
  it->second.lsn = reply.lsn();
}

void CheckpointRelay::ServePending() {
  const auto now = Clock::now();
  for (auto it = pending_.begin(); it != pending_.end();) {
    PendingCheckpoint& c = it->second;
    std::vector<v1::ConsistencyPoint> points;
    auto v = store_->GetVolume(c.volume);
    // The point at the LSN may be one that was there before (a flush): it answers once the
    // journal has added the operator's label to it.
    auto labelled = [&](const v1::ConsistencyPoint& p) {
      return c.label.empty() || p.label() == c.label ||
             std::find(p.operator_labels().begin(), p.operator_labels().end(), c.label) !=
                 p.operator_labels().end();
    };
    if (c.lsn != 0 && v.ok() && v->durable_lsn >= c.lsn &&
        store_->ReadPoints(c.volume, c.lsn, c.lsn, &points).ok() && !points.empty() &&
        labelled(points.front())) {
      v1::Header h;
      auto* r = h.mutable_checkpoint_reply();
      r->set_volume(c.volume);
      r->set_request_id(it->first);
      r->set_lsn(c.lsn);
      *r->mutable_point() = points.front();
      (void)outbox_->SendTo(c.client, h, {});
      it = pending_.erase(it);
    } else if (now > c.deadline) {
      const std::string within = Within(timeout_);
      (void)outbox_->SendError(
          c.client,
          Status::TimedOut(
              "journal-server: volume " + c.volume + ": " +
              (c.lsn == 0
                   ? std::string("the agent did not answer")
                   : "the point at LSN " + std::to_string(c.lsn) + " did not reach the journal") +
              " within " + within + " (is the agent falling back to its dirty bitmap?)"),
          false);
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace cdp::journal
