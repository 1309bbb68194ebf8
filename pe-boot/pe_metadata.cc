#include "cdp/pe/pe_metadata.h"

#include <cstring>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"

namespace cdp::pe {

namespace {
constexpr char kLabel[] = "CDP-PE-META v1\n";
constexpr char kMagic[8] = {'C', 'D', 'P', 'P', 'E', 'M', 'D', '1'};
constexpr uint32_t kFormat = 1;
// magic 8 | format 4 | name length 4 | name 64 | volume_size 8 | applied_lsn 8 | generation 8
// | time_ns 8 | crc32c 4 (of the 112 bytes before it)
constexpr size_t kCrcOffset = 112;
constexpr size_t kMaxSlots = 255;
// The kept area's header: magic 8 | format 4 | blob CRC32C 4 | blob length 8 | time_ns 8
// | crc32c 4 (of the 32 bytes before it)
constexpr char kKeptMagic[8] = {'C', 'D', 'P', 'P', 'E', 'K', 'P', '1'};
constexpr size_t kKeptCrcOffset = 32;
}  // namespace

std::string PeMetadata::EncodeCopy(const VolumeCursor& c) {
  std::string out(kMagic, sizeof(kMagic));
  PutBigEndian32(&out, kFormat);
  PutBigEndian32(&out, static_cast<uint32_t>(c.volume.size()));
  std::string name = c.volume.substr(0, kMaxNameBytes);
  name.resize(kMaxNameBytes, '\0');
  out += name;
  PutBigEndian64(&out, c.volume_size);
  PutBigEndian64(&out, c.applied_lsn);
  PutBigEndian64(&out, c.generation);
  PutBigEndian64(&out, c.time_ns);
  PutBigEndian32(&out, crc32c::Value(out));
  out.resize(kBlock, '\0');
  return out;
}

Result<VolumeCursor> PeMetadata::DecodeCopy(const char* p) {
  if (IsAllZero({p, kCrcOffset + 4})) return Status::NotFound("empty slot");
  if (std::memcmp(p, kMagic, sizeof(kMagic)) != 0) return Status::Corruption("bad magic");
  if (GetBigEndian32(p + 8) != kFormat) {
    return Status::Corruption("format " + std::to_string(GetBigEndian32(p + 8)) +
                              " is not 1; written by a newer pe-agent?");
  }
  if (GetBigEndian32(p + kCrcOffset) != crc32c::Value(std::string_view(p, kCrcOffset))) {
    return Status::Corruption("CRC mismatch (torn or damaged write)");
  }
  const uint32_t name_len = GetBigEndian32(p + 12);
  if (name_len == 0 || name_len > kMaxNameBytes) return Status::Corruption("bad name length");
  VolumeCursor c;
  c.volume.assign(p + 16, name_len);
  c.volume_size = GetBigEndian64(p + 80);
  c.applied_lsn = GetBigEndian64(p + 88);
  c.generation = GetBigEndian64(p + 96);
  c.time_ns = GetBigEndian64(p + 104);
  return c;
}

Result<std::unique_ptr<PeMetadata>> PeMetadata::Open(std::unique_ptr<BlockDevice> device) {
  if (device->size() < kMinSize) {
    return Status::InvalidArgument("metadata disk " + device->path() + " has " +
                                   std::to_string(device->size()) + " bytes; it needs at least " +
                                   std::to_string(kMinSize));
  }
  std::unique_ptr<PeMetadata> meta(new PeMetadata(std::move(device)));
  CDP_RETURN_IF_ERROR(meta->Load());
  return meta;
}

Status PeMetadata::Load() {
  const size_t nslots = std::min<uint64_t>(kMaxSlots, (device_->size() - kBlock) / (2 * kBlock));
  AlignedBuffer buf(kBlock * (1 + 2 * nslots));
  CDP_RETURN_IF_ERROR(device_->ReadAt(0, buf.span()).WithContext("metadata disk"));
  const char* label = buf.data();
  if (std::memcmp(label, kLabel, sizeof(kLabel) - 1) == 0) {
    labelled_ = true;
  } else if (!IsAllZero({label, kBlock})) {
    return Status::Corruption("metadata disk " + device_->path() +
                              " does not start with the pe-agent label '" +
                              std::string(kLabel, sizeof(kLabel) - 2) +
                              "' and is not empty; it is not a cdp metadata disk, so nothing "
                              "is written to it: attach a new empty one");
  }
  slots_.assign(nslots, Slot{});
  for (size_t i = 0; i < nslots; ++i) {
    for (int copy = 0; copy < 2; ++copy) {
      auto c = DecodeCopy(buf.data() + kBlock * (1 + 2 * i + copy));
      if (!c.ok()) continue;
      if (!slots_[i].used || c->generation > slots_[i].cursor.generation) {
        slots_[i].cursor = *c;
        slots_[i].used = true;
      }
    }
    if (slots_[i].used) index_[slots_[i].cursor.volume] = i;
  }
  return Status::Ok();
}

VolumeCursor PeMetadata::Get(const std::string& volume) const {
  auto it = index_.find(volume);
  if (it == index_.end()) {
    VolumeCursor empty;
    empty.volume = volume;
    return empty;
  }
  return slots_[it->second].cursor;
}

Status PeMetadata::WriteBlock(uint64_t offset, const std::string& data) {
  AlignedBuffer buf(kBlock);
  std::memcpy(buf.data(), data.data(), kBlock);
  return device_->WriteAt(offset, std::span<const char>(buf.data(), kBlock));
}

Status PeMetadata::WriteLabel() {
  if (labelled_) return Status::Ok();
  std::string label(kLabel, sizeof(kLabel) - 1);
  label.resize(kBlock, '\0');
  CDP_RETURN_IF_ERROR(WriteBlock(0, label).WithContext("metadata disk " + device_->path()));
  labelled_ = true;
  return Status::Ok();
}

Status PeMetadata::Save(const std::string& volume, uint64_t volume_size, uint64_t applied_lsn) {
  if (volume.empty() || volume.size() > kMaxNameBytes) {
    return Status::InvalidArgument("volume name '" + volume + "' does not fit a metadata slot");
  }
  size_t slot;
  auto it = index_.find(volume);
  if (it != index_.end()) {
    slot = it->second;
  } else {
    slot = slots_.size();
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].used) {
        slot = i;
        break;
      }
    }
    if (slot == slots_.size()) {
      return Status::ResourceExhausted("metadata disk " + device_->path() + " has all " +
                                       std::to_string(slots_.size()) +
                                       " volume slots in use; attach a larger one");
    }
  }
  CDP_RETURN_IF_ERROR(WriteLabel());
  VolumeCursor c;
  c.volume = volume;
  c.volume_size = volume_size;
  c.applied_lsn = applied_lsn;
  c.generation = slots_[slot].used ? slots_[slot].cursor.generation + 1 : 1;
  c.time_ns = NowNanos();
  // Generation g lives in copy g % 2, so the copy written now is never the newest valid one.
  const uint64_t offset = kBlock * (1 + 2 * slot + (c.generation % 2));
  CDP_RETURN_IF_ERROR(
      WriteBlock(offset, EncodeCopy(c)).WithContext("metadata disk " + device_->path()));
  CDP_RETURN_IF_ERROR(device_->Flush().WithContext("metadata disk " + device_->path()));
  slots_[slot].cursor = c;
  slots_[slot].used = true;
  index_[volume] = slot;
  return Status::Ok();
}

uint64_t PeMetadata::kept_capacity() const {
  const uint64_t size = device_->size() / kBlock * kBlock;
  return size > kKeptOffset + kBlock ? size - kKeptOffset - kBlock : 0;
}

Status PeMetadata::SaveKept(std::string_view blob) {
  const std::string where = "metadata disk " + device_->path();
  if (blob.size() > kept_capacity()) {
    return Status::ResourceExhausted(
        where + " keeps at most " + std::to_string(kept_capacity()) + " bytes from offset " +
        std::to_string(kKeptOffset) + " (" + std::to_string(device_->size()) + "-byte disk), not " +
        std::to_string(blob.size()) +
        "; cdpctl target start grows a metadata disk smaller than 256 MiB while the target is "
        "stopped");
  }
  if (kept_capacity() == 0) return Status::Ok();  // nothing to remove: there is no area
  CDP_RETURN_IF_ERROR(WriteLabel());
  CDP_RETURN_IF_ERROR(WriteBlock(kKeptOffset, std::string(kBlock, '\0')).WithContext(where));
  CDP_RETURN_IF_ERROR(device_->Flush().WithContext(where));
  if (blob.empty()) return Status::Ok();
  AlignedBuffer data((blob.size() + kBlock - 1) / kBlock * kBlock);
  std::memcpy(data.data(), blob.data(), blob.size());
  std::memset(data.data() + blob.size(), 0, data.size() - blob.size());
  CDP_RETURN_IF_ERROR(device_->WriteAt(kKeptOffset + kBlock, data.span()).WithContext(where));
  CDP_RETURN_IF_ERROR(device_->Flush().WithContext(where));
  std::string header(kKeptMagic, sizeof(kKeptMagic));
  PutBigEndian32(&header, kFormat);
  PutBigEndian32(&header, crc32c::Value(blob));
  PutBigEndian64(&header, blob.size());
  PutBigEndian64(&header, NowNanos());
  PutBigEndian32(&header, crc32c::Value(header));
  header.resize(kBlock, '\0');
  CDP_RETURN_IF_ERROR(WriteBlock(kKeptOffset, header).WithContext(where));
  return device_->Flush().WithContext(where);
}

Result<std::string> PeMetadata::LoadKept() {
  const std::string where = "metadata disk " + device_->path();
  if (kept_capacity() == 0) return Status::NotFound(where + " has no kept area");
  AlignedBuffer header(kBlock);
  CDP_RETURN_IF_ERROR(device_->ReadAt(kKeptOffset, header.span()).WithContext(where));
  const char* p = header.data();
  if (IsAllZero({p, kKeptCrcOffset + 4})) return Status::NotFound(where + " keeps nothing");
  if (std::memcmp(p, kKeptMagic, sizeof(kKeptMagic)) != 0 ||
      GetBigEndian32(p + kKeptCrcOffset) != crc32c::Value(std::string_view(p, kKeptCrcOffset))) {
    return Status::Corruption(where + ": the kept area's header at offset " +
                              std::to_string(kKeptOffset) + " is damaged");
  }
  if (GetBigEndian32(p + 8) != kFormat) {
    return Status::Corruption(where + ": the kept area has format " +
                              std::to_string(GetBigEndian32(p + 8)) +
                              ", not 1; written by a newer pe-agent?");
  }
  const uint32_t crc = GetBigEndian32(p + 12);
  const uint64_t length = GetBigEndian64(p + 16);
  if (length == 0 || length > kept_capacity()) {
    return Status::Corruption(where + ": the kept area's header claims " + std::to_string(length) +
                              " bytes; it holds at most " + std::to_string(kept_capacity()));
  }
  AlignedBuffer data((length + kBlock - 1) / kBlock * kBlock);
  CDP_RETURN_IF_ERROR(device_->ReadAt(kKeptOffset + kBlock, data.span()).WithContext(where));
  if (crc32c::Value(std::string_view(data.data(), length)) != crc) {
    return Status::Corruption(where + ": the kept blob (" + std::to_string(length) +
                              " bytes) does not match its CRC32C (a torn or damaged save)");
  }
  return std::string(data.data(), length);
}

}  // namespace cdp::pe
