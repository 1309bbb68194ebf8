#include "cdp/pe/boot_adaptation.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/units.h"
#include "cdp/pe/initramfs_rebuild.h"
#include "cdp/pe/net_adaptation.h"
#include "cdp/pe/source_agent_service.h"
#include "cdp/pe/vmware_services.h"
#include "config_text.h"

namespace cdp::pe {

namespace {

namespace fs = std::filesystem;

const char* const kVirtioDrivers[] = {"virtio_blk", "virtio_pci", "virtio_net"};

using text::Fields;
using text::Join;
using text::Lower;

std::vector<std::string> Lines(std::string_view text) { return text::LineFile::Split(text).lines; }

bool ValidMac(const std::string& mac) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < mac.size(); ++i) {
    if (i % 3 == 2) {
      if (mac[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(mac[i]))) {
      return false;
    }
  }
  return true;
}

// AF_INET or AF_INET6 for a plain IP address, 0 when it is none.
int AddressFamily(const std::string& ip) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1) return AF_INET;
  if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) return AF_INET6;
  return 0;
}

// The family of "ADDR/PREFIX", 0 when malformed.
int PrefixFamily(const std::string& address) {
  const size_t slash = address.find('/');
  if (slash == std::string::npos) return 0;
  const std::string prefix = address.substr(slash + 1);
  if (prefix.empty() || prefix.size() > 3 ||
      !std::all_of(prefix.begin(), prefix.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  const int family = AddressFamily(address.substr(0, slash));
  const int bits = std::stoi(prefix);
  if (family == AF_INET && bits <= 32) return family;
  if (family == AF_INET6 && bits <= 128) return family;
  return 0;
}

std::string InitrdName(const std::string& kver) { return "/boot/initrd.img-" + kver; }

bool ExistsInRoot(const std::string& root, const std::string& path) {
  auto host = ResolveInRoot(root, path);
  struct stat st;
  return host.ok() && ::stat(host->c_str(), &st) == 0;
}

}  // namespace

std::string InitramfsPath(const std::string& root, const std::string& kver) {
  const std::string rhel = "/boot/initramfs-" + kver + ".img";
  if (!ExistsInRoot(root, InitrdName(kver)) && ExistsInRoot(root, rhel)) return rhel;
  return InitrdName(kver);
}

// ---- fstab ----

std::vector<FstabEntry> ParseFstab(std::string_view text) {
  std::vector<FstabEntry> entries;
  const auto lines = Lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto fields = Fields(lines[i]);
    if (fields.size() < 3 || fields[0][0] == '#') continue;
    FstabEntry e;
    e.line = static_cast<int>(i + 1);
    e.spec = fields[0];
    e.spec.erase(std::remove(e.spec.begin(), e.spec.end(), '"'), e.spec.end());
    e.mount_point = fields[1];
    e.type = fields[2];
    entries.push_back(std::move(e));
  }
  return entries;
}

void CheckFstab(const std::string& root, const UuidMap& on_disks, const std::string& root_uuid,
                std::vector<std::string>* errors, std::vector<std::string>* notes) {
  auto path = ResolveInRoot(root, "/etc/fstab");
  if (!path.ok()) {
    errors->push_back("cannot resolve /etc/fstab: " + path.status().message());
    return;
  }
  auto text = ReadWholeFile(*path);
  if (!text.ok()) {
    if (text.status().IsNotFound()) {
      errors->push_back(
          "the migrated OS has no /etc/fstab; is root_volume the volume of its root filesystem?");
    } else {
      errors->push_back("cannot read the migrated OS's /etc/fstab: " + text.status().message());
    }
    return;
  }
  std::vector<std::string> found;
  for (const FstabEntry& e : ParseFstab(*text)) {
    const bool swap = e.type == "swap";
    if (!swap && (e.mount_point == "none" || e.mount_point.empty())) continue;
    const std::string where = "fstab line " + std::to_string(e.line) + ": " + e.spec + " (" +
                              (swap ? std::string("swap") : e.mount_point) + ")";
    if (e.spec.rfind("UUID=", 0) != 0) {
      if (e.spec.rfind("/dev/", 0) == 0 || e.spec.find('=') != std::string::npos) {
        notes->push_back(where + " is not by UUID; not checked");
      }
      continue;
    }
    const std::string uuid = Lower(e.spec.substr(5));
    auto it = on_disks.find(uuid);
    if (it == on_disks.end()) {
      errors->push_back(where +
                        " is on no disk of this target; the migrated OS would not mount it");
      continue;
    }
    if (e.mount_point == "/" && !root_uuid.empty() && uuid != Lower(root_uuid)) {
      errors->push_back(where + " is not the root filesystem the takeover mounted (UUID " +
                        Lower(root_uuid) +
                        "); the migrated OS would mount another root: check root_volume");
      continue;
    }
    found.push_back((swap ? std::string("swap") : e.mount_point) + " on " + it->second);
  }
  notes->push_back("fstab: " +
                   (found.empty() ? std::string("no UUID entries") : Join(found, ", ")));
}

// ---- network ----

Result<std::map<std::string, std::string>> ListNics(const std::string& sys_class_net) {
  std::map<std::string, std::string> nics;
  std::error_code ec;
  fs::directory_iterator it(sys_class_net, ec);
  if (ec) return Status::IOError("cannot list " + sys_class_net + ": " + ec.message());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name == "lo") continue;
    std::ifstream in(entry.path() / "address");
    std::string mac;
    if (!(in >> mac)) continue;
    mac = Lower(mac);
    if (mac == "00:00:00:00:00:00" || !ValidMac(mac)) continue;
    nics.emplace(mac, name);
  }
  return nics;
}

void ValidateNics(std::vector<NicConfig>* nics, const std::map<std::string, std::string>& present,
                  std::vector<std::string>* errors) {
  std::set<std::string> seen;
  for (size_t i = 0; i < nics->size(); ++i) {
    NicConfig& n = (*nics)[i];
    const std::string which = "NIC mapping " + std::to_string(i + 1);
    n.mac = Lower(n.mac);
    if (!ValidMac(n.mac)) {
      errors->push_back(which + ": MAC '" + n.mac + "' is not of the form aa:bb:cc:dd:ee:ff");
      continue;
    }
    if (!seen.insert(n.mac).second) {
      errors->push_back(which + ": MAC " + n.mac + " is mapped twice");
      continue;
    }
    if (!present.count(n.mac)) {
      std::vector<std::string> have;
      for (const auto& [mac, ifname] : present) have.push_back(ifname + " " + mac);
      errors->push_back(which + ": MAC " + n.mac + " is not a NIC of this target (it has: " +
                        (have.empty() ? std::string("none") : Join(have, ", ")) +
                        "); fix the NIC mapping or give the target VM that NIC");
      continue;
    }
    n.source_mac = Lower(n.source_mac);
    if (!n.source_mac.empty() && !ValidMac(n.source_mac)) {
      errors->push_back(which + ": source MAC '" + n.source_mac +
                        "' is not of the form aa:bb:cc:dd:ee:ff");
      continue;
    }
    const int family = PrefixFamily(n.address);
    if (family == 0) {
      errors->push_back(which + " (MAC " + n.mac + "): address '" + n.address +
                        "' is not ADDR/PREFIX, e.g. 10.0.0.5/24");
      continue;
    }
    if (!n.gateway.empty() && AddressFamily(n.gateway) != family) {
      errors->push_back(which + " (MAC " + n.mac + "): gateway '" + n.gateway +
                        "' is not an address of the same family as " + n.address);
    }
  }
}

std::string FormatNetConf(const std::vector<NicConfig>& nics) {
  std::string out =
      "# written by the cdp pe-agent at takeover; the previous file is net.conf.pre-cutover\n";
  for (const auto& n : nics) {
    out += "iface " + n.mac + " " + n.address;
    if (!n.gateway.empty()) out += " " + n.gateway;
    out += "\n";
  }
  return out;
}

Result<std::string> RewriteNetConf(const std::string& root, const std::vector<NicConfig>& nics) {
  CDP_ASSIGN_OR_RETURN(const std::string path, ResolveInRoot(root, "/etc/cdp/net.conf"));
  const std::string content = FormatNetConf(nics);
  const std::string lines = std::to_string(nics.size()) + " line(s)";
  mode_t mode = 0644;
  auto old = ReadWholeFile(path);
  if (old.ok()) {
    if (*old == content) return "net.conf: already as requested (" + lines + "); unchanged";
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) mode = st.st_mode & 07777;
    CDP_RETURN_IF_ERROR(WriteFileAtomicWithMode(path + ".pre-cutover", *old, mode)
                            .WithContext("keeping the previous net.conf"));
    CDP_RETURN_IF_ERROR(WriteFileAtomicWithMode(path, content, mode));
    return "net.conf: rewritten with " + lines +
           " (the previous one kept as /etc/cdp/net.conf.pre-cutover)";
  }
  if (!old.status().IsNotFound()) return old.status();
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) {
    return Status::IOError("cannot create " + fs::path(path).parent_path().string() + ": " +
                           ec.message());
  }
  CDP_RETURN_IF_ERROR(WriteFileAtomicWithMode(path, content, mode));
  return "net.conf: created with " + lines + " (there was none)";
}

// ---- drivers and kernel ----

std::string ModuleNameOf(std::string_view path) {
  std::string_view name =
      path.substr(path.rfind('/') == std::string_view::npos ? 0 : path.rfind('/') + 1);
  static const std::string_view kSuffixes[] = {".ko", ".ko.gz", ".ko.xz", ".ko.zst"};
  bool module = false;
  for (const auto suffix : kSuffixes) {
    if (name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix) {
      name.remove_suffix(suffix.size());
      module = true;
      break;
    }
  }
  if (!module) return "";
  std::string out(name);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

Result<std::set<std::string>> InitramfsModules(const std::string& root, const std::string& kver) {
  std::set<std::string> modules;
  const std::string initrd = InitramfsPath(root, kver);
  CDP_ASSIGN_OR_RETURN(const std::string list, ResolveInRoot(root, initrd + ".modules"));
  auto text = ReadWholeFile(list);
  if (text.ok()) {
    for (const auto& line : Lines(*text)) {
      const auto fields = Fields(line);
      if (fields.empty() || fields[0][0] == '#') continue;
      std::string name = ModuleNameOf(fields[0]);
      if (name.empty() && fields[0].find_first_of("/.") == std::string::npos) {
        name = fields[0];  // a bare module name
        std::replace(name.begin(), name.end(), '-', '_');
      }
      if (!name.empty()) modules.insert(name);
    }
    return modules;
  }
  if (!text.status().IsNotFound()) return text.status();
  CDP_ASSIGN_OR_RETURN(const std::string image_path, ResolveInRoot(root, initrd));
  CDP_ASSIGN_OR_RETURN(const std::string image, ReadWholeFile(image_path));
  CDP_ASSIGN_OR_RETURN(const auto names, ListInitramfs(image));
  for (const auto& n : names) {
    std::string m = ModuleNameOf(n);
    if (!m.empty()) modules.insert(std::move(m));
  }
  return modules;
}

std::set<std::string> BuiltinModules(const std::string& root, const std::string& kver) {
  std::set<std::string> modules;
  auto path = ResolveInRoot(root, "/lib/modules/" + kver + "/modules.builtin");
  if (!path.ok()) return modules;
  auto text = ReadWholeFile(*path);
  if (!text.ok()) return modules;
  for (const auto& line : Lines(*text)) {
    std::string m = ModuleNameOf(line);
    if (!m.empty()) modules.insert(std::move(m));
  }
  return modules;
}

void CheckInitramfsDrivers(const std::string& root, const std::string& kver,
                           std::vector<std::string>* errors, std::vector<std::string>* notes) {
  const std::set<std::string> builtin = BuiltinModules(root, kver);
  std::vector<std::string> needed, builtin_used;
  for (const char* d : kVirtioDrivers) (builtin.count(d) ? builtin_used : needed).push_back(d);
  const std::string initrd = InitramfsPath(root, kver);
  const std::string in_kernel =
      builtin_used.empty() ? "" : " (built into " + kver + ": " + Join(builtin_used, ", ") + ")";
  if (needed.empty()) {
    notes->push_back("drivers: virtio_blk, virtio_pci, virtio_net built into kernel " + kver);
    return;
  }
  auto modules = InitramfsModules(root, kver);
  if (!modules.ok()) {
    if (modules.status().IsNotFound()) {
      errors->push_back("the migrated OS has no initramfs " + initrd + " and its kernel " + kver +
                        " does not build in " + Join(needed, ", ") +
                        "; it would not find its disk on the target: build one with virtio "
                        "drivers (update-initramfs -c -k " +
                        kver + ") before the cutover");
    } else {
      errors->push_back("the migrated OS's initramfs " + initrd +
                        " cannot be listed: " + modules.status().message() +
                        "; write the list of its modules to " + initrd + ".modules (lsinitramfs " +
                        initrd + " | grep '\\.ko') on the source before the cutover");
    }
    return;
  }
  std::vector<std::string> missing;
  for (const auto& d : needed) {
    if (!modules->count(d)) missing.push_back(d);
  }
  if (missing.empty()) {
    notes->push_back("drivers: " + Join(needed, ", ") + " in " + initrd + in_kernel);
    return;
  }
  const bool disk = std::any_of(missing.begin(), missing.end(),
                                [](const std::string& m) { return m != "virtio_net"; });
  errors->push_back(
      "the migrated OS's initramfs " + initrd + " has no " + Join(missing, ", ") +
      (disk ? "; it would not find its disk on the target"
            : "; it would have no network on the target") +
      ": run `cdpctl target prepare-boot` (it rebuilds the image in the PE, the source "
      "untouched) or rebuild it with virtio drivers on the source before the "
      "cutover");
}

bool CheckKernelModules(const std::string& root, const std::string& kver,
                        std::vector<std::string>* errors) {
  auto dir = ResolveInRoot(root, "/lib/modules/" + kver);
  std::error_code ec;
  if (dir.ok() && fs::is_directory(*dir, ec)) return true;
  std::vector<std::string> have;
  auto modules = ResolveInRoot(root, "/lib/modules");
  if (modules.ok()) {
    for (const auto& entry : fs::directory_iterator(*modules, ec)) {
      if (entry.is_directory(ec)) have.push_back(entry.path().filename().string());
    }
  }
  std::sort(have.begin(), have.end());
  errors->push_back("the PE runs kernel " + kver +
                    " but the migrated OS has no modules for it (it has: " +
                    (have.empty() ? std::string("none") : Join(have, ", ")) +
                    "); rebuild the PE from the replica's /boot and /lib/modules "
                    "(build-pe-image --kernel-from)");
  return false;
}

Result<std::string> ChooseOwnKernel(const std::string& root) {
  std::vector<std::string> found, usable;
  std::error_code ec;
  auto boot = ResolveInRoot(root, "/boot");
  if (boot.ok()) {
    for (const auto& entry : fs::directory_iterator(*boot, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("vmlinuz-", 0) != 0 || !entry.is_regular_file(ec)) continue;
      found.push_back(name);
      const std::string kver = name.substr(8);
      auto initrd = ResolveInRoot(root, InitramfsPath(root, kver));
      auto modules = ResolveInRoot(root, "/lib/modules/" + kver);
      if (initrd.ok() && fs::is_regular_file(*initrd, ec) && modules.ok() &&
          fs::is_directory(*modules, ec)) {
        usable.push_back(kver);
      }
    }
  }
  if (usable.empty()) {
    std::sort(found.begin(), found.end());
    return Status::NotFound(
        "the migrated OS has no kernel to kexec into: no /boot/vmlinuz-KVER with its "
        "/boot/initrd.img-KVER and /lib/modules/KVER (it has: " +
        (found.empty() ? std::string("none") : Join(found, ", ")) + ")");
  }
  return *std::max_element(usable.begin(), usable.end(), [](const auto& a, const auto& b) {
    return strverscmp(a.c_str(), b.c_str()) < 0;
  });
}

void CheckInit(const std::string& root, const std::string& init, std::vector<std::string>* errors) {
  if (init.empty() || init[0] != '/' || std::any_of(init.begin(), init.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) != 0;
      })) {
    errors->push_back("init '" + init + "' is not an absolute path without spaces");
    return;
  }
  auto path = ResolveInRoot(root, init);
  struct stat st;
  if (!path.ok() || ::stat(path->c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      (st.st_mode & 0111) == 0) {
    errors->push_back("the migrated OS has no executable " + init +
                      "; switch_root would fail: check root_volume and the takeover's init");
  }
}

// ---- the whole step ----

constexpr char kArpNotifyConf[] = "/etc/sysctl.d/90-cdp-arp-notify.conf";

Result<std::vector<std::string>> AdaptRoot(AdaptRequest request,
                                           std::vector<RootChange>* changes_out) {
  std::vector<std::string> errors, notes;
  RootChanges changes(request.root);
  // How long each part took, logged: under TCG a cold read of the replica is what a takeover
  // waits on.
  std::string phases;
  auto since = std::chrono::steady_clock::now();
  auto phase = [&](const char* name) {
    const auto now = std::chrono::steady_clock::now();
    phases += std::string(phases.empty() ? "" : ", ") + name + " " +
              FormatFixed(std::chrono::duration<double>(now - since).count(), 3) + " s";
    since = now;
  };
  const bool kernel_ok = CheckKernelModules(request.root, request.kernel_release, &errors);
  CheckInit(request.root, request.init, &errors);
  TargetDisks& target = request.target;
  if (target.filesystems.empty()) {
    for (const auto& [uuid, device] : request.disk_uuids) {
      TargetFs f;
      f.device = device;
      f.id.uuid = uuid;
      target.filesystems.push_back(std::move(f));
    }
  }
  if (target.root_device.empty()) target.root_device = request.root_device;
  if (target.root_uuid.empty()) target.root_uuid = request.root_uuid;
  phase("kernel and init");
  AdaptFstab(target, &changes, &errors, &notes);
  phase("fstab");
  AdaptGrub(target, &changes, &errors, &notes);
  phase("grub");
  const size_t errors_before_nics = errors.size();
  ValidateNics(&request.nics, request.present_nics, &errors);
  const bool nics_valid = errors.size() == errors_before_nics;
  // The initramfs of a kernel without modules in the migrated OS is beside the point. One
  // rebuilt ahead of the window (PrepareBoot) is installed now.
  if (kernel_ok && (request.prepared_dir.empty() ||
                    !PlanPreparedInitramfs(&changes, request.prepared_dir, request.kernel_release,
                                           &errors, &notes))) {
    CheckInitramfsDrivers(request.root, request.kernel_release, &errors, &notes);
  }
  phase("initramfs");
  // Our contract (/etc/cdp/net.conf) or the distribution's own network configuration.
  const bool contract = changes.Exists("/etc/cdp/net.conf");
  std::vector<std::string> net_notes;
  if (!contract && !request.nics.empty() && nics_valid) {
    std::vector<NicMap> nics;
    for (const NicConfig& n : request.nics) {
      auto name = request.present_nics.find(n.mac);
      nics.push_back({n.source_mac, n.source_name, n.mac,
                      name == request.present_nics.end() ? "" : name->second, n.address,
                      n.gateway});
    }
    std::vector<std::string> net_errors;
    const auto found = ScanNetworkConfig(changes, &net_errors);
    ResolveSourceNames(found, &nics, &net_errors);
    if (net_errors.empty()) {
      AdaptNetwork(nics, RunsSystemdUdevd(changes), &changes, &net_errors, &net_notes);
    }
    errors.insert(errors.end(), net_errors.begin(), net_errors.end());
    // The addresses moved to other MACs: neighbours (clients, routers) keep the source's MAC in
    // their ARP caches until told. ifupdown, networkd and NetworkManager do not announce an
    // address by themselves; the kernel does, when a NIC with addresses comes up, with
    // arp_notify (in the lab a client's INSERTs waited 27 s longer than the service's start).
    changes.Write(kArpNotifyConf,
                  "# Written by the cdp pe-agent at takeover: this machine took over the "
                  "addresses of another one.\n"
                  "# Announce them (gratuitous ARP) whenever a NIC comes up, so that neighbours' "
                  "ARP caches follow.\n"
                  "net.ipv4.conf.all.arp_notify = 1\n"
                  "net.ipv4.conf.default.arp_notify = 1\n",
                  "gratuitous ARP when a NIC comes up (arp_notify): neighbours learn the new MACs "
                  "of the moved addresses");
  }
  phase("network");
  DisableVmwareServices(&changes, &net_notes);
  DisableSourceAgent(&changes, &net_notes);
  phase("services");
  CDP_LOG(info) << "pe-agent: adaptation " << (request.dry_run ? "(dry run) " : "")
                << "checked and planned in: " << phases;
  if (!errors.empty()) return Status::FailedPrecondition(Join(errors, "; "));
  if (kernel_ok) notes.push_back("kernel " + request.kernel_release + ": modules present");
  notes.insert(notes.end(), net_notes.begin(), net_notes.end());
  std::vector<RootChange> made = changes.Changes();
  if (request.nics.empty()) {
    notes.push_back(contract ? "net.conf: no NIC mappings in the request; left as it is"
                             : "network: no NIC mappings in the request; left as it is");
  } else if (contract && request.dry_run) {
    std::vector<std::string> lines;
    for (const auto& line : Lines(FormatNetConf(request.nics))) {
      if (!line.empty() && line[0] != '#') lines.push_back(line);
    }
    notes.push_back("net.conf: would be rewritten with: " + Join(lines, " | "));
    made.push_back({"/etc/cdp/net.conf", notes.back(), "/etc/cdp/net.conf.pre-cutover"});
  } else if (contract) {
    CDP_ASSIGN_OR_RETURN(std::string note, RewriteNetConf(request.root, request.nics));
    if (note.find("; unchanged") == std::string::npos) {
      const bool created = note.find("(there was none)") != std::string::npos;
      made.push_back({"/etc/cdp/net.conf", note, created ? "" : "/etc/cdp/net.conf.pre-cutover"});
    }
    notes.push_back(std::move(note));
  }
  for (const RootChange& c : changes.Changes()) {
    notes.push_back((request.dry_run ? "would change " : "changed ") + c.file + ": " + c.what +
                    (c.kept_at.empty() ? "" : " (previous content kept at " + c.kept_at + ")"));
  }
  if (!request.dry_run) {
    CDP_RETURN_IF_ERROR(changes.Apply(UtcStamp()).WithContext("adapting the migrated OS"));
  }
  if (changes_out != nullptr) *changes_out = std::move(made);
  return notes;
}

}  // namespace cdp::pe
