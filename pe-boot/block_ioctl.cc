#include "block_ioctl.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace cdp::pe {

namespace {

// Runs ioctl `request` on `disk` opened read-only; ENOTTY and EINVAL (nothing to do for this
// kind of file) are no error. "" or "<what> of DISK not <done>: <errno>".
std::string DiskIoctl(const std::string& disk, unsigned long request, const std::string& failed) {
  const int fd = ::open(disk.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + disk + ": " + std::strerror(errno);
  std::string note;
  if (::ioctl(fd, request, 0) != 0 && errno != ENOTTY && errno != EINVAL) {
    note = failed + ": " + std::strerror(errno);
  }
  ::close(fd);
  return note;
}

}  // namespace

std::string DropBufferCache(const std::string& disk) {
  return DiskIoctl(disk, BLKFLSBUF, "cache of " + disk + " not dropped");
}

std::string RereadPartitions(const std::string& disk) {
  return DiskIoctl(disk, BLKRRPART, "partition table of " + disk + " not re-read");
}

std::vector<std::string> PartitionsOf(const std::string& disk) {
  std::vector<std::string> parts;
  if (disk.empty()) return parts;
  const bool digit = disk.back() >= '0' && disk.back() <= '9';
  for (int n = 1; n <= 128; ++n) {
    const std::string p = disk + (digit ? "p" : "") + std::to_string(n);
    struct stat st;
    if (::stat(p.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) parts.push_back(p);
  }
  return parts;
}

}  // namespace cdp::pe
