#include "cdp/agent/extent_map.h"

#include <algorithm>

#include "cdp/core/record.h"

namespace cdp::agent {

DirtyExtentMap::DirtyExtentMap(uint64_t device_size, uint32_t align, size_t max_extents)
    : device_size_(device_size), align_(align), max_extents_(std::max<size_t>(max_extents, 2)) {}

void DirtyExtentMap::Add(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= device_size_) return;
  const uint64_t mask = align_ - 1;
  const uint64_t begin = offset & ~mask;
  uint64_t end = std::min(offset + length, device_size_);
  end = std::min((end + mask) & ~mask, device_size_);
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes_ == 0) since_ns_ = NowNanos();
  AddLocked(begin, end);
  if (extents_.size() > max_extents_) CoarsenLocked();
}

void DirtyExtentMap::AddLocked(uint64_t begin, uint64_t end) {
  // Merge with every extent that overlaps or touches [begin, end).
  auto it = extents_.upper_bound(begin);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= begin) it = prev;
  }
  while (it != extents_.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    bytes_ -= it->second - it->first;
    it = extents_.erase(it);
  }
  extents_.emplace(begin, end);
  bytes_ += end - begin;
}

void DirtyExtentMap::CoarsenLocked() {
  // Merge across gaps no larger than a threshold that doubles until the map has shrunk to half
  // its cap: linear passes, rare (only when writes are scattered over very many places).
  uint64_t gap = align_;
  while (extents_.size() > max_extents_ / 2) {
    std::map<uint64_t, uint64_t> merged;
    uint64_t bytes = 0;
    auto it = extents_.begin();
    uint64_t begin = it->first, end = it->second;
    for (++it; it != extents_.end(); ++it) {
      if (it->first - end <= gap) {
        end = it->second;
      } else {
        merged.emplace_hint(merged.end(), begin, end);
        bytes += end - begin;
        begin = it->first;
        end = it->second;
      }
    }
    merged.emplace_hint(merged.end(), begin, end);
    bytes += end - begin;
    extents_.swap(merged);
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
    const uint64_t begin = it->first, end = it->second;
    const uint64_t room = (max_bytes - taken) & ~uint64_t{align_ - 1};
    if (room == 0) break;
    if (end - begin > room) {
      // Split: take the head, keep the tail.
      out.push_back({begin, room});
      extents_.erase(it);
      extents_.emplace(begin + room, end);
      bytes_ -= room;
      taken += room;
      cursor_ = begin + room;
      break;
    }
    out.push_back({begin, end - begin});
    bytes_ -= end - begin;
    taken += end - begin;
    cursor_ = end;
    it = extents_.erase(it);
  }
  if (bytes_ == 0) since_ns_ = 0;
  return out;
}

bool DirtyExtentMap::Overlaps(uint64_t offset, uint64_t length) const {
  if (length == 0) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = extents_.upper_bound(offset);
  if (it != extents_.begin() && std::prev(it)->second > offset) return true;
  return it != extents_.end() && it->first < offset + length;
}

std::vector<Extent> DirtyExtentMap::TakeAll() {
  std::vector<Extent> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.reserve(extents_.size());
  for (const auto& [begin, end] : extents_) out.push_back({begin, end - begin});
  extents_.clear();
  bytes_ = 0;
  since_ns_ = 0;
  return out;
}

uint64_t DirtyExtentMap::dirty_since_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return since_ns_;
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
