#include "cdp/core/region_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <vector>

#include "calibrate.h"
#include "cdp/core/block_device.h"
#include "xxh3_impl.h"

namespace cdp {

namespace {

constexpr size_t kZeroBytes = 64 << 10;
const char kZeros[kZeroBytes] = {};

// The xxhash library, as linked.
uint64_t LibraryHash(const void* data, size_t n) { return XXH3_64bits(data, n); }
void* LibraryCreate() { return XXH3_createState(); }
void LibraryDestroy(void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); }
void LibraryReset(void* state) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state)); }
void LibraryUpdate(void* state, const void* data, size_t n) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, n);
}
uint64_t LibraryDigest(const void* state) {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state));
}
const xxh3::Impl kLibrary{"library (SSE2)", &LibraryHash,   &LibraryCreate, &LibraryDestroy,
                          &LibraryReset,    &LibraryUpdate, &LibraryDigest};

// The faster of the two on this CPU: each hashes 64 KiB, best of three (well under a
// millisecond on a real CPU, a few under an emulator). The digests are the same either way.
const xxh3::Impl& Chosen() {
  static const xxh3::Impl& chosen = []() -> const xxh3::Impl& {
    const std::vector<char>& probe = internal::CalibrationBytes();
    auto time = [&](const xxh3::Impl& impl) {
      volatile uint64_t sink = 0;
      return internal::BestOfThree([&] { sink = sink + impl.hash(probe.data(), probe.size()); });
    };
    const auto library = time(kLibrary);
    return time(xxh3::Scalar()) < library ? xxh3::Scalar() : kLibrary;
  }();
  return chosen;
}

void FeedZeros(const xxh3::Impl& impl, void* state, uint64_t n) {
  while (n > 0) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, kZeroBytes));
    impl.update(state, kZeros, take);
    n -= take;
  }
}

}  // namespace

const char* Xxh3Implementation() { return Chosen().name; }

namespace internal {
std::vector<const xxh3::Impl*> Xxh3ImplsForTest() { return {&kLibrary, &xxh3::Scalar()}; }
}  // namespace internal

uint64_t Xxh3OfZeros(uint64_t length) {
  static std::mutex mu;
  static std::map<uint64_t, uint64_t> cache;  // bounded by the distinct region lengths asked
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(length);
    if (it != cache.end()) return it->second;
  }
  const xxh3::Impl& impl = Chosen();
  void* state = impl.create();
  if (state == nullptr) throw std::bad_alloc();
  impl.reset(state);
  FeedZeros(impl, state, length);
  const uint64_t digest = impl.digest(state);
  impl.destroy(state);
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 64) cache.clear();  // a caller with ever-new lengths stays bounded
  cache.emplace(length, digest);
  return digest;
}

uint64_t ZeroAwareXxh3(std::span<const char> bytes) {
  return IsAllZero(bytes) ? Xxh3OfZeros(bytes.size()) : Chosen().hash(bytes.data(), bytes.size());
}

RegionHasher::RegionHasher() : impl_(&Chosen()), state_(impl_->create()) {
  if (state_ == nullptr) throw std::bad_alloc();
}

RegionHasher::~RegionHasher() { impl_->destroy(state_); }

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
    impl_->reset(state_);
    FeedZeros(*impl_, state_, zeros_);
    zeros_ = 0;
    hashing_ = true;
  }
  impl_->update(state_, data.data(), data.size());
}

uint64_t RegionHasher::Digest() const {
  return hashing_ ? impl_->digest(state_) : Xxh3OfZeros(zeros_);
}

}  // namespace cdp
