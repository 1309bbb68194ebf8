#include "cdp/failover/cutover_plan.h"

#include <arpa/inet.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "cdp/core/transport.h"
#include "cdp/core/units.h"
#include "cdp/core/wire.h"
#include "yaml_loader.h"

namespace cdp::failover {

namespace fs = std::filesystem;

namespace {

constexpr char kTargetUuid[] = "${TARGET_UUID}";

bool ValidIpv4(const std::string& text) {
  in_addr addr{};
  return inet_pton(AF_INET, text.c_str(), &addr) == 1;
}

// "ADDR/PREFIX" with an IPv4 address and a prefix of 0..32.
bool ValidIpv4Prefix(const std::string& text) {
  static const std::regex re("^([^/]+)/([0-9]{1,2})$");
  std::smatch m;
  return std::regex_match(text, m, re) && ValidIpv4(m[1]) && std::stoi(m[2]) <= 32;
}

// plan.drill_address when the plan does not say: see cutover_plan.h.
std::string DefaultDrillAddress(const CutoverPlan& plan) {
  if (plan.network.empty()) return "";
  const std::string& first = plan.network.front().address;
  const size_t slash = first.find('/');
  in_addr addr{};
  if (slash == std::string::npos || inet_pton(AF_INET, first.substr(0, slash).c_str(), &addr) != 1) {
    return "";
  }
  const int prefix = std::stoi(first.substr(slash + 1));
  const uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  const uint32_t net = ntohl(addr.s_addr) & mask;
  std::set<uint32_t> taken;
  for (const std::string& a :
       [&] {
         std::vector<std::string> all = {plan.health.host};
         for (const auto& n : plan.network) all.push_back(n.address.substr(0, n.address.find('/')));
         return all;
       }()) {
    in_addr t{};
    if (inet_pton(AF_INET, a.c_str(), &t) == 1) taken.insert(ntohl(t.s_addr));
  }
  for (uint32_t host = net + 1; (host & mask) == net && host != (net | ~mask); ++host) {
    if (taken.count(host) != 0) continue;
    in_addr out{htonl(host)};
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &out, text, sizeof(text));
    return std::string(text) + "/" + std::to_string(prefix);
  }
  return "";
}

std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

// source.quiesce / source.fence: {method, command[, resume_command]} and, for method agent,
// `agent_keys` (read by the caller). `methods` are the ones this step takes; fsfreeze (quiesce
// only) is known but refused.
struct StepMethod {
  std::string method;
  std::vector<std::string> command, resume_command;
};

Result<StepMethod> LoadStepMethod(const YamlLoader& L, const YAML::Node& source,
                                  const std::string& key, const std::vector<std::string>& methods,
                                  bool has_resume, const std::string& qmp_socket,
                                  const std::set<std::string>& agent_keys) {
  const std::string ctx = "source." + key;
  const YAML::Node n = source[key];
  const std::string one_of = JoinList(methods);
  if (!n.IsDefined() || n.IsNull()) {
    return L.Error(source, ctx, "missing (required): {method: M} with M one of " + one_of);
  }
  std::set<std::string> known = {"method", "command"};
  if (has_resume) known.insert("resume_command");
  known.insert(agent_keys.begin(), agent_keys.end());
  CDP_RETURN_IF_ERROR(L.CheckKeys(n, ctx, known));
  StepMethod m;
  CDP_ASSIGN_OR_RETURN(m.method, L.String(n, "method", ctx, true));
  if (has_resume && m.method == "fsfreeze") {
    return L.Error(n["method"], ctx + ".method",
                   "fsfreeze is not built (use agent: the source's cdp-agent freezes its "
                   "filesystems; or qmp-pause, or command with the freeze command)");
  }
  if (std::find(methods.begin(), methods.end(), m.method) == methods.end()) {
    return L.Error(n["method"], ctx + ".method", "'" + m.method + "' is not one of " + one_of);
  }
  CDP_ASSIGN_OR_RETURN(m.command, L.List(n, "command", ctx, false));
  if (has_resume) {
    CDP_ASSIGN_OR_RETURN(m.resume_command, L.List(n, "resume_command", ctx, false));
  }
  if (m.method == "command") {
    if (m.command.empty()) {
      return L.Error(n["command"].IsDefined() ? n["command"] : n, ctx + ".command",
                     "missing or empty: method command needs the command to run, as a list "
                     "([ARGV0, ARG...])");
    }
    for (const auto* list : {&m.command, &m.resume_command}) {
      const std::string which = list == &m.command ? "command" : "resume_command";
      for (size_t i = 0; i < list->size(); ++i) {
        if ((*list)[i].empty()) {
          return L.Error(n[which][i], ctx + "." + which + "[" + std::to_string(i) + "]",
                         "an empty argument");
        }
      }
    }
  } else {
    for (const char* which : {"command", "resume_command"}) {
      if (n[which].IsDefined()) {
        return L.Error(n[which], ctx + "." + which,
                       "only for method command (the method is " + m.method + ")");
      }
    }
  }
  if (m.method != "agent") {
    for (const auto& k : agent_keys) {
      if (n[k].IsDefined()) {
        return L.Error(n[k], ctx + "." + k,
                       "only for method agent (the method is " + m.method + ")");
      }
    }
  }
  if (m.method.rfind("qmp-", 0) == 0 && qmp_socket.empty()) {
    return L.Error(n["method"], ctx + ".method",
                   m.method + " needs source.qmp_socket (the source VM's QMP socket)");
  }
  return m;
}

// source.quiesce's keys of method agent: hooks, freeze_budget_seconds, hold_seconds.
Status LoadAgentQuiesce(const YamlLoader& L, const YAML::Node& q, QuiesceMethod* m) {
  const std::string ctx = "source.quiesce";
  CDP_ASSIGN_OR_RETURN(m->freeze_budget_seconds,
                       L.Seconds(q, "freeze_budget_seconds", ctx, m->freeze_budget_seconds));
  CDP_ASSIGN_OR_RETURN(m->hold_seconds, L.Seconds(q, "hold_seconds", ctx, m->hold_seconds));
  if (m->hold_seconds < 2) {
    return L.Error(q["hold_seconds"], ctx + ".hold_seconds",
                   FormatFixed(m->hold_seconds, 1) +
                       " s is too short for a lease the engine renews over the network (at least "
                       "2; 30 is the default)");
  }
  const YAML::Node hooks = q["hooks"];
  if (!hooks.IsDefined() || hooks.IsNull()) return Status::Ok();
  if (!hooks.IsSequence()) {
    return L.Error(hooks, ctx + ".hooks",
                   "expected a list of {run: [ARGV0, ARG...], timeout_seconds: S}");
  }
  for (size_t i = 0; i < hooks.size(); ++i) {
    const std::string hctx = ctx + ".hooks[" + std::to_string(i) + "]";
    CDP_RETURN_IF_ERROR(L.CheckKeys(hooks[i], hctx, {"run", "timeout_seconds"}));
    PreFreezeHook h;
    CDP_ASSIGN_OR_RETURN(h.run, L.List(hooks[i], "run", hctx, true));
    if (h.run.empty()) {
      return L.Error(hooks[i]["run"], hctx + ".run",
                     "empty: the command to run on the source, as a list ([psql, -c, CHECKPOINT])");
    }
    for (size_t a = 0; a < h.run.size(); ++a) {
      if (h.run[a].empty()) {
        return L.Error(hooks[i]["run"][a], hctx + ".run[" + std::to_string(a) + "]",
                       "an empty argument");
      }
    }
    CDP_ASSIGN_OR_RETURN(h.timeout_seconds,
                         L.Seconds(hooks[i], "timeout_seconds", hctx, h.timeout_seconds));
    m->hooks.push_back(std::move(h));
  }
  return Status::Ok();
}

// source.fence's keys of method agent: action, addresses (default: the plan's network
// addresses, so call after those are loaded).
Status LoadAgentFence(const YamlLoader& L, const YAML::Node& f, const CutoverPlan& p,
                      FenceMethod* m) {
  const std::string ctx = "source.fence";
  CDP_ASSIGN_OR_RETURN(m->action, L.String(f, "action", ctx, false, "remove-addresses"));
  if (m->action != "remove-addresses" && m->action != "poweroff") {
    return L.Error(f["action"], ctx + ".action",
                   "'" + m->action + "' is not remove-addresses or poweroff");
  }
  CDP_ASSIGN_OR_RETURN(m->addresses, L.List(f, "addresses", ctx, false));
  if (f["addresses"].IsDefined() && m->action != "remove-addresses") {
    return L.Error(f["addresses"], ctx + ".addresses", "only for action remove-addresses");
  }
  for (size_t i = 0; i < m->addresses.size(); ++i) {
    const std::string& a = m->addresses[i];
    if (!ValidIpv4(a) && !ValidIpv4Prefix(a)) {
      return L.Error(f["addresses"][i], ctx + ".addresses[" + std::to_string(i) + "]",
                     "'" + a + "' is not an IPv4 address (192.0.2.10 or 192.0.2.10/24)");
    }
  }
  if (m->action == "remove-addresses" && m->addresses.empty()) {
    for (const auto& n : p.network) m->addresses.push_back(n.address);
  }
  return Status::Ok();
}

// YAML ends a plain value inside [ ] or { } at "}", so `[${VAR}/x]` does not parse, with a
// message that does not say why. Returns " (line N: ...)" for the first ${ outside quotes inside
// [ ] or { }, or "" (a rough scan, only to explain a parse error).
std::string UnquotedVariableHint(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  int depth = 0;
  for (int n = 1; std::getline(in, line); ++n) {
    char quote = 0;
    for (size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (quote) {
        if (c == quote) quote = 0;
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '#' && (i == 0 || line[i - 1] == ' ')) {
        break;
      } else if (c == '[' || c == '{') {
        ++depth;
      } else if (c == ']' || c == '}') {
        depth = depth > 0 ? depth - 1 : 0;
      }
      if (!quote && depth > 0 && line.compare(i, 2, "${") == 0) {
        return " (line " + std::to_string(n) +
               ": inside [ ] or { } a value with ${VAR} must be quoted, \"${VAR}/...\")";
      }
    }
  }
  return "";
}

}  // namespace

std::string CutoverPlan::Where(const std::string& key) const {
  auto it = lines.find(key);
  return file + (it == lines.end() ? "" : ":" + std::to_string(it->second)) + ": '" + key + "'";
}

std::string CutoverPlan::ExpectedReply() const {
  std::string out = health.expect;
  const std::string token = kTargetUuid;
  for (size_t pos = out.find(token); pos != std::string::npos;
       pos = out.find(token, pos + target.uuid.size())) {
    out.replace(pos, token.size(), target.uuid);
  }
  return out;
}

Result<CutoverPlan> LoadCutoverPlan(const std::string& path) {
  auto loaded = LoadYamlFile(path, "cutover plan");
  if (!loaded.ok()) {
    if (loaded.status().code() != StatusCode::kInvalidArgument) return loaded.status();
    return Status::InvalidArgument(loaded.status().message() + UnquotedVariableHint(path));
  }
  YAML::Node root = std::move(*loaded);
  const YamlLoader L{path, fs::absolute(path).parent_path()};
  // First, so that every check below sees the values as they will be used.
  CDP_RETURN_IF_ERROR(L.ExpandEnvironment(root, "", {{"TARGET_UUID", "health_check.expect"}}));
  CutoverPlan p;
  p.file = path;
  CDP_RETURN_IF_ERROR(L.CheckKeys(root, "",
                                  {"name", "journal", "volumes", "root_volume", "source", "target",
                                   "network", "health_check", "budgets", "rollback", "drill",
                                   "takeover"}));

  CDP_ASSIGN_OR_RETURN(p.name, L.String(root, "name", "", true));
  if (!wire::ValidateVolumeName(p.name).ok()) {
    return L.Error(root["name"], "name",
                   "'" + p.name +
                       "' is not a valid protection group name: 1..64 of "
                       "[A-Za-z0-9._-]");
  }
  CDP_ASSIGN_OR_RETURN(p.journal, L.String(root, "journal", "", true));
  if (Status s = ValidateEndpoint(p.journal); !s.ok()) {
    return L.Error(root["journal"], "journal", s.message());
  }

  // Volumes: names here; that the target has a disk for each, once the target is loaded.
  const YAML::Node volumes = root["volumes"];
  CDP_ASSIGN_OR_RETURN(p.volumes, L.List(root, "volumes", "", false));
  if (p.volumes.empty()) {
    return L.Error(volumes.IsDefined() ? volumes : root, "volumes",
                   "missing or empty: a list of the protected volumes' names");
  }
  {
    std::set<std::string> seen;
    for (size_t i = 0; i < p.volumes.size(); ++i) {
      const std::string key = "volumes[" + std::to_string(i) + "]";
      if (Status s = wire::ValidateVolumeName(p.volumes[i]); !s.ok()) {
        return L.Error(volumes[i], key, s.message());
      }
      if (!seen.insert(p.volumes[i]).second) {
        return L.Error(volumes[i], key, "volume " + p.volumes[i] + " is listed twice");
      }
    }
  }
  CDP_ASSIGN_OR_RETURN(p.root_volume, L.String(root, "root_volume", "", false, p.volumes[0]));
  if (std::find(p.volumes.begin(), p.volumes.end(), p.root_volume) == p.volumes.end()) {
    return L.Error(root["root_volume"], "root_volume",
                   p.root_volume + " is not one of the volumes (" + JoinList(p.volumes) + ")");
  }

  const YAML::Node source = root["source"];
  if (!source.IsDefined() || source.IsNull()) {
    return L.Error(root, "source", "missing (required): {qmp_socket, devices, quiesce, fence}");
  }
  CDP_RETURN_IF_ERROR(L.CheckKeys(source, "source", {"qmp_socket", "devices", "quiesce", "fence"}));
  CDP_ASSIGN_OR_RETURN(p.source_qmp_socket, L.Path(source, "qmp_socket", "source", false));
  CDP_ASSIGN_OR_RETURN(p.source_devices, L.List(source, "devices", "source", false));
  if (source["devices"].IsDefined() && p.source_devices.size() != p.volumes.size()) {
    return L.Error(source["devices"], "source.devices",
                   std::to_string(p.source_devices.size()) + " device(s) for " +
                       std::to_string(p.volumes.size()) +
                       " volume(s): give one device or image per volume, in the order of "
                       "volumes");
  }
  for (size_t i = 0; i < p.source_devices.size(); ++i) {
    if (p.source_devices[i].empty()) {
      return L.Error(
          source["devices"][i], "source.devices[" + std::to_string(i) + "]",
          "empty (expected the source's device or image path of volume " + p.volumes[i] + ")");
    }
    p.source_devices[i] = L.Absolute(p.source_devices[i]);
  }
  CDP_ASSIGN_OR_RETURN(
      StepMethod quiesce,
      LoadStepMethod(L, source, "quiesce", {"qmp-pause", "command", "agent", "fsfreeze"}, true,
                     p.source_qmp_socket, {"hooks", "freeze_budget_seconds", "hold_seconds"}));
  p.quiesce.method = quiesce.method;
  p.quiesce.command = quiesce.command;
  p.quiesce.resume_command = quiesce.resume_command;
  if (p.quiesce.method == "agent") {
    CDP_RETURN_IF_ERROR(LoadAgentQuiesce(L, source["quiesce"], &p.quiesce));
  }
  CDP_ASSIGN_OR_RETURN(
      StepMethod fence,
      LoadStepMethod(L, source, "fence", {"qmp-poweroff", "qmp-pause", "command", "agent"}, false,
                     p.source_qmp_socket, {"action", "addresses"}));
  p.fence.method = fence.method;
  p.fence.command = fence.command;
  if (p.fence.method == "agent" && p.quiesce.method != "agent") {
    return L.Error(source["fence"]["method"], "source.fence.method",
                   "agent needs quiesce method agent too (a source stopped by " + p.quiesce.method +
                       " cannot run its agent's fence)");
  }
  if (p.fence.method == "qmp-pause" && p.quiesce.method != "qmp-pause") {
    return L.Error(source["fence"], "source.fence",
                   "qmp-pause only keeps the source paused, and quiesce method " +
                       p.quiesce.method +
                       " never paused it: both would serve; use fence qmp-poweroff or command "
                       "(or quiesce qmp-pause)");
  }

  const YAML::Node target = root["target"];
  if (!target.IsDefined() || target.IsNull()) {
    return L.Error(root, "target", "missing (required): {config: FILE} (a `cdpctl target` config)");
  }
  CDP_RETURN_IF_ERROR(L.CheckKeys(target, "target", {"config"}));
  CDP_ASSIGN_OR_RETURN(p.target_config, L.Path(target, "config", "target", true));
  {
    auto t = LoadTargetConfig(p.target_config);
    if (!t.ok()) {
      const Status wrapped = L.Error(target["config"], "target.config", t.status().message());
      return Status(t.status().code(), wrapped.message());  // NotFound stays NotFound
    }
    p.target = std::move(*t);
  }
  for (size_t i = 0; i < p.volumes.size(); ++i) {
    bool found = false;
    std::vector<std::string> has;
    for (const auto& d : p.target.disks) {
      found = found || d.volume == p.volumes[i];
      has.push_back(d.volume);
    }
    if (!found) {
      return L.Error(volumes[i], "volumes[" + std::to_string(i) + "]",
                     "volume " + p.volumes[i] + " is not a disk of target " + p.target.name +
                         " (it has: " + JoinList(has) + ")");
    }
  }

  const YAML::Node network = root["network"];
  if (!network.IsDefined() || !network.IsSequence() || network.size() == 0) {
    return L.Error(network.IsDefined() ? network : root, "network",
                   "missing or empty: a list of {source_mac, target_mac, address, gateway}");
  }
  for (size_t i = 0; i < network.size(); ++i) {
    const YAML::Node n = network[i];
    const std::string ctx = "network[" + std::to_string(i) + "]";
    CDP_RETURN_IF_ERROR(
        L.CheckKeys(n, ctx, {"source_mac", "source_name", "target_mac", "address", "gateway"}));
    NicMappingPlan m;
    CDP_ASSIGN_OR_RETURN(m.source_mac, L.String(n, "source_mac", ctx, true));
    CDP_ASSIGN_OR_RETURN(m.target_mac, L.String(n, "target_mac", ctx, true));
    CDP_ASSIGN_OR_RETURN(m.address, L.String(n, "address", ctx, true));
    CDP_ASSIGN_OR_RETURN(m.gateway, L.String(n, "gateway", ctx, false));
    CDP_ASSIGN_OR_RETURN(m.source_name, L.String(n, "source_name", ctx, false));
    for (const char* key : {"source_mac", "target_mac"}) {
      const std::string& mac = std::string(key) == "source_mac" ? m.source_mac : m.target_mac;
      if (!ValidMac(mac)) {
        return L.Error(n[key], ctx + "." + key,
                       "'" + mac + "' is not a unicast MAC in lower case (52:54:00:12:34:56)");
      }
    }
    const TargetNic& service = p.target.service_nic;
    const TargetNic& replication = p.target.replication_nic;
    if (m.target_mac != service.mac && m.target_mac != replication.mac) {
      return L.Error(n["target_mac"], ctx + ".target_mac",
                     m.target_mac + " is no NIC of target " + p.target.name + " (service " +
                         service.mac + ", replication " + replication.mac + ")");
    }
    if (m.target_mac == service.mac && service.mode == "none") {
      return L.Error(n["target_mac"], ctx + ".target_mac",
                     m.target_mac + " is the service NIC of target " + p.target.name +
                         ", which has service_nic.mode none in " + p.target_config +
                         " (give it mode tap or user)");
    }
    if (!ValidIpv4Prefix(m.address)) {
      return L.Error(n["address"], ctx + ".address",
                     "'" + m.address +
                         "' is not IPV4/PREFIX with a prefix of 0..32 "
                         "(e.g. 192.0.2.10/24)");
    }
    if (!m.gateway.empty() && !ValidIpv4(m.gateway)) {
      return L.Error(n["gateway"], ctx + ".gateway",
                     "'" + m.gateway + "' is not an IPv4 address (e.g. 192.0.2.1)");
    }
    p.network.push_back(std::move(m));
  }

  if (p.fence.method == "agent") {
    CDP_RETURN_IF_ERROR(LoadAgentFence(L, source["fence"], p, &p.fence));
  }

  const YAML::Node hc = root["health_check"];
  if (!hc.IsDefined() || hc.IsNull()) {
    return L.Error(root, "health_check",
                   "missing (required): {host, port, request, expect, interval_seconds}");
  }
  CDP_RETURN_IF_ERROR(L.CheckKeys(hc, "health_check",
                                  {"host", "port", "request", "expect", "interval_seconds",
                                   "command", "command_timeout_seconds"}));
  CDP_ASSIGN_OR_RETURN(p.health.host, L.String(hc, "host", "health_check", true));
  if (!ValidIpv4(p.health.host)) {
    return L.Error(hc["host"], "health_check.host",
                   "'" + p.health.host + "' is not an IPv4 address (e.g. 192.0.2.10)");
  }
  CDP_RETURN_IF_ERROR(L.String(hc, "port", "health_check", true).status());
  CDP_ASSIGN_OR_RETURN(uint64_t port, L.Number(hc, "port", "health_check", 0, 1, 65535));
  p.health.port = static_cast<uint16_t>(port);
  CDP_ASSIGN_OR_RETURN(p.health.request, L.String(hc, "request", "health_check", false));
  CDP_ASSIGN_OR_RETURN(p.health.expect, L.String(hc, "expect", "health_check", false));
  CDP_ASSIGN_OR_RETURN(p.health.interval_seconds, L.Seconds(hc, "interval_seconds", "health_check",
                                                            p.health.interval_seconds));
  CDP_ASSIGN_OR_RETURN(p.health.command, L.List(hc, "command", "health_check", false));
  if (hc["command"].IsDefined() && p.health.command.empty()) {
    return L.Error(hc["command"], "health_check.command",
                   "empty: a command to run once the service answers, as a list ([psql, -h, "
                   "192.0.2.10, -c, SELECT 1]); leave the key out for none");
  }
  for (size_t a = 0; a < p.health.command.size(); ++a) {
    if (p.health.command[a].empty()) {
      return L.Error(hc["command"][a], "health_check.command[" + std::to_string(a) + "]",
                     "an empty argument");
    }
  }
  CDP_ASSIGN_OR_RETURN(
      p.health.command_timeout_seconds,
      L.Seconds(hc, "command_timeout_seconds", "health_check", p.health.command_timeout_seconds));

  const YAML::Node budgets = root["budgets"];
  if (budgets.IsDefined() && !budgets.IsNull()) {
    CDP_RETURN_IF_ERROR(L.CheckKeys(
        budgets, "budgets",
        {"lag_seconds", "drain_seconds", "verify_seconds", "takeover_seconds", "total_seconds"}));
    Budgets& b = p.budgets;
    CDP_ASSIGN_OR_RETURN(b.lag_seconds,
                         L.Seconds(budgets, "lag_seconds", "budgets", b.lag_seconds));
    CDP_ASSIGN_OR_RETURN(b.drain_seconds,
                         L.Seconds(budgets, "drain_seconds", "budgets", b.drain_seconds));
    CDP_ASSIGN_OR_RETURN(b.verify_seconds,
                         L.Seconds(budgets, "verify_seconds", "budgets", b.verify_seconds));
    CDP_ASSIGN_OR_RETURN(b.takeover_seconds,
                         L.Seconds(budgets, "takeover_seconds", "budgets", b.takeover_seconds));
    CDP_ASSIGN_OR_RETURN(b.total_seconds,
                         L.Seconds(budgets, "total_seconds", "budgets", b.total_seconds));
  }

  CDP_ASSIGN_OR_RETURN(p.rollback, L.String(root, "rollback", "", false, p.rollback));
  if (p.rollback != "resume-source" && p.rollback != "none") {
    return L.Error(root["rollback"], "rollback",
                   "'" + p.rollback + "' is not resume-source or none");
  }
  if (p.rollback == "resume-source" && p.quiesce.method == "command" &&
      p.quiesce.resume_command.empty()) {
    const YAML::Node q = source["quiesce"];
    return L.Error(q, "source.quiesce.resume_command",
                   "missing: rollback resume-source needs the command that undoes the quiesce "
                   "command (or rollback: none)");
  }

  const YAML::Node takeover = root["takeover"];
  if (takeover.IsDefined() && !takeover.IsNull()) {
    CDP_RETURN_IF_ERROR(L.CheckKeys(takeover, "takeover", {"boot", "kernel_args"}));
    CDP_ASSIGN_OR_RETURN(const std::string boot, L.String(takeover, "boot", "takeover", false,
                                                          wire::BootModeName(p.takeover_boot)));
    auto mode = wire::ParseBootMode(boot);
    if (!mode.ok()) return L.Error(takeover["boot"], "takeover.boot", mode.status().message());
    p.takeover_boot = *mode;
    CDP_ASSIGN_OR_RETURN(p.takeover_kernel_args,
                         L.String(takeover, "kernel_args", "takeover", false));
  }

  auto note = [&p](const std::string& key, const YAML::Node& node) {
    if (node.IsDefined() && node.Mark().line >= 0) p.lines[key] = node.Mark().line + 1;
  };
  note("journal", root["journal"]);
  note("volumes", volumes);
  for (size_t i = 0; i < p.volumes.size(); ++i) {
    note("volumes[" + std::to_string(i) + "]", volumes[i]);
  }
  note("source.qmp_socket", source["qmp_socket"]);
  for (size_t i = 0; i < p.source_devices.size(); ++i) {
    note("source.devices[" + std::to_string(i) + "]", source["devices"][i]);
  }
  note("target.config", target["config"]);

  p.drill_namespace = "cdp-drill";
  p.drill_address = DefaultDrillAddress(p);
  const YAML::Node drill = root["drill"];
  if (drill.IsDefined() && !drill.IsNull()) {
    CDP_RETURN_IF_ERROR(L.CheckKeys(drill, "drill", {"namespace", "address"}));
    CDP_ASSIGN_OR_RETURN(p.drill_address,
                         L.String(drill, "address", "drill", false, p.drill_address));
    if (drill["address"].IsDefined() && !ValidIpv4Prefix(p.drill_address)) {
      return L.Error(drill["address"], "drill.address",
                     "'" + p.drill_address +
                         "' is not IPV4/PREFIX with a prefix of 0..32 (e.g. 192.0.2.1/24)");
    }
    CDP_ASSIGN_OR_RETURN(p.drill_namespace,
                         L.String(drill, "namespace", "drill", false, p.drill_namespace));
    note("drill.namespace", drill["namespace"]);
    if (!wire::ValidateVolumeName(p.drill_namespace).ok()) {
      return L.Error(drill["namespace"], "drill.namespace",
                     "'" + p.drill_namespace +
                         "' is not a valid network namespace name: 1..64 of [A-Za-z0-9._-]");
    }
  }
  return p;
}

}  // namespace cdp::failover
