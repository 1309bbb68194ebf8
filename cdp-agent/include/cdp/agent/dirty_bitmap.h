// DirtyBitmap: regions of a volume whose latest content the journal may not have, waiting for a
// resync. The agent falls back to it when its send buffer is full or the journal-server is
// unreachable (async mode never stalls the source), and saves it on a clean shutdown.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

class DirtyBitmap {
 public:
  // REQUIRES: region_size is a power of two >= 4096.
  DirtyBitmap(uint64_t volume_size, uint32_t region_size = 64 * 1024);

  // Marks every region that [offset, offset+length) touches.
  void Mark(uint64_t offset, uint64_t length);
  // Marks the whole volume.
  void MarkAll();

  // Finds the first dirty region, clears a run of up to max_bytes (at least one region) of
  // consecutive dirty regions, and returns it as [*offset, *offset + *length) (clipped to the
  // volume end). False when nothing is dirty.
  bool TakeRun(uint64_t max_bytes, uint64_t* offset, uint64_t* length);

  // Bytes of the volume in dirty regions (the last region counts only up to the volume end).
  uint64_t dirty_bytes() const;
  // When the bitmap last went from clean to dirty (ns since the epoch); 0 while clean. The age
  // of the oldest write that only the bitmap remembers, for the replication lag figure.
  uint64_t dirty_since_ns() const;
  bool empty() const { return dirty_bytes() == 0; }
  uint32_t region_size() const { return region_size_; }

  // Saves to `path` atomically (temp file, fsync, rename). Format: docs/agent-state.md.
  Status Save(const std::string& path) const;
  // Loads a bitmap saved for the same volume size and region size; Corruption or
  // InvalidArgument naming the file otherwise. Marks are OR-ed into this bitmap.
  Status Load(const std::string& path);

 private:
  const uint64_t volume_size_;
  const uint32_t region_size_;
  const uint64_t regions_;
  mutable std::mutex mu_;
  std::vector<uint64_t> words_;  // GUARDED_BY(mu_)
  uint64_t dirty_regions_ = 0;   // GUARDED_BY(mu_)
  uint64_t dirty_since_ns_ = 0;  // GUARDED_BY(mu_)
};

}  // namespace cdp::agent
