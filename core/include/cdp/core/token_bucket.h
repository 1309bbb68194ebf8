// TokenBucket: a byte-rate limit. Tokens refill at `rate` bytes per second up to `burst`; a
// caller may spend while the balance is positive (the balance may go negative by one batch, and
// the caller then waits until it is positive again). Time is passed in, so it is testable.
//
// Thread-safety: none; one owner.
#pragma once

#include <algorithm>
#include <chrono>

namespace cdp {

class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  // rate == 0 means unlimited: CanSpend is always true.
  TokenBucket(double rate_bytes_per_sec, double burst_bytes, Clock::time_point now)
      : rate_(rate_bytes_per_sec), burst_(burst_bytes), tokens_(burst_bytes), at_(now) {}

  bool unlimited() const { return rate_ <= 0; }

  // True when the balance (after refilling up to `now`) is positive.
  bool CanSpend(Clock::time_point now) {
    if (unlimited()) return true;
    Refill(now);
    return tokens_ > 0;
  }

  // Spends `bytes` (the balance may go negative).
  void Spend(double bytes) {
    if (!unlimited()) tokens_ -= bytes;
  }

  // How long from `now` until the balance is positive again (zero if it is).
  std::chrono::nanoseconds TimeUntilPositive(Clock::time_point now) {
    if (unlimited()) return std::chrono::nanoseconds(0);
    Refill(now);
    if (tokens_ > 0) return std::chrono::nanoseconds(0);
    return std::chrono::nanoseconds(static_cast<int64_t>(-tokens_ / rate_ * 1e9) + 1);
  }

  double balance() const { return tokens_; }

 private:
  void Refill(Clock::time_point now) {
    if (now <= at_) return;
    tokens_ = std::min(burst_, tokens_ + rate_ * std::chrono::duration<double>(now - at_).count());
    at_ = now;
  }

  const double rate_;
  const double burst_;
  double tokens_;
  Clock::time_point at_;
};

}  // namespace cdp
