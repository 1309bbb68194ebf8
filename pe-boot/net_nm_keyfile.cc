// NetworkManager keyfiles: /etc/NetworkManager/system-connections/*.nmconnection
// (nm-settings-keyfile(5)).
#include <cstdint>

#include "net_formats.h"

namespace cdp::pe::net {

namespace {

const char kDir[] = "/etc/NetworkManager/system-connections";

bool IsKeyfile(const std::string& name) { return text::EndsWith(name, ".nmconnection"); }
bool IsEthernet(const std::string& section) {
  return section == "ethernet" || section == "802-3-ethernet";
}

struct Keyfile : ConfigFile {
  const text::IniEntry* Find(const std::string& section, const std::string& key) const {
    for (const auto& e : entries) {
      if ((e.section == section || (IsEthernet(section) && IsEthernet(e.section))) &&
          e.key == key) {
        return &e;
      }
    }
    return nullptr;
  }
  std::string Value(const std::string& section, const std::string& key) const {
    const auto* e = Find(section, key);
    return e == nullptr ? "" : e->value;
  }
};

std::vector<Keyfile> ReadAll(const RootChanges& root, std::vector<std::string>* errors) {
  std::vector<Keyfile> out;
  for (auto& f : ReadConfigFiles(root, kDir, IsKeyfile, errors))
    out.push_back(Keyfile{std::move(f)});
  return out;
}

// The address keys of an [ipv4]/[ipv6] section: address1=, address=, addresses1=...
bool IsAddressKey(const std::string& key) { return text::StartsWith(key, "address"); }

}  // namespace

void ScanNmKeyfiles(const RootChanges& root, std::vector<IfaceConfig>* found,
                    std::vector<std::string>* errors) {
  for (const Keyfile& k : ReadAll(root, errors)) {
    const std::string type = k.Value("connection", "type");
    if (type != "ethernet" && type != "802-3-ethernet") continue;
    IfaceConfig c{"NetworkManager",
                  k.file,
                  0,
                  k.Value("connection", "interface-name"),
                  text::Lower(k.Value("ethernet", "mac-address")),
                  {}};
    const auto* at = k.Find("ethernet", "mac-address");
    if (at == nullptr) at = k.Find("connection", "interface-name");
    if (at == nullptr) continue;
    c.line = static_cast<int>(at->line + 1);
    for (const auto& e : k.entries) {
      if ((e.section == "ipv4" || e.section == "ipv6") && IsAddressKey(e.key)) {
        c.ips.push_back(text::IpOf(text::SplitAny(e.value, ",;").front()));
      }
    }
    found->push_back(std::move(c));
  }
}

void AdaptNmKeyfiles(Context* ctx) {
  auto keyfiles = ReadAll(*ctx->changes, nullptr);
  for (Keyfile& k : keyfiles) {
    const std::string type = k.Value("connection", "type");
    if (type == "vlan") {
      const auto* parent = k.Find("vlan", "parent");
      if (parent != nullptr && ctx->ByName(parent->value) >= 0) {
        ctx->RefuseStacked(text::At(k.file, parent->line),
                           "VLAN " + k.Value("connection", "id") + " is over " + parent->value,
                           ctx->ByName(parent->value));
      }
      continue;
    }
    if (type != "ethernet" && type != "802-3-ethernet") continue;
    const auto* mac = k.Find("ethernet", "mac-address");
    const auto* name = k.Find("connection", "interface-name");
    int n = mac != nullptr ? ctx->ByMac(mac->value) : -1;
    if (n < 0 && name != nullptr) n = ctx->ByName(name->value);
    if (n < 0) continue;
    const NicMap& nic = (*ctx->nics)[static_cast<size_t>(n)];
    ctx->configured[static_cast<size_t>(n)] = true;
    for (const char* key : {"master", "controller"}) {
      const auto* master = k.Find("connection", key);
      if (master != nullptr) {
        ctx->RefuseStacked(text::At(k.file, master->line),
                           k.Value("connection", "id") + " is a port of " + master->value + " (" +
                               k.Value("connection", "slave-type") +
                               k.Value("connection", "port-type") + ")",
                           n);
      }
    }
    std::vector<std::string> what;
    auto set = [&k](const text::IniEntry& e, const std::string& value) {
      k.lf.lines[e.line] = e.key + "=" + value;
    };
    if (mac != nullptr && text::Lower(mac->value) != nic.target_mac) {
      set(*mac, nic.target_mac);
      what.push_back("mac-address " + mac->value + " -> " + nic.target_mac);
    }
    if (name != nullptr && name->value != ctx->NewName(n)) {
      set(*name, ctx->NewName(n));
      what.push_back("interface-name " + name->value + " -> " + ctx->NewName(n));
    }
    const std::string section = text::FamilyOf(nic.address) == 6 ? "ipv6" : "ipv4";
    const std::string method = k.Value(section, "method");
    const text::IniEntry* address = nullptr;
    for (const auto& e : k.entries) {
      if (e.section == section && IsAddressKey(e.key) && address == nullptr) address = &e;
    }
    if (method == "auto" || method == "dhcp") {
      ctx->notes->push_back("network: " + k.file + ": [" + section + "] method=" + method +
                            "; the plan's address " + nic.address + " is left to the DHCP server");
    } else if (address != nullptr || method == "manual") {
      // address1=ADDR/PREFIX[,GATEWAY]
      auto parts =
          address == nullptr ? std::vector<std::string>{} : text::SplitAny(address->value, ",");
      const std::string old = parts.empty() ? "" : parts[0];
      std::string gateway_here = parts.size() > 1 ? parts[1] : "";
      const auto* gateway = k.Find(section, "gateway");
      std::string value = nic.address;
      if (!gateway_here.empty()) value += "," + (nic.gateway.empty() ? gateway_here : nic.gateway);
      if (address != nullptr && address->value != value) {
        set(*address, value);
        what.push_back("[" + section + "] " + address->key + " " + address->value + " -> " + value);
      } else if (address == nullptr) {
        const auto* method_entry = k.Find(section, "method");
        k.lf.InsertAfter(method_entry->line, "address1=" + nic.address);
        what.push_back("[" + section + "] address1 " + nic.address + " added");
      }
      if (!nic.gateway.empty() && gateway_here.empty()) {
        if (gateway != nullptr && gateway->value != nic.gateway) {
          set(*gateway, nic.gateway);
          what.push_back("[" + section + "] gateway " + gateway->value + " -> " + nic.gateway);
        } else if (gateway == nullptr) {
          k.lf.InsertAfter(address != nullptr ? address->line : k.Find(section, "method")->line,
                           "gateway=" + nic.gateway);
          what.push_back("[" + section + "] gateway " + nic.gateway + " added");
        }
      }
    }
    if (!what.empty()) {
      ctx->changes->Write(
          k.file, k.lf.Join(),
          "NetworkManager: " + k.Value("connection", "id") + ": " + text::Join(what, ", "));
    }
  }
}

}  // namespace cdp::pe::net
