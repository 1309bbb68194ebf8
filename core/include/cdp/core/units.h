// Sizes and durations as operators write them on command lines and in config files.
#pragma once

#include <cstdint>
#include <string>

#include "cdp/core/status.h"

namespace cdp {

// Parses "1073741824", "512M", "10G", "1T" (binary units; an optional trailing "iB"/"B").
// InvalidArgument quoting `text` for anything else, 0 included.
Result<uint64_t> ParseSize(const std::string& text);

// Parses "90s", "15m", "2h", "7d" (a positive whole number and a unit) into seconds, and "0"
// into 0. InvalidArgument quoting `text` for anything else.
Result<uint64_t> ParseDuration(const std::string& text);

// "7d", "2h", "15m", "90s" (the largest unit that divides it), "0" for 0.
std::string FormatDuration(uint64_t seconds);

// `v` with exactly `digits` decimals ("1.50" for 1.5 and 2), as reports print seconds.
std::string FormatFixed(double v, int digits);

}  // namespace cdp
