// Test support: waiting for a condition that another thread makes true. Header-only; for tests
// only.
#pragma once

#include <chrono>
#include <thread>

namespace cdp::testing {

// Polls `done` every millisecond until it returns true (then true) or `timeout` passes (then
// false). For waiting on another thread's observable progress, never for measuring time: the
// timeout is a generous bound that only a broken run reaches.
template <typename Pred>
bool Eventually(Pred done, std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace cdp::testing
