// The device scan of trace mode (the initial full sync, or a checksum resync after lost events or
// a crash; trace_capture.h): TraceCapture reads the device in 1 MiB chunks and sends only the
// 4 KiB blocks whose hash differs from the BlockHashStore's, which holds what the journal durably
// has. PlanScanChunk is the decision for one chunk, apart from the reading and the sending, so it
// can be tested on bytes alone; TraceCapture::ScanStep (device_scan.cc) does the rest.
//
// Thread-safety: PlanScanChunk is a pure function (it calls `maybe_shipped` on the caller's
// thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

namespace cdp::agent {

// What to do with the blocks of one chunk.
struct ScanChunkPlan {
  std::vector<uint64_t> hashes;  // BlockHashStore::Hash of each block as read now
  // Runs of blocks to send, [first, end) block indexes in the chunk, in order.
  std::vector<std::pair<size_t, size_t>> send_runs;
  // Blocks not sent because the journal holds their zeroes already: their hash is to be stored
  // as is (block index in the chunk).
  std::vector<size_t> known_zero;
};

// Plans the chunk `data` (its blocks are BlockHashStore::kBlockSize, the last one may be
// shorter) given `stored`, the hash store's entries for its blocks (one per block,
// BlockHashStore::kUnknown when unknown). A block whose hash equals its stored one is skipped.
// With `skip_zero` (the journal started empty for this volume), a block of zeroes with an unknown
// hash is known_zero unless `maybe_shipped(block index)` says a record for it may have been
// shipped (one in flight, or an extent still waiting to be read back). Every other block is sent.
// REQUIRES: stored.size() is the number of blocks of `data`.
ScanChunkPlan PlanScanChunk(std::span<const char> data, std::span<const uint64_t> stored,
                            bool skip_zero, const std::function<bool(size_t block)>& maybe_shipped);

}  // namespace cdp::agent
