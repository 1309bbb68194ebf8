// XXH3-64 of a disk's regions, cheap where the disk holds zeros.
//
// The cutover's verify (docs/cutover.md, "Verify") compares every region of every volume: the
// source's agent and the target's pe-agent each hash their disk. A disk is mostly zeros more
// often than not (thin disks, a filesystem's unused blocks), and a zero scan costs a fraction of
// a hash (20x less under TCG, 3x less on a host core): RegionHasher only counts leading zeros
// and hashes them (from a static zero buffer) only when data follows, and a region that is all
// zeros takes its digest from Xxh3OfZeros' cache. The digest is exactly XXH3_64bits of the
// bytes fed, whichever way it was computed, so both sides agree with any other XXH3. Of the two
// builds of XXH3 it carries (the xxhash library's SSE2 code and a scalar one), the faster on
// this CPU is measured once and used (under QEMU's TCG, which emulates SSE2 slowly, scalar is
// 2.4 times as fast; on a real CPU the library is).
//
// Thread-safety: a RegionHasher is thread-compatible; Xxh3OfZeros is thread-safe.
#pragma once

#include <cstdint>
#include <span>

namespace cdp {

namespace xxh3 {
struct Impl;
}

// Which XXH3 build this process uses: "library (SSE2)" or "scalar". For logs and benchmarks.
const char* Xxh3Implementation();

// XXH3_64bits of `length` zero bytes (computed once per length, then cached; a disk's regions
// have one or two lengths).
uint64_t Xxh3OfZeros(uint64_t length);

// XXH3_64bits of `bytes`, a zero scan first: a buffer of zeros takes Xxh3OfZeros' digest.
uint64_t ZeroAwareXxh3(std::span<const char> bytes);

class RegionHasher {
 public:
  RegionHasher();
  ~RegionHasher();
  RegionHasher(const RegionHasher&) = delete;
  RegionHasher& operator=(const RegionHasher&) = delete;

  // Starts a new region.
  void Reset();
  // Feeds the region's next bytes.
  void Update(std::span<const char> data);
  // XXH3_64bits of every byte fed since Reset (or construction).
  uint64_t Digest() const;
  // Whether every byte fed since Reset was zero.
  bool all_zero() const { return !hashing_; }

 private:
  const xxh3::Impl* impl_;  // the build chosen for this process
  void* state_;             // impl_'s streaming state, owned
  uint64_t zeros_ = 0;      // leading zero bytes, not yet fed to state_
  bool hashing_ = false;  // a non-zero byte came: state_ holds everything fed
};

}  // namespace cdp
