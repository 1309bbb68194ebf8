#include "cdp/core/time_text.h"

#include <time.h>

#include <cctype>
#include <cstdio>

namespace cdp {

std::string FormatRfc3339(uint64_t time_ns) {
  const time_t secs = static_cast<time_t>(time_ns / 1000000000ull);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[64];
  const size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, sizeof(buf) - n, ".%09lluZ",
           static_cast<unsigned long long>(time_ns % 1000000000ull));
  return buf;
}

namespace {

// Reads exactly `digits` decimal digits at text[*pos].
bool ReadDigits(std::string_view text, size_t* pos, int digits, int* out) {
  if (*pos + digits > text.size()) return false;
  int v = 0;
  for (int i = 0; i < digits; ++i) {
    const char c = text[*pos + i];
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    v = v * 10 + (c - '0');
  }
  *pos += digits;
  *out = v;
  return true;
}

bool Expect(std::string_view text, size_t* pos, std::string_view one_of) {
  if (*pos >= text.size() || one_of.find(text[*pos]) == std::string_view::npos) return false;
  ++*pos;
  return true;
}

}  // namespace

Result<uint64_t> ParseRfc3339(std::string_view text) {
  auto bad = [&](const std::string& why) {
    // Appending to one string (not "'" + std::string(text)) keeps GCC 12 -O3 from a false
    // -Wrestrict on the inlined insert-at-front.
    std::string message = "'";
    message.append(text).append("' is not an RFC 3339 time (").append(why);
    message.append("); write e.g. 2026-11-26T17:39:40Z or 2026-11-26T18:39:40.5+01:00");
    return Status::InvalidArgument(message);
  };
  size_t pos = 0;
  // Zero until read: ReadDigits sets them only on success, which GCC cannot always prove.
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!ReadDigits(text, &pos, 4, &year) || !Expect(text, &pos, "-") ||
      !ReadDigits(text, &pos, 2, &month) || !Expect(text, &pos, "-") ||
      !ReadDigits(text, &pos, 2, &day)) {
    return bad("the date must be YYYY-MM-DD");
  }
  if (!Expect(text, &pos, "Tt ") || !ReadDigits(text, &pos, 2, &hour) ||
      !Expect(text, &pos, ":") || !ReadDigits(text, &pos, 2, &minute) ||
      !Expect(text, &pos, ":") || !ReadDigits(text, &pos, 2, &second)) {
    return bad("the time of day must be THH:MM:SS");
  }
  uint64_t fraction_ns = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    int n = 0;
    uint64_t scale = 100000000;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
      if (++n > 9) return bad("more than 9 fraction digits");
      fraction_ns += static_cast<uint64_t>(text[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (n == 0) return bad("no digits after '.'");
  }
  int64_t offset_s = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const int sign = text[pos] == '-' ? -1 : 1;
    ++pos;
    int oh = 0, om = 0;
    if (!ReadDigits(text, &pos, 2, &oh) || !Expect(text, &pos, ":") ||
        !ReadDigits(text, &pos, 2, &om) || oh > 23 || om > 59) {
      return bad("the UTC offset must be +HH:MM or -HH:MM");
    }
    offset_s = sign * (oh * 3600 + om * 60);
  } else {
    return bad("it needs a zone: Z or +HH:MM");
  }
  if (pos != text.size()) return bad("unexpected text after the zone");
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 ||
      second > 60) {
    return bad("a field is out of range");
  }
  struct tm tm = {};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second == 60 ? 59 : second;
  const time_t secs = timegm(&tm);
  struct tm back;
  gmtime_r(&secs, &back);
  if (back.tm_mday != day || back.tm_mon != month - 1) return bad("no such day");
  const int64_t utc = static_cast<int64_t>(secs) - offset_s;
  if (utc < 0) return bad("before 1970");
  return static_cast<uint64_t>(utc) * 1000000000ull + fraction_ns;
}

}  // namespace cdp
