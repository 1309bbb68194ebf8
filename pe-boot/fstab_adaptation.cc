#include "cdp/pe/fstab_adaptation.h"

#include <algorithm>
#include <cctype>

#include "cdp/pe/root_path.h"
#include "config_text.h"

namespace cdp::pe {

namespace {

struct SourceDevice {
  std::string disk;  // "/dev/sdb", "/dev/nvme0n1"
  size_t index = 0;  // its order among the disks of its kind
  int partition = 0;
};

bool ParseSourceDevice(const std::string& dev, SourceDevice* out) {
  if (!text::StartsWith(dev, "/dev/")) return false;
  const std::string name = dev.substr(5);
  auto digits = [](const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(c); });
  };
  if (text::StartsWith(name, "nvme")) {
    const size_t n = name.find('n', 4);
    if (n == std::string::npos || !digits(name.substr(4, n - 4))) return false;
    const size_t p = name.find('p', n);
    const std::string ns =
        name.substr(n + 1, p == std::string::npos ? std::string::npos : p - n - 1);
    if (!digits(ns)) return false;
    out->disk = "/dev/" + name.substr(0, p);
    out->index = std::stoul(name.substr(4, n - 4));
    out->partition = 0;
    if (p != std::string::npos) {
      if (!digits(name.substr(p + 1))) return false;
      out->partition = std::stoi(name.substr(p + 1));
    }
    return true;
  }
  for (const char* kind : {"xvd", "sd", "vd", "hd"}) {
    if (!text::StartsWith(name, kind)) continue;
    size_t i = std::string(kind).size();
    size_t index = 0, letters = 0;
    while (i < name.size() && name[i] >= 'a' && name[i] <= 'z') {
      index = index * 26 + static_cast<size_t>(name[i] - 'a') + 1;  // sda = 1, sdaa = 27
      ++i;
      ++letters;
    }
    if (letters == 0 || letters > 2) return false;
    const std::string part = name.substr(i);
    if (!part.empty() && !digits(part)) return false;
    out->disk = "/dev/" + name.substr(0, i);
    out->index = index - 1;
    out->partition = part.empty() ? 0 : std::stoi(part);
    return true;
  }
  return false;
}

std::string PartitionName(const std::string& disk, int partition) {
  if (partition == 0) return disk;
  return disk + (std::isdigit(static_cast<unsigned char>(disk.back())) ? "p" : "") +
         std::to_string(partition);
}

const TargetFs* FindBy(const TargetDisks& t, const std::string& what, const std::string& value) {
  for (const TargetFs& f : t.filesystems) {
    if (what == "UUID" && !f.id.uuid.empty() && f.id.uuid == text::Lower(value)) return &f;
    if (what == "LABEL" && !f.id.label.empty() && f.id.label == value) return &f;
    if (what == "PARTUUID" && !f.partuuid.empty() && f.partuuid == text::Lower(value)) return &f;
    if (what == "DEVICE" && f.device == value) return &f;
  }
  return nullptr;
}

// "UUID=x" / "/dev/disk/by-uuid/x" -> ("UUID", "x"); ("", "") for other specs.
std::pair<std::string, std::string> IdSpec(const std::string& spec) {
  for (const char* kind : {"UUID", "LABEL", "PARTUUID"}) {
    const std::string k = kind;
    if (text::StartsWith(spec, k + "=")) return {k, text::Unquote(spec.substr(k.size() + 1))};
    const std::string dir = "/dev/disk/by-" + text::Lower(k) + "/";
    if (text::StartsWith(spec, dir)) return {k, spec.substr(dir.size())};
  }
  return {"", ""};
}

bool SameType(const std::string& fstab_type, const std::string& found) {
  if (fstab_type == "ext2" || fstab_type == "ext3" || fstab_type == "ext4") return found == "ext4";
  if (fstab_type == "vfat" || fstab_type == "msdos" || fstab_type == "fat") return found == "vfat";
  return fstab_type == found;
}

bool KnownType(const std::string& t) {
  return t == "ext2" || t == "ext3" || t == "ext4" || t == "xfs" || t == "swap" || t == "vfat" ||
         t == "msdos";
}

// Replaces the first blank-separated word of `line` (at its position) by `word`.
std::string ReplaceFirstField(const std::string& line, const std::string& word) {
  const size_t start = line.find_first_not_of(" \t");
  const size_t end = line.find_first_of(" \t", start);
  return line.substr(0, start) + word + (end == std::string::npos ? "" : line.substr(end));
}

}  // namespace

bool IsDiskDeviceName(const std::string& device) {
  SourceDevice d;
  return ParseSourceDevice(device, &d);
}

Result<std::string> MapSourceDevice(const TargetDisks& target, const std::string& source) {
  SourceDevice d;
  if (!ParseSourceDevice(source, &d)) {
    return Status::InvalidArgument(source +
                                   " is not a disk or partition name (sd, vd, xvd, hd, "
                                   "nvme)");
  }
  bool explicit_map = false;
  for (const auto& s : target.source_disks) explicit_map = explicit_map || !s.empty();
  size_t volume = target.disks.size();
  if (explicit_map) {
    for (size_t i = 0; i < target.source_disks.size() && i < target.disks.size(); ++i) {
      if (target.source_disks[i] == d.disk) volume = i;
    }
    if (volume == target.disks.size()) {
      return Status::NotFound("no volume of this target was the source's disk " + d.disk +
                              " (source disks: " + text::Join(target.source_disks, ", ") +
                              "); add it to the protection group or fix the source_disks");
    }
  } else {
    volume = d.index;
    if (volume >= target.disks.size()) {
      return Status::NotFound("the source's disk " + d.disk + " would be volume " +
                              std::to_string(volume + 1) + " by order, but the target has " +
                              std::to_string(target.disks.size()) +
                              "; give the takeover the source disk of each volume (source_disks)");
    }
  }
  return PartitionName(target.disks[volume], d.partition);
}

void AdaptFstab(const TargetDisks& target, RootChanges* changes, std::vector<std::string>* errors,
                std::vector<std::string>* notes) {
  auto content = changes->Read("/etc/fstab");
  if (!content.ok()) {
    errors->push_back(content.status().IsNotFound()
                          ? "the migrated OS has no /etc/fstab; is root_volume the volume of its "
                            "root filesystem?"
                          : "cannot read the migrated OS's /etc/fstab: " +
                                content.status().message());
    return;
  }
  text::LineFile lf = text::LineFile::Split(*content);
  std::vector<std::string> found, rewritten, pvs;
  for (const TargetFs& f : target.filesystems) {
    if (f.id.type == "LVM2_member") pvs.push_back(f.device);
  }
  for (size_t i = 0; i < lf.lines.size(); ++i) {
    const auto fields = text::Fields(lf.lines[i]);
    if (fields.size() < 3 || fields[0][0] == '#') continue;
    std::string spec = fields[0];
    spec.erase(std::remove(spec.begin(), spec.end(), '"'), spec.end());
    const std::string& mount_point = fields[1];
    const std::string& type = fields[2];
    const bool swap = type == "swap";
    if (!swap && (mount_point == "none" || mount_point.empty())) continue;
    const std::string mp = swap ? std::string("swap") : mount_point;
    const std::string where = "fstab line " + std::to_string(i + 1) + ": " + spec + " (" + mp + ")";
    const TargetFs* fs = nullptr;
    if (auto [kind, value] = IdSpec(spec); !kind.empty()) {
      fs = FindBy(target, kind, value);
      if (fs == nullptr && mount_point != "/" && !pvs.empty()) {
        // Logical volumes are not read: it may well be on one of them.
        notes->push_back(where +
                         " is on no plain disk or partition of this target; not checked "
                         "(it may be on a logical volume of the LVM physical volumes " +
                         text::Join(pvs, ", ") + ")");
        continue;
      }
      if (fs == nullptr) {
        errors->push_back(where +
                          " is on no disk of this target; the migrated OS would not mount it");
        continue;
      }
    } else if (text::StartsWith(spec, "/dev/disk/by-id/") ||
               text::StartsWith(spec, "/dev/disk/by-path/")) {
      errors->push_back(where +
                        " names the source's hardware, which the target does not have: name it "
                        "by UUID= in the source's /etc/fstab before the cutover");
      continue;
    } else if (IsDiskDeviceName(spec)) {
      auto device = MapSourceDevice(target, spec);
      if (!device.ok()) {
        errors->push_back(where + ": " + device.status().message());
        continue;
      }
      fs = FindBy(target, "DEVICE", *device);
      if (fs == nullptr || (KnownType(type) && !SameType(type, fs->id.type))) {
        errors->push_back(
            where + " is " + *device + " on this target, which holds " +
            (fs == nullptr || fs->id.type.empty() ? std::string("no filesystem") : fs->id.type) +
            ", not " + type +
            "; check the order of the volumes or give the "
            "takeover the source disk of each volume (source_disks)");
        continue;
      }
      if (*device != spec) {
        lf.lines[i] = ReplaceFirstField(lf.lines[i], *device);
        rewritten.push_back("line " + std::to_string(i + 1) + " " + spec + " -> " + *device);
        notes->push_back(where + " -> " + *device);
      }
    } else {
      if (text::StartsWith(spec, "/dev/")) {
        notes->push_back(where + " is not a disk name (LVM or other); not checked");
      }
      continue;
    }
    if (mount_point == "/" && fs->device != target.root_device) {
      errors->push_back(where + " is not the root filesystem the takeover mounted (UUID " +
                        text::Lower(target.root_uuid) +
                        "); the migrated OS would mount another root: check root_volume");
      continue;
    }
    found.push_back(mp + " on " + fs->device);
  }
  notes->push_back("fstab: " +
                   (found.empty() ? std::string("no UUID entries") : text::Join(found, ", ")));
  if (!rewritten.empty()) {
    changes->Write("/etc/fstab", lf.Join(),
                   "device names of the source's disks rewritten: " + text::Join(rewritten, ", "));
  }
}

void AdaptGrub(const TargetDisks& target, RootChanges* changes, std::vector<std::string>* errors,
               std::vector<std::string>* notes) {
  std::vector<std::string> files = {"/etc/default/grub", "/boot/grub/grub.cfg",
                                    "/boot/grub2/grub.cfg", "/etc/kernel/cmdline"};
  if (auto dir = ResolveInRoot(changes->root(), "/boot/loader/entries"); dir.ok()) {
    for (const auto& name : text::ListDir(*dir)) {
      if (text::EndsWith(name, ".conf")) files.push_back("/boot/loader/entries/" + name);
    }
  }
  for (const auto& file : files) {
    auto content = changes->Read(file);
    if (!content.ok()) continue;
    text::LineFile lf = text::LineFile::Split(*content);
    std::vector<std::string> what;
    for (size_t i = 0; i < lf.lines.size(); ++i) {
      const std::string t = text::Trim(lf.lines[i]);
      const auto fields = text::Fields(t);
      if (fields.empty() || t[0] == '#') continue;
      const bool cmdline = file == "/etc/kernel/cmdline" ||
                           text::StartsWith(t, "GRUB_CMDLINE_LINUX") || fields[0] == "linux" ||
                           fields[0] == "linux16" || fields[0] == "linuxefi" ||
                           (text::StartsWith(file, "/boot/loader/") && fields[0] == "options");
      if (!cmdline) continue;
      std::string& line = lf.lines[i];
      for (size_t at = line.find("root="); at != std::string::npos;
           at = line.find("root=", at + 1)) {
        if (at > 0 && !std::isspace(static_cast<unsigned char>(line[at - 1])) &&
            line[at - 1] != '"' && line[at - 1] != '\'' && line[at - 1] != '=') {
          continue;  // e.g. "cdp.root=", "nfsroot="
        }
        const size_t start = at + 5;
        const size_t end = line.find_first_of(" \t\"'", start);
        const std::string value =
            line.substr(start, end == std::string::npos ? std::string::npos : end - start);
        const std::string where = text::At(file, i) + ": root=" + value;
        if (auto [kind, id] = IdSpec(value); !kind.empty()) {
          if (FindBy(target, kind, id) == nullptr) {
            errors->push_back(where +
                              " is on no disk of this target; the migrated OS would not "
                              "find its root: fix it on the source before the cutover");
          }
          continue;
        }
        if (!IsDiskDeviceName(value)) continue;  // LVM and others stay
        auto device = MapSourceDevice(target, value);
        const TargetFs* fs = device.ok() ? FindBy(target, "DEVICE", *device) : nullptr;
        if (fs == nullptr || fs->id.uuid.empty()) {
          errors->push_back(where + ": " +
                            (device.ok() ? *device + " on this target holds no filesystem"
                                         : device.status().message()));
          continue;
        }
        line.replace(start, value.size(), "UUID=" + fs->id.uuid);
        what.push_back("line " + std::to_string(i + 1) + " root=" + value +
                       " -> root=UUID=" + fs->id.uuid + " (" + *device + ")");
      }
    }
    if (!what.empty()) {
      notes->push_back(file + ": " + text::Join(what, ", "));
      changes->Write(file, lf.Join(), "root device: " + text::Join(what, ", "));
    }
  }
}

}  // namespace cdp::pe
