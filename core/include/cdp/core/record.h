// Change records: the unit of capture, journal and apply (see docs/journal-format.md).
//
// A ChangeRecord is one captured write, discard or write-zeroes of one volume, with its LSN.
// The record codec turns its header into a fixed 40-byte big-endian form protected by its own
// CRC32C; the payload is protected by the record's crc32c field from capture to apply.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp {

// Payload bytes, shared so a record can sit in a resend buffer without copies.
using SharedBytes = std::shared_ptr<const std::string>;

// Matches cdp.v1.RecordKind. Append only, never renumber (stored in the journal).
enum class RecordKind : uint8_t {
  kWrite = 1,
  kDiscard = 2,
  kWriteZeroes = 3,
};

// Returns "write", "discard", "write-zeroes", or "unknown(N)".
std::string RecordKindName(RecordKind kind);

struct ChangeRecord {
  uint64_t lsn = 0;
  uint64_t time_ns = 0;  // capture time, ns since the Unix epoch
  uint64_t offset = 0;   // byte offset in the volume
  uint32_t length = 0;   // bytes covered
  RecordKind kind = RecordKind::kWrite;
  uint32_t crc32c = 0;  // of the payload; 0 for kinds without payload
  SharedBytes payload;  // kWrite only; payload->size() == length

  bool has_payload() const { return kind == RecordKind::kWrite; }
};

// Builds a kWrite record for `data`, computing its CRC32C.
ChangeRecord MakeWriteRecord(uint64_t lsn, uint64_t time_ns, uint64_t offset, SharedBytes data);

// Size of an encoded record header.
inline constexpr size_t kRecordHeaderSize = 40;
inline constexpr uint8_t kRecordFormatVersion = 1;

// Encodes the header fields of `rec` (not the payload) into kRecordHeaderSize bytes.
std::string EncodeRecordHeader(const ChangeRecord& rec);

// Decodes a header produced by EncodeRecordHeader. Corruption if the size, version, kind or
// header CRC is wrong (a single flipped bit anywhere is detected). `where` names the place
// for the message ("journal volume db01").
Result<ChangeRecord> DecodeRecordHeader(std::string_view bytes, std::string_view where);

// Checks that `payload` matches rec.length and rec.crc32c (records without payload must come
// with an empty payload). Corruption naming the LSN and both CRCs otherwise.
Status VerifyRecordPayload(const ChangeRecord& rec, std::string_view payload);

// Checks the header fields against a volume of `volume_size` bytes: known kind, non-zero
// length, offset + length within the volume. InvalidArgument naming the LSN otherwise.
Status ValidateRecordRange(const ChangeRecord& rec, uint64_t volume_size);

// Big-endian helpers for keys and fixed layouts.
void PutBigEndian64(std::string* dst, uint64_t v);
void PutBigEndian32(std::string* dst, uint32_t v);
uint64_t GetBigEndian64(const char* p);
uint32_t GetBigEndian32(const char* p);

// Current wall-clock time in ns since the Unix epoch.
uint64_t NowNanos();

}  // namespace cdp
