// XXH3-64 implementations inside cdp_core (not a public header): the xxhash library as Debian
// builds it (SSE2 on x86-64) and a scalar build of the same code (xxh3_scalar.cc). Both give
// exactly the same digests; which one is faster depends on the CPU: on a real one SSE2 is a
// little faster, under QEMU's TCG (which emulates SSE2 through helpers) scalar is about 2.4
// times as fast (1020 against 420 MB/s in the lab's source VM). region_hash.cc measures them
// once and uses the faster.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cdp::xxh3 {

struct Impl {
  const char* name;
  uint64_t (*hash)(const void* data, size_t n);  // XXH3_64bits
  void* (*create)();                             // a streaming state; nullptr when out of memory
  void (*destroy)(void* state);
  void (*reset)(void* state);
  void (*update)(void* state, const void* data, size_t n);
  uint64_t (*digest)(const void* state);
};

// The scalar build (xxh3_scalar.cc).
const Impl& Scalar();

}  // namespace cdp::xxh3
