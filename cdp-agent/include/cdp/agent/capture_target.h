// CaptureTarget: what a capture front end (the NBD server) drives. The agent's VolumeCapture
// implements it: each call applies the I/O to the backing device and turns it into an ordered
// change record. Tests use fakes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "cdp/core/status.h"

namespace cdp::agent {

// Payloads are shared so the sender can keep them for resend without copying.
using Payload = std::shared_ptr<const std::string>;

class CaptureTarget {
 public:
  virtual ~CaptureTarget() = default;

  // Volume size in bytes; constant for the life of the object.
  virtual uint64_t size() const = 0;
  // Logical block size of the backing device (the NBD minimum block size advertised).
  virtual uint32_t block_size() const = 0;

  // Each call below is thread-safe (several NBD connections may call concurrently) and
  // returns only once the I/O is applied to the backing device; in sync ack mode, writes,
  // trims, write-zeroes and flushes return only once the journal has them durable.
  // REQUIRES: offset + length <= size() (the caller checks bounds).
  virtual Status Read(uint64_t offset, std::span<char> buf) = 0;
  // fua: the write must be on stable storage before returning.
  virtual Status Write(uint64_t offset, Payload data, bool fua) = 0;
  virtual Status Trim(uint64_t offset, uint32_t length) = 0;
  virtual Status WriteZeroes(uint64_t offset, uint32_t length, bool fua) = 0;
  // Makes every completed write stable and records a consistency point.
  virtual Status Flush() = 0;
};

}  // namespace cdp::agent
