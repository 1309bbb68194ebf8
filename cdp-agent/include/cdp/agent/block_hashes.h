// BlockHashStore: one 64-bit content hash (XXH3) per 4 KiB block of the protected device,
// describing what the journal durably holds for that block, kept in a file in the agent's state
// directory. It lets a resync after a crash or a lost trace event re-read the device and send
// only the blocks whose content differs from what was last shipped.
//
// The value 0 means "unknown": the block must be sent. The trace capture keeps the file honest
// across a crash of the agent at any instant:
//   1. before a record for a block is queued, its entry is set to 0 (Invalidate);
//   2. only once that record is durable in the journal is the new hash written (Set).
// So a non-zero entry always equals the hash of the journal's latest content of the block. The
// file is mapped (MAP_SHARED): entries are plain stores into the page cache, no system call per
// entry, and they survive a kill of the agent; after a crash of the whole machine the file is not
// trusted (the caller checks the boot id) and everything is resent.
//
// File format (docs/agent-state.md): a 64-byte header — magic "CDPHASH1", big-endian u32 version (1),
// u32 block size (4096), u64 device size, u32 CRC32C of the preceding 24 bytes, zero padding —
// then one little-endian u64 per block. Created sparse (all unknown).
//
// Thread-safety: all methods are thread-safe; concurrent Set/Invalidate of the same block must
// be ordered by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "cdp/core/status.h"

namespace cdp::agent {

class BlockHashStore {
 public:
  static constexpr uint32_t kBlockSize = 4096;
  static constexpr uint64_t kUnknown = 0;

  // Opens `path`, creating it (all unknown) when absent. A file for another device size or
  // block size, or with a damaged header, is reset to all unknown with *reset = true (the
  // caller logs it); other errors name the path.
  static Result<std::unique_ptr<BlockHashStore>> Open(const std::string& path,
                                                      uint64_t device_size, bool* reset);
  ~BlockHashStore();

  // The hash of one block's content (up to kBlockSize bytes; the device's last block may be
  // shorter). Never kUnknown.
  static uint64_t Hash(const char* data, size_t length);

  uint64_t blocks() const { return blocks_; }
  uint64_t device_size() const { return device_size_; }

  // Sets the entries of every block that [offset, offset+length) touches to unknown (entries
  // unknown already are left alone, so their pages are not dirtied).
  Status Invalidate(uint64_t offset, uint64_t length);
  // Sets every entry to unknown.
  Status InvalidateAll();
  // Writes hashes.size() consecutive entries starting at first_block (an entry that already
  // holds its value is left alone, so its page is not dirtied).
  Status Set(uint64_t first_block, std::span<const uint64_t> hashes);
  // Reads out.size() consecutive entries starting at first_block.
  Status Get(uint64_t first_block, std::span<uint64_t> out) const;
  // msync + fdatasync.
  Status Sync();
  // Releases the mapping's resident pages from this process (they stay in the page cache), so a
  // large device's hash file does not accumulate in the agent's RSS. Call now and then.
  void TrimResident();

  // The file (it stays open and mapped while the store exists).
  const std::string& path() const { return path_; }

 private:
  BlockHashStore(std::string path, int fd, uint64_t device_size);
  Status CheckRange(uint64_t first_block, size_t count) const;
  Status Map();

  const std::string path_;
  const int fd_;
  const uint64_t device_size_;
  const uint64_t blocks_;
  char* map_ = nullptr;  // the whole file, MAP_SHARED
  uint64_t map_bytes_ = 0;
};

}  // namespace cdp::agent
