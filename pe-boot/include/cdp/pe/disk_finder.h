// Finding the target's disks inside the PE: every volume is one virtio disk whose serial is the
// volume's name (cdpctl target start attaches them so), plus one metadata disk.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::pe {

// virtio-blk serials hold at most 20 bytes (VIRTIO_BLK_ID_BYTES), so volume names of a target
// are limited to this.
inline constexpr size_t kMaxSerialBytes = 20;
// The serial of the metadata disk; no volume may be called this.
inline constexpr std::string_view kDefaultMetaSerial = "cdp-pe-meta";

struct VolumeSpec {
  std::string name;
  uint64_t size = 0;  // bytes
};

// Parses "NAME:SIZE[,NAME:SIZE...]" (SIZE in bytes, as cdpctl puts it on the kernel command
// line as cdp.volumes=). InvalidArgument naming the bad item: a bad volume name, a name longer
// than a virtio serial, the metadata serial, a size that is not a positive multiple of 512,
// a duplicate.
Result<std::vector<VolumeSpec>> ParseVolumeSpecs(std::string_view text,
                                                 std::string_view meta_serial);

struct FoundDisk {
  std::string name;    // "vda"
  std::string device;  // "/dev/vda"
  std::string serial;  // from /sys/block/NAME/serial; may be empty
  uint64_t size = 0;   // bytes
};

// Lists the disks under SYS_ROOT/block that have a serial attribute (virtio-blk), sorted by
// name, with their device node DEV_ROOT/NAME. IOError when SYS_ROOT/block cannot be read.
Result<std::vector<FoundDisk>> ListSerialDisks(const std::string& sys_root,
                                               const std::string& dev_root);

struct DiskAssignment {
  std::map<std::string, FoundDisk> volumes;  // volume name -> its disk
  FoundDisk meta;
};

// Matches volumes to disks by serial. FailedPrecondition, naming the disk or the volume and
// what to do, when: a disk's serial matches no volume (nor the metadata serial); a volume has
// no disk; two disks have one serial; a disk is smaller than its volume; there is no metadata
// disk. Nothing is opened, so on error nothing is written.
Result<DiskAssignment> AssignDisks(const std::vector<VolumeSpec>& volumes,
                                   const std::vector<FoundDisk>& disks,
                                   std::string_view meta_serial);

}  // namespace cdp::pe
