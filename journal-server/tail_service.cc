#include "cdp/journal/tail_service.h"

#include <algorithm>
#include <vector>

#include "cdp/core/logging.h"

namespace cdp::journal {

namespace v1 = wire::v1;

void TailService::HandleRequest(const std::string& peer, const v1::TailRequest& req) {
  auto v = store_->GetVolume(req.volume());
  if (!v.ok()) {
    (void)outbox_->SendError(peer, v.status(), false);
    return;
  }
  applied_report_[req.volume()] = Clock::now();
  if (req.applied_lsn() != v->applied_lsn) {
    Status s = store_->SetApplied(req.volume(), req.applied_lsn());
    if (!s.ok()) CDP_LOG(warning) << "journal-server: " << s.ToString();
  }
  if (req.max_bytes() == 0) return;  // a progress report only
  if (req.from_lsn() == 0) {
    (void)outbox_->SendError(peer, Status::InvalidArgument("tail from LSN 0: LSNs start at 1"),
                             true);
    return;
  }
  if (req.from_lsn() <= v->base_lsn) {
    (void)outbox_->SendError(
        peer,
        Status::FailedPrecondition(
            "journal-server: volume " + req.volume() + ": records up to LSN " +
            std::to_string(v->base_lsn) +
            " were folded into the base image by retention, and this replica asks from LSN " +
            std::to_string(req.from_lsn()) + "; reseed it from `cdpctl restore --at " +
            std::to_string(v->base_lsn) + "` or a full copy (docs/retention.md)"),
        true);
    return;
  }
  if (!ServeTail(peer, req, req.wait_ms() == 0)) {
    parked_[peer] = ParkedTail{req, Clock::now() + std::chrono::milliseconds(req.wait_ms())};
  } else {
    parked_.erase(peer);
  }
}

bool TailService::ServeTail(const std::string& peer, const v1::TailRequest& req, bool send_empty) {
  auto v = store_->GetVolume(req.volume());
  if (!v.ok()) {
    (void)outbox_->SendError(peer, v.status(), false);
    return true;
  }
  if (v->durable_lsn < req.from_lsn() && !send_empty) return false;
  std::vector<ChangeRecord> records;
  if (v->durable_lsn >= req.from_lsn()) {
    Status s = store_->ReadRecords(req.volume(), req.from_lsn(),
                                   std::min<uint64_t>(req.max_bytes(), max_tail_bytes_),
                                   kMaxTailRecords, &records);
    if (!s.ok()) {
      CDP_LOG(error) << "journal-server: tail of volume " << req.volume() << " from LSN "
                     << req.from_lsn() << ": " << s.ToString();
      (void)outbox_->SendError(peer, s, false);
      return true;
    }
  }
  v1::Header h;
  auto* tb = h.mutable_tail_batch();
  tb->set_volume(req.volume());
  tb->set_request_id(req.request_id());
  tb->set_durable_lsn(v->durable_lsn);
  std::vector<zmq::message_t> frames;
  for (const auto& rec : records) {
    *tb->add_records() = wire::RecordToProto(rec);
    if (rec.has_payload()) frames.push_back(wire::FrameFromShared(rec.payload));
  }
  if (!records.empty()) {
    std::vector<v1::ConsistencyPoint> points;
    if (store_->ReadPoints(req.volume(), records.front().lsn, records.back().lsn, &points).ok()) {
      for (auto& p : points) *tb->add_points() = std::move(p);
    }
  }
  (void)outbox_->SendTo(peer, h, std::move(frames));
  return true;
}

void TailService::ServeParked(bool expire_only) {
  const auto now = Clock::now();
  for (auto it = parked_.begin(); it != parked_.end();) {
    bool served = false;
    if (now >= it->second.deadline) {
      served = ServeTail(it->first, it->second.request, /*send_empty=*/true);
    } else if (!expire_only) {
      served = ServeTail(it->first, it->second.request, /*send_empty=*/false);
    }
    it = served ? parked_.erase(it) : std::next(it);
  }
}

std::optional<TailService::Clock::time_point> TailService::LastAppliedReport(
    const std::string& volume) const {
  auto it = applied_report_.find(volume);
  if (it == applied_report_.end()) return std::nullopt;
  return it->second;
}

}  // namespace cdp::journal
