// The timed steps of a long operation (a cutover, a drill, a takeover), each printed as it
// happens ("[1.23 s] verify ok in 0.80 s: ...") and recorded for its report.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/units.h"

namespace cdp {

// One step of a report.
struct StepReport {
  std::string name;
  double start = 0;  // seconds since the operation began
  double end = 0;
  bool ok = false;
  std::string result;  // what happened, or why it failed
};

// The "steps" array of a JSON report: [{"name", "start", "end", "ok", "result"}].
nlohmann::json StepsJson(const std::vector<StepReport>& steps);

// Times and prints steps. Not thread-safe: one thread drives a timeline.
class StepTimeline {
 public:
  // `out` (may be null) gets one line per event.
  explicit StepTimeline(std::ostream* out) : out_(out), t0_(std::chrono::steady_clock::now()) {}

  // Seconds since construction.
  double Since() const;

  // Prints "[SECONDS s] TEXT" to `out` (when given).
  void Line(const std::string& text) const;

  // Runs `fn` as the step `name`: timed, printed, appended to steps(). On failure *error (when
  // given and still empty) becomes "NAME: WHY". Returns whether it succeeded.
  bool Step(const std::string& name, const std::function<Result<std::string>()>& fn,
            std::string* error);

  const std::vector<StepReport>& steps() const { return steps_; }

 private:
  std::ostream* out_;
  std::chrono::steady_clock::time_point t0_;
  std::vector<StepReport> steps_;
};

}  // namespace cdp
