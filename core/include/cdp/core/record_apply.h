// RecordApplier: applies change records to a BlockDevice in LSN order — the one apply path of
// every replica (the replicator's image sink, the pe-agent inside the target VM).
//
// Records are applied as the journal ordered them: consecutive writes that do not overlap go
// to the device together (one WriteBatch); an overlapping write, a discard or a write-zeroes
// first waits for everything before it, so the result is exactly the sequential one.
//
// For a device opened with O_DIRECT (`direct`), payloads are copied into an aligned staging
// buffer, and a write whose offset or length is not a multiple of the device's logical block
// size becomes a read-modify-write of the blocks it covers (after everything before it); so do
// the partial blocks at the ends of an unaligned discard or write-zeroes.
//
// Thread-compatible: one thread at a time. Does not flush; the caller decides when data must be
// stable (BlockDevice::Flush).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"

namespace cdp {

// A record plus a view of its payload (which the caller keeps alive during Apply).
struct ApplyItem {
  ChangeRecord rec;
  std::string_view payload;
};

class RecordApplier {
 public:
  // `device` is not owned and must outlive the applier.
  RecordApplier(BlockDevice* device, bool direct) : device_(device), direct_(direct) {}

  // Applies the items in order. REQUIRES: payloads verified by the caller
  // (VerifyRecordPayload) and ranges inside the device. Returns the first I/O error; the
  // device then holds a prefix-or-more of the items (replaying them is idempotent).
  Status Apply(std::span<const ApplyItem> items);

  // Bytes of payload applied by this applier so far.
  uint64_t applied_bytes() const { return applied_bytes_; }

 private:
  Status ReadModifyWrite(uint64_t offset, std::string_view payload);
  // Discard (`discard`) or write-zeroes of a range that may be unaligned.
  Status Zero(uint64_t offset, uint64_t length, bool discard);

  BlockDevice* device_;
  bool direct_;
  AlignedBuffer staging_;  // direct: the aligned copies of one Apply call's writes
  uint64_t applied_bytes_ = 0;
};

}  // namespace cdp
