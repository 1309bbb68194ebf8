#include <chrono>
#include <cstring>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"

namespace cdp {

std::string RecordKindName(RecordKind kind) {
  switch (kind) {
    case RecordKind::kWrite:
      return "write";
    case RecordKind::kDiscard:
      return "discard";
    case RecordKind::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown(" + std::to_string(static_cast<int>(kind)) + ")";
}

ChangeRecord MakeWriteRecord(uint64_t lsn, uint64_t time_ns, uint64_t offset, SharedBytes data) {
  ChangeRecord rec;
  rec.lsn = lsn;
  rec.time_ns = time_ns;
  rec.offset = offset;
  rec.length = static_cast<uint32_t>(data->size());
  rec.kind = RecordKind::kWrite;
  rec.crc32c = crc32c::Value(*data);
  rec.payload = std::move(data);
  return rec;
}

void PutBigEndian64(std::string* dst, uint64_t v) {
  char b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xFF);
    v >>= 8;
  }
  dst->append(b, 8);
}

void PutBigEndian32(std::string* dst, uint32_t v) {
  char b[4];
  for (int i = 3; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xFF);
    v >>= 8;
  }
  dst->append(b, 4);
}

uint64_t GetBigEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint32_t GetBigEndian32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint64_t NowNanos() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Layout (big-endian): version u8, kind u8, reserved u16 (0), lsn u64, time_ns u64,
// offset u64, length u32, payload crc32c u32, header crc32c u32 (of the 36 bytes before it).
std::string EncodeRecordHeader(const ChangeRecord& rec) {
  std::string out;
  out.reserve(kRecordHeaderSize);
  out.push_back(static_cast<char>(kRecordFormatVersion));
  out.push_back(static_cast<char>(rec.kind));
  out.push_back(0);
  out.push_back(0);
  PutBigEndian64(&out, rec.lsn);
  PutBigEndian64(&out, rec.time_ns);
  PutBigEndian64(&out, rec.offset);
  PutBigEndian32(&out, rec.length);
  PutBigEndian32(&out, rec.crc32c);
  PutBigEndian32(&out, crc32c::Value(out.data(), out.size()));
  return out;
}

Result<ChangeRecord> DecodeRecordHeader(std::string_view bytes, std::string_view where) {
  const std::string at(where);
  if (bytes.size() != kRecordHeaderSize) {
    return Status::Corruption(at + ": record header is " + std::to_string(bytes.size()) +
                              " bytes, expected " + std::to_string(kRecordHeaderSize));
  }
  const char* p = bytes.data();
  const uint32_t stored = GetBigEndian32(p + 36);
  const uint32_t actual = crc32c::Value(p, 36);
  if (stored != actual) {
    return Status::Corruption(at + ": record header CRC mismatch (stored " +
                              std::to_string(stored) + ", computed " + std::to_string(actual) +
                              ")");
  }
  if (static_cast<uint8_t>(p[0]) != kRecordFormatVersion) {
    return Status::Corruption(at + ": record format version " +
                              std::to_string(static_cast<uint8_t>(p[0])) + " is not supported");
  }
  ChangeRecord rec;
  rec.kind = static_cast<RecordKind>(static_cast<uint8_t>(p[1]));
  if (rec.kind != RecordKind::kWrite && rec.kind != RecordKind::kDiscard &&
      rec.kind != RecordKind::kWriteZeroes) {
    return Status::Corruption(at + ": unknown record kind " + RecordKindName(rec.kind));
  }
  rec.lsn = GetBigEndian64(p + 4);
  rec.time_ns = GetBigEndian64(p + 12);
  rec.offset = GetBigEndian64(p + 20);
  rec.length = GetBigEndian32(p + 28);
  rec.crc32c = GetBigEndian32(p + 32);
  return rec;
}

Status VerifyRecordPayload(const ChangeRecord& rec, std::string_view payload) {
  if (!rec.has_payload()) {
    if (!payload.empty()) {
      return Status::Corruption("record LSN " + std::to_string(rec.lsn) + " (" +
                                RecordKindName(rec.kind) + ") carries " +
                                std::to_string(payload.size()) + " payload bytes, expected none");
    }
    return Status::Ok();
  }
  if (payload.size() != rec.length) {
    return Status::Corruption("record LSN " + std::to_string(rec.lsn) + ": payload is " +
                              std::to_string(payload.size()) + " bytes, header says " +
                              std::to_string(rec.length));
  }
  const uint32_t actual = crc32c::Value(payload);
  if (actual != rec.crc32c) {
    return Status::Corruption("record LSN " + std::to_string(rec.lsn) +
                              ": payload CRC32C mismatch (header " + std::to_string(rec.crc32c) +
                              ", payload " + std::to_string(actual) + ")");
  }
  return Status::Ok();
}

Status ValidateRecordRange(const ChangeRecord& rec, uint64_t volume_size) {
  const std::string lsn = "record LSN " + std::to_string(rec.lsn);
  if (rec.kind != RecordKind::kWrite && rec.kind != RecordKind::kDiscard &&
      rec.kind != RecordKind::kWriteZeroes) {
    return Status::InvalidArgument(lsn + ": unknown kind " + RecordKindName(rec.kind));
  }
  if (rec.length == 0) return Status::InvalidArgument(lsn + ": zero length");
  if (rec.offset > volume_size || rec.length > volume_size - rec.offset) {
    return Status::InvalidArgument(lsn + ": range [" + std::to_string(rec.offset) + ", +" +
                                   std::to_string(rec.length) + ") is past the volume end " +
                                   std::to_string(volume_size));
  }
  return Status::Ok();
}

}  // namespace cdp
