// RHEL ifcfg: /etc/sysconfig/network-scripts/ifcfg-NAME (shell assignments, as initscripts and
// NetworkManager's ifcfg-rh plugin read them).
#include "net_formats.h"

namespace cdp::pe::net {

namespace {

const char kDir[] = "/etc/sysconfig/network-scripts";

bool IsIfcfg(const std::string& name) {
  return text::StartsWith(name, "ifcfg-") && name != "ifcfg-lo";
}

struct Ifcfg : ConfigFile {
  const text::IniEntry* Find(const std::string& key) const {
    for (const auto& e : entries) {
      if (e.key == key) return &e;
    }
    return nullptr;
  }
  std::string Value(const std::string& key) const {
    const auto* e = Find(key);
    return e == nullptr ? "" : text::Unquote(e->value);
  }
  // DEVICE=, else the file's name after "ifcfg-".
  std::string Device() const {
    const std::string d = Value("DEVICE");
    return d.empty() ? file.substr(file.rfind("/ifcfg-") + 7) : d;
  }
  // KEY=value, quoted as the line was.
  void Set(const text::IniEntry& e, const std::string& value) {
    const char q = !e.value.empty() && (e.value[0] == '"' || e.value[0] == '\'') ? e.value[0] : 0;
    lf.lines[e.line] = text::IndentOf(lf.lines[e.line]) + e.key + "=" +
                       (q ? std::string(1, q) + value + q : value);
  }
};

std::vector<Ifcfg> ReadAll(const RootChanges& root, std::vector<std::string>* errors) {
  std::vector<Ifcfg> out;
  for (auto& f : ReadConfigFiles(root, kDir, IsIfcfg, errors)) out.push_back(Ifcfg{std::move(f)});
  return out;
}

}  // namespace

void ScanIfcfg(const RootChanges& root, std::vector<IfaceConfig>* found,
               std::vector<std::string>* errors) {
  for (const Ifcfg& f : ReadAll(root, errors)) {
    const auto* at = f.Find("HWADDR");
    if (at == nullptr) at = f.Find("DEVICE");
    IfaceConfig c{"ifcfg",
                  f.file,
                  at == nullptr ? 1 : static_cast<int>(at->line + 1),
                  f.Device(),
                  text::Lower(f.Value("HWADDR")),
                  {}};
    const std::string type = text::Lower(f.Value("TYPE"));
    c.virtual_iface = type == "bond" || type == "bridge" || type == "vlan" ||
                      text::Lower(f.Value("VLAN")) == "yes" ||
                      text::Lower(f.Value("BONDING_MASTER")) == "yes";
    for (const char* key : {"IPADDR", "IPADDR0", "IPV6ADDR"}) {
      if (!f.Value(key).empty()) c.ips.push_back(text::IpOf(f.Value(key)));
    }
    found->push_back(std::move(c));
  }
}

void AdaptIfcfg(Context* ctx) {
  auto files = ReadAll(*ctx->changes, nullptr);
  for (Ifcfg& f : files) {
    // A VLAN over a mapped NIC: VLAN=yes with PHYSDEV=NIC or DEVICE=NIC.VID.
    if (text::Lower(f.Value("VLAN")) == "yes" || text::Lower(f.Value("TYPE")) == "vlan") {
      std::string parent = f.Value("PHYSDEV");
      const auto* at = f.Find("PHYSDEV");
      if (parent.empty()) {
        parent = f.Device().substr(0, f.Device().find('.'));
        at = f.Find("DEVICE");
      }
      if (ctx->ByName(parent) >= 0) {
        ctx->RefuseStacked(text::At(f.file, at == nullptr ? 0 : at->line),
                           "VLAN " + f.Device() + " is over " + parent, ctx->ByName(parent));
      }
      continue;
    }
    const std::string hwaddr = text::Lower(f.Value("HWADDR"));
    int n = hwaddr.empty() ? -1 : ctx->ByMac(hwaddr);
    if (n < 0) n = ctx->ByName(f.Device());
    if (n < 0) continue;
    const NicMap& nic = (*ctx->nics)[static_cast<size_t>(n)];
    ctx->configured[static_cast<size_t>(n)] = true;
    for (const char* key : {"MASTER", "BRIDGE", "TEAM_MASTER"}) {
      const auto* e = f.Find(key);
      if (e == nullptr) continue;
      ctx->RefuseStacked(text::At(f.file, e->line),
                         f.Device() + " is in " +
                             (std::string(key) == "BRIDGE" ? "bridge " : "bond ") +
                             text::Unquote(e->value) + " (" + key + "=" + e->value + ")",
                         n);
    }
    std::vector<std::string> what;
    if (const auto* e = f.Find("HWADDR"); e != nullptr && hwaddr != nic.target_mac) {
      f.Set(*e, nic.target_mac);
      what.push_back("HWADDR " + hwaddr + " -> " + nic.target_mac);
    }
    const std::string new_name = ctx->NewName(n);
    if (const auto* e = f.Find("DEVICE"); e != nullptr && f.Device() != new_name) {
      what.push_back("DEVICE " + f.Device() + " -> " + new_name);
      f.Set(*e, new_name);
    }
    const int family = text::FamilyOf(nic.address);
    const std::string proto = text::Lower(f.Value("BOOTPROTO"));
    if (family == 4 && (proto == "dhcp" || proto == "bootp")) {
      ctx->notes->push_back("network: " + f.file + ": BOOTPROTO=" + proto +
                            "; the plan's address " + nic.address + " is left to the DHCP server");
    } else if (family == 4) {
      const std::string ip = text::IpOf(nic.address), prefix = text::PrefixOf(nic.address);
      const auto* address = f.Find("IPADDR") != nullptr ? f.Find("IPADDR") : f.Find("IPADDR0");
      const std::string suffix =
          address != nullptr && address->key == "IPADDR0" ? std::string("0") : "";
      const auto* prefix_e = f.Find("PREFIX" + suffix);
      const auto* netmask_e = f.Find("NETMASK" + suffix);
      std::string old = address == nullptr ? "" : text::Unquote(address->value);
      if (prefix_e != nullptr) old += "/" + text::Unquote(prefix_e->value);
      if (netmask_e != nullptr) old += "/" + text::Unquote(netmask_e->value);
      const size_t last = f.lf.lines.empty() ? 0 : f.lf.lines.size() - 1;
      bool changed = false;
      auto set = [&](const text::IniEntry* e, const std::string& value) {
        if (text::Unquote(e->value) == value) return;
        f.Set(*e, value);
        changed = true;
      };
      if (address != nullptr) {
        set(address, ip);
      } else {
        f.lf.InsertAfter(last, "IPADDR=" + ip);
        changed = true;
      }
      if (prefix_e != nullptr) {
        set(prefix_e, prefix);
      } else if (netmask_e != nullptr) {
        set(netmask_e, text::Netmask4(std::stoi(prefix)));
      } else {
        f.lf.InsertAfter(address == nullptr ? last : address->line, "PREFIX=" + prefix);
        changed = true;
      }
      if (changed) {
        what.push_back("address " + (old.empty() ? "" : old + " -> ") + nic.address +
                       (old.empty() ? " added" : ""));
      }
      if (!nic.gateway.empty()) {
        const auto* gateway = f.Find("GATEWAY") != nullptr ? f.Find("GATEWAY") : f.Find("GATEWAY0");
        if (gateway == nullptr) {
          f.lf.InsertAfter(last, "GATEWAY=" + nic.gateway);
          what.push_back("GATEWAY " + nic.gateway + " added");
        } else if (text::Unquote(gateway->value) != nic.gateway) {
          what.push_back("GATEWAY " + text::Unquote(gateway->value) + " -> " + nic.gateway);
          f.Set(*gateway, nic.gateway);
        }
      }
    } else if (family == 6) {
      const auto* address = f.Find("IPV6ADDR");
      const std::string old = address == nullptr ? "" : text::Unquote(address->value);
      if (old != nic.address) {
        if (address != nullptr) {
          f.Set(*address, nic.address);
        } else {
          f.lf.InsertAfter(f.lf.lines.size() - 1, "IPV6ADDR=" + nic.address);
        }
        what.push_back("IPV6ADDR " + (old.empty() ? "" : old + " -> ") + nic.address);
      }
      if (!nic.gateway.empty()) {
        const auto* gateway = f.Find("IPV6_DEFAULTGW");
        if (gateway == nullptr) {
          f.lf.InsertAfter(f.lf.lines.size() - 1, "IPV6_DEFAULTGW=" + nic.gateway);
        } else if (text::Unquote(gateway->value) != nic.gateway) {
          f.Set(*gateway, nic.gateway);
        }
      }
    }
    if (!what.empty()) {
      ctx->changes->Write(f.file, f.lf.Join(),
                          "ifcfg: " + f.Device() + ": " + text::Join(what, ", "));
    }
  }
}

}  // namespace cdp::pe::net
