// Timing two implementations of the same function to keep the faster (crc32c.cc,
// region_hash.cc): an emulated CPU (QEMU's TCG) can advertise instructions it runs slower than
// plain code. Internal to cdp_core.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

namespace cdp::internal {

// 64 KiB of varied bytes to time an implementation on.
inline const std::vector<char>& CalibrationBytes() {
  static const std::vector<char> bytes = [] {
    std::vector<char> b(64 << 10);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(i * 131 + (i >> 9));
    return b;
  }();
  return bytes;
}

// The shortest of three runs of `run` (well under a millisecond on a real CPU for 64 KiB).
template <typename Run>
std::chrono::steady_clock::duration BestOfThree(Run&& run) {
  auto best = std::chrono::steady_clock::duration::max();
  for (int round = 0; round < 3; ++round) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::steady_clock::now() - start);
  }
  return best;
}

}  // namespace cdp::internal
