// Which filesystems live on a protected disk: `--freeze auto` (docs/operator-guide.md).
//
// A filesystem is on the disk when the block device it is mounted from is the disk, one of its
// partitions, or a device stacked on any of those (device-mapper: LVM, dm-crypt; md) — found
// from sysfs: a disk's partitions are the directories SYSFS/block/DISK/* that hold a `partition`
// file, and a device X is stacked on Y when SYSFS/class/block/X/slaves/Y exists. Each device's
// number is SYSFS/class/block/NAME/dev ("MAJOR:MINOR"). The mounts are /proc/self/mountinfo's
// lines whose MAJOR:MINOR field is one of those devices.
//
// Pure functions over a sysfs root and the mountinfo text, so they are tested with fixtures.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

struct DiskFilesystem {
  std::string mount_point;  // e.g. "/var/lib/postgresql" (mountinfo's escapes decoded)
  std::string fs_type;      // e.g. "xfs"
  std::string device;       // the sysfs name it is mounted from, e.g. "dm-0"
  dev_t dev = 0;            // its device number (the filesystem's st_dev)
};

// The sysfs names of `device_name` and of every device stacked on it, directly or not: its
// partitions (when it is a whole disk) and whatever lists one of those among its slaves. The
// device itself first, then in discovery order. NotFound when SYSFS/class/block/DEVICE does not
// exist.
Result<std::vector<std::string>> DevicesOnDisk(const std::string& sysfs_root,
                                               const std::string& device_name);

// The filesystems mounted (per `mountinfo`, /proc/self/mountinfo's text) from `device_name` or
// a device stacked on it that FIFREEZE can freeze, one per filesystem (a filesystem mounted at
// several places is listed at its first mount of its root, else its first mount), ordered by
// mount point. Left out: filesystems that cannot be frozen (anything but ext2/3/4, xfs, btrfs,
// f2fs, jfs, reiserfs, nilfs2, gfs2, ocfs2 — vfat, tmpfs...), read-only mounts (nothing to
// make consistent), swap (never in mountinfo). *skipped, when not null, gets one "MOUNT (TYPE,
// why)" per mount left out, for the log line. Errors: DevicesOnDisk's.
Result<std::vector<DiskFilesystem>> FilesystemsOnDisk(const std::string& sysfs_root,
                                                      const std::string& mountinfo,
                                                      const std::string& device_name,
                                                      std::vector<std::string>* skipped);

}  // namespace cdp::agent
