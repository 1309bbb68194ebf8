#include "cdp/nbd/nbd_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace cdp::nbd {
namespace {

uint32_t Type(OptionReply r) { return static_cast<uint32_t>(r); }
uint16_t Cmd(Command c) { return static_cast<uint16_t>(c); }

// Wire values straight from proto.md, so a renumbered enum fails loudly.
TEST(NbdProtocol, ConstantsMatchTheSpec) {
  EXPECT_EQ(kNbdMagic, 0x4e42444d41474943u);
  EXPECT_EQ(kOptionMagic, 0x49484156454F5054u);
  EXPECT_EQ(kOptionReplyMagic, 0x3e889045565a9u);
  EXPECT_EQ(kRequestMagic, 0x25609513u);
  EXPECT_EQ(kSimpleReplyMagic, 0x67446698u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kGo), 7u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kSetMetaContext), 10u);
  EXPECT_EQ(Type(OptionReply::kErrUnsup), 0x80000001u);
  EXPECT_EQ(Type(OptionReply::kErrUnknown), 0x80000006u);
  EXPECT_EQ(static_cast<uint16_t>(InfoType::kBlockSize), 3u);
  EXPECT_EQ(Cmd(Command::kWriteZeroes), 6u);
  EXPECT_EQ(static_cast<uint32_t>(Error::kNotSup), 95u);
  EXPECT_EQ(kTransSendWriteZeroes, 1u << 6);
}

TEST(NbdProtocol, BigEndianHelpers) {
  std::string out;
  AppendBe16(&out, 0x0102);
  AppendBe32(&out, 0x03040506);
  AppendBe64(&out, 0x0708090a0b0c0d0eull);
  EXPECT_EQ(out, std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e", 14));
  EXPECT_EQ(LoadBe16(out.data()), 0x0102);
  EXPECT_EQ(LoadBe32(out.data() + 2), 0x03040506u);
  EXPECT_EQ(LoadBe64(out.data() + 6), 0x0708090a0b0c0d0eull);
  // High bit set: no sign extension.
  const std::string ff(8, '\xff');
  EXPECT_EQ(LoadBe64(ff.data()), ~uint64_t{0});
}

TEST(NbdProtocol, GreetingRoundTrip) {
  const std::string g = EncodeGreeting(kFlagFixedNewstyle | kFlagNoZeroes);
  ASSERT_EQ(g.size(), kGreetingSize);
  EXPECT_EQ(g.substr(0, 16), "NBDMAGICIHAVEOPT");
  Result<uint16_t> flags = ParseGreeting(g);
  ASSERT_TRUE(flags.ok()) << flags.status().ToString();
  EXPECT_EQ(*flags, kFlagFixedNewstyle | kFlagNoZeroes);

  std::string bad = g;
  bad[0] = 'X';
  EXPECT_EQ(ParseGreeting(bad).status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(ParseGreeting(g.substr(1)).status().code(), StatusCode::kInvalidArgument);
}

TEST(NbdProtocol, OptionHeaderRoundTrip) {
  const std::string h = EncodeOptionHeader(static_cast<uint32_t>(Option::kGo), 0x01020304);
  ASSERT_EQ(h.size(), kOptionHeaderSize);
  Result<OptionHeader> parsed = ParseOptionHeader(h);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->option, 7u);
  EXPECT_EQ(parsed->length, 0x01020304u);
}

TEST(NbdProtocol, OptionHeaderRejectsBadMagicAndSize) {
  std::string h = EncodeOptionHeader(1, 0);
  h[7] ^= 1;
  Result<OptionHeader> parsed = ParseOptionHeader(h);
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_NE(parsed.status().message().find("IHAVEOPT"), std::string::npos);
  EXPECT_EQ(ParseOptionHeader("short").status().code(), StatusCode::kInvalidArgument);
}

TEST(NbdProtocol, InfoRequestRoundTrip) {
  InfoRequest in;
  in.name = "db01-sda";
  in.info_types = {static_cast<uint16_t>(InfoType::kName),
                   static_cast<uint16_t>(InfoType::kBlockSize)};
  const std::string payload = EncodeInfoRequest(in);
  EXPECT_EQ(payload.size(), 4 + 8 + 2 + 4u);
  Result<InfoRequest> out = ParseInfoRequest(payload);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->name, "db01-sda");
  EXPECT_EQ(out->info_types, in.info_types);
}

TEST(NbdProtocol, InfoRequestEmptyNameAndNoRequests) {
  Result<InfoRequest> out = ParseInfoRequest(EncodeInfoRequest(InfoRequest{}));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(out->name.empty());
  EXPECT_TRUE(out->info_types.empty());
}

TEST(NbdProtocol, InfoRequestNameLengthPastTheEnd) {
  std::string payload;
  AppendBe32(&payload, 100);  // claims a 100-byte name
  payload += "vol";
  AppendBe16(&payload, 0);
  Result<InfoRequest> out = ParseInfoRequest(payload);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("name length 100 runs past the end"), std::string::npos)
      << out.status().message();
}

TEST(NbdProtocol, InfoRequestOddInfoBytes) {
  std::string payload;
  AppendBe32(&payload, 3);
  payload += "vol";
  AppendBe16(&payload, 1);
  payload += std::string("\x00\x03\x00", 3);  // one request plus a stray byte
  Result<InfoRequest> out = ParseInfoRequest(payload);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("announces 1 info requests"), std::string::npos)
      << out.status().message();
}

TEST(NbdProtocol, InfoRequestCountDisagreesWithLength) {
  std::string payload;
  AppendBe32(&payload, 0);
  AppendBe16(&payload, 3);  // three requests announced, one present
  AppendBe16(&payload, 0);
  EXPECT_EQ(ParseInfoRequest(payload).status().code(), StatusCode::kInvalidArgument);
}

TEST(NbdProtocol, InfoRequestTooShort) {
  Result<InfoRequest> out = ParseInfoRequest(std::string(5, '\0'));
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("at least 6"), std::string::npos);
}

TEST(NbdProtocol, OptionRepliesLayout) {
  const uint32_t go = static_cast<uint32_t>(Option::kGo);

  const std::string ack = EncodeAck(go);
  ASSERT_EQ(ack.size(), kOptionReplyHeaderSize);
  Result<OptionReplyHeader> h = ParseOptionReplyHeader(ack);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->option, go);
  EXPECT_EQ(h->reply_type, Type(OptionReply::kAck));
  EXPECT_EQ(h->length, 0u);

  const std::string server = EncodeServerReply(3, "vol");
  h = ParseOptionReplyHeader(std::string_view(server).substr(0, kOptionReplyHeaderSize));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->reply_type, Type(OptionReply::kServer));
  EXPECT_EQ(h->length, 7u);
  EXPECT_EQ(LoadBe32(server.data() + 20), 3u);
  EXPECT_EQ(server.substr(24), "vol");

  const std::string info = EncodeInfoExport(go, 4 << 20, kTransHasFlags | kTransSendFlush);
  ASSERT_EQ(info.size(), kOptionReplyHeaderSize + 12);
  h = ParseOptionReplyHeader(std::string_view(info).substr(0, kOptionReplyHeaderSize));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->reply_type, Type(OptionReply::kInfo));
  EXPECT_EQ(h->length, 12u);
  EXPECT_EQ(LoadBe16(info.data() + 20), static_cast<uint16_t>(InfoType::kExport));
  EXPECT_EQ(LoadBe64(info.data() + 22), uint64_t{4} << 20);
  EXPECT_EQ(LoadBe16(info.data() + 30), kTransHasFlags | kTransSendFlush);

  const std::string bs = EncodeInfoBlockSize(go, 512, 4096, 32 << 20);
  ASSERT_EQ(bs.size(), kOptionReplyHeaderSize + 14);
  EXPECT_EQ(LoadBe16(bs.data() + 20), static_cast<uint16_t>(InfoType::kBlockSize));
  EXPECT_EQ(LoadBe32(bs.data() + 22), 512u);
  EXPECT_EQ(LoadBe32(bs.data() + 26), 4096u);
  EXPECT_EQ(LoadBe32(bs.data() + 30), 32u << 20);

  const std::string name = EncodeInfoName(go, "vol");
  EXPECT_EQ(LoadBe32(name.data() + 16), 5u);
  EXPECT_EQ(LoadBe16(name.data() + 20), static_cast<uint16_t>(InfoType::kName));
  EXPECT_EQ(name.substr(22), "vol");

  const std::string err = EncodeOptionError(go, OptionReply::kErrUnknown, "unknown export 'x'");
  h = ParseOptionReplyHeader(std::string_view(err).substr(0, kOptionReplyHeaderSize));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->reply_type, 0x80000006u);
  EXPECT_EQ(err.substr(kOptionReplyHeaderSize), "unknown export 'x'");

  // Messages are capped at the spec's string limit.
  const std::string long_err =
      EncodeOptionError(go, OptionReply::kErrUnsup, std::string(9000, 'm'));
  EXPECT_EQ(long_err.size(), kOptionReplyHeaderSize + kMaxStringLength);
}

TEST(NbdProtocol, OptionReplyHeaderRejectsBadMagic) {
  std::string ack = EncodeAck(1);
  ack[0] = 1;
  EXPECT_EQ(ParseOptionReplyHeader(ack).status().code(), StatusCode::kProtocolMismatch);
}

TEST(NbdProtocol, ExportNameReplyPadding) {
  EXPECT_EQ(EncodeExportNameReply(1 << 20, kTransHasFlags, /*no_zeroes=*/false).size(),
            8 + 2 + kExportNameZeroPadding);
  const std::string r = EncodeExportNameReply(1 << 20, kTransHasFlags, /*no_zeroes=*/true);
  ASSERT_EQ(r.size(), 10u);
  EXPECT_EQ(LoadBe64(r.data()), uint64_t{1} << 20);
  EXPECT_EQ(LoadBe16(r.data() + 8), kTransHasFlags);
}

TEST(NbdProtocol, RequestHeaderRoundTrip) {
  RequestHeader in;
  in.flags = kCmdFlagFua;
  in.type = Cmd(Command::kWrite);
  in.handle = 0xdeadbeefcafef00dull;
  in.offset = 0x123456789aull;
  in.length = 65536;
  const std::string bytes = EncodeRequestHeader(in);
  ASSERT_EQ(bytes.size(), kRequestHeaderSize);
  EXPECT_EQ(LoadBe32(bytes.data()), kRequestMagic);
  Result<RequestHeader> out = ParseRequestHeader(bytes);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->flags, in.flags);
  EXPECT_EQ(out->type, in.type);
  EXPECT_EQ(out->handle, in.handle);
  EXPECT_EQ(out->offset, in.offset);
  EXPECT_EQ(out->length, in.length);
}

TEST(NbdProtocol, RequestHeaderRejectsBadMagicAndSize) {
  std::string bytes = EncodeRequestHeader(RequestHeader{});
  bytes[3] = 0;
  Result<RequestHeader> out = ParseRequestHeader(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_NE(out.status().message().find("0x25609500"), std::string::npos) << out.status().message();
  EXPECT_EQ(ParseRequestHeader(bytes.substr(0, 27)).status().code(), StatusCode::kInvalidArgument);
}

TEST(NbdProtocol, SimpleReplyRoundTrip) {
  const std::string bytes = EncodeSimpleReply(Error::kNoSpc, 42);
  ASSERT_EQ(bytes.size(), kSimpleReplyHeaderSize);
  Result<SimpleReply> out = ParseSimpleReply(bytes);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->error, 28u);
  EXPECT_EQ(out->handle, 42u);
  std::string bad = bytes;
  bad[0] = 0;
  EXPECT_EQ(ParseSimpleReply(bad).status().code(), StatusCode::kProtocolMismatch);
}

TEST(NbdProtocol, Names) {
  EXPECT_EQ(OptionName(7), "NBD_OPT_GO");
  EXPECT_EQ(OptionName(4242), "NBD_OPT_<4242>");
  EXPECT_EQ(CommandName(1), "NBD_CMD_WRITE");
  EXPECT_EQ(CommandName(99), "NBD_CMD_<99>");
  EXPECT_EQ(ErrorName(Error::kInval), "NBD_EINVAL");
  EXPECT_EQ(OptionReplyName(Type(OptionReply::kErrUnsup)), "NBD_REP_ERR_UNSUP");
}

// ----- ValidateRequest -----

constexpr uint64_t kSize = 1 << 20;
constexpr uint32_t kMax = 64 * 1024;

ExportLimits Limits(bool read_only = false, uint32_t min_block = 512) {
  ExportLimits l;
  l.size = kSize;
  l.min_block_size = min_block;
  l.max_block_size = kMax;
  l.read_only = read_only;
  return l;
}

RequestHeader Req(Command type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  RequestHeader r;
  r.type = Cmd(type);
  r.offset = offset;
  r.length = length;
  r.flags = flags;
  r.handle = 7;
  return r;
}

TEST(NbdValidate, AcceptsInRangeRequests) {
  EXPECT_TRUE(ValidateRequest(Req(Command::kRead, 0, kMax), Limits()).ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kWrite, kSize - 512, 512, kCmdFlagFua), Limits()).ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kTrim, 0, kSize), Limits()).ok());  // no max for trim
  EXPECT_TRUE(ValidateRequest(Req(Command::kWriteZeroes, 4096, 4096, kCmdFlagNoHole | kCmdFlagFua),
                              Limits())
                  .ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kFlush, 0, 0), Limits()).ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kFlush, 0, 0, kCmdFlagFua), Limits()).ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kDisc, 0, 0), Limits()).ok());
  // Exactly at the end.
  EXPECT_TRUE(ValidateRequest(Req(Command::kRead, kSize, 0), Limits()).ok());
}

TEST(NbdValidate, ReadPastEndIsEinval) {
  const RequestVerdict v = ValidateRequest(Req(Command::kRead, kSize - 512, 1024), Limits());
  EXPECT_EQ(v.error, Error::kInval);
  EXPECT_NE(v.message.find("past the end of the export (1048576 bytes)"), std::string::npos)
      << v.message;
  EXPECT_EQ(ValidateRequest(Req(Command::kRead, kSize + 512, 512), Limits()).error, Error::kInval);
}

TEST(NbdValidate, TrimPastEndIsEinval) {
  EXPECT_EQ(ValidateRequest(Req(Command::kTrim, kSize, 512), Limits()).error, Error::kInval);
}

TEST(NbdValidate, WritePastEndIsEnospc) {
  EXPECT_EQ(ValidateRequest(Req(Command::kWrite, kSize - 512, 1024), Limits()).error,
            Error::kNoSpc);
}

TEST(NbdValidate, WriteZeroesPastEndIsEnospc) {
  // proto.md, NBD_CMD_WRITE_ZEROES: "SHOULD return NBD_ENOSPC ... beyond the size".
  EXPECT_EQ(ValidateRequest(Req(Command::kWriteZeroes, kSize, 512), Limits()).error, Error::kNoSpc);
}

TEST(NbdValidate, OffsetPlusLengthOverflowIsCaught) {
  const uint64_t huge = ~uint64_t{0} - 511;  // aligned, and offset + length wraps
  EXPECT_EQ(ValidateRequest(Req(Command::kRead, huge, 1024), Limits()).error, Error::kInval);
  EXPECT_EQ(ValidateRequest(Req(Command::kWrite, huge, 1024), Limits()).error, Error::kNoSpc);
}

TEST(NbdValidate, OverMaxIsEinval) {
  EXPECT_EQ(ValidateRequest(Req(Command::kRead, 0, kMax + 512), Limits()).error, Error::kInval);
  const RequestVerdict v = ValidateRequest(Req(Command::kWrite, 0, kMax + 512), Limits());
  EXPECT_EQ(v.error, Error::kInval);
  EXPECT_NE(v.message.find("maximum block size of 65536"), std::string::npos) << v.message;
  EXPECT_EQ(ValidateRequest(Req(Command::kWriteZeroes, 0, kMax + 512), Limits()).error,
            Error::kInval);
}

TEST(NbdValidate, MisalignedIsEinval) {
  EXPECT_EQ(ValidateRequest(Req(Command::kRead, 100, 512), Limits()).error, Error::kInval);
  const RequestVerdict v = ValidateRequest(Req(Command::kWrite, 0, 100), Limits());
  EXPECT_EQ(v.error, Error::kInval);
  EXPECT_NE(v.message.find("not aligned"), std::string::npos) << v.message;
  // A minimum block size of 1 allows any byte range.
  EXPECT_TRUE(ValidateRequest(Req(Command::kWrite, 3, 5), Limits(false, 1)).ok());
}

TEST(NbdValidate, UnknownCommandIsEnotsup) {
  RequestHeader r = Req(Command::kRead, 0, 512);
  r.type = 42;
  EXPECT_EQ(ValidateRequest(r, Limits()).error, Error::kNotSup);
  EXPECT_EQ(ValidateRequest(Req(Command::kBlockStatus, 0, 512), Limits()).error, Error::kNotSup);
  EXPECT_EQ(ValidateRequest(Req(Command::kCache, 0, 512), Limits()).error, Error::kNotSup);
}

TEST(NbdValidate, UnknownFlagsAreEinval) {
  EXPECT_EQ(ValidateRequest(Req(Command::kRead, 0, 512, kCmdFlagDf), Limits()).error,
            Error::kInval);
  EXPECT_EQ(ValidateRequest(Req(Command::kWrite, 0, 512, kCmdFlagNoHole), Limits()).error,
            Error::kInval);
  EXPECT_EQ(ValidateRequest(Req(Command::kWriteZeroes, 0, 512, kCmdFlagFastZero), Limits()).error,
            Error::kInval);
  const RequestVerdict v = ValidateRequest(Req(Command::kFlush, 0, 0, 0x8000), Limits());
  EXPECT_EQ(v.error, Error::kInval);
  EXPECT_NE(v.message.find("0x8000"), std::string::npos) << v.message;
}

TEST(NbdValidate, ReadOnlyRefusesWritesWithEperm) {
  EXPECT_TRUE(ValidateRequest(Req(Command::kRead, 0, 512), Limits(true)).ok());
  EXPECT_TRUE(ValidateRequest(Req(Command::kFlush, 0, 0), Limits(true)).ok());
  EXPECT_EQ(ValidateRequest(Req(Command::kWrite, 0, 512), Limits(true)).error, Error::kPerm);
  EXPECT_EQ(ValidateRequest(Req(Command::kTrim, 0, 512), Limits(true)).error, Error::kPerm);
  EXPECT_EQ(ValidateRequest(Req(Command::kWriteZeroes, 0, 512), Limits(true)).error, Error::kPerm);
}

TEST(NbdValidate, ErrorFromStatus) {
  EXPECT_EQ(ErrorFromStatus(Status::ResourceExhausted("journal full")), Error::kNoSpc);
  EXPECT_EQ(ErrorFromStatus(Status::IOError("disk")), Error::kIo);
  EXPECT_EQ(ErrorFromStatus(Status::Unavailable("journal down")), Error::kIo);
}

}  // namespace
}  // namespace cdp::nbd
