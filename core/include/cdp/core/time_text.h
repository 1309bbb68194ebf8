// Wall-clock times as text: RFC 3339 in UTC, as cdpctl prints and accepts them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp {

// "2026-11-26T17:39:40.123456789Z": UTC, always nine fraction digits.
std::string FormatRfc3339(uint64_t time_ns);

// Parses RFC 3339: "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" ('t', 'z' and a space
// instead of 'T' accepted, up to 9 fraction digits). Returns ns since the Unix epoch.
// InvalidArgument quoting `text` and the expected form otherwise.
Result<uint64_t> ParseRfc3339(std::string_view text);

}  // namespace cdp
