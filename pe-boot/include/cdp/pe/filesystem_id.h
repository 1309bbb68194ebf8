// Filesystem ids: which filesystem a disk or partition holds and its UUID, read from the
// superblock (not by blkid, which the PE does not have). The takeover uses them to find the
// migrated OS's root and to check its fstab (docs/pe-agent.md §5, step mount).
//
// Thread-safety: every function is reentrant; none keeps state.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp::pe {

// What a superblock says about a filesystem.
struct FsId {
  std::string type;  // "ext4" (any of ext2/3/4), "xfs", "swap", "vfat" or "LVM2_member"
  std::string uuid;  // lowercase, as fstab and blkid write it ("0a1b...-..." or "abcd-1234")
  std::string label;  // as blkid prints LABEL= ("" when none): trailing NULs and (FAT) blanks cut
};

// Identifies the filesystem whose first bytes are `head` (at least 2048 bytes are needed for
// ext4): ext2/3/4 by the superblock magic 0xEF53 at 1024 + 0x38, UUID at 1024 + 0x68 (16
// bytes), label at 1024 + 0x78 (16); XFS by "XFSB" at 0, UUID at 32, label at 108 (12); swap by
// "SWAPSPACE2" at 4086, UUID at 1024 + 12, label at 1024 + 28 (16); FAT by the boot sector
// signature, its volume serial and label (11 bytes after the serial; "NO NAME" is none); an LVM
// physical volume by its label ("LABELONE" ... "LVM2 001" in one of the first 4 sectors) and
// its PV UUID (the filesystems of its logical volumes are not read). NotFound
// when it is none of these (or `head` is too short to tell).
Result<FsId> IdentifyFilesystem(std::string_view head);

// Reads the first 4 KiB of `path` (a block device or an image file) and identifies it. IOError
// when it cannot be read (a missing path too); NotFound, naming the path, when it holds no
// filesystem IdentifyFilesystem knows.
Result<FsId> ReadFsId(const std::string& path);

// The partition UUIDs of a partition table, as blkid prints PARTUUID= (lowercase), by partition
// number (1-based). GPT: the unique partition GUID of each used entry (the header at LBA 1 of
// `sector_size` bytes, the entries where it says; mixed-endian GUIDs as blkid prints them). MBR:
// "SSSSSSSS-NN", the disk signature (offset 440) and the partition number, for the 4 primary
// partitions. Empty when `head` holds neither (or is too short: GPT needs the header and its
// entries, at most 2 MiB + 34 sectors). Corruption never: an unreadable table has no ids.
std::map<int, std::string> PartitionUuids(std::string_view head, size_t sector_size = 512);

// Reads enough of `disk` for PartitionUuids (its first 1 MiB + the entry array). IOError when
// it cannot be read.
Result<std::map<int, std::string>> ReadPartitionUuids(const std::string& disk);

}  // namespace cdp::pe
