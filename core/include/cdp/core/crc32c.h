// CRC32C (Castagnoli), as used by iSCSI, ext4 and RocksDB. Hardware (SSE4.2) or a table
// (slicing-by-8), whichever a short measurement at first use finds faster on this CPU (an
// emulated CPU can advertise SSE4.2 and run it slower than the table); both give the same
// values. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace cdp::crc32c {

// Extends `crc` (the CRC32C of some data A) with data B, returning CRC32C(A || B).
uint32_t Extend(uint32_t crc, const char* data, size_t n);

// CRC32C of data. Value("123456789") == 0xE3069283.
inline uint32_t Value(const char* data, size_t n) { return Extend(0, data, n); }
inline uint32_t Value(std::string_view s) { return Extend(0, s.data(), s.size()); }

// Which implementation Extend uses: "sse4.2", "table", or "table (faster here than this CPU's
// SSE4.2)". For logs and benchmarks.
const char* Implementation();

}  // namespace cdp::crc32c
