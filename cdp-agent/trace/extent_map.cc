#include "cdp/agent/extent_map.h"

#include <algorithm>

#include "cdp/core/record.h"

namespace cdp::agent {

DirtyExtentMap::DirtyExtentMap(uint64_t device_size, uint32_t align, size_t max_extents)
    : device_size_(device_size), align_(align), max_extents_(std::max<size_t>(max_extents, 2)) {}

void DirtyExtentMap::EraseTimeLocked(uint64_t since_ns) {
  auto it = times_.find(since_ns);
  if (it != times_.end()) times_.erase(it);
}

void DirtyExtentMap::Add(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= device_size_) return;
  const uint64_t mask = align_ - 1;
  const uint64_t begin = offset & ~mask;
  uint64_t end = std::min(offset + length, device_size_);
  end = std::min((end + mask) & ~mask, device_size_);
  std::lock_guard<std::mutex> lock(mu_);
  AddLocked(begin, end);
  if (extents_.size() > max_extents_) CoarsenLocked();
}

void DirtyExtentMap::AddLocked(uint64_t begin, uint64_t end) {
  uint64_t since = NowNanos();
  // Merge with every extent that overlaps or touches [begin, end).
  auto it = extents_.upper_bound(begin);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end >= begin) it = prev;
  }
  while (it != extents_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second.end);
    since = std::min(since, it->second.since_ns);
    bytes_ -= it->second.end - it->first;
    EraseTimeLocked(it->second.since_ns);
    it = extents_.erase(it);
  }
  extents_.emplace(begin, Span{end, since});
  times_.insert(since);
  bytes_ += end - begin;
}

void DirtyExtentMap::CoarsenLocked() {
  // Merge across gaps no larger than a threshold that doubles until the map has shrunk to half
  // its cap: linear passes, rare (only when writes are scattered over very many places).
  uint64_t gap = align_;
  while (extents_.size() > max_extents_ / 2) {
    std::map<uint64_t, Span> merged;
    std::multiset<uint64_t> times;
    uint64_t bytes = 0;
    auto it = extents_.begin();
    uint64_t begin = it->first;
    Span span = it->second;
    auto flush = [&] {
      merged.emplace_hint(merged.end(), begin, span);
      times.insert(span.since_ns);
      bytes += span.end - begin;
    };
    for (++it; it != extents_.end(); ++it) {
      if (it->first - span.end <= gap) {
        span.end = it->second.end;
        span.since_ns = std::min(span.since_ns, it->second.since_ns);
      } else {
        flush();
        begin = it->first;
        span = it->second;
      }
    }
    flush();
    extents_.swap(merged);
    times_.swap(times);
    bytes_ = bytes;
    gap *= 2;
  }
}

std::vector<Extent> DirtyExtentMap::Take(uint64_t max_bytes, size_t max_extents) {
  std::vector<Extent> out;
  std::lock_guard<std::mutex> lock(mu_);
  if (extents_.empty() || max_extents == 0) return out;
  max_bytes = std::max<uint64_t>(max_bytes, align_);
  auto it = extents_.lower_bound(cursor_);
  if (it == extents_.end()) it = extents_.begin();
  uint64_t taken = 0;
  while (it != extents_.end() && taken < max_bytes && out.size() < max_extents) {
    const uint64_t begin = it->first;
    const Span span = it->second;
    const uint64_t room = (max_bytes - taken) & ~uint64_t{align_ - 1};
    if (room == 0) break;
    if (span.end - begin > room) {
      // Split: take the head, keep the tail (with its time).
      out.push_back({begin, room});
      extents_.erase(it);
      extents_.emplace(begin + room, span);
      bytes_ -= room;
      taken += room;
      cursor_ = begin + room;
      break;
    }
    out.push_back({begin, span.end - begin});
    bytes_ -= span.end - begin;
    taken += span.end - begin;
    cursor_ = span.end;
    EraseTimeLocked(span.since_ns);
    it = extents_.erase(it);
  }
  return out;
}

bool DirtyExtentMap::Overlaps(uint64_t offset, uint64_t length) const {
  if (length == 0) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = extents_.upper_bound(offset);
  if (it != extents_.begin() && std::prev(it)->second.end > offset) return true;
  return it != extents_.end() && it->first < offset + length;
}

std::vector<Extent> DirtyExtentMap::TakeAll() {
  std::vector<Extent> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.reserve(extents_.size());
  for (const auto& [begin, span] : extents_) out.push_back({begin, span.end - begin});
  extents_.clear();
  times_.clear();
  bytes_ = 0;
  return out;
}

uint64_t DirtyExtentMap::dirty_since_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return times_.empty() ? 0 : *times_.begin();
}

uint64_t DirtyExtentMap::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

size_t DirtyExtentMap::extents() const {
  std::lock_guard<std::mutex> lock(mu_);
  return extents_.size();
}

}  // namespace cdp::agent
