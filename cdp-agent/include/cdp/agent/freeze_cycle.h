// The freeze cycle of trace mode (trace_capture.h, "Freeze cycle"): TraceCapture::FreezeCycle
// (freeze_cycle.cc) pre-copies, freezes the filesystem, reads back the residual set, thaws and
// records a consistency point. The parts of it that need no filesystem are here, so they can be
// tested alone:
//
//   ResidualTarget  how small the dirty set must be before a freeze is tried
//   FreezeStats     the freezes' figures: counts, p50/p99 of the last 1024, the minute summary
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "cdp.pb.h"

namespace cdp::agent {

// Pre-copy before a freeze until at most this much is dirty: what the measured read-back rate
// (`read_bytes_per_ns`) reads in a quarter of `freeze_limit_ms`, at least 2 MiB (less would not
// make the freeze shorter), and at most an eighth of the send buffer (`buffer_bytes`: the residual
// set must fit in it while frozen).
uint64_t ResidualTarget(uint64_t buffer_bytes, double read_bytes_per_ns, int freeze_limit_ms);

// The figures of the freezes of one TraceCapture, for its reports (AgentReport.trace) and its
// once-a-minute log line. Thread-safe.
class FreezeStats {
 public:
  // At most this many recent freezes make the percentiles.
  static constexpr size_t kWindow = 1024;

  // One freeze that held the filesystem `us` microseconds, of which FIFREEZE itself took
  // `ioctl_us`; `abandoned` when it made no point.
  void Record(uint64_t us, uint64_t ioctl_us, bool abandoned);

  // Sets the freeze fields of `stats`: freezes, freezes_abandoned, freeze_last_us,
  // freeze_max_us, and the p50/p99 of the freeze and of FIFREEZE alone over the last kWindow
  // freezes. Replaces everything else in `stats`.
  void Fill(v1::TraceStats* stats) const;

  // The freezes recorded since the last call, as "N freezes (A abandoned), p50 X ms, p99 Y ms,
  // max Z ms"; empty when there were none. Starts the next period.
  std::string TakeSummary();

 private:
  mutable std::mutex mu_;
  v1::TraceStats totals_;            // GUARDED_BY(mu_): counts, last, max
  std::vector<uint64_t> us_;         // GUARDED_BY(mu_): ring of the last kWindow freezes
  std::vector<uint64_t> ioctl_us_;   // GUARDED_BY(mu_): FIFREEZE alone, same ring
  size_t next_ = 0;                  // GUARDED_BY(mu_): where the ring is written next once full
  std::vector<uint64_t> period_us_;  // GUARDED_BY(mu_): freezes since the last TakeSummary
  uint64_t period_abandoned_ = 0;    // GUARDED_BY(mu_)
};

}  // namespace cdp::agent
