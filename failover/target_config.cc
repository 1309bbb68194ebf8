#include "cdp/failover/target_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "cdp/core/transport.h"
#include "cdp/core/wire.h"
#include "cdp/pe/disk_finder.h"
#include "yaml_loader.h"

namespace cdp::failover {

namespace fs = std::filesystem;

namespace {

// 52:54:00 (QEMU's prefix) + three bytes from the VM name and the NIC index, so a VM keeps its
// MACs across restarts without the config having to say them.
std::string DefaultMac(const std::string& name, int index) {
  const uint64_t h = std::hash<std::string>{}(name + "#" + std::to_string(index));
  char buf[32];
  snprintf(buf, sizeof(buf), "52:54:00:%02x:%02x:%02x", static_cast<unsigned>(h & 0xff),
           static_cast<unsigned>((h >> 8) & 0xff), static_cast<unsigned>((h >> 16) & 0xff));
  return buf;
}

// A stable SMBIOS UUID for a VM that has none in its config (the service's WHO tells VMs
// apart by it).
std::string DefaultUuid(const std::string& name) {
  const uint64_t a = std::hash<std::string>{}(name + "#uuid-a");
  const uint64_t b = std::hash<std::string>{}(name + "#uuid-b");
  char buf[40];
  snprintf(buf, sizeof(buf), "%08x-%04x-4%03x-8%03x-%012llx", static_cast<unsigned>(a >> 32),
           static_cast<unsigned>((a >> 16) & 0xffff), static_cast<unsigned>(a & 0xfff),
           static_cast<unsigned>(b >> 52), static_cast<unsigned long long>(b & 0xffffffffffffull));
  return buf;
}

}  // namespace

std::string TargetConfig::VolumeSpecs() const {
  std::string out;
  for (const auto& d : disks) {
    out += (out.empty() ? "" : ",") + d.volume + ":" + std::to_string(d.size);
  }
  return out;
}

Result<TargetConfig> LoadTargetConfig(const std::string& path) {
  CDP_ASSIGN_OR_RETURN(YAML::Node root, LoadYamlFile(path, "target config"));
  YamlLoader L{path, fs::absolute(path).parent_path()};
  TargetConfig c;
  c.file = path;
  CDP_RETURN_IF_ERROR(
      L.CheckKeys(root, "",
                  {"name", "memory_mib", "cpus", "pe", "uuid", "qmp_socket", "replication_endpoint",
                   "replication_nic", "service_nic", "accel", "state_dir", "metadata_disk", "disks",
                   "ready_timeout_seconds", "qemu", "kernel_args"}));
  CDP_ASSIGN_OR_RETURN(c.name, L.String(root, "name", "", true));
  if (Status s = wire::ValidateVolumeName(c.name); !s.ok()) {
    return L.Error(root["name"], "name",
                   "'" + c.name + "' is not a valid VM name: 1..64 of [A-Za-z0-9._-]");
  }
  CDP_ASSIGN_OR_RETURN(c.memory_mib, L.Number(root, "memory_mib", "", 512, 128, 1 << 20));
  CDP_ASSIGN_OR_RETURN(uint64_t cpus, L.Number(root, "cpus", "", 1, 1, 64));
  c.cpus = static_cast<unsigned>(cpus);

  const YAML::Node pe = root["pe"];
  if (!pe.IsDefined()) return L.Error(root, "pe", "missing (required): {kernel, initrd}");
  CDP_RETURN_IF_ERROR(L.CheckKeys(pe, "pe", {"kernel", "initrd"}));
  CDP_ASSIGN_OR_RETURN(c.kernel, L.Path(pe, "kernel", "pe", true));
  CDP_ASSIGN_OR_RETURN(c.initrd, L.Path(pe, "initrd", "pe", true));
  CDP_ASSIGN_OR_RETURN(c.qmp_socket, L.Path(root, "qmp_socket", "", true));

  CDP_ASSIGN_OR_RETURN(c.replication_endpoint, L.String(root, "replication_endpoint", "", true));
  {
    static const std::regex re("^tcp://([0-9.]+|localhost):([0-9]{1,5})$");
    std::smatch m;
    const int port = std::regex_match(c.replication_endpoint, m, re) ? std::stoi(m[2]) : 0;
    if (port <= 0 || port > 65535) {
      return L.Error(root["replication_endpoint"], "replication_endpoint",
                     "'" + c.replication_endpoint +
                         "' is not tcp://IPV4:PORT (the host-side address the replicator "
                         "connects to, e.g. tcp://127.0.0.1:7800)");
    }
    c.replication_host = m[1] == "localhost" ? "127.0.0.1" : std::string(m[1]);
    c.replication_port = static_cast<uint16_t>(port);
  }

  const YAML::Node rnic = root["replication_nic"];
  c.replication_nic.mode = "user";
  c.replication_nic.mac = DefaultMac(c.name, 0);
  c.guest_port = c.replication_port;
  if (rnic.IsDefined()) {
    CDP_RETURN_IF_ERROR(L.CheckKeys(rnic, "replication_nic", {"mac", "guest_port"}));
    CDP_ASSIGN_OR_RETURN(c.replication_nic.mac,
                         L.String(rnic, "mac", "replication_nic", false, c.replication_nic.mac));
    CDP_ASSIGN_OR_RETURN(
        uint64_t gp, L.Number(rnic, "guest_port", "replication_nic", c.replication_port, 1, 65535));
    c.guest_port = static_cast<uint16_t>(gp);
  }
  const YAML::Node snic = root["service_nic"];
  c.service_nic.mode = "user";
  c.service_nic.mac = DefaultMac(c.name, 1);
  if (snic.IsDefined()) {
    CDP_RETURN_IF_ERROR(L.CheckKeys(snic, "service_nic", {"mode", "mac", "tap"}));
    CDP_ASSIGN_OR_RETURN(c.service_nic.mode, L.String(snic, "mode", "service_nic", false, "user"));
    CDP_ASSIGN_OR_RETURN(c.service_nic.mac,
                         L.String(snic, "mac", "service_nic", false, c.service_nic.mac));
    CDP_ASSIGN_OR_RETURN(c.service_nic.tap, L.String(snic, "tap", "service_nic", false));
    if (c.service_nic.mode != "user" && c.service_nic.mode != "tap" &&
        c.service_nic.mode != "none") {
      return L.Error(snic["mode"], "service_nic.mode",
                     "'" + c.service_nic.mode + "' is not user, tap or none");
    }
    if (c.service_nic.mode == "tap" && c.service_nic.tap.empty()) {
      return L.Error(snic, "service_nic.tap", "missing: mode tap needs the tap interface name");
    }
  }
  for (const auto* nic : {&c.replication_nic, &c.service_nic}) {
    if (!ValidMac(nic->mac)) {
      return L.Error(nic == &c.replication_nic ? rnic : snic,
                     nic == &c.replication_nic ? "replication_nic.mac" : "service_nic.mac",
                     "'" + nic->mac + "' is not a unicast MAC in lower case (52:54:00:12:34:56)");
    }
  }
  if (c.replication_nic.mac == c.service_nic.mac) {
    return L.Error(snic, "service_nic.mac", "the same MAC as the replication NIC");
  }

  CDP_ASSIGN_OR_RETURN(c.uuid, L.String(root, "uuid", "", false, DefaultUuid(c.name)));
  {
    static const std::regex re(
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
    if (!std::regex_match(c.uuid, re)) {
      return L.Error(root["uuid"], "uuid",
                     "'" + c.uuid + "' is not a UUID in lower case "
                     "(11111111-2222-3333-4444-555555555555)");
    }
  }
  CDP_ASSIGN_OR_RETURN(c.accel, L.String(root, "accel", "", false, "auto"));
  if (c.accel != "auto" && c.accel != "kvm" && c.accel != "tcg") {
    return L.Error(root["accel"], "accel", "'" + c.accel + "' is not auto, kvm or tcg");
  }
  CDP_ASSIGN_OR_RETURN(c.state_dir, L.Path(root, "state_dir", "", false,
                                           fs::path(c.qmp_socket).parent_path().string()));
  CDP_ASSIGN_OR_RETURN(c.qemu, L.String(root, "qemu", "", false, c.qemu));
  CDP_ASSIGN_OR_RETURN(c.kernel_args, L.String(root, "kernel_args", "", false));
  CDP_ASSIGN_OR_RETURN(uint64_t timeout, L.Number(root, "ready_timeout_seconds", "", 120, 5, 3600));
  c.ready_timeout_seconds = static_cast<double>(timeout);

  const YAML::Node disks = root["disks"];
  if (!disks.IsDefined() || !disks.IsSequence() || disks.size() == 0) {
    return L.Error(disks.IsDefined() ? disks : root, "disks",
                   "missing or empty: a list of {volume, path, size}");
  }
  std::set<std::string> volumes, paths;
  for (size_t i = 0; i < disks.size(); ++i) {
    const YAML::Node d = disks[i];
    const std::string ctx = "disks[" + std::to_string(i) + "]";
    CDP_RETURN_IF_ERROR(L.CheckKeys(d, ctx, {"volume", "path", "size"}));
    TargetDisk disk;
    CDP_ASSIGN_OR_RETURN(disk.volume, L.String(d, "volume", ctx, true));
    if (Status s = wire::ValidateVolumeName(disk.volume); !s.ok()) {
      return L.Error(d["volume"], ctx + ".volume", s.message());
    }
    if (disk.volume.size() > pe::kMaxSerialBytes) {
      return L.Error(d["volume"], ctx + ".volume",
                     "'" + disk.volume + "' has " + std::to_string(disk.volume.size()) +
                         " characters; a virtio disk serial holds at most " +
                         std::to_string(pe::kMaxSerialBytes) + ": use a shorter volume name");
    }
    if (disk.volume == pe::kDefaultMetaSerial) {
      return L.Error(d["volume"], ctx + ".volume", "reserved for the metadata disk");
    }
    CDP_ASSIGN_OR_RETURN(disk.path, L.Path(d, "path", ctx, true));
    CDP_ASSIGN_OR_RETURN(std::string size, L.String(d, "size", ctx, true));
    auto bytes = ParseSize(size);
    if (!bytes.ok() || *bytes % 512 != 0) {
      return L.Error(d["size"], ctx + ".size",
                     "'" + size +
                         "' is not a size divisible by 512 (the source volume's size, "
                         "e.g. 1073741824 or 10G)");
    }
    disk.size = *bytes;
    if (!volumes.insert(disk.volume).second) {
      return L.Error(d["volume"], ctx + ".volume", "volume " + disk.volume + " is listed twice");
    }
    if (!paths.insert(disk.path).second) {
      return L.Error(d["path"], ctx + ".path", disk.path + " is used by two disks");
    }
    c.disks.push_back(std::move(disk));
  }
  CDP_ASSIGN_OR_RETURN(
      c.metadata_disk,
      L.Path(
          root, "metadata_disk", "", false,
          (fs::path(c.disks.front().path).parent_path() / (c.name + "-pe-meta.qcow2")).string()));
  if (paths.count(c.metadata_disk)) {
    return L.Error(root["metadata_disk"], "metadata_disk", "is also a volume's disk");
  }
  CDP_RETURN_IF_ERROR(ApplyPeOverride(c.pe_override_file(), &c));
  return c;
}

Status ApplyPeOverride(const std::string& path, TargetConfig* config) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return Status::Ok();
  const std::string what = "the PE override " + path + " (written by cdpctl target follow-boot)";
  std::ifstream in(path);
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc["kernel"].is_string() || !doc["initrd"].is_string() ||
      !doc["kernel_release"].is_string()) {
    return Status::Corruption(what +
                              " is not {\"kernel\", \"initrd\", \"kernel_release\", ...}: remove "
                              "it to boot the config's pe:, or run follow-boot again");
  }
  const std::string kernel = doc["kernel"].get<std::string>();
  const std::string initrd = doc["initrd"].get<std::string>();
  for (const std::string& f : {kernel, initrd}) {
    if (!fs::is_regular_file(f, ec)) {
      return Status::NotFound(what + " names " + f +
                              ", which is gone: remove it to boot the config's pe:, or run "
                              "follow-boot again");
    }
  }
  config->kernel = kernel;
  config->initrd = initrd;
  config->pe_override = path;
  config->pe_override_kernel = doc["kernel_release"].get<std::string>();
  return Status::Ok();
}

}  // namespace cdp::failover
