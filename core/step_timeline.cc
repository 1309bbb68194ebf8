#include "cdp/core/step_timeline.h"

namespace cdp {

nlohmann::json StepsJson(const std::vector<StepReport>& steps) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : steps) {
    out.push_back(
        {{"name", s.name}, {"start", s.start}, {"end", s.end}, {"ok", s.ok}, {"result", s.result}});
  }
  return out;
}

double StepTimeline::Since() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

void StepTimeline::Line(const std::string& text) const {
  if (out_) *out_ << "[" << FormatFixed(Since(), 2) << " s] " << text << std::endl;
}

bool StepTimeline::Step(const std::string& name, const std::function<Result<std::string>()>& fn,
                        std::string* error) {
  StepReport step;
  step.name = name;
  step.start = Since();
  Line(name + " ...");
  Result<std::string> r = fn();
  step.end = Since();
  step.ok = r.ok();
  step.result = r.ok() ? *r : r.status().message();
  Line(name + (r.ok() ? " ok" : " FAILED") + " in " + FormatFixed(step.end - step.start, 2) +
       " s: " + step.result);
  if (!r.ok() && error != nullptr && error->empty()) *error = name + ": " + step.result;
  steps_.push_back(step);
  return r.ok();
}

}  // namespace cdp
