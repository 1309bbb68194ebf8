#include "cdp/pe/net_adaptation.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "cdp/core/atomic_file.h"
#include "cdp/pe/root_path.h"
#include "net_formats.h"

namespace cdp::pe {

namespace net {

int Context::ByMac(const std::string& mac) const {
  const std::string m = text::Lower(mac);
  for (size_t i = 0; i < nics->size(); ++i) {
    const NicMap& n = (*nics)[i];
    if (!m.empty() && (m == n.source_mac || m == n.target_mac)) return static_cast<int>(i);
  }
  return -1;
}

int Context::ByName(const std::string& name) const {
  for (size_t i = 0; i < nics->size(); ++i) {
    if (!name.empty() && name == (*nics)[i].source_name) return static_cast<int>(i);
  }
  return -1;
}

std::string Context::NewName(int i) const {
  const NicMap& n = (*nics)[static_cast<size_t>(i)];
  return udevd ? n.source_name : n.target_name;
}

std::string Context::Which(int i) const {
  const NicMap& n = (*nics)[static_cast<size_t>(i)];
  return "NIC mapping " + std::to_string(i + 1) + " (source MAC " +
         (n.source_mac.empty() ? std::string("not given") : n.source_mac) + ")";
}

void Context::RefuseStacked(const std::string& at, const std::string& what, int i) const {
  errors->push_back(at + ": " + what + ", the NIC of " + Which(i) +
                    "; a bond, bridge or VLAN over a mapped NIC cannot be adapted: drop the "
                    "mapping from the plan and adapt the migrated OS's network by hand after "
                    "the cutover");
}

std::vector<std::string> FilesIn(const RootChanges& root, const std::string& dir,
                                 bool (*keep)(const std::string& name)) {
  std::vector<std::string> out;
  auto host = ResolveInRoot(root.root(), dir);
  if (!host.ok()) return out;
  for (const auto& name : text::ListDir(*host)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(*host + "/" + name, ec)) continue;
    if (keep(name) && !IsBackupName(name)) out.push_back(dir + "/" + name);
  }
  return out;
}

std::vector<ConfigFile> ReadConfigFiles(const RootChanges& root, const std::string& dir,
                                        bool (*keep)(const std::string& name),
                                        std::vector<std::string>* errors) {
  std::vector<ConfigFile> out;
  for (const auto& file : FilesIn(root, dir, keep)) {
    auto content = root.Read(file);
    if (!content.ok()) {
      if (errors != nullptr) {
        errors->push_back("cannot read the migrated OS's " + file + ": " +
                          content.status().message());
      }
      continue;
    }
    ConfigFile f{file, *content, text::LineFile::Split(*content), {}};
    f.entries = text::ParseIni(f.lf);
    out.push_back(std::move(f));
  }
  return out;
}

bool IsBackupName(const std::string& name) {
  for (const char* s :
       {"~", ".bak", ".orig", ".rpmnew", ".rpmsave", ".old", ".swp", kPreCutoverSuffix}) {
    if (text::EndsWith(name, s)) return true;
  }
  return name.find(".dpkg-") != std::string::npos;
}

std::vector<std::string> ReplaceFirstOfFamily(std::vector<std::string> addresses,
                                              const std::string& address, std::string* old) {
  old->clear();
  const int family = text::FamilyOf(address);
  for (auto& a : addresses) {
    if (text::FamilyOf(a) == family) {
      *old = a;
      a = address;
      return addresses;
    }
  }
  addresses.push_back(address);
  return addresses;
}

}  // namespace net

namespace {

const char kFormats[] = "ifupdown, systemd-networkd, NetworkManager keyfiles, netplan, RHEL ifcfg";

// Up to 3 "FILE:LINE" of /etc that mention `ip` as a word: where the migrated OS configures it
// in a format the takeover does not know.
std::vector<std::string> MentionsOf(const RootChanges& root, const std::string& ip) {
  std::vector<std::string> out;
  auto etc = ResolveInRoot(root.root(), "/etc");
  if (!etc.ok() || ip.empty()) return out;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::recursive_directory_iterator it(*etc, fs::directory_options::skip_permission_denied, ec), end;
  for (; !ec && it != end && out.size() < 3; it.increment(ec)) {
    if (it.depth() > 5) it.disable_recursion_pending();
    const std::string name = it->path().filename().string();
    if (!it->is_regular_file(ec) || it->is_symlink(ec) || name == "hosts" ||
        net::IsBackupName(name) || it->file_size(ec) > 65536) {
      continue;
    }
    auto content = ReadWholeFile(it->path().string());
    if (!content.ok()) continue;
    const auto file = text::LineFile::Split(*content);
    for (size_t i = 0; i < file.lines.size() && out.size() < 3; ++i) {
      const std::string& l = file.lines[i];
      for (size_t at = l.find(ip); at != std::string::npos; at = l.find(ip, at + 1)) {
        auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.'; };
        const bool left = at == 0 || !word(l[at - 1]);
        const bool right = at + ip.size() >= l.size() || !word(l[at + ip.size()]);
        if (left && right) {
          out.push_back(text::At("/etc/" + it->path().lexically_relative(*etc).string(), i));
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace

bool RunsSystemdUdevd(const RootChanges& root) {
  for (const char* p : {"/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd"}) {
    auto host = ResolveInRoot(root.root(), p);
    struct stat st;
    if (host.ok() && ::stat(host->c_str(), &st) == 0 && S_ISREG(st.st_mode)) return true;
  }
  return false;
}

std::vector<IfaceConfig> ScanNetworkConfig(const RootChanges& root,
                                           std::vector<std::string>* errors) {
  std::vector<IfaceConfig> found;
  net::ScanIfupdown(root, &found, errors);
  net::ScanNetworkd(root, &found, errors);
  net::ScanNmKeyfiles(root, &found, errors);
  net::ScanNetplan(root, &found, errors);
  net::ScanIfcfg(root, &found, errors);
  return found;
}

void ResolveSourceNames(const std::vector<IfaceConfig>& found, std::vector<NicMap>* nics,
                        std::vector<std::string>* errors) {
  std::set<std::string> by_name;
  for (const auto& f : found) {
    if (!f.name.empty() && f.name != "lo" && !f.virtual_iface) by_name.insert(f.name);
  }
  for (size_t i = 0; i < nics->size(); ++i) {
    NicMap& n = (*nics)[i];
    if (!n.source_name.empty()) continue;
    bool mac_matched = false;
    for (const auto& f : found) {
      if (f.mac.empty() || (f.mac != n.source_mac && f.mac != n.target_mac)) continue;
      mac_matched = true;
      if (!f.name.empty() && n.source_name.empty()) n.source_name = f.name;
    }
    if (!n.source_name.empty()) continue;
    std::set<std::string> with_address;
    const std::string ip = text::IpOf(n.address);
    for (const auto& f : found) {
      if (f.mac.empty() && !f.name.empty() && !f.virtual_iface &&
          std::find(f.ips.begin(), f.ips.end(), ip) != f.ips.end()) {
        with_address.insert(f.name);
      }
    }
    if (with_address.size() == 1) {
      n.source_name = *with_address.begin();
    } else if (nics->size() == 1 && by_name.size() == 1 && with_address.empty()) {
      n.source_name = *by_name.begin();
    } else if (!mac_matched && !by_name.empty()) {
      std::vector<std::string> where;
      for (const auto& f : found) {
        if (f.mac.empty() && !f.name.empty() && f.name != "lo" && !f.virtual_iface) {
          where.push_back(f.name + " at " + f.file + ":" + std::to_string(f.line));
        }
      }
      errors->push_back("NIC mapping " + std::to_string(i + 1) + " (source MAC " +
                        (n.source_mac.empty() ? std::string("not given") : n.source_mac) +
                        ", address " + n.address +
                        "): cannot tell which interface of the migrated OS it is (configured "
                        "by name: " +
                        text::Join(where, ", ") +
                        "); give the plan's network mapping the source_name of the interface");
    }
  }
}

void AdaptNetwork(const std::vector<NicMap>& nics, bool udevd, RootChanges* changes,
                  std::vector<std::string>* errors, std::vector<std::string>* notes) {
  net::Context ctx;
  ctx.nics = &nics;
  ctx.udevd = udevd;
  ctx.changes = changes;
  ctx.errors = errors;
  ctx.notes = notes;
  ctx.configured.assign(nics.size(), false);
  net::AdaptIfupdown(&ctx);
  net::AdaptNetworkd(&ctx);
  net::AdaptNmKeyfiles(&ctx);
  net::AdaptNetplan(&ctx);
  net::AdaptIfcfg(&ctx);
  for (size_t i = 0; i < nics.size(); ++i) {
    const NicMap& n = nics[i];
    if (!ctx.configured[i]) {
      const auto mentions = MentionsOf(*changes, text::IpOf(n.address));
      errors->push_back(
          ctx.Which(static_cast<int>(i)) + ", address " + n.address +
          ": no network configuration of the migrated OS in a format the takeover adapts (" +
          kFormats + ") configures this NIC; " +
          (mentions.empty() ? "no file under /etc mentions " + text::IpOf(n.address)
                            : text::Join(mentions, ", ") + " mention" +
                                  (mentions.size() == 1 ? "s " : " ") + text::IpOf(n.address) +
                                  " (a format the takeover cannot adapt, or an interface it "
                                  "cannot map)") +
          ": configure the NIC in one of those formats on the source before the cutover, or "
          "drop the mapping and configure the target by hand");
      continue;
    }
    if (!udevd || n.source_name.empty()) continue;
    const std::string link = "/etc/systemd/network/10-cdp-" + n.source_name + ".link";
    changes->Write(link,
                   "# Written by the cdp pe-agent at takeover: the NIC that was " + n.source_name +
                       " on the source (MAC " +
                       (n.source_mac.empty() ? std::string("unknown") : n.source_mac) + ") is " +
                       n.target_mac + " on this target; it keeps its name.\n[Match]\nMACAddress=" +
                       n.target_mac + "\n\n[Link]\nName=" + n.source_name + "\n",
                   "pins the name " + n.source_name + " to the target's NIC " + n.target_mac);
  }
}

}  // namespace cdp::pe
