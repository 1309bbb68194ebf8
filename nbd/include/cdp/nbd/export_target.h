// ExportTarget: what the NBD server (nbd_server.h) exports and drives. The agent's VolumeCapture
// implements it: each call applies the I/O to the backing device and turns it into an ordered
// change record. cdpctl's RemoteImageTarget implements it read-only over an image of the
// journal. Tests use fakes.
#pragma once

#include <cstdint>
#include <span>

#include "cdp/core/record.h"
#include "cdp/core/status.h"

namespace cdp::nbd {

class ExportTarget {
 public:
  virtual ~ExportTarget() = default;

  // Volume size in bytes; constant for the life of the object.
  virtual uint64_t size() const = 0;
  // Logical block size of the backing device (the NBD minimum block size advertised).
  virtual uint32_t block_size() const = 0;

  // Each call below is thread-safe (several NBD connections may call concurrently) and
  // returns only once the I/O is applied to the backing device; in sync ack mode, writes,
  // trims, write-zeroes and flushes return only once the journal has them durable.
  // REQUIRES: offset + length <= size() (the caller checks bounds).
  virtual Status Read(uint64_t offset, std::span<char> buf) = 0;
  // data is shared so the agent's sender can keep it for resend without copying.
  // fua: the write must be on stable storage before returning.
  virtual Status Write(uint64_t offset, SharedBytes data, bool fua) = 0;
  virtual Status Trim(uint64_t offset, uint32_t length) = 0;
  virtual Status WriteZeroes(uint64_t offset, uint32_t length, bool fua) = 0;
  // Makes every completed write stable and records a consistency point.
  virtual Status Flush() = 0;
};

}  // namespace cdp::nbd
