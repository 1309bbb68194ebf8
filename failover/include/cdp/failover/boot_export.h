// Exporting the migrated OS's kernel from the target's replica, so the PE can be rebuilt to run
// it and the cutover can take the switch_root path (`cdpctl target export-boot`,
// docs/target-vm.md "Rebuilding the PE from the replica"):
//
//   1. the target's disks are frozen at a batch boundary (TargetSnapshot, tag "boot-delta");
//   2. the volume's frozen file is copied to a sparse raw file in the target's state_dir
//      (qemu-img convert) and the snapshot is thawed at once — the target is held for
//      milliseconds and on deltas only for the copy;
//   3. the ext4 filesystem holding /boot is found in the copy (the whole disk, or an MBR or GPT
//      partition) and mounted (loop, offset) read-write, so its journal is replayed into the
//      private copy and a kernel installed just before is seen;
//   4. the newest kernel with /boot/vmlinuz-KVER, /boot/initrd.img-KVER and /lib/modules/KVER
//      (pe::ChooseOwnKernel) is copied to OUT as boot/vmlinuz-KVER, boot/initrd.img-KVER,
//      boot/config-KVER (when present) and lib/modules/KVER — the layout
//      `pe-boot/build-pe-image --kernel-from OUT` reads;
//   5. everything temporary is removed (also on failure): mount, loop device, raw copy; what a
//      killed export left is removed by the next. A TargetLock keeps drills and cutovers out.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "cdp/core/status.h"
#include "cdp/failover/target_config.h"

namespace cdp::failover {

struct BootExport {
  std::string kernel_release;  // KVER
  uint64_t lsn = 0;            // the volume's applied LSN the copy was taken at
  uint64_t fs_offset = 0;      // where the ext4 filesystem starts on the disk
  std::string fs_uuid;
  std::string out_dir;
  uint64_t module_files = 0;  // files under lib/modules/KVER
};

// Exports as above. OUT must not exist or be an empty directory (it is written as OUT.tmp and
// renamed, so it is complete or absent). Errors: a volume the config does not have (NotFound),
// the target not pe-ready or not answering (its status), no ext4 on the disk (NotFound listing
// what was looked at), no bootable kernel (pe::ChooseOwnKernel's NotFound), a tool failing
// (its output). Progress lines go to `progress`.
Result<BootExport> ExportBoot(const TargetConfig& target, const std::string& volume,
                              const std::string& out_dir, std::ostream& progress);

// The offsets of the filesystems worth trying on a raw disk image: 0, then each MBR partition
// (type != 0, not extended), or each GPT partition when the MBR is protective (type 0xEE).
// Exposed for tests; reads at most the first few KiB and the GPT entry array.
Result<std::vector<uint64_t>> CandidateFilesystemOffsets(const std::string& raw_image);

}  // namespace cdp::failover
