// Filesystem ids: which filesystem a disk or partition holds and its UUID, read from the
// superblock (not by blkid, which the PE does not have). The takeover uses them to find the
// migrated OS's root and to check its fstab (docs/pe-agent.md §5, step mount).
//
// Thread-safety: every function is reentrant; none keeps state.
#pragma once

#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp::pe {

// What a superblock says about a filesystem.
struct FsId {
  std::string type;  // "ext4" (any of ext2/3/4), "xfs", "swap" or "vfat"
  std::string uuid;  // lowercase, as fstab and blkid write it ("0a1b...-..." or "abcd-1234")
};

// Identifies the filesystem whose first bytes are `head` (at least 2048 bytes are needed for
// ext4): ext2/3/4 by the superblock magic 0xEF53 at 1024 + 0x38, UUID at 1024 + 0x68 (16
// bytes); XFS by "XFSB" at 0, UUID at 32; swap by "SWAPSPACE2" at 4086, UUID at 1024 + 12; FAT
// by the boot sector signature and its volume serial. NotFound when it is none of these (or
// `head` is too short to tell).
Result<FsId> IdentifyFilesystem(std::string_view head);

// Reads the first 4 KiB of `path` (a block device or an image file) and identifies it. IOError
// when it cannot be read (a missing path too); NotFound, naming the path, when it holds no
// filesystem IdentifyFilesystem knows.
Result<FsId> ReadFsId(const std::string& path);

}  // namespace cdp::pe
