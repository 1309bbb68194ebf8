#include "cdp/core/crc32c.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <vector>

#include "calibrate.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace cdp::crc32c {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // reflected Castagnoli polynomial

constexpr std::array<std::array<uint32_t, 256>, 8> MakeTables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
  return t;
}
constexpr auto kTables = MakeTables();

uint32_t ExtendPortable(uint32_t crc, const char* p, size_t n) {
  uint32_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= c;
    c = kTables[7][v & 0xFF] ^ kTables[6][(v >> 8) & 0xFF] ^ kTables[5][(v >> 16) & 0xFF] ^
        kTables[4][(v >> 24) & 0xFF] ^ kTables[3][(v >> 32) & 0xFF] ^ kTables[2][(v >> 40) & 0xFF] ^
        kTables[1][(v >> 48) & 0xFF] ^ kTables[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ kTables[0][(c ^ static_cast<uint8_t>(*p++)) & 0xFF];
  return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t crc, const char* p, size_t n) {
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, static_cast<uint8_t>(*p++));
  return ~c32;
}
#endif

using ExtendFn = uint32_t (*)(uint32_t, const char*, size_t);

struct Choice {
  ExtendFn fn;
  const char* name;
};

// The fastest of the two, measured: SSE4.2 where a CPU runs its crc32 instruction (about 5
// times the table's speed), the table where SSE4.2 is advertised but emulated (QEMU's TCG runs
// crc32 through a helper: 100 MB/s there, against 490 MB/s for the table). Each is timed on
// 64 KiB, best of three; takes well under a millisecond on a real CPU, a few in an emulator.
Choice Choose() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) {
    const std::vector<char>& probe = internal::CalibrationBytes();
    auto time = [&](ExtendFn fn) {
      volatile uint32_t sink = 0;
      return internal::BestOfThree([&] { sink = fn(sink, probe.data(), probe.size()); });
    };
    if (time(&ExtendSse42) <= time(&ExtendPortable)) {
      return {&ExtendSse42, "sse4.2"};
    }
    return {&ExtendPortable, "table (faster here than this CPU's SSE4.2)"};
  }
#endif
  return {&ExtendPortable, "table"};
}

const Choice& Chosen() {
  static const Choice choice = Choose();
  return choice;
}

}  // namespace

uint32_t Extend(uint32_t crc, const char* data, size_t n) { return Chosen().fn(crc, data, n); }

const char* Implementation() { return Chosen().name; }

namespace internal {
uint32_t ExtendPortableForTest(uint32_t crc, const char* data, size_t n) {
  return ExtendPortable(crc, data, n);
}
bool ExtendHardwareForTest(uint32_t crc, const char* data, size_t n, uint32_t* out) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) {
    *out = ExtendSse42(crc, data, n);
    return true;
  }
#endif
  (void)crc;
  (void)data;
  (void)n;
  (void)out;
  return false;
}
}  // namespace internal

}  // namespace cdp::crc32c
