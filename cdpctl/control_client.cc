#include "cdp/ctl/control_client.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cdp/core/time_text.h"
#include "cdp/core/units.h"

namespace cdp::ctl {

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

Result<wire::Message> ControlClient::Call(const v1::Header& request,
                                          v1::Header::BodyCase expect, int timeout_ms) {
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

std::string RetentionText(const v1::RetentionReply& r) {
  auto bytes = [](uint64_t b) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(b) / (1 << 20));
    return std::string(buf);
  };
  std::ostringstream o;
  o << "volume " << r.volume() << "\n"
    << "  window:        " << (r.window_s() == 0 ? "keep everything" : FormatDuration(r.window_s()))
    << (r.window_default() ? " (server default)" : "") << "\n"
    << "  max bytes:     " << (r.max_bytes() == 0 ? "no cap" : bytes(r.max_bytes()))
    << (r.max_bytes_default() ? " (server default)" : "") << "\n"
    << "  journal:       " << bytes(r.journal_bytes()) << ", LSN " << r.base_lsn() + 1 << ".."
    << r.durable_lsn() << " (base image holds LSN " << r.base_lsn() << ")\n"
    << "  oldest point:  "
    << (r.oldest_point_lsn() == 0 && r.oldest_point_time_ns() == 0
            ? std::string("none")
            : "LSN " + std::to_string(r.oldest_point_lsn()) + " (" +
                  FormatRfc3339(r.oldest_point_time_ns()) + ")")
    << "\n"
    << "  early folds:   " << r.early_folds();
  if (r.early_folds() > 0) {
    o << " (the size cap folded history inside the window; history before "
      << FormatRfc3339(r.early_fold_time_ns()) << ", LSN " << r.early_fold_lsn() << ", is lost)";
  }
  o << "\n";
  return o.str();
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
                                       std::to_string(msg.payloads.size()) +
                                       " frame(s), not the " + std::to_string(reply.length()) +
                                       " bytes it announces");
    }
    data->assign(static_cast<const char*>(msg.payloads[0].data()), msg.payloads[0].size());
  }
  return reply;
}

std::string OriginName(v1::PointOrigin origin) {
  switch (origin) {
    case v1::POINT_FLUSH:
      return "flush";
    case v1::POINT_FREEZE:
      return "freeze";
    case v1::POINT_OPERATOR:
      return "operator";
    case v1::POINT_CUTOVER:
      return "cutover";
    case v1::POINT_SYNC_DONE:
      return "sync";
    default:
      return "unknown";
  }
}

std::string PointLabels(const v1::ConsistencyPoint& p) {
  std::string out = p.label();
  for (const auto& l : p.operator_labels()) out += (out.empty() ? "" : ", ") + l;
  return out;
}

std::string PointsJson(const std::vector<v1::ConsistencyPoint>& points) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : points) {
    out.push_back({{"lsn", p.lsn()},
                   {"time", FormatRfc3339(p.time_ns())},
                   {"origin", OriginName(p.origin())},
                   {"label", p.label()},
                   {"operator_labels", std::vector<std::string>(p.operator_labels().begin(),
                                                                p.operator_labels().end())}});
  }
  return out.dump();
}

std::string PointsTable(const std::vector<v1::ConsistencyPoint>& points) {
  std::ostringstream o;
  o << "LSN                  TIME (UTC)                      ORIGIN    LABEL\n";
  for (const auto& p : points) {
    char line[160];
    snprintf(line, sizeof(line), "%-20llu %-31s %-9s ", static_cast<unsigned long long>(p.lsn()),
             FormatRfc3339(p.time_ns()).c_str(), OriginName(p.origin()).c_str());
    o << line << PointLabels(p) << "\n";
  }
  o << points.size() << " point(s)\n";
  return o.str();
}

bool JournalFull(const v1::StatusReply& reply) {
  return reply.journal_reserve_bytes() > 0 &&
         reply.journal_free_bytes() < reply.journal_reserve_bytes();
}

std::string StatusJson(const v1::StatusReply& reply) {
  nlohmann::json volumes = nlohmann::json::array();
  for (const auto& v : reply.volumes()) {
    volumes.push_back({{"name", v.name()},
                       {"size_bytes", v.size_bytes()},
                       {"captured_lsn", v.captured_lsn()},
                       {"durable_lsn", v.durable_lsn()},
                       {"applied_lsn", v.applied_lsn()},
                       {"lag_seconds", v.lag_seconds()},
                       {"bytes_received", v.bytes_received()},
                       {"records_received", v.records()},
                       {"pending_bytes", v.pending_bytes()},
                       {"pending_records", v.pending_records()},
                       {"dirty_bytes", v.dirty_bytes()},
                       {"resync_active", v.resync_active()},
                       {"initial_sync_done", v.initial_sync_done()},
                       {"initial_sync_bytes", v.initial_sync_done_bytes()},
                       {"initial_sync_total", v.initial_sync_total()},
                       {"agent_connected", v.agent_connected()},
                       {"replicator_connected", v.replicator_connected()},
                       {"ack_mode", v.ack_mode()},
                       {"gaps", v.gaps()},
                       {"last_point_lsn", v.last_point_lsn()},
                       {"capture_mode", v.capture_mode()},
                       {"base_lsn", v.base_lsn()},
                       {"journal_bytes", v.journal_bytes()},
                       {"retention_window_s", v.retention_window_s()},
                       {"retention_max_bytes", v.retention_max_bytes()},
                       {"early_folds", v.early_folds()},
                       {"history_lost_before",
                        v.early_folds() > 0 ? FormatRfc3339(v.early_fold_time_ns()) : ""},
                       {"retention_error", v.retention_error()},
                       {"writer_epoch", v.writer_epoch()},
                       {"writer_identity", v.writer_identity()}});
    if (v.has_trace()) {
      const auto& t = v.trace();
      volumes.back()["trace"] = {{"freezes", t.freezes()},
                                 {"freezes_abandoned", t.freezes_abandoned()},
                                 {"freeze_last_ms", t.freeze_last_us() / 1000.0},
                                 {"freeze_max_ms", t.freeze_max_us() / 1000.0},
                                 {"freeze_p50_ms", t.freeze_p50_us() / 1000.0},
                                 {"freeze_p99_ms", t.freeze_p99_us() / 1000.0},
                                 {"fifreeze_p50_ms", t.fifreeze_p50_us() / 1000.0},
                                 {"fifreeze_p99_ms", t.fifreeze_p99_us() / 1000.0},
                                 {"lost_events", t.lost_events()},
                                 {"events", t.events()},
                                 {"readback_bytes", t.readback_bytes()},
                                 {"resync_read_bytes", t.resync_read_bytes()},
                                 {"resync_sent_bytes", t.resync_sent_bytes()},
                                 {"resync_active", t.resync_active()},
                                 {"freeze_fs_unmounted", t.freeze_fs_unmounted()}};
    }
  }
  nlohmann::json doc = {{"server_id", reply.server_id()},
                        {"journal_free_bytes", reply.journal_free_bytes()},
                        {"journal_reserve_bytes", reply.journal_reserve_bytes()},
                        {"journal_full", JournalFull(reply)},
                        {"volumes", volumes}};
  return doc.dump(2);
}

namespace {
std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}
}  // namespace

std::string StatusTable(const v1::StatusReply& reply) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-16s %10s %10s %10s %10s %8s %11s  %s\n", "VOLUME", "SIZE",
                "CAPTURED", "DURABLE", "APPLIED", "LAG(s)", "RECEIVED", "STATE");
  out << line;
  for (const auto& v : reply.volumes()) {
    std::string state;
    if (!v.agent_connected()) state += "agent-disconnected ";
    if (!v.initial_sync_done() && v.agent_connected()) {
      state += "full-sync " +
               std::to_string(v.initial_sync_total()
                                  ? v.initial_sync_done_bytes() * 100 / v.initial_sync_total()
                                  : 0) +
               "% ";
    }
    if (v.trace().resync_active() && v.initial_sync_done()) state += "checksum-resync ";
    if (v.trace().freeze_fs_unmounted()) state += "fs-unmounted(no-points) ";
    if (v.dirty_bytes() > 0) state += "resync(" + HumanBytes(v.dirty_bytes()) + ") ";
    if (!v.replicator_connected()) state += "replicator-disconnected ";
    if (!v.retention_error().empty()) state += "retention-failing ";
    if (state.empty()) state = v.applied_lsn() >= v.captured_lsn() ? "in-sync" : "replicating";
    std::snprintf(line, sizeof(line), "%-16s %10s %10llu %10llu %10llu %8.2f %11s  %s\n",
                  v.name().c_str(), HumanBytes(v.size_bytes()).c_str(),
                  static_cast<unsigned long long>(v.captured_lsn()),
                  static_cast<unsigned long long>(v.durable_lsn()),
                  static_cast<unsigned long long>(v.applied_lsn()), v.lag_seconds(),
                  HumanBytes(v.bytes_received()).c_str(), state.c_str());
    out << line;
  }
  if (reply.volumes_size() == 0) out << "(no volumes yet: start a cdp-agent)\n";
  if (JournalFull(reply)) {
    out << "journal full: " << HumanBytes(reply.journal_free_bytes())
        << " free on its filesystem, under the reserve of "
        << HumanBytes(reply.journal_reserve_bytes())
        << ": nothing is journaled (agents track dirty regions); free space or set retention\n";
  }
  for (const auto& v : reply.volumes()) {
    if (!v.retention_error().empty()) {
      out << "volume " << v.name() << ": retention failing: " << v.retention_error() << "\n";
    }
  }
  return out.str();
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

}  // namespace cdp::ctl
