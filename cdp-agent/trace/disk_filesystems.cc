// The filesystems on a protected disk (disk_filesystems.h).
#include "cdp/agent/disk_filesystems.h"

#include <sys/sysmacros.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace cdp::agent {

namespace {

namespace fs = std::filesystem;

constexpr const char* kFreezable[] = {"ext2", "ext3",     "ext4",   "xfs",  "btrfs", "f2fs",
                                      "jfs",  "reiserfs", "nilfs2", "gfs2", "ocfs2"};

bool ReadDevNumber(const std::string& sysfs_root, const std::string& name, dev_t* dev) {
  std::ifstream in(sysfs_root + "/class/block/" + name + "/dev");
  std::string text;
  if (!(in >> text)) return false;
  unsigned maj = 0, min = 0;
  char colon = 0;
  std::istringstream parse(text);
  if (!(parse >> maj >> colon >> min) || colon != ':') return false;
  *dev = makedev(maj, min);
  return true;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size() &&
        std::isdigit(static_cast<unsigned char>(text[i + 1]))) {
      out.push_back(static_cast<char>(std::stoi(text.substr(i + 1, 3), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

}  // namespace

Result<std::vector<std::string>> DevicesOnDisk(const std::string& sysfs_root,
                                               const std::string& device_name) {
  std::error_code ec;
  if (!fs::exists(sysfs_root + "/class/block/" + device_name, ec)) {
    return Status::NotFound("block device " + device_name + " is not in " + sysfs_root +
                            "/class/block");
  }
  std::vector<std::string> found = {device_name};
  // Partitions of a whole disk.
  for (const auto& entry : fs::directory_iterator(sysfs_root + "/block/" + device_name, ec)) {
    if (fs::exists(entry.path() / "partition", ec)) {
      found.push_back(entry.path().filename().string());
    }
  }
  std::sort(found.begin() + 1, found.end());
  // Devices stacked on any found one, until nothing new turns up.
  std::vector<std::string> all_devices;
  for (const auto& entry : fs::directory_iterator(sysfs_root + "/class/block", ec)) {
    all_devices.push_back(entry.path().filename().string());
  }
  std::sort(all_devices.begin(), all_devices.end());
  for (bool grew = true; grew;) {
    grew = false;
    for (const std::string& candidate : all_devices) {
      if (std::find(found.begin(), found.end(), candidate) != found.end()) continue;
      for (size_t i = 0; i < found.size(); ++i) {
        if (fs::exists(sysfs_root + "/class/block/" + candidate + "/slaves/" + found[i], ec)) {
          found.push_back(candidate);
          grew = true;
          break;
        }
      }
    }
  }
  return found;
}

Result<std::vector<DiskFilesystem>> FilesystemsOnDisk(const std::string& sysfs_root,
                                                      const std::string& mountinfo,
                                                      const std::string& device_name,
                                                      std::vector<std::string>* skipped) {
  CDP_ASSIGN_OR_RETURN(std::vector<std::string> devices, DevicesOnDisk(sysfs_root, device_name));
  std::vector<std::pair<dev_t, std::string>> numbers;
  for (const std::string& name : devices) {
    dev_t dev = 0;
    if (ReadDevNumber(sysfs_root, name, &dev)) numbers.emplace_back(dev, name);
  }
  std::vector<DiskFilesystem> result;
  std::vector<bool> at_root;  // result[i] was found at a mount of its filesystem's root
  std::istringstream lines(mountinfo);
  std::string line;
  while (std::getline(lines, line)) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    std::istringstream fields(line);
    std::string id, parent, majmin, root, mount_point, options;
    if (!(fields >> id >> parent >> majmin >> root >> mount_point >> options)) continue;
    const size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream rest(line.substr(sep + 3));
    std::string fs_type;
    if (!(rest >> fs_type)) continue;
    unsigned maj = 0, min = 0;
    char colon = 0;
    std::istringstream parse(majmin);
    if (!(parse >> maj >> colon >> min) || colon != ':') continue;
    const dev_t dev = makedev(maj, min);
    auto number =
        std::find_if(numbers.begin(), numbers.end(), [&](const auto& n) { return n.first == dev; });
    if (number == numbers.end()) continue;
    mount_point = Unescape(mount_point);
    const bool freezable =
        std::find(std::begin(kFreezable), std::end(kFreezable), fs_type) != std::end(kFreezable);
    const bool read_only = options == "ro" || options.rfind("ro,", 0) == 0;
    if (!freezable || read_only) {
      if (skipped != nullptr) {
        skipped->push_back(mount_point + " (" + fs_type + ", " +
                           (freezable ? "read-only" : "cannot be frozen") + ")");
      }
      continue;
    }
    auto same = std::find_if(result.begin(), result.end(),
                             [&](const DiskFilesystem& f) { return f.dev == dev; });
    if (same != result.end()) {
      const size_t i = static_cast<size_t>(same - result.begin());
      if (!at_root[i] && root == "/") {
        same->mount_point = mount_point;
        at_root[i] = true;
      }
      continue;
    }
    result.push_back({mount_point, fs_type, number->second, dev});
    at_root.push_back(root == "/");
  }
  std::sort(result.begin(), result.end(), [](const DiskFilesystem& a, const DiskFilesystem& b) {
    return a.mount_point < b.mount_point;
  });
  return result;
}

}  // namespace cdp::agent
