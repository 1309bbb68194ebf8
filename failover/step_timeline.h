// Internal to cdp_failover: the report helpers a cutover and a drill share. The step timeline
// itself is core's (cdp/core/step_timeline.h).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cdp/core/step_timeline.h"

namespace cdp::failover {

// {VOLUME: LSN} of a JSON report.
inline nlohmann::json LsnsJson(const std::vector<std::pair<std::string, uint64_t>>& lsns) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [volume, lsn] : lsns) out[volume] = lsn;
  return out;
}

}  // namespace cdp::failover
