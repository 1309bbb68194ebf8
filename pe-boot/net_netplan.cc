// netplan: /etc/netplan/*.yaml (netplan(5)), read line by line as the block-style YAML netplan
// files are written in, so an edit changes only the lines it must (comments and order stay).
#include <cstdint>
#include <map>
#include <tuple>

#include "net_formats.h"

namespace cdp::pe::net {

namespace {

const char kDir[] = "/etc/netplan";

bool IsYaml(const std::string& name) {
  return text::EndsWith(name, ".yaml") || text::EndsWith(name, ".yml");
}

// One line of YAML: its indent, and its key and value ("" when a plain list item).
struct YamlLine {
  size_t index = 0;
  size_t indent = 0;              // of the key (after "- " for an item's first key)
  std::vector<std::string> path;  // keys from the top, "-N" for the item started on line N
  std::string key, value;         // value: the scalar or flow collection after "key:"
  bool item = false;              // a "- " line
  std::string item_value;         // the scalar of a "- scalar" item
};

std::string StripComment(const std::string& s) {
  const size_t hash = s.find(" #");
  return text::Trim(hash == std::string::npos ? s : s.substr(0, hash));
}

std::vector<YamlLine> ParseYaml(const text::LineFile& lf) {
  std::vector<YamlLine> out;
  std::vector<std::pair<size_t, std::string>> stack;  // (indent, key or "-N")
  for (size_t i = 0; i < lf.lines.size(); ++i) {
    const std::string& raw = lf.lines[i];
    const std::string t = text::Trim(raw);
    if (t.empty() || t[0] == '#' || t == "---") continue;
    size_t indent = text::IndentOf(raw).size();
    std::string rest = t;
    YamlLine y;
    y.index = i;
    if (rest.rfind("- ", 0) == 0 || rest == "-") {
      y.item = true;
      while (!stack.empty() && stack.back().first > indent) stack.pop_back();
      // The previous item of this list ends here; a key at this indent ("key:\n- a") is the
      // list's own and stays.
      if (!stack.empty() && stack.back().first == indent && stack.back().second[0] == '-') {
        stack.pop_back();
      }
      stack.emplace_back(indent, "-" + std::to_string(i));
      rest = text::Trim(rest.substr(1));
      indent += 2;
    } else {
      while (!stack.empty() && stack.back().first >= indent) stack.pop_back();
    }
    const size_t colon = rest.find(':');
    const bool is_key = colon != std::string::npos && rest[0] != '[' && rest[0] != '{' &&
                        (colon + 1 == rest.size() || rest[colon + 1] == ' ');
    for (const auto& [ind, key] : stack) y.path.push_back(key);
    y.indent = indent;
    if (is_key) {
      y.key = text::Unquote(text::Trim(rest.substr(0, colon)));
      y.value = StripComment(rest.substr(colon + 1));
      stack.emplace_back(indent, y.key);
    } else if (y.item) {
      y.item_value = text::Unquote(StripComment(rest));
    }
    out.push_back(std::move(y));
  }
  return out;
}

std::vector<std::string> FlowItems(const std::string& value) {
  std::vector<std::string> items;
  if (value.size() < 2 || value.front() != '[' || value.back() != ']') return items;
  for (auto& item : text::SplitAny(value.substr(1, value.size() - 2), ",")) {
    items.push_back(text::Unquote(item));
  }
  return items;
}

struct Ethernet {
  std::string file, id;
  size_t line = 0, indent = 0;
  size_t child_indent = SIZE_MAX;
  std::string mac, match_name, set_name;
  const YamlLine* mac_line = nullptr;
  const YamlLine* match_name_line = nullptr;
  const YamlLine* addresses = nullptr;         // the "addresses:" line
  std::vector<const YamlLine*> address_items;  // its block items
  const YamlLine* gateway = nullptr;           // gateway4/gateway6 of the mapping's family
  const YamlLine* routes = nullptr;
  std::vector<const YamlLine*> route_vias;  // "via:" of default routes
  std::map<std::string, std::string> dhcp;  // dhcp4/dhcp6 -> value

  std::string Name() const {
    if (!set_name.empty()) return set_name;
    if (!match_name.empty()) return match_name;
    return mac_line == nullptr ? id : "";
  }
};

struct Netplan {
  std::string file;
  text::LineFile lf;
  std::vector<YamlLine> lines;
  std::vector<Ethernet> ethernets;
  // bonds/bridges interfaces and vlans links: (member name, line, what)
  std::vector<std::tuple<std::string, size_t, std::string>> stacked;
};

Netplan Read(const std::string& file, const std::string& content, int family) {
  Netplan np{file, text::LineFile::Split(content), {}, {}, {}};
  np.lines = ParseYaml(np.lf);
  std::map<std::string, size_t> by_id;
  for (const YamlLine& y : np.lines) {
    // The keys from the top to this line's own key (item markers left out).
    std::vector<std::string> keys;
    for (const auto& k : y.path) {
      if (k[0] != '-') keys.push_back(k);
    }
    if (!y.key.empty()) keys.push_back(y.key);
    if (keys.size() >= 4 && keys[0] == "network" && (keys[1] == "bonds" || keys[1] == "bridges") &&
        keys[3] == "interfaces") {
      const std::string what =
          std::string(keys[1] == "bonds" ? "bond " : "bridge ") + keys[2] + " is over ";
      if (y.key == "interfaces") {
        for (const auto& m : FlowItems(y.value)) np.stacked.emplace_back(m, y.index, what + m);
      } else if (y.item && !y.item_value.empty()) {
        np.stacked.emplace_back(y.item_value, y.index, what + y.item_value);
      }
    }
    if (keys.size() == 4 && keys[0] == "network" && keys[1] == "vlans" && y.key == "link") {
      np.stacked.emplace_back(y.value, y.index, "VLAN " + keys[2] + " is over " + y.value);
    }
    if (keys.size() < 3 || keys[0] != "network" || keys[1] != "ethernets") continue;
    if (keys.size() == 3 && !y.key.empty()) {
      by_id[y.key] = np.ethernets.size();
      Ethernet e;
      e.file = file;
      e.id = y.key;
      e.line = y.index;
      e.indent = y.indent;
      np.ethernets.push_back(e);
      continue;
    }
    auto it = by_id.find(keys[2]);
    if (it == by_id.end()) continue;
    Ethernet& e = np.ethernets[it->second];
    const std::vector<std::string> sub(keys.begin() + 3, keys.end());
    if (sub.size() == 1 && !y.key.empty()) e.child_indent = std::min(e.child_indent, y.indent);
    if (sub == std::vector<std::string>{"match", "macaddress"}) {
      e.mac = text::Lower(text::Unquote(y.value));
      e.mac_line = &y;
    } else if (sub == std::vector<std::string>{"match", "name"}) {
      e.match_name = text::Unquote(y.value);
      e.match_name_line = &y;
    } else if (sub == std::vector<std::string>{"set-name"}) {
      e.set_name = text::Unquote(y.value);
    } else if (sub == std::vector<std::string>{"addresses"}) {
      if (y.key == "addresses") {
        e.addresses = &y;
      } else if (y.item && !y.item_value.empty()) {
        e.address_items.push_back(&y);
      }
    } else if (sub.size() == 1 && (y.key == "dhcp4" || y.key == "dhcp6")) {
      e.dhcp[y.key] = text::Lower(y.value);
    } else if (sub.size() == 1 && y.key == (family == 6 ? "gateway6" : "gateway4")) {
      e.gateway = &y;
    } else if (sub == std::vector<std::string>{"routes"} && y.key == "routes") {
      e.routes = &y;
    } else if (sub == std::vector<std::string>{"routes", "via"} &&
               text::FamilyOf(y.value) == family) {
      // A default route: its item's "to" is default, 0.0.0.0/0 or ::/0.
      const std::string item = y.path.empty() ? "" : y.path.back();
      for (const YamlLine& other : np.lines) {
        if (other.key == "to" && !other.path.empty() && other.path.back() == item &&
            (other.value == "default" || other.value == "0.0.0.0/0" || other.value == "::/0")) {
          e.route_vias.push_back(&y);
        }
      }
    }
  }
  return np;
}

// `raw` ("  key: value  # comment") with its value replaced, quoted as the old one was.
std::string ReplaceValue(const std::string& raw, const std::string& key, const std::string& value) {
  const size_t colon = raw.find(':', raw.find(key));
  const std::string old = colon == std::string::npos ? "" : text::Trim(raw.substr(colon + 1));
  const char q = !old.empty() && (old[0] == '"' || old[0] == '\'') ? old[0] : 0;
  return text::IndentOf(raw) + (text::Trim(raw).rfind("- ", 0) == 0 ? "- " : "") + key + ": " +
         (q ? std::string(1, q) + value + q : value);
}

// A flow list value ("[a, 'b']") with the item `old` (unquoted) replaced by `address`, or
// `address` appended when `old` is empty; the other items stay as written.
std::string ReplaceFlowItem(const std::string& value, const std::string& old,
                            const std::string& address) {
  auto raw = text::SplitAny(value.substr(1, value.size() - 2), ",");
  bool replaced = false;
  for (auto& item : raw) {
    if (!replaced && !old.empty() && text::Unquote(item) == old) {
      const char q = item[0] == '"' || item[0] == '\'' ? item[0] : 0;
      item = q ? std::string(1, q) + address + q : address;
      replaced = true;
    }
  }
  if (!replaced) raw.push_back(address);
  return "[" + text::Join(raw, ", ") + "]";
}

std::string IndentSpaces(size_t n) { return std::string(n, ' '); }

}  // namespace

void ScanNetplan(const RootChanges& root, std::vector<IfaceConfig>* found,
                 std::vector<std::string>* errors) {
  for (const ConfigFile& f : ReadConfigFiles(root, kDir, IsYaml, errors)) {
    const std::string& file = f.file;
    Netplan np = Read(file, f.content, 4);
    for (const Ethernet& e : np.ethernets) {
      IfaceConfig c{"netplan", file, static_cast<int>(e.line + 1), e.Name(), e.mac, {}};
      if (e.addresses != nullptr) {
        for (const auto& a : FlowItems(e.addresses->value)) c.ips.push_back(text::IpOf(a));
      }
      for (const auto* a : e.address_items) c.ips.push_back(text::IpOf(a->item_value));
      found->push_back(std::move(c));
    }
  }
}

void AdaptNetplan(Context* ctx) {
  for (const auto& file : FilesIn(*ctx->changes, kDir, IsYaml)) {
    auto read = ctx->changes->Read(file);
    if (!read.ok()) continue;  // reported by the scan
    std::string content = *read;
    std::vector<std::string> what;
    // Per family: read the file once per mapping family (gateway keys differ); most files have
    // one mapping.
    for (size_t n = 0; n < ctx->nics->size(); ++n) {
      const NicMap& nic = (*ctx->nics)[n];
      const int family = text::FamilyOf(nic.address);
      Netplan np = Read(file, content, family);
      text::LineFile& lf = np.lf;
      for (const auto& [member, line, desc] : np.stacked) {
        if (ctx->ByName(member) == static_cast<int>(n)) {
          ctx->RefuseStacked(text::At(file, line), desc, static_cast<int>(n));
        }
      }
      for (Ethernet& e : np.ethernets) {
        const bool mine =
            (!e.mac.empty() && ctx->ByMac(e.mac) == static_cast<int>(n)) ||
            (e.mac.empty() && !e.Name().empty() && ctx->ByName(e.Name()) == static_cast<int>(n));
        if (!mine) continue;
        ctx->configured[n] = true;
        const std::string label = "ethernets." + e.id;
        if (e.mac_line != nullptr && e.mac != nic.target_mac) {
          lf.lines[e.mac_line->index] =
              ReplaceValue(lf.lines[e.mac_line->index], "macaddress", nic.target_mac);
          what.push_back(label + ": match macaddress " + e.mac + " -> " + nic.target_mac);
        }
        const std::string new_name = ctx->NewName(static_cast<int>(n));
        if (e.match_name_line != nullptr && e.match_name != new_name && e.set_name.empty()) {
          lf.lines[e.match_name_line->index] =
              ReplaceValue(lf.lines[e.match_name_line->index], "name", new_name);
          what.push_back(label + ": match name " + e.match_name + " -> " + new_name);
        } else if (e.mac_line == nullptr && e.match_name_line == nullptr && e.id != new_name) {
          lf.lines[e.line] = text::IndentOf(lf.lines[e.line]) + new_name + ":";
          what.push_back(label + " renamed " + new_name);
        }
        const std::string dhcp = e.dhcp[family == 6 ? "dhcp6" : "dhcp4"];
        const bool has_address =
            (e.addresses != nullptr && !FlowItems(e.addresses->value).empty()) ||
            !e.address_items.empty();
        if (!has_address && (dhcp == "true" || dhcp == "yes")) {
          ctx->notes->push_back("network: " + text::At(file, e.line) + ": " + label + " " +
                                (family == 6 ? "dhcp6" : "dhcp4") + "; the plan's address " +
                                nic.address + " is left to the DHCP server");
          continue;
        }
        const size_t child = e.child_indent == SIZE_MAX ? e.indent + 2 : e.child_indent;
        size_t after = e.line;  // where a gateway goes when there is none
        std::string old;
        if (e.addresses != nullptr && !FlowItems(e.addresses->value).empty()) {
          ReplaceFirstOfFamily(FlowItems(e.addresses->value), nic.address, &old);
          if (old != nic.address) {
            lf.lines[e.addresses->index] =
                text::IndentOf(lf.lines[e.addresses->index]) +
                "addresses: " + ReplaceFlowItem(e.addresses->value, old, nic.address);
          }
          after = e.addresses->index;
        } else if (!e.address_items.empty()) {
          const YamlLine* replaced = nullptr;
          for (const auto* item : e.address_items) {
            if (text::FamilyOf(item->item_value) == family) {
              replaced = item;
              break;
            }
          }
          if (replaced != nullptr) {
            old = replaced->item_value;
            lf.lines[replaced->index] =
                text::IndentOf(lf.lines[replaced->index]) + "- " + nic.address;
          } else {
            lf.InsertAfter(
                e.address_items.back()->index,
                text::IndentOf(lf.lines[e.address_items.back()->index]) + "- " + nic.address);
          }
          after = e.address_items.back()->index;
        } else {
          lf.InsertAfter(e.line, IndentSpaces(child) + "addresses: [" + nic.address + "]");
        }
        if (old != nic.address) {
          what.push_back(label + ": address " + (old.empty() ? "" : old + " -> ") + nic.address +
                         (old.empty() ? " added" : ""));
        }
        if (nic.gateway.empty()) continue;
        if (e.gateway != nullptr) {
          if (e.gateway->value != nic.gateway) {
            lf.lines[e.gateway->index] =
                ReplaceValue(lf.lines[e.gateway->index], e.gateway->key, nic.gateway);
            what.push_back(label + ": " + e.gateway->key + " " + e.gateway->value + " -> " +
                           nic.gateway);
          }
        } else if (!e.route_vias.empty()) {
          const YamlLine* via = e.route_vias.front();
          if (via->value != nic.gateway) {
            lf.lines[via->index] = ReplaceValue(lf.lines[via->index], "via", nic.gateway);
            what.push_back(label + ": default route via " + via->value + " -> " + nic.gateway);
          }
        } else if (e.routes != nullptr) {
          lf.InsertAfter(e.routes->index, IndentSpaces(e.routes->indent + 2) + "- to: default\n" +
                                              IndentSpaces(e.routes->indent + 4) +
                                              "via: " + nic.gateway);
          what.push_back(label + ": default route via " + nic.gateway + " added");
        } else {
          lf.InsertAfter(after,
                         IndentSpaces(child) + "routes: [{to: default, via: " + nic.gateway + "}]");
          what.push_back(label + ": default route via " + nic.gateway + " added");
        }
      }
      content = lf.Join();
    }
    if (!what.empty()) ctx->changes->Write(file, content, "netplan: " + text::Join(what, ", "));
  }
}

}  // namespace cdp::pe::net
