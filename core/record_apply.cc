#include "cdp/core/record_apply.h"

#include <cstring>
#include <map>

namespace cdp {

namespace {
constexpr size_t kStagingAlignment = 4096;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
}  // namespace

Status RecordApplier::Apply(std::span<const ApplyItem> items) {
  const uint64_t block = device_->logical_block_size();
  auto aligned = [&](uint64_t offset, uint64_t length) {
    return offset % block == 0 && length % block == 0;
  };
  if (direct_) {
    // One staging area for every aligned write of the call, each copy starting on a 4 KiB
    // boundary, so WriteBatch can take them all at once.
    size_t need = 0;
    for (const auto& item : items) {
      if (item.rec.kind == RecordKind::kWrite && aligned(item.rec.offset, item.rec.length)) {
        need += AlignUp(item.payload.size(), kStagingAlignment);
      }
    }
    if (staging_.size() < need) staging_ = AlignedBuffer(need);
  }
  size_t staged = 0;

  std::vector<WriteOp> run;
  std::map<uint64_t, uint64_t> run_ranges;  // start -> end of the writes in `run`
  auto overlaps = [&](uint64_t start, uint64_t end) {
    auto it = run_ranges.upper_bound(start);
    if (it != run_ranges.end() && it->first < end) return true;
    if (it != run_ranges.begin() && std::prev(it)->second > start) return true;
    return false;
  };
  auto flush_run = [&]() -> Status {
    if (run.empty()) return Status::Ok();
    Status s = device_->WriteBatch(run);
    run.clear();
    run_ranges.clear();
    return s;
  };
  for (const auto& item : items) {
    const ChangeRecord& rec = item.rec;
    const uint64_t end = rec.offset + rec.length;
    switch (rec.kind) {
      case RecordKind::kWrite: {
        if (direct_ && !aligned(rec.offset, rec.length)) {
          CDP_RETURN_IF_ERROR(flush_run());
          CDP_RETURN_IF_ERROR(ReadModifyWrite(rec.offset, item.payload));
          break;
        }
        if (overlaps(rec.offset, end)) CDP_RETURN_IF_ERROR(flush_run());
        std::span<const char> data(item.payload.data(), item.payload.size());
        if (direct_) {
          char* copy = staging_.data() + staged;
          std::memcpy(copy, item.payload.data(), item.payload.size());
          staged += AlignUp(item.payload.size(), kStagingAlignment);
          data = std::span<const char>(copy, item.payload.size());
        }
        run.push_back(WriteOp{rec.offset, data});
        run_ranges[rec.offset] = std::max(run_ranges[rec.offset], end);
        break;
      }
      case RecordKind::kDiscard:
      case RecordKind::kWriteZeroes:
        CDP_RETURN_IF_ERROR(flush_run());
        CDP_RETURN_IF_ERROR(Zero(rec.offset, rec.length, rec.kind == RecordKind::kDiscard));
        break;
      default:
        return Status::InvalidArgument("record LSN " + std::to_string(rec.lsn) +
                                       " has unknown kind " + RecordKindName(rec.kind));
    }
    applied_bytes_ += item.payload.size();
  }
  return flush_run();
}

Status RecordApplier::Zero(uint64_t offset, uint64_t length, bool discard) {
  auto zero = [&](uint64_t o, uint64_t n) {
    return discard ? device_->Discard(o, n) : device_->WriteZeroes(o, n);
  };
  const uint64_t block = device_->logical_block_size();
  const uint64_t end = offset + length;
  if (!direct_ || (offset % block == 0 && length % block == 0)) return zero(offset, length);
  // O_DIRECT takes only whole blocks: the blocks fully inside the range are zeroed by the
  // device, the partial ones at either end are read-modify-written.
  const uint64_t inner_start = AlignUp(offset, block);
  const uint64_t inner_end = end / block * block;
  if (inner_start >= inner_end) {
    return ReadModifyWrite(offset, std::string(length, '\0'));
  }
  if (offset < inner_start) {
    CDP_RETURN_IF_ERROR(ReadModifyWrite(offset, std::string(inner_start - offset, '\0')));
  }
  CDP_RETURN_IF_ERROR(zero(inner_start, inner_end - inner_start));
  if (inner_end < end) {
    CDP_RETURN_IF_ERROR(ReadModifyWrite(inner_end, std::string(end - inner_end, '\0')));
  }
  return Status::Ok();
}

Status RecordApplier::ReadModifyWrite(uint64_t offset, std::string_view payload) {
  const uint64_t block = device_->logical_block_size();
  const uint64_t start = offset / block * block;
  const uint64_t end = AlignUp(offset + payload.size(), block);
  AlignedBuffer buf(end - start);
  CDP_RETURN_IF_ERROR(device_->ReadAt(start, buf.span()));
  std::memcpy(buf.data() + (offset - start), payload.data(), payload.size());
  return device_->WriteAt(start, std::span<const char>(buf.data(), buf.size()));
}

}  // namespace cdp
