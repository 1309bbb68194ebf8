// The migrated OS's block device names on the target (docs/pe-agent.md §5, "fstab, root= and
// GRUB"): /etc/fstab by UUID, LABEL, PARTUUID or device name checked against what the target's
// disks hold, device names of the source's disks (/dev/sdb1) rewritten to the target's
// (/dev/vdb1), and the root device of the kernel command line in GRUB's config.
//
// The source's disks map to the target's by the takeover request's source_disks (volume -> the
// source's device name, e.g. db01-sda -> /dev/sda) or, without it, by order: the i-th source disk
// of its kind (sda, sdb, ... / vda, ... / xvda, ... / nvme0n1, nvme1n1, ...) is the i-th volume.
// LVM names (/dev/mapper/VG-LV, /dev/VG/LV) do not change with the hardware and stay.
//
// Everything is planned into a RootChanges (root_changes.h). Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

#include "cdp/pe/filesystem_id.h"
#include "cdp/pe/root_changes.h"

namespace cdp::pe {

// One disk or partition of the target, as the takeover found it.
struct TargetFs {
  std::string device;    // "/dev/vdb1"
  std::string disk;      // "/dev/vdb"
  int partition = 0;     // 1-based; 0 = the whole disk
  FsId id;               // type "" when no known filesystem is on it
  std::string partuuid;  // lowercase; "" when none
};

struct TargetDisks {
  std::vector<std::string> disks;         // the volumes' disks, in volume order
  std::vector<std::string> source_disks;  // per volume: the source's device ("" = by order)
  std::vector<TargetFs> filesystems;      // every disk and partition
  std::string root_device, root_uuid;     // the root filesystem the takeover mounted
};

// The target's device for the source's device `source` ("/dev/sdb1" -> "/dev/vdb1", a whole
// disk to a whole disk). NotFound naming the source disk when no volume is it; InvalidArgument
// when `source` is not a disk or partition name this knows (sd, vd, xvd, hd, nvme).
Result<std::string> MapSourceDevice(const TargetDisks& target, const std::string& source);

// True for names of source disks and partitions this maps ("/dev/sda2", "/dev/nvme0n1p1").
bool IsDiskDeviceName(const std::string& device);

// Checks every fstab entry with a mount point (and every swap) against `target`:
//   UUID= / LABEL= / PARTUUID= (and /dev/disk/by-uuid|by-label|by-partuuid/): on a disk of the
//   target, and `/` the root filesystem the takeover mounted;
//   a device name of a source disk: rewritten to the target's, which must hold a filesystem of
//   the entry's type;
//   /dev/disk/by-id and by-path: refused (they name the source's hardware);
//   LVM and other names: a note, not checked; so is an id on no plain disk or partition when
//   the target's disks hold LVM physical volumes (logical volumes are not read), unless it is /.
// Errors name the line: "fstab line 3: LABEL=data (/data) is on no disk of this target; the
// migrated OS would not mount it". Notes: "fstab: / on /dev/vda1, /data on /dev/vdb1", and one per
// rewritten line.
void AdaptFstab(const TargetDisks& target, RootChanges* changes, std::vector<std::string>* errors,
                std::vector<std::string>* notes);

// The root device on the kernel command line in GRUB's config: GRUB_CMDLINE_LINUX and
// GRUB_CMDLINE_LINUX_DEFAULT of /etc/default/grub, the linux lines of /boot/grub/grub.cfg and
// /boot/grub2/grub.cfg, the options of /boot/loader/entries/*.conf. `root=UUID=`/`LABEL=`/
// `PARTUUID=` stay (they are checked as fstab's are); `root=/dev/sdXN` becomes
// `root=UUID=<the filesystem on the target's device>`. GRUB's own `set root='hd0,gpt2'` names
// the firmware's first disk, which the target boots from: left as it is.
void AdaptGrub(const TargetDisks& target, RootChanges* changes, std::vector<std::string>* errors,
               std::vector<std::string>* notes);

}  // namespace cdp::pe
