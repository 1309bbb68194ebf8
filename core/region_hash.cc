#include "cdp/core/region_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "cdp/core/block_device.h"

namespace cdp {

namespace {

constexpr size_t kZeroBytes = 64 << 10;
const char kZeros[kZeroBytes] = {};

void FeedZeros(XXH3_state_t* state, uint64_t n) {
  while (n > 0) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, kZeroBytes));
    XXH3_64bits_update(state, kZeros, take);
    n -= take;
  }
}

}  // namespace

uint64_t Xxh3OfZeros(uint64_t length) {
  static std::mutex mu;
  static std::map<uint64_t, uint64_t> cache;  // bounded by the distinct region lengths asked
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(length);
    if (it != cache.end()) return it->second;
  }
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  FeedZeros(state, length);
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 64) cache.clear();  // a caller with ever-new lengths stays bounded
  cache.emplace(length, digest);
  return digest;
}

uint64_t ZeroAwareXxh3(std::span<const char> bytes) {
  return IsAllZero(bytes) ? Xxh3OfZeros(bytes.size()) : XXH3_64bits(bytes.data(), bytes.size());
}

void RegionHasher::FreeState::operator()(XXH3_state_s* state) const { XXH3_freeState(state); }

RegionHasher::RegionHasher() : state_(XXH3_createState()) {}

RegionHasher::~RegionHasher() = default;

void RegionHasher::Reset() {
  zeros_ = 0;
  hashing_ = false;
}

void RegionHasher::Update(std::span<const char> data) {
  if (!hashing_) {
    if (IsAllZero(data)) {
      zeros_ += data.size();
      return;
    }
    XXH3_64bits_reset(state_.get());
    FeedZeros(state_.get(), zeros_);
    zeros_ = 0;
    hashing_ = true;
  }
  XXH3_64bits_update(state_.get(), data.data(), data.size());
}

uint64_t RegionHasher::Digest() const {
  return hashing_ ? XXH3_64bits_digest(state_.get()) : Xxh3OfZeros(zeros_);
}

}  // namespace cdp
