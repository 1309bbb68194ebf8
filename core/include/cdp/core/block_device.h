// BlockDevice: positional I/O on a file or block device, on io_uring when the kernel allows
// it and on libaio otherwise (chosen at run time, see OpenBlockDevice).
//
// Thread-safety: one BlockDevice may be used from one thread at a time; callers that share
// one serialize calls themselves. Several BlockDevice objects may refer to the same path.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp {

// True when every byte of `bytes` is 0 (an empty span too).
bool IsAllZero(std::span<const char> bytes);

enum class IoEngine {
  kAuto,  // io_uring if io_uring_queue_init works here, else libaio
  kIoUring,
  kLibaio,
};

// Parses "auto", "io_uring", "libaio".
Result<IoEngine> ParseIoEngine(std::string_view name);

struct BlockDeviceOptions {
  bool writable = false;
  // Open with O_DIRECT. Buffers and offsets must then be aligned to logical_block_size();
  // use AlignedBuffer.
  bool direct = false;
  // When the path does not exist: create a regular file of this size (sparse). 0 = don't
  // create, a missing path is NotFound.
  uint64_t create_size = 0;
  IoEngine engine = IoEngine::kAuto;
  // How many I/Os may be in flight in one WriteBatch/ReadBatch call. 1..4096, else
  // OpenBlockDevice returns InvalidArgument.
  unsigned queue_depth = 64;
};

// One write of a batch. The buffer must stay valid until WriteBatch returns.
struct WriteOp {
  uint64_t offset = 0;
  std::span<const char> data;
};

// One read of a batch. The buffer must stay valid until ReadBatch returns.
struct ReadOp {
  uint64_t offset = 0;
  std::span<char> buf;
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Size in bytes (BLKGETSIZE64 for block devices, st_size for files).
  virtual uint64_t size() const = 0;
  // 512 for files; BLKSSZGET for block devices.
  virtual uint32_t logical_block_size() const = 0;
  virtual bool is_block_device() const = 0;
  virtual const std::string& path() const = 0;
  // "io_uring" or "libaio".
  virtual std::string_view engine_name() const = 0;

  // Reads exactly buf.size() bytes at offset (short reads are retried; reading past the end is
  // OutOfRange).
  virtual Status ReadAt(uint64_t offset, std::span<char> buf) = 0;
  // Writes exactly data.size() bytes at offset.
  virtual Status WriteAt(uint64_t offset, std::span<const char> data) = 0;
  // Submits all writes, up to queue_depth at a time, and waits for all of them.
  // REQUIRES: the ops do not overlap each other (their order of completion is not defined).
  virtual Status WriteBatch(std::span<const WriteOp> ops) = 0;
  // Submits all reads, up to queue_depth at a time, and waits for all of them. Fills every
  // buffer completely or returns the first error (buffers are then undefined).
  virtual Status ReadBatch(std::span<const ReadOp> ops) = 0;
  // Makes the range read back as zeroes: BLKZEROOUT on block devices, fallocate
  // ZERO_RANGE (or PUNCH_HOLE|KEEP_SIZE, or written zeroes as the last resort) on files.
  virtual Status WriteZeroes(uint64_t offset, uint64_t length) = 0;
  // Discards the range; the replica's contract is that discarded ranges read back as zeroes,
  // so this is WriteZeroes where the device cannot guarantee that.
  virtual Status Discard(uint64_t offset, uint64_t length) = 0;
  // fdatasync.
  virtual Status Flush() = 0;
  // Returns the offset of the next range at or after `offset` that may hold data
  // (SEEK_DATA); size() if there is none. For devices without hole support, returns offset.
  virtual Result<uint64_t> NextDataOffset(uint64_t offset) = 0;
};

// Opens path with the engine from options (kAuto probes io_uring once per process and falls
// back to libaio with a log line). Errors name the path and what to do.
Result<std::unique_ptr<BlockDevice>> OpenBlockDevice(const std::string& path,
                                                     const BlockDeviceOptions& options);

// A heap buffer aligned for O_DIRECT (4096 bytes). Movable, not copyable.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  char* data() { return data_; }
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<char> span() { return {data_, size_}; }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cdp
