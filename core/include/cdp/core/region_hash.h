// XXH3-64 of a disk's regions, cheap where the disk holds zeros.
//
// The cutover's verify (docs/cutover.md, "Verify") compares every region of every volume: the
// source's agent and the target's pe-agent each hash their disk. A disk is mostly zeros more
// often than not (thin disks, a filesystem's unused blocks), and a zero scan costs a fraction of
// a hash (20x less under TCG, 3x less on a host core): RegionHasher only counts leading zeros
// and hashes them (from a static zero buffer) only when data follows, and a region that is all
// zeros takes its digest from Xxh3OfZeros' cache. The digest is exactly XXH3_64bits of the
// bytes fed, whichever way it was computed, so both sides agree with any other XXH3.
//
// Thread-safety: a RegionHasher is thread-compatible; Xxh3OfZeros is thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

struct XXH3_state_s;

namespace cdp {

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
  struct FreeState {
    void operator()(XXH3_state_s* state) const;
  };
  std::unique_ptr<XXH3_state_s, FreeState> state_;
  uint64_t zeros_ = 0;    // leading zero bytes, not yet fed to state_
  bool hashing_ = false;  // a non-zero byte came: state_ holds everything fed
};

}  // namespace cdp
