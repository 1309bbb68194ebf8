// systemd-networkd: /etc/systemd/network/*.network (systemd.network(5)) and *.link
// (systemd.link(5)).
#include <algorithm>
#include <cstdint>
#include <map>

#include "net_formats.h"

namespace cdp::pe::net {

namespace {

const char kDir[] = "/etc/systemd/network";

bool IsNetwork(const std::string& name) { return text::EndsWith(name, ".network"); }
bool IsLink(const std::string& name) {
  return text::EndsWith(name, ".link") && !text::StartsWith(name, "10-cdp-");
}
bool IsNetdev(const std::string& name) { return text::EndsWith(name, ".netdev"); }
bool IsGlob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// The value of `e` with every word equal (case-insensitively) to `from` replaced by `to`.
std::string ReplaceListItem(const std::string& value, const std::string& from,
                            const std::string& to) {
  auto items = text::SplitAny(value, " ");
  for (auto& item : items) {
    if (text::Lower(item) == from) item = to;
  }
  return text::Join(items, " ");
}

void SetValue(text::LineFile* lf, const text::IniEntry& e, const std::string& value) {
  lf->lines[e.line] = text::IndentOf(lf->lines[e.line]) + e.key + "=" + value;
}

bool DefaultRoute(const std::vector<text::IniEntry>& entries, size_t section_line) {
  for (const auto& e : entries) {
    if (e.section_line == section_line && e.key == "Destination" && e.value != "0.0.0.0/0" &&
        e.value != "::/0") {
      return false;
    }
  }
  return true;
}

// Which mapping a .network or .link file's [Match] names, and how.
int MatchedNic(const Context& ctx, const std::vector<text::IniEntry>& entries, bool* by_mac) {
  for (const auto& e : entries) {
    if (e.section != "Match") continue;
    if (e.key == "MACAddress" || e.key == "PermanentMACAddress") {
      for (const auto& mac : text::SplitAny(e.value, " ")) {
        if (ctx.ByMac(mac) >= 0) {
          *by_mac = true;
          return ctx.ByMac(mac);
        }
      }
    }
  }
  for (const auto& e : entries) {
    if (e.section == "Match" && (e.key == "Name" || e.key == "OriginalName")) {
      for (const auto& name : text::SplitAny(e.value, " ")) {
        if (ctx.ByName(name) >= 0) return ctx.ByName(name);
      }
    }
  }
  return -1;
}

}  // namespace

void ScanNetworkd(const RootChanges& root, std::vector<IfaceConfig>* found,
                  std::vector<std::string>* errors) {
  // The names of bonds, bridges and VLANs: their .network files configure no NIC.
  std::vector<std::string> netdevs;
  for (const ConfigFile& f : ReadConfigFiles(root, kDir, IsNetdev, nullptr)) {
    for (const auto& e : f.entries) {
      if (e.section == "NetDev" && e.key == "Name") netdevs.push_back(e.value);
    }
  }
  for (auto keep : {IsNetwork, IsLink}) {
    for (const ConfigFile& f : ReadConfigFiles(root, kDir, keep, errors)) {
      const std::string& file = f.file;
      const auto& entries = f.entries;
      IfaceConfig c{"systemd-networkd", file, 0, "", "", {}};
      std::vector<std::string> macs;
      for (const auto& e : entries) {
        if (e.section == "Match" && e.key == "Name" && c.name.empty() && !IsGlob(e.value)) {
          c.name = text::SplitAny(e.value, " ").front();
          c.line = static_cast<int>(e.line + 1);
        } else if (e.section == "Link" && e.key == "Name") {
          c.name = e.value;
        } else if (e.section == "Match" && e.key == "MACAddress") {
          macs = text::SplitAny(e.value, " ");
          c.line = static_cast<int>(e.line + 1);
        } else if ((e.section == "Network" || e.section == "Address") && e.key == "Address") {
          c.ips.push_back(text::IpOf(e.value));
        }
      }
      if (keep == IsLink && macs.empty()) continue;  // a naming policy, no interface
      c.virtual_iface = std::find(netdevs.begin(), netdevs.end(), c.name) != netdevs.end();
      if (macs.empty()) {
        if (!c.name.empty()) found->push_back(c);
        continue;
      }
      for (const auto& mac : macs) {
        c.mac = text::Lower(mac);
        found->push_back(c);
      }
    }
  }
}

void AdaptNetworkd(Context* ctx) {
  for (auto keep : {IsNetwork, IsLink}) {
    for (const auto& file : FilesIn(*ctx->changes, kDir, keep)) {
      auto content = ctx->changes->Read(file);
      if (!content.ok()) continue;  // reported by the scan
      text::LineFile lf = text::LineFile::Split(*content);
      const auto entries = text::ParseIni(lf);
      bool by_mac = false;
      const int n = MatchedNic(*ctx, entries, &by_mac);
      if (n < 0) continue;
      const NicMap& nic = (*ctx->nics)[static_cast<size_t>(n)];
      std::vector<std::string> what;
      const std::string new_name = ctx->NewName(n);
      for (const auto& e : entries) {
        if (e.section != "Match") continue;
        if ((e.key == "MACAddress" || e.key == "PermanentMACAddress") && !nic.source_mac.empty() &&
            text::Lower(e.value).find(nic.source_mac) != std::string::npos) {
          SetValue(&lf, e, ReplaceListItem(e.value, nic.source_mac, nic.target_mac));
          what.push_back("[Match] " + e.key + " " + nic.source_mac + " -> " + nic.target_mac);
        } else if (e.key == "Name" && new_name != nic.source_name &&
                   text::Lower(" " + e.value + " ").find(" " + nic.source_name + " ") !=
                       std::string::npos) {
          SetValue(&lf, e, ReplaceListItem(e.value, nic.source_name, new_name));
          what.push_back("[Match] Name " + nic.source_name + " -> " + new_name);
        }
      }
      if (keep == IsNetwork) {
        ctx->configured[static_cast<size_t>(n)] = true;
        const int family = text::FamilyOf(nic.address);
        const text::IniEntry* address = nullptr;
        const text::IniEntry* gateway = nullptr;
        size_t network_section = SIZE_MAX;
        bool dhcp = false;
        for (const auto& e : entries) {
          if (e.section == "Network") network_section = e.section_line;
          if (e.section == "Network" && (e.key == "Bond" || e.key == "Bridge" || e.key == "VLAN")) {
            ctx->RefuseStacked(text::At(file, e.line),
                               std::string(e.key == "VLAN"   ? "VLAN "
                                           : e.key == "Bond" ? "bond "
                                                             : "bridge ") +
                                   e.value + " is over " + nic.source_name + " (" + e.key + "=" +
                                   e.value + ")",
                               n);
          }
          if (e.section == "Network" && e.key == "DHCP") {
            const std::string v = text::Lower(e.value);
            dhcp = v == "yes" || v == "true" || v == (family == 4 ? "ipv4" : "ipv6");
          }
          if ((e.section == "Network" || e.section == "Address") && e.key == "Address" &&
              address == nullptr && text::FamilyOf(e.value) == family) {
            address = &e;
          }
          if (e.key == "Gateway" && gateway == nullptr && text::FamilyOf(e.value) == family &&
              (e.section == "Network" ||
               (e.section == "Route" && DefaultRoute(entries, e.section_line)))) {
            gateway = &e;
          }
        }
        if (address == nullptr && dhcp) {
          ctx->notes->push_back("network: " + file + ": DHCP; the plan's address " + nic.address +
                                " is left to the DHCP server");
        } else {
          size_t after = SIZE_MAX;
          if (address != nullptr) {
            if (address->value != nic.address) {
              SetValue(&lf, *address, nic.address);
              what.push_back("Address " + address->value + " -> " + nic.address);
            }
            if (address->section == "Network") after = address->line;
          } else if (network_section != SIZE_MAX) {
            after = text::SectionEnd(lf, network_section);
            lf.InsertAfter(after, "Address=" + nic.address);
            what.push_back("Address " + nic.address + " added");
          } else {
            lf.InsertAfter(lf.lines.size() - 1, "\n[Network]\nAddress=" + nic.address);
            what.push_back("[Network] Address " + nic.address + " added");
          }
          if (!nic.gateway.empty() && gateway != nullptr && gateway->value != nic.gateway) {
            SetValue(&lf, *gateway, nic.gateway);
            what.push_back("Gateway " + gateway->value + " -> " + nic.gateway);
          } else if (!nic.gateway.empty() && gateway == nullptr) {
            if (after == SIZE_MAX) {
              after = network_section == SIZE_MAX ? lf.lines.size() - 1
                                                  : text::SectionEnd(lf, network_section);
            }
            lf.InsertAfter(after, "Gateway=" + nic.gateway);
            what.push_back("Gateway " + nic.gateway + " added");
          }
        }
      }
      if (!what.empty()) {
        ctx->changes->Write(
            file, lf.Join(),
            "systemd-networkd: " + (nic.source_name.empty() ? nic.source_mac : nic.source_name) +
                ": " + text::Join(what, ", "));
      }
    }
  }
}

}  // namespace cdp::pe::net
