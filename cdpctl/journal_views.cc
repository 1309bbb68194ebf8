#include "cdp/ctl/journal_views.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cdp/core/time_text.h"
#include "cdp/core/units.h"

namespace cdp::ctl {

namespace v1 = wire::v1;

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

std::string RetentionJson(const v1::RetentionReply& r) {
  return nlohmann::json({{"volume", r.volume()},
                         {"window_s", r.window_s()},
                         {"max_bytes", r.max_bytes()},
                         {"window_default", r.window_default()},
                         {"max_bytes_default", r.max_bytes_default()},
                         {"base_lsn", r.base_lsn()},
                         {"durable_lsn", r.durable_lsn()},
                         {"journal_bytes", r.journal_bytes()},
                         {"oldest_point_lsn", r.oldest_point_lsn()},
                         {"oldest_point_time",
                          r.oldest_point_time_ns() ? FormatRfc3339(r.oldest_point_time_ns()) : ""},
                         {"early_folds", r.early_folds()},
                         {"early_fold_lsn", r.early_fold_lsn()},
                         {"history_lost_before",
                          r.early_folds() ? FormatRfc3339(r.early_fold_time_ns()) : ""}})
      .dump();
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
    nlohmann::json point = {
        {"lsn", p.lsn()},
        {"time", FormatRfc3339(p.time_ns())},
        {"origin", OriginName(p.origin())},
        {"label", p.label()},
        {"operator_labels",
         std::vector<std::string>(p.operator_labels().begin(), p.operator_labels().end())}};
    if (p.group_point_id() != 0) {
      nlohmann::json members = nlohmann::json::array();
      for (const auto& m : p.group_members()) {
        members.push_back({{"volume", m.volume()}, {"lsn", m.lsn()}});
      }
      point["group"] = p.group();
      point["group_point_id"] = p.group_point_id();
      point["group_members"] = members;
    }
    out.push_back(point);
  }
  return out.dump();
}

std::string GroupText(const v1::ConsistencyPoint& p) {
  if (p.group_point_id() == 0) return "";
  std::string text = "  [group " + p.group() + " point " + std::to_string(p.group_point_id()) + ":";
  for (const auto& m : p.group_members()) {
    text.append(" ").append(m.volume()).append("@").append(std::to_string(m.lsn()));
  }
  return text + "]";
}

std::string PointsTable(const std::vector<v1::ConsistencyPoint>& points) {
  std::ostringstream o;
  o << "LSN                  TIME (UTC)                      ORIGIN    LABEL\n";
  for (const auto& p : points) {
    char line[160];
    snprintf(line, sizeof(line), "%-20llu %-31s %-9s ", static_cast<unsigned long long>(p.lsn()),
             FormatRfc3339(p.time_ns()).c_str(), OriginName(p.origin()).c_str());
    o << line << PointLabels(p) << GroupText(p) << "\n";
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
    volumes.push_back(
        {{"name", v.name()},
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
         {"history_lost_before", v.early_folds() > 0 ? FormatRfc3339(v.early_fold_time_ns()) : ""},
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

}  // namespace cdp::ctl
