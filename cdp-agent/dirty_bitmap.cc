#include "cdp/agent/dirty_bitmap.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cdp/core/atomic_file.h"
#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"

namespace cdp::agent {

namespace {
constexpr char kMagic[8] = {'C', 'D', 'P', 'D', 'I', 'R', 'T', '1'};
}

DirtyBitmap::DirtyBitmap(uint64_t volume_size, uint32_t region_size)
    : volume_size_(volume_size),
      region_size_(region_size),
      regions_((volume_size + region_size - 1) / region_size),
      words_((regions_ + 63) / 64, 0) {}

void DirtyBitmap::Mark(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= volume_size_) return;
  // Clipped without computing offset + length, which can wrap around 2^64.
  const uint64_t end = length > volume_size_ - offset ? volume_size_ : offset + length;
  std::lock_guard<std::mutex> lock(mu_);
  if (dirty_regions_ == 0) dirty_since_ns_ = NowNanos();
  for (uint64_t r = offset / region_size_; r <= (end - 1) / region_size_; ++r) {
    uint64_t& w = words_[r / 64];
    const uint64_t bit = uint64_t{1} << (r % 64);
    if ((w & bit) == 0) {
      w |= bit;
      ++dirty_regions_;
    }
  }
}

void DirtyBitmap::MarkAll() { Mark(0, volume_size_); }

bool DirtyBitmap::TakeRun(uint64_t max_bytes, uint64_t* offset, uint64_t* length) {
  std::lock_guard<std::mutex> lock(mu_);
  if (dirty_regions_ == 0) return false;
  uint64_t r = 0;
  while (r < regions_) {
    const uint64_t w = words_[r / 64] >> (r % 64);
    if (w == 0) {
      r = (r / 64 + 1) * 64;
      continue;
    }
    r += static_cast<uint64_t>(__builtin_ctzll(w));
    break;
  }
  if (r >= regions_) return false;
  const uint64_t max_regions = std::max<uint64_t>(1, max_bytes / region_size_);
  uint64_t n = 0;
  while (r + n < regions_ && n < max_regions &&
         (words_[(r + n) / 64] & (uint64_t{1} << ((r + n) % 64)))) {
    words_[(r + n) / 64] &= ~(uint64_t{1} << ((r + n) % 64));
    ++n;
  }
  dirty_regions_ -= n;
  if (dirty_regions_ == 0) dirty_since_ns_ = 0;
  *offset = r * region_size_;
  *length = std::min(volume_size_, (r + n) * region_size_) - *offset;
  return true;
}

uint64_t DirtyBitmap::dirty_since_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dirty_since_ns_;
}

uint64_t DirtyBitmap::dirty_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t bytes = dirty_regions_ * region_size_;
  // The last region may reach past the volume end; only its part inside the volume is dirty.
  const uint64_t last = regions_ - 1;
  if (regions_ > 0 && (words_[last / 64] & (uint64_t{1} << (last % 64))) != 0) {
    bytes -= regions_ * region_size_ - volume_size_;
  }
  return bytes;
}

// Layout: magic[8], volume_size u64, region_size u32, word count u64, words (u64 BE each),
// crc32c u32 of everything before it.
Status DirtyBitmap::Save(const std::string& path) const {
  std::string out(kMagic, sizeof(kMagic));
  {
    std::lock_guard<std::mutex> lock(mu_);
    PutBigEndian64(&out, volume_size_);
    PutBigEndian32(&out, region_size_);
    PutBigEndian64(&out, words_.size());
    for (uint64_t w : words_) PutBigEndian64(&out, w);
  }
  PutBigEndian32(&out, crc32c::Value(out));
  return WriteFileAtomic(path, out);
}

Status DirtyBitmap::Load(const std::string& path) {
  CDP_ASSIGN_OR_RETURN(std::string in, ReadWholeFile(path));
  const size_t fixed = sizeof(kMagic) + 8 + 4 + 8;
  if (in.size() < fixed + 4 || std::memcmp(in.data(), kMagic, sizeof(kMagic)) != 0) {
    return Status::Corruption("dirty bitmap " + path + " is not a cdp dirty bitmap");
  }
  const uint32_t stored = GetBigEndian32(in.data() + in.size() - 4);
  if (stored != crc32c::Value(in.data(), in.size() - 4)) {
    return Status::Corruption("dirty bitmap " + path + " fails its CRC");
  }
  const uint64_t size = GetBigEndian64(in.data() + 8);
  const uint32_t region = GetBigEndian32(in.data() + 16);
  const uint64_t nwords = GetBigEndian64(in.data() + 20);
  if (size != volume_size_ || region != region_size_ || nwords != words_.size() ||
      in.size() != fixed + nwords * 8 + 4) {
    return Status::InvalidArgument("dirty bitmap " + path + " is for a volume of " +
                                   std::to_string(size) + " bytes in " + std::to_string(region) +
                                   "-byte regions, this one has " + std::to_string(volume_size_) +
                                   " bytes in " + std::to_string(region_size_) + "-byte regions");
  }
  // Bits past the last region would count as dirty forever: TakeRun never reaches them.
  if (regions_ % 64 != 0 && nwords > 0 &&
      (GetBigEndian64(in.data() + fixed + (nwords - 1) * 8) >> (regions_ % 64)) != 0) {
    return Status::Corruption("dirty bitmap " + path + " marks regions past the volume end");
  }
  std::lock_guard<std::mutex> lock(mu_);
  dirty_regions_ = 0;
  for (uint64_t i = 0; i < nwords; ++i) {
    words_[i] |= GetBigEndian64(in.data() + fixed + i * 8);
    dirty_regions_ += static_cast<uint64_t>(__builtin_popcountll(words_[i]));
  }
  if (dirty_regions_ > 0 && dirty_since_ns_ == 0) dirty_since_ns_ = NowNanos();
  return Status::Ok();
}

}  // namespace cdp::agent
