// The device scan of trace mode: PlanScanChunk and TraceCapture::ScanStep (device_scan.h).
#include "cdp/agent/device_scan.h"

#include <algorithm>

#include "cdp/agent/block_hashes.h"
#include "cdp/agent/trace_capture.h"
#include "cdp/core/block_device.h"
#include "cdp/core/logging.h"

namespace cdp::agent {

ScanChunkPlan PlanScanChunk(std::span<const char> data, std::span<const uint64_t> stored,
                            bool skip_zero,
                            const std::function<bool(size_t block)>& maybe_shipped) {
  constexpr uint64_t kBlock = BlockHashStore::kBlockSize;
  const size_t nblocks = stored.size();
  ScanChunkPlan plan;
  plan.hashes.resize(nblocks);
  std::vector<char> send(nblocks, 0);
  for (size_t b = 0; b < nblocks; ++b) {
    const uint64_t off = b * kBlock;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBlock, data.size() - off));
    const std::span<const char> block = data.subspan(off, n);
    plan.hashes[b] = BlockHashStore::Hash(block.data(), n);
    if (stored[b] == plan.hashes[b]) continue;
    // The journal started empty, so it holds zeroes for this block unless a record for it was
    // shipped.
    if (skip_zero && stored[b] == BlockHashStore::kUnknown && IsAllZero(block) &&
        !maybe_shipped(b)) {
      plan.known_zero.push_back(b);
      continue;
    }
    send[b] = 1;
  }
  for (size_t b = 0; b < nblocks;) {
    if (!send[b]) {
      ++b;
      continue;
    }
    size_t e = b;
    while (e < nblocks && send[e]) ++e;
    plan.send_runs.emplace_back(b, e);
    b = e;
  }
  return plan;
}

Result<bool> TraceCapture::ScanStep() {
  const uint64_t cursor = scan_cursor_.load();
  if (cursor >= size_) {
    scan_active_ = false;
    const bool was_initial = !initial_done_.exchange(true);
    CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": "
                  << (was_initial ? "initial full sync" : "checksum resync") << " done: read "
                  << scan_read_bytes_.load() << " bytes, sent " << scan_sent_bytes_.load()
                  << " bytes";
    output_->OnResyncDone();
    // The next freeze cycle records the first consistency point after it: now.
    if (wake_cycle_) wake_cycle_();
    return true;
  }
  const uint64_t len = std::min(kScanChunk, size_ - cursor);
  if (!output_->WaitForSpace(len + (len / kBlock) * kRecordCharge, 0)) return false;
  if (scan_buffer_.size() < kScanChunk) scan_buffer_ = AlignedBuffer(kScanChunk);
  in_progress_bytes_ = len;
  Status read = reader_->ReadAt(cursor, std::span<char>(scan_buffer_.data(), len));
  if (!read.ok()) {
    in_progress_bytes_ = 0;
    return read;
  }
  scan_read_bytes_ += len;
  const char* data = scan_buffer_.data();
  const uint64_t first_block = cursor / kBlock;
  const size_t nblocks = static_cast<size_t>((len + kBlock - 1) / kBlock);
  std::vector<uint64_t> stored(nblocks);
  CDP_RETURN_IF_ERROR(hashes_->Get(first_block, stored));
  // A block of zeroes may still be shipped: a record for it in flight, or its extent waiting
  // in the map.
  auto maybe_shipped = [&](size_t b) {
    {
      std::lock_guard<std::mutex> lock(hash_mu_);
      if (latest_lsn_.count(first_block + b) > 0) return true;
    }
    const uint64_t off = b * kBlock;
    return map_.Overlaps(cursor + off, std::min(kBlock, len - off));
  };
  const ScanChunkPlan plan =
      PlanScanChunk(std::span<const char>(data, len), stored, skip_zero_.load(), maybe_shipped);
  for (const size_t b : plan.known_zero) {
    Status s = hashes_->Set(first_block + b, std::span<const uint64_t>(&plan.hashes[b], 1));
    if (!s.ok()) return s;
  }
  for (const auto& [b, e] : plan.send_runs) {
    const uint64_t off = b * kBlock;
    const uint64_t run = std::min<uint64_t>(e * kBlock, len) - off;
    const uint64_t left =
        QueueContent(cursor + off, data + off, run,
                     std::vector<uint64_t>(plan.hashes.begin() + static_cast<std::ptrdiff_t>(b),
                                           plan.hashes.begin() + static_cast<std::ptrdiff_t>(e)));
    scan_sent_bytes_ += run - left;
    if (left > 0) map_.Add(cursor + off + run - left, left);  // the extent path sends it
  }
  scan_cursor_ = cursor + len;
  in_progress_bytes_ = 0;
  return true;
}

}  // namespace cdp::agent
