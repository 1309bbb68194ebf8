#include "cdp/core/units.h"

#include <cstdio>

namespace cdp {

Result<uint64_t> ParseSize(const std::string& text) {
  std::string t = text;
  for (const char* suffix : {"iB", "B"}) {
    const std::string s(suffix);
    if (t.size() > s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0) {
      t.resize(t.size() - s.size());
      break;
    }
  }
  uint64_t mult = 1;
  if (!t.empty()) {
    switch (t.back()) {
      case 'K':
      case 'k':
        mult = 1ull << 10;
        break;
      case 'M':
      case 'm':
        mult = 1ull << 20;
        break;
      case 'G':
      case 'g':
        mult = 1ull << 30;
        break;
      case 'T':
      case 't':
        mult = 1ull << 40;
        break;
      default:
        break;
    }
    if (mult != 1) t.pop_back();
  }
  size_t used = 0;
  uint64_t v = 0;
  try {
    if (t.find_first_not_of("0123456789") != std::string::npos) throw 0;
    v = std::stoull(t, &used);
  } catch (...) {
    used = 0;
  }
  if (t.empty() || used != t.size() || v == 0 || v > (UINT64_MAX / mult)) {
    return Status::InvalidArgument("'" + text + "' is not a size (e.g. 1073741824, 512M, 10G)");
  }
  return v * mult;
}

Result<uint64_t> ParseDuration(const std::string& text) {
  if (text == "0") return uint64_t{0};
  auto bad = [&] {
    return Status::InvalidArgument("'" + text +
                                   "' is not a duration (e.g. 90s, 15m, 2h, 7d, or 0 for none)");
  };
  if (text.size() < 2 || text.size() > 12) return bad();
  uint64_t unit = 0;
  switch (text.back()) {
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return bad();
  }
  const std::string number = text.substr(0, text.size() - 1);
  if (number.find_first_not_of("0123456789") != std::string::npos) return bad();
  const uint64_t v = std::stoull(number);
  if (v == 0) return bad();
  return v * unit;
}

std::string FormatDuration(uint64_t seconds) {
  if (seconds == 0) return "0";
  if (seconds % 86400 == 0) return std::to_string(seconds / 86400) + "d";
  if (seconds % 3600 == 0) return std::to_string(seconds / 3600) + "h";
  if (seconds % 60 == 0) return std::to_string(seconds / 60) + "m";
  return std::to_string(seconds) + "s";
}

std::string FormatFixed(double v, int digits) {
  char buf[64];
  snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

}  // namespace cdp
