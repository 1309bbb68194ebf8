#include "cdp/journal/point_image.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

namespace cdp::journal {

Result<std::unique_ptr<PointImage>> PointImage::Build(const JournalStore* store,
                                                      const std::string& volume, uint64_t lsn) {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, store->GetVolume(volume));
  std::unique_ptr<PointImage> image(new PointImage(store, volume, v.size_bytes, lsn));
  auto lock = store->FoldReadLock();
  CDP_RETURN_IF_ERROR(image->Load());
  return image;
}

Status PointImage::Load() {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, store_->GetVolume(volume_));
  if (lsn_ < v.base_lsn) {
    return Status::FailedPrecondition("volume " + volume_ + ": LSN " + std::to_string(lsn_) +
                                      " is folded into the base image (base LSN " +
                                      std::to_string(v.base_lsn) + ")");
  }
  extents_.clear();
  base_.reset();
  base_lsn_ = v.base_lsn;
  if (base_lsn_ > 0) {
    BlockDeviceOptions o;
    CDP_ASSIGN_OR_RETURN(base_, OpenBlockDevice(store_->BaseImagePath(v.id), o));
  }
  if (lsn_ == base_lsn_) return Status::Ok();
  return store_->ScanRecordHeaders(volume_, base_lsn_ + 1, lsn_, [&](const ChangeRecord& rec) {
    CDP_RETURN_IF_ERROR(ValidateRecordRange(rec, v.size_bytes));
    Overwrite(rec);
    return Status::Ok();
  });
}

void PointImage::Overwrite(const ChangeRecord& rec) {
  const uint64_t start = rec.offset;
  const uint64_t end = rec.offset + rec.length;
  auto it = extents_.lower_bound(start);
  if (it != extents_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > start) {
      if (prev->second.end > end) {  // the new record lands inside prev: keep prev's tail
        Extent tail = prev->second;
        extents_.emplace(end, tail);
      }
      prev->second.end = start;
    }
  }
  it = extents_.lower_bound(start);
  while (it != extents_.end() && it->first < end) {
    if (it->second.end > end) {  // partly covered: keep what lies past the new record
      Extent tail = it->second;
      extents_.erase(it);
      extents_.emplace(end, tail);
      break;
    }
    it = extents_.erase(it);
  }
  extents_.emplace(start,
                   Extent{end, rec.lsn, rec.offset, rec.length, rec.crc32c, rec.kind});
}

Status PointImage::Read(uint64_t offset, std::span<char> buf) {
  if (offset > size_bytes_ || buf.size() > size_bytes_ - offset) {
    return Status::InvalidArgument("volume " + volume_ + ": read of " +
                                   std::to_string(buf.size()) + " bytes at offset " +
                                   std::to_string(offset) + " leaves the volume (" +
                                   std::to_string(size_bytes_) + " bytes)");
  }
  auto lock = store_->FoldReadLock();
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, store_->GetVolume(volume_));
  if (v.base_lsn != base_lsn_) CDP_RETURN_IF_ERROR(Load());
  if (base_) {
    CDP_RETURN_IF_ERROR(base_->ReadAt(offset, buf));
  } else {
    std::memset(buf.data(), 0, buf.size());
  }
  const uint64_t end = offset + buf.size();
  auto it = extents_.upper_bound(offset);
  if (it != extents_.begin()) --it;
  std::unordered_map<uint64_t, SharedBytes> payloads;  // a record split in pieces is read once
  for (; it != extents_.end() && it->first < end; ++it) {
    const Extent& e = it->second;
    const uint64_t from = std::max(it->first, offset);
    const uint64_t to = std::min(e.end, end);
    if (from >= to) continue;
    if (e.kind != RecordKind::kWrite) {
      std::memset(buf.data() + (from - offset), 0, to - from);
      continue;
    }
    SharedBytes& payload = payloads[e.lsn];
    if (!payload) {
      ChangeRecord header;
      header.lsn = e.lsn;
      header.offset = e.record_offset;
      header.length = e.record_length;
      header.crc32c = e.crc32c;
      header.kind = e.kind;
      CDP_ASSIGN_OR_RETURN(payload, store_->ReadPayload(volume_, header));
    }
    std::memcpy(buf.data() + (from - offset), payload->data() + (from - e.record_offset),
                to - from);
  }
  return Status::Ok();
}

}  // namespace cdp::journal
