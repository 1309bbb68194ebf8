// Tests of the change-record codec: the 40-byte header layout, its CRC catching every single
// flipped bit, payload verification and range validation.
#include <cstdint>
#include <memory>
#include <string>

#include "cdp/core/crc32c.h"
#include "cdp/core/record.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

using ::testing::HasSubstr;

SharedBytes Bytes(std::string s) { return std::make_shared<const std::string>(std::move(s)); }

ChangeRecord SampleRecord() {
  ChangeRecord rec;
  rec.lsn = 0x0102030405060708ull;
  rec.time_ns = 0x1112131415161718ull;
  rec.offset = 0x2122232425262728ull;
  rec.length = 0x31323334u;
  rec.kind = RecordKind::kWriteZeroes;
  rec.crc32c = 0x41424344u;
  return rec;
}

TEST(RecordCodec, EncodesTheDocumentedBigEndianLayout) {
  const std::string bytes = EncodeRecordHeader(SampleRecord());
  ASSERT_EQ(bytes.size(), kRecordHeaderSize);
  const std::string expected_prefix(
      "\x01\x03\x00\x00"                  // version, kind, reserved
      "\x01\x02\x03\x04\x05\x06\x07\x08"  // lsn
      "\x11\x12\x13\x14\x15\x16\x17\x18"  // time_ns
      "\x21\x22\x23\x24\x25\x26\x27\x28"  // offset
      "\x31\x32\x33\x34"                  // length
      "\x41\x42\x43\x44",                 // payload crc32c
      36);
  EXPECT_EQ(bytes.substr(0, 36), expected_prefix);
  EXPECT_EQ(GetBigEndian32(bytes.data() + 36), crc32c::Value(bytes.data(), 36));
}

TEST(RecordCodec, RoundTripsEveryKind) {
  for (RecordKind kind : {RecordKind::kWrite, RecordKind::kDiscard, RecordKind::kWriteZeroes}) {
    ChangeRecord rec = SampleRecord();
    rec.kind = kind;
    Result<ChangeRecord> decoded = DecodeRecordHeader(EncodeRecordHeader(rec), "test");
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->lsn, rec.lsn);
    EXPECT_EQ(decoded->time_ns, rec.time_ns);
    EXPECT_EQ(decoded->offset, rec.offset);
    EXPECT_EQ(decoded->length, rec.length);
    EXPECT_EQ(decoded->kind, rec.kind);
    EXPECT_EQ(decoded->crc32c, rec.crc32c);
    EXPECT_EQ(decoded->payload, nullptr);
  }
}

TEST(RecordCodec, RoundTripsExtremeValues) {
  ChangeRecord rec;
  rec.lsn = UINT64_MAX;
  rec.time_ns = 0;
  rec.offset = UINT64_MAX - 1;
  rec.length = UINT32_MAX;
  rec.crc32c = UINT32_MAX;
  Result<ChangeRecord> decoded = DecodeRecordHeader(EncodeRecordHeader(rec), "test");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->lsn, UINT64_MAX);
  EXPECT_EQ(decoded->offset, UINT64_MAX - 1);
  EXPECT_EQ(decoded->length, UINT32_MAX);
  EXPECT_EQ(decoded->crc32c, UINT32_MAX);
}

TEST(RecordCodec, EverySingleBitFlipIsCorruption) {
  const std::string good = EncodeRecordHeader(SampleRecord());
  ASSERT_EQ(good.size() * 8, 320u);
  for (size_t bit = 0; bit < good.size() * 8; ++bit) {
    std::string bad = good;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    Result<ChangeRecord> decoded = DecodeRecordHeader(bad, "journal volume db01");
    ASSERT_FALSE(decoded.ok()) << "bit " << bit << " flipped went unnoticed";
    EXPECT_EQ(decoded.status().code(), StatusCode::kCorruption) << "bit " << bit;
    EXPECT_THAT(decoded.status().message(), HasSubstr("journal volume db01")) << "bit " << bit;
  }
}

TEST(RecordCodec, WrongSizeIsCorruption) {
  const std::string good = EncodeRecordHeader(SampleRecord());
  for (size_t size : {size_t{0}, size_t{1}, size_t{39}, size_t{41}, size_t{80}}) {
    std::string bytes = good;
    bytes.resize(size, '\0');
    Result<ChangeRecord> decoded = DecodeRecordHeader(bytes, "journal volume db01");
    ASSERT_FALSE(decoded.ok()) << "size " << size;
    EXPECT_EQ(decoded.status().code(), StatusCode::kCorruption);
    EXPECT_THAT(decoded.status().message(),
                HasSubstr("is " + std::to_string(size) + " bytes, expected 40"));
  }
}

// A header with a valid CRC but a field we do not understand is still refused.
TEST(RecordCodec, UnknownVersionOrKindWithValidCrcIsCorruption) {
  std::string bytes = EncodeRecordHeader(SampleRecord());
  auto reseal = [](std::string b) {
    b.resize(36);
    PutBigEndian32(&b, crc32c::Value(b.data(), 36));
    return b;
  };
  std::string bad_version = bytes;
  bad_version[0] = 2;
  Result<ChangeRecord> v = DecodeRecordHeader(reseal(bad_version), "here");
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(v.status().message(), HasSubstr("version 2"));

  std::string bad_kind = bytes;
  bad_kind[1] = 9;
  Result<ChangeRecord> k = DecodeRecordHeader(reseal(bad_kind), "here");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(k.status().message(), HasSubstr("unknown(9)"));
}

TEST(RecordCodec, MakeWriteRecordComputesLengthAndCrc) {
  ChangeRecord rec = MakeWriteRecord(7, 100, 4096, Bytes("123456789"));
  EXPECT_EQ(rec.lsn, 7u);
  EXPECT_EQ(rec.time_ns, 100u);
  EXPECT_EQ(rec.offset, 4096u);
  EXPECT_EQ(rec.length, 9u);
  EXPECT_EQ(rec.kind, RecordKind::kWrite);
  EXPECT_EQ(rec.crc32c, 0xE3069283u);
  EXPECT_TRUE(rec.has_payload());
  EXPECT_EQ(*rec.payload, "123456789");
}

TEST(RecordCodec, VerifyPayloadAcceptsTheRightBytes) {
  ChangeRecord rec = MakeWriteRecord(42, 0, 0, Bytes(std::string(4096, 'x')));
  EXPECT_TRUE(VerifyRecordPayload(rec, *rec.payload).ok());
}

TEST(RecordCodec, VerifyPayloadCatchesEveryFlippedBit) {
  const std::string data = "a small payload of a few bytes";
  ChangeRecord rec = MakeWriteRecord(42, 0, 0, Bytes(data));
  for (size_t bit = 0; bit < data.size() * 8; ++bit) {
    std::string bad = data;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    Status s = VerifyRecordPayload(rec, bad);
    ASSERT_EQ(s.code(), StatusCode::kCorruption) << "bit " << bit;
    EXPECT_THAT(s.message(), HasSubstr("CRC32C mismatch"));
    EXPECT_THAT(s.message(), HasSubstr("LSN 42"));
    EXPECT_THAT(s.message(), HasSubstr(std::to_string(rec.crc32c)));
  }
}

TEST(RecordCodec, VerifyPayloadWrongLengthIsCorruption) {
  ChangeRecord rec = MakeWriteRecord(5, 0, 0, Bytes("abcd"));
  Status shorter = VerifyRecordPayload(rec, "abc");
  EXPECT_EQ(shorter.code(), StatusCode::kCorruption);
  EXPECT_THAT(shorter.message(), HasSubstr("LSN 5: payload is 3 bytes, header says 4"));
  Status longer = VerifyRecordPayload(rec, "abcde");
  EXPECT_EQ(longer.code(), StatusCode::kCorruption);
  EXPECT_THAT(longer.message(), HasSubstr("payload is 5 bytes"));
}

TEST(RecordCodec, VerifyPayloadOfKindsWithoutPayload) {
  ChangeRecord rec;
  rec.lsn = 9;
  rec.length = 4096;
  rec.kind = RecordKind::kDiscard;
  EXPECT_TRUE(VerifyRecordPayload(rec, "").ok());
  Status s = VerifyRecordPayload(rec, "junk");
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_THAT(s.message(), HasSubstr("LSN 9 (discard) carries 4 payload bytes"));
}

TEST(RecordCodec, ValidateRangeAcceptsRecordsInsideTheVolume) {
  ChangeRecord rec = MakeWriteRecord(1, 0, 0, Bytes(std::string(512, 'a')));
  EXPECT_TRUE(ValidateRecordRange(rec, 512).ok());
  rec.offset = 1024 - 512;
  EXPECT_TRUE(ValidateRecordRange(rec, 1024).ok());
}

TEST(RecordCodec, ValidateRangePastTheEndIsInvalidArgument) {
  ChangeRecord rec = MakeWriteRecord(17, 0, 1000, Bytes(std::string(100, 'a')));
  Status s = ValidateRecordRange(rec, 1099);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("LSN 17"));
  EXPECT_THAT(s.message(), HasSubstr("past the volume end 1099"));

  // Offset beyond the end, and an offset + length that would wrap around 2^64.
  rec.offset = 2000;
  EXPECT_EQ(ValidateRecordRange(rec, 1099).code(), StatusCode::kInvalidArgument);
  rec.offset = UINT64_MAX - 10;
  EXPECT_EQ(ValidateRecordRange(rec, UINT64_MAX - 20).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateRecordRange(rec, UINT64_MAX).code(), StatusCode::kInvalidArgument);
}

TEST(RecordCodec, ValidateRangeZeroLengthIsInvalidArgument) {
  ChangeRecord rec;
  rec.lsn = 3;
  rec.kind = RecordKind::kDiscard;
  rec.length = 0;
  Status s = ValidateRecordRange(rec, 1 << 20);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("LSN 3: zero length"));
}

TEST(RecordCodec, ValidateRangeUnknownKindIsInvalidArgument) {
  ChangeRecord rec;
  rec.lsn = 4;
  rec.length = 512;
  rec.kind = static_cast<RecordKind>(0);
  Status s = ValidateRecordRange(rec, 1 << 20);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("LSN 4: unknown kind unknown(0)"));
}

TEST(RecordCodec, KindNames) {
  EXPECT_EQ(RecordKindName(RecordKind::kWrite), "write");
  EXPECT_EQ(RecordKindName(RecordKind::kDiscard), "discard");
  EXPECT_EQ(RecordKindName(RecordKind::kWriteZeroes), "write-zeroes");
  EXPECT_EQ(RecordKindName(static_cast<RecordKind>(200)), "unknown(200)");
}

TEST(BigEndian, PutWritesMostSignificantByteFirst) {
  std::string out;
  PutBigEndian64(&out, 0x0102030405060708ull);
  PutBigEndian32(&out, 0xA1B2C3D4u);
  EXPECT_EQ(out, std::string("\x01\x02\x03\x04\x05\x06\x07\x08\xA1\xB2\xC3\xD4", 12));
}

TEST(BigEndian, GetReadsWhatPutWrote) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{0xFF}, uint64_t{0x8000000000000000},
                     uint64_t{0xFEDCBA9876543210}, UINT64_MAX}) {
    std::string out;
    PutBigEndian64(&out, v);
    ASSERT_EQ(out.size(), 8u);
    EXPECT_EQ(GetBigEndian64(out.data()), v);
  }
  for (uint32_t v : {uint32_t{0}, uint32_t{0x80}, uint32_t{0x80000000}, UINT32_MAX}) {
    std::string out;
    PutBigEndian32(&out, v);
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(GetBigEndian32(out.data()), v);
  }
}

// Big-endian keys sort like the numbers they hold.
TEST(BigEndian, EncodedValuesSortNumerically) {
  std::string a, b, c;
  PutBigEndian64(&a, 255);
  PutBigEndian64(&b, 256);
  PutBigEndian64(&c, 0x0100000000000000ull);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

}  // namespace
}  // namespace cdp
