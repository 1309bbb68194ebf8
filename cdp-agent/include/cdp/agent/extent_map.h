// DirtyExtentMap: the byte ranges of a device that changed and have not been read back yet, as a
// set of disjoint, coalesced extents aligned to a block size (4 KiB: whole blocks are read back
// and hashed). Trace mode adds an extent for every completed write and takes batches to read
// back, in elevator order (ascending offsets from a rotating cursor) so reads stay sequential and
// no region starves.
//
// Memory is bounded: past max_extents, neighbouring extents are merged across the smallest gaps
// (the map over-approximates, which only costs extra reads, never a lost change).
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <vector>

namespace cdp::agent {

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const Extent&) const = default;
};

class DirtyExtentMap {
 public:
  // REQUIRES: align is a power of two; max_extents >= 2.
  DirtyExtentMap(uint64_t device_size, uint32_t align = 4096, size_t max_extents = 1 << 18);

  // Adds [offset, offset+length), widened to `align` and clipped to the device.
  void Add(uint64_t offset, uint64_t length);

  // Removes and returns up to max_bytes (at least one extent's first `align` bytes when anything
  // is dirty) in at most max_extents extents, starting at the first extent at or after the
  // cursor (wrapping to the start). An extent longer than what is left of max_bytes is split at
  // an aligned boundary and its tail stays.
  std::vector<Extent> Take(uint64_t max_bytes, size_t max_extents);

  // True when any extent overlaps [offset, offset+length).
  bool Overlaps(uint64_t offset, uint64_t length) const;

  // Removes and returns everything, in offset order.
  std::vector<Extent> TakeAll();

  // When the oldest change still in the map was added (ns since the epoch; merged extents keep
  // the older time); 0 while empty. Its age is the replication lag of changes not read back yet.
  uint64_t dirty_since_ns() const;
  uint64_t bytes() const;
  size_t extents() const;
  bool empty() const { return bytes() == 0; }
  uint32_t align() const { return align_; }

 private:
  void AddLocked(uint64_t begin, uint64_t end);
  void CoarsenLocked();

  const uint64_t device_size_;
  const uint32_t align_;
  const size_t max_extents_;
  mutable std::mutex mu_;
  struct Span {
    uint64_t end = 0;
    uint64_t since_ns = 0;  // when its oldest part was added
  };
  void EraseTimeLocked(uint64_t since_ns);

  // GUARDED_BY(mu_) all: begin -> span, disjoint and not adjacent; the multiset holds every
  // span's since_ns, for the oldest in O(log n).
  std::map<uint64_t, Span> extents_;
  std::multiset<uint64_t> times_;
  uint64_t bytes_ = 0;
  uint64_t cursor_ = 0;
};

}  // namespace cdp::agent
