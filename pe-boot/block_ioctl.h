// The block-device ioctls of a takeover (docs/pe-agent.md §5, steps flush and mount): dropping a
// disk's page cache and re-reading its partition table, and the partition devices that exist.
// The disks' own I/O (size, flush, zeroes) is core's BlockDevice.
//
// Each returns "" or a note on what went wrong: a takeover goes on without them (a regular
// file, in host-side tests, has neither a cache to drop nor partitions) and reports the note.
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

namespace cdp::pe {

// Drops the page cache of block device `disk` (BLKFLSBUF), so a mount reads what O_DIRECT writes
// put on the disk. A regular file (ENOTTY) or a device without a cache (EINVAL) is no error.
std::string DropBufferCache(const std::string& disk);

// Re-reads the partition table of `disk` (BLKRRPART): the kernel scanned it when the PE booted,
// before the replicator wrote the partition table, so the partitions appear only now. A regular
// file (ENOTTY) or a disk without partition scanning (EINVAL: a loop device without -P) has none
// to re-read: no error.
std::string RereadPartitions(const std::string& disk);

// The partition devices of `disk` that exist, in order: DISK1.. (DISKp1.. when the disk's name
// ends in a digit, as the kernel names them: nvme0n1p1, loop0p1), up to 128.
std::vector<std::string> PartitionsOf(const std::string& disk);

}  // namespace cdp::pe
