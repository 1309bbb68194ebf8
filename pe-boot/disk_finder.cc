#include "cdp/pe/disk_finder.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "cdp/core/wire.h"

namespace cdp::pe {

namespace fs = std::filesystem;

namespace {
std::string ReadAttribute(const fs::path& path) {
  std::ifstream in(path);
  std::string value;
  std::getline(in, value);
  while (!value.empty() && (value.back() == '\n' || value.back() == ' ' || value.back() == '\0')) {
    value.pop_back();
  }
  return value;
}

std::string SizeText(uint64_t bytes) {
  return std::to_string(bytes) + " bytes (" + std::to_string(bytes >> 20) + " MiB)";
}
}  // namespace

Result<std::vector<VolumeSpec>> ParseVolumeSpecs(std::string_view text,
                                                 std::string_view meta_serial) {
  std::vector<VolumeSpec> out;
  std::set<std::string> seen;
  if (text.empty()) {
    return Status::InvalidArgument("no volumes given: expected NAME:SIZE[,NAME:SIZE...]");
  }
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    const std::string item(text.substr(pos, comma - pos));
    pos = comma + 1;
    const size_t colon = item.rfind(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument("volume '" + item + "': expected NAME:SIZE (SIZE in bytes)");
    }
    VolumeSpec spec;
    spec.name = item.substr(0, colon);
    CDP_RETURN_IF_ERROR(wire::ValidateVolumeName(spec.name));
    if (spec.name.size() > kMaxSerialBytes) {
      return Status::InvalidArgument("volume '" + spec.name + "' has " +
                                     std::to_string(spec.name.size()) +
                                     " characters; a target disk's serial holds at most " +
                                     std::to_string(kMaxSerialBytes) + ": use a shorter name");
    }
    if (spec.name == meta_serial) {
      return Status::InvalidArgument("volume '" + spec.name +
                                     "' has the metadata disk's serial; rename the volume");
    }
    const std::string size = item.substr(colon + 1);
    size_t used = 0;
    try {
      // stoull would take "-512" (and wrap it); only digits are a size.
      if (size.find_first_not_of("0123456789") != std::string::npos) throw 0;
      spec.size = std::stoull(size, &used);
    } catch (...) {
      used = 0;
    }
    if (size.empty() || used != size.size() || spec.size == 0 || spec.size % 512 != 0) {
      return Status::InvalidArgument("volume '" + spec.name + "': size '" + size +
                                     "' is not a positive number of bytes divisible by 512");
    }
    if (!seen.insert(spec.name).second) {
      return Status::InvalidArgument("volume '" + spec.name + "' is listed twice");
    }
    out.push_back(std::move(spec));
    if (comma == text.size()) break;
  }
  return out;
}

Result<std::vector<FoundDisk>> ListSerialDisks(const std::string& sys_root,
                                               const std::string& dev_root) {
  std::vector<FoundDisk> out;
  std::error_code ec;
  const fs::path block = fs::path(sys_root) / "block";
  for (fs::directory_iterator it(block, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path dir = it->path();
    if (!fs::exists(dir / "serial")) continue;
    FoundDisk d;
    d.name = dir.filename().string();
    d.device = (fs::path(dev_root) / d.name).string();
    d.serial = ReadAttribute(dir / "serial");
    const std::string sectors = ReadAttribute(dir / "size");
    try {
      d.size = std::stoull(sectors) * 512;
    } catch (...) {
      d.size = 0;
    }
    out.push_back(std::move(d));
  }
  if (ec) return Status::IOError("cannot list " + block.string() + ": " + ec.message());
  std::sort(out.begin(), out.end(),
            [](const FoundDisk& a, const FoundDisk& b) { return a.name < b.name; });
  return out;
}

Result<DiskAssignment> AssignDisks(const std::vector<VolumeSpec>& volumes,
                                   const std::vector<FoundDisk>& disks,
                                   std::string_view meta_serial) {
  DiskAssignment out;
  bool have_meta = false;
  std::map<std::string, const VolumeSpec*> by_name;
  for (const auto& v : volumes) by_name[v.name] = &v;
  std::string known;
  for (const auto& v : volumes) known += (known.empty() ? "" : ", ") + v.name;
  for (const auto& d : disks) {
    if (d.serial == meta_serial) {
      if (have_meta) {
        return Status::FailedPrecondition("disks " + out.meta.device + " and " + d.device +
                                          " both have the metadata serial '" +
                                          std::string(meta_serial) + "'; detach one");
      }
      out.meta = d;
      have_meta = true;
      continue;
    }
    auto it = by_name.find(d.serial);
    if (it == by_name.end()) {
      return Status::FailedPrecondition(
          "disk " + d.device + " has serial '" + d.serial + "', which matches no volume of " +
          "this target (volumes: " + known + "); nothing was written to any disk: detach it " +
          "or add its volume to the target's config");
    }
    if (out.volumes.count(d.serial)) {
      return Status::FailedPrecondition("disks " + out.volumes[d.serial].device + " and " +
                                        d.device + " both have serial '" + d.serial +
                                        "'; detach one");
    }
    if (d.size < it->second->size) {
      return Status::FailedPrecondition(
          "disk " + d.device + " (volume " + d.serial + ") has " + SizeText(d.size) +
          " but the volume has " + SizeText(it->second->size) +
          "; nothing was written to any disk: give the target a disk at least as large");
    }
    out.volumes[d.serial] = d;
  }
  for (const auto& v : volumes) {
    if (!out.volumes.count(v.name)) {
      return Status::FailedPrecondition("volume " + v.name + " has no disk: no disk has serial '" +
                                        v.name + "'; attach one with serial=" + v.name);
    }
  }
  if (!have_meta) {
    return Status::FailedPrecondition(
        "no metadata disk (serial '" + std::string(meta_serial) +
        "'): the applied LSN could not survive a restart; attach one (cdpctl target start does)");
  }
  return out;
}

}  // namespace cdp::pe
