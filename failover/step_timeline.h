// Internal to cdp_failover: the timed steps of a cutover or a drill, each printed as it happens
// ("[1.23 s] verify ok in 0.80 s: ...") and recorded for the report.
#pragma once

#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/failover/cutover.h"

namespace cdp::failover {

inline std::string FixedSeconds(double v, int digits) {
  char buf[64];
  snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// The "steps" array of a JSON report: [{"name", "start", "end", "ok", "result"}].
inline nlohmann::json StepsJson(const std::vector<StepReport>& steps) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : steps) {
    out.push_back(
        {{"name", s.name}, {"start", s.start}, {"end", s.end}, {"ok", s.ok}, {"result", s.result}});
  }
  return out;
}

// {VOLUME: LSN} of a JSON report.
inline nlohmann::json LsnsJson(const std::vector<std::pair<std::string, uint64_t>>& lsns) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [volume, lsn] : lsns) out[volume] = lsn;
  return out;
}

class StepTimeline {
 public:
  // `out` (may be null) gets one line per event.
  explicit StepTimeline(std::ostream* out) : out_(out), t0_(std::chrono::steady_clock::now()) {}

  // Seconds since construction.
  double Since() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

  void Line(const std::string& text) const {
    if (out_) *out_ << "[" << FixedSeconds(Since(), 2) << " s] " << text << std::endl;
  }

  // Runs `fn` as the step `name`: timed, printed, appended to steps(). On failure *error (when
  // given and still empty) becomes "NAME: WHY". Returns whether it succeeded.
  bool Step(const std::string& name, const std::function<Result<std::string>()>& fn,
            std::string* error) {
    StepReport step;
    step.name = name;
    step.start = Since();
    Line(name + " ...");
    Result<std::string> r = fn();
    step.end = Since();
    step.ok = r.ok();
    step.result = r.ok() ? *r : r.status().message();
    Line(name + (r.ok() ? " ok" : " FAILED") + " in " + FixedSeconds(step.end - step.start, 2) +
         " s: " + step.result);
    if (!r.ok() && error != nullptr && error->empty()) *error = name + ": " + step.result;
    steps_.push_back(step);
    return r.ok();
  }

  const std::vector<StepReport>& steps() const { return steps_; }

 private:
  std::ostream* out_;
  std::chrono::steady_clock::time_point t0_;
  std::vector<StepReport> steps_;
};

}  // namespace cdp::failover
