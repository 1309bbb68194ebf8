#include "cdp/nbd/nbd_protocol.h"

#include <cstdio>
#include <string>

namespace cdp::nbd {

namespace {

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

Status WrongSize(std::string_view what, size_t expected, size_t got) {
  return Status::InvalidArgument("nbd: " + std::string(what) + " must be " +
                                 std::to_string(expected) + " bytes, got " + std::to_string(got));
}

bool IsKnownCommand(uint16_t type) {
  switch (static_cast<Command>(type)) {
    case Command::kRead:
    case Command::kWrite:
    case Command::kDisc:
    case Command::kFlush:
    case Command::kTrim:
    case Command::kWriteZeroes:
      return true;
    default:
      return false;
  }
}

// Command flags this server accepts on each supported command. FUA is valid on every command
// once NBD_FLAG_SEND_FUA is advertised (proto.md: "the server MUST accept all commands with
// this bit set"); NO_HOLE must be supported by a server advertising WRITE_ZEROES.
uint16_t AllowedFlags(Command type) {
  if (type == Command::kWriteZeroes) return kCmdFlagFua | kCmdFlagNoHole;
  return kCmdFlagFua;
}

// "write of 4096 bytes at offset 8192".
std::string DescribeRange(const RequestHeader& r) {
  std::string name = CommandName(r.type);
  return name + " of " + std::to_string(r.length) + " bytes at offset " + std::to_string(r.offset);
}

}  // namespace

std::string OptionName(uint32_t option) {
  switch (static_cast<Option>(option)) {
    case Option::kExportName:
      return "NBD_OPT_EXPORT_NAME";
    case Option::kAbort:
      return "NBD_OPT_ABORT";
    case Option::kList:
      return "NBD_OPT_LIST";
    case Option::kPeekExport:
      return "NBD_OPT_PEEK_EXPORT";
    case Option::kStartTls:
      return "NBD_OPT_STARTTLS";
    case Option::kInfo:
      return "NBD_OPT_INFO";
    case Option::kGo:
      return "NBD_OPT_GO";
    case Option::kStructuredReply:
      return "NBD_OPT_STRUCTURED_REPLY";
    case Option::kListMetaContext:
      return "NBD_OPT_LIST_META_CONTEXT";
    case Option::kSetMetaContext:
      return "NBD_OPT_SET_META_CONTEXT";
    case Option::kExtendedHeaders:
      return "NBD_OPT_EXTENDED_HEADERS";
  }
  return "NBD_OPT_<" + std::to_string(option) + ">";
}

std::string CommandName(uint16_t type) {
  switch (static_cast<Command>(type)) {
    case Command::kRead:
      return "NBD_CMD_READ";
    case Command::kWrite:
      return "NBD_CMD_WRITE";
    case Command::kDisc:
      return "NBD_CMD_DISC";
    case Command::kFlush:
      return "NBD_CMD_FLUSH";
    case Command::kTrim:
      return "NBD_CMD_TRIM";
    case Command::kCache:
      return "NBD_CMD_CACHE";
    case Command::kWriteZeroes:
      return "NBD_CMD_WRITE_ZEROES";
    case Command::kBlockStatus:
      return "NBD_CMD_BLOCK_STATUS";
    case Command::kResize:
      return "NBD_CMD_RESIZE";
  }
  return "NBD_CMD_<" + std::to_string(type) + ">";
}

std::string ErrorName(Error error) {
  switch (error) {
    case Error::kOk:
      return "OK";
    case Error::kPerm:
      return "NBD_EPERM";
    case Error::kIo:
      return "NBD_EIO";
    case Error::kNoMem:
      return "NBD_ENOMEM";
    case Error::kInval:
      return "NBD_EINVAL";
    case Error::kNoSpc:
      return "NBD_ENOSPC";
    case Error::kOverflow:
      return "NBD_EOVERFLOW";
    case Error::kNotSup:
      return "NBD_ENOTSUP";
    case Error::kShutdown:
      return "NBD_ESHUTDOWN";
  }
  return "NBD_E<" + std::to_string(static_cast<uint32_t>(error)) + ">";
}

std::string OptionReplyName(uint32_t reply_type) {
  switch (static_cast<OptionReply>(reply_type)) {
    case OptionReply::kAck:
      return "NBD_REP_ACK";
    case OptionReply::kServer:
      return "NBD_REP_SERVER";
    case OptionReply::kInfo:
      return "NBD_REP_INFO";
    case OptionReply::kMetaContext:
      return "NBD_REP_META_CONTEXT";
    case OptionReply::kErrUnsup:
      return "NBD_REP_ERR_UNSUP";
    case OptionReply::kErrPolicy:
      return "NBD_REP_ERR_POLICY";
    case OptionReply::kErrInvalid:
      return "NBD_REP_ERR_INVALID";
    case OptionReply::kErrPlatform:
      return "NBD_REP_ERR_PLATFORM";
    case OptionReply::kErrTlsReqd:
      return "NBD_REP_ERR_TLS_REQD";
    case OptionReply::kErrUnknown:
      return "NBD_REP_ERR_UNKNOWN";
    case OptionReply::kErrShutdown:
      return "NBD_REP_ERR_SHUTDOWN";
    case OptionReply::kErrBlockSizeReqd:
      return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case OptionReply::kErrTooBig:
      return "NBD_REP_ERR_TOO_BIG";
  }
  return "NBD_REP_<" + Hex(reply_type) + ">";
}

uint16_t LoadBe16(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>((u[0] << 8) | u[1]);
}

uint32_t LoadBe32(const char* p) {
  return (static_cast<uint32_t>(LoadBe16(p)) << 16) | LoadBe16(p + 2);
}

uint64_t LoadBe64(const char* p) {
  return (static_cast<uint64_t>(LoadBe32(p)) << 32) | LoadBe32(p + 4);
}

void AppendBe16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

void AppendBe32(std::string* out, uint32_t v) {
  AppendBe16(out, static_cast<uint16_t>(v >> 16));
  AppendBe16(out, static_cast<uint16_t>(v));
}

void AppendBe64(std::string* out, uint64_t v) {
  AppendBe32(out, static_cast<uint32_t>(v >> 32));
  AppendBe32(out, static_cast<uint32_t>(v));
}

std::string EncodeGreeting(uint16_t handshake_flags) {
  std::string out;
  out.reserve(kGreetingSize);
  AppendBe64(&out, kNbdMagic);
  AppendBe64(&out, kOptionMagic);
  AppendBe16(&out, handshake_flags);
  return out;
}

Result<uint16_t> ParseGreeting(std::string_view bytes) {
  if (bytes.size() != kGreetingSize) return WrongSize("greeting", kGreetingSize, bytes.size());
  const uint64_t magic = LoadBe64(bytes.data());
  const uint64_t opt_magic = LoadBe64(bytes.data() + 8);
  if (magic != kNbdMagic || opt_magic != kOptionMagic) {
    return Status::ProtocolMismatch("nbd: greeting magics " + Hex(magic) + "/" + Hex(opt_magic) +
                                    " are not NBDMAGIC/IHAVEOPT; not a "
                                    "fixed-newstyle NBD server?");
  }
  return LoadBe16(bytes.data() + 16);
}

Result<OptionHeader> ParseOptionHeader(std::string_view bytes) {
  if (bytes.size() != kOptionHeaderSize) {
    return WrongSize("option header", kOptionHeaderSize, bytes.size());
  }
  const uint64_t magic = LoadBe64(bytes.data());
  if (magic != kOptionMagic) {
    return Status::ProtocolMismatch("nbd: option header magic " + Hex(magic) +
                                    " is not IHAVEOPT (" + Hex(kOptionMagic) + ")");
  }
  OptionHeader header;
  header.option = LoadBe32(bytes.data() + 8);
  header.length = LoadBe32(bytes.data() + 12);
  return header;
}

std::string EncodeOptionHeader(uint32_t option, uint32_t length) {
  std::string out;
  out.reserve(kOptionHeaderSize);
  AppendBe64(&out, kOptionMagic);
  AppendBe32(&out, option);
  AppendBe32(&out, length);
  return out;
}

Result<InfoRequest> ParseInfoRequest(std::string_view payload) {
  // 32-bit name length, name, 16-bit count, count x 16-bit info types.
  if (payload.size() < 6) {
    return Status::InvalidArgument("nbd: INFO/GO payload is " + std::to_string(payload.size()) +
                                   " bytes; it needs at least 6 (name length + request count)");
  }
  const uint32_t name_length = LoadBe32(payload.data());
  if (name_length > payload.size() - 6) {
    return Status::InvalidArgument("nbd: INFO/GO export name length " +
                                   std::to_string(name_length) + " runs past the end of the " +
                                   std::to_string(payload.size()) + "-byte payload");
  }
  if (name_length > kMaxStringLength) {
    return Status::InvalidArgument("nbd: INFO/GO export name is " + std::to_string(name_length) +
                                   " bytes; the limit is " + std::to_string(kMaxStringLength));
  }
  InfoRequest request;
  request.name.assign(payload.data() + 4, name_length);
  const size_t count_at = 4 + name_length;
  const uint16_t count = LoadBe16(payload.data() + count_at);
  const size_t list_bytes = payload.size() - count_at - 2;
  if (list_bytes != size_t{count} * 2) {
    return Status::InvalidArgument("nbd: INFO/GO announces " + std::to_string(count) +
                                   " info requests (" + std::to_string(size_t{count} * 2) +
                                   " bytes) but " + std::to_string(list_bytes) +
                                   " bytes follow the count");
  }
  request.info_types.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    request.info_types.push_back(LoadBe16(payload.data() + count_at + 2 + 2 * i));
  }
  return request;
}

std::string EncodeInfoRequest(const InfoRequest& request) {
  std::string out;
  AppendBe32(&out, static_cast<uint32_t>(request.name.size()));
  out += request.name;
  AppendBe16(&out, static_cast<uint16_t>(request.info_types.size()));
  for (uint16_t type : request.info_types) AppendBe16(&out, type);
  return out;
}

Result<OptionReplyHeader> ParseOptionReplyHeader(std::string_view bytes) {
  if (bytes.size() != kOptionReplyHeaderSize) {
    return WrongSize("option reply header", kOptionReplyHeaderSize, bytes.size());
  }
  const uint64_t magic = LoadBe64(bytes.data());
  if (magic != kOptionReplyMagic) {
    return Status::ProtocolMismatch("nbd: option reply magic " + Hex(magic) + " is not " +
                                    Hex(kOptionReplyMagic));
  }
  OptionReplyHeader header;
  header.option = LoadBe32(bytes.data() + 8);
  header.reply_type = LoadBe32(bytes.data() + 12);
  header.length = LoadBe32(bytes.data() + 16);
  return header;
}

std::string EncodeOptionReply(uint32_t option, OptionReply type, std::string_view payload) {
  std::string out;
  out.reserve(kOptionReplyHeaderSize + payload.size());
  AppendBe64(&out, kOptionReplyMagic);
  AppendBe32(&out, option);
  AppendBe32(&out, static_cast<uint32_t>(type));
  AppendBe32(&out, static_cast<uint32_t>(payload.size()));
  out.append(payload);
  return out;
}

std::string EncodeAck(uint32_t option) { return EncodeOptionReply(option, OptionReply::kAck, {}); }

std::string EncodeServerReply(uint32_t option, std::string_view name) {
  std::string payload;
  AppendBe32(&payload, static_cast<uint32_t>(name.size()));
  payload.append(name);
  return EncodeOptionReply(option, OptionReply::kServer, payload);
}

std::string EncodeInfoExport(uint32_t option, uint64_t size, uint16_t transmission_flags) {
  std::string payload;
  AppendBe16(&payload, static_cast<uint16_t>(InfoType::kExport));
  AppendBe64(&payload, size);
  AppendBe16(&payload, transmission_flags);
  return EncodeOptionReply(option, OptionReply::kInfo, payload);
}

std::string EncodeInfoBlockSize(uint32_t option, uint32_t minimum, uint32_t preferred,
                                uint32_t maximum) {
  std::string payload;
  AppendBe16(&payload, static_cast<uint16_t>(InfoType::kBlockSize));
  AppendBe32(&payload, minimum);
  AppendBe32(&payload, preferred);
  AppendBe32(&payload, maximum);
  return EncodeOptionReply(option, OptionReply::kInfo, payload);
}

std::string EncodeInfoName(uint32_t option, std::string_view name) {
  std::string payload;
  AppendBe16(&payload, static_cast<uint16_t>(InfoType::kName));
  payload.append(name);
  return EncodeOptionReply(option, OptionReply::kInfo, payload);
}

std::string EncodeOptionError(uint32_t option, OptionReply error, std::string_view message) {
  return EncodeOptionReply(option, error, message.substr(0, kMaxStringLength));
}

std::string EncodeExportNameReply(uint64_t size, uint16_t transmission_flags, bool no_zeroes) {
  std::string out;
  AppendBe64(&out, size);
  AppendBe16(&out, transmission_flags);
  if (!no_zeroes) out.append(kExportNameZeroPadding, '\0');
  return out;
}

Result<RequestHeader> ParseRequestHeader(std::string_view bytes) {
  if (bytes.size() != kRequestHeaderSize) {
    return WrongSize("request header", kRequestHeaderSize, bytes.size());
  }
  const uint32_t magic = LoadBe32(bytes.data());
  if (magic != kRequestMagic) {
    return Status::ProtocolMismatch("nbd: request magic " + Hex(magic) + " is not " +
                                    Hex(kRequestMagic) + "; client out of sync");
  }
  RequestHeader r;
  r.flags = LoadBe16(bytes.data() + 4);
  r.type = LoadBe16(bytes.data() + 6);
  r.handle = LoadBe64(bytes.data() + 8);
  r.offset = LoadBe64(bytes.data() + 16);
  r.length = LoadBe32(bytes.data() + 24);
  return r;
}

std::string EncodeRequestHeader(const RequestHeader& request) {
  std::string out;
  out.reserve(kRequestHeaderSize);
  AppendBe32(&out, kRequestMagic);
  AppendBe16(&out, request.flags);
  AppendBe16(&out, request.type);
  AppendBe64(&out, request.handle);
  AppendBe64(&out, request.offset);
  AppendBe32(&out, request.length);
  return out;
}

std::string EncodeSimpleReply(Error error, uint64_t handle) {
  std::string out;
  out.reserve(kSimpleReplyHeaderSize);
  AppendBe32(&out, kSimpleReplyMagic);
  AppendBe32(&out, static_cast<uint32_t>(error));
  AppendBe64(&out, handle);
  return out;
}

Result<SimpleReply> ParseSimpleReply(std::string_view bytes) {
  if (bytes.size() != kSimpleReplyHeaderSize) {
    return WrongSize("simple reply header", kSimpleReplyHeaderSize, bytes.size());
  }
  const uint32_t magic = LoadBe32(bytes.data());
  if (magic != kSimpleReplyMagic) {
    return Status::ProtocolMismatch("nbd: simple reply magic " + Hex(magic) + " is not " +
                                    Hex(kSimpleReplyMagic));
  }
  SimpleReply reply;
  reply.error = LoadBe32(bytes.data() + 4);
  reply.handle = LoadBe64(bytes.data() + 8);
  return reply;
}

RequestVerdict ValidateRequest(const RequestHeader& request, const ExportLimits& limits) {
  if (!IsKnownCommand(request.type)) {
    return {Error::kNotSup, CommandName(request.type) + " is not supported by this server"};
  }
  const auto type = static_cast<Command>(request.type);
  const uint16_t unknown_flags = request.flags & ~AllowedFlags(type);
  if (unknown_flags != 0) {
    return {Error::kInval,
            CommandName(request.type) + " with unsupported command flags " + Hex(unknown_flags)};
  }
  if (type == Command::kFlush || type == Command::kDisc) return {};

  if (limits.read_only && type != Command::kRead) {
    return {Error::kPerm, DescribeRange(request) + " refused: the export is read-only"};
  }
  const bool has_max =
      type == Command::kRead || type == Command::kWrite || type == Command::kWriteZeroes;
  if (has_max && request.length > limits.max_block_size) {
    return {Error::kInval, DescribeRange(request) + " exceeds the maximum block size of " +
                               std::to_string(limits.max_block_size) + " bytes"};
  }
  if (limits.min_block_size > 1 && (request.offset % limits.min_block_size != 0 ||
                                    request.length % limits.min_block_size != 0)) {
    return {Error::kInval, DescribeRange(request) +
                               " is not aligned to the minimum block size of " +
                               std::to_string(limits.min_block_size) + " bytes"};
  }
  // Written so that offset + length cannot overflow.
  if (request.offset > limits.size || request.length > limits.size - request.offset) {
    // proto.md: ENOSPC for writes (including WRITE_ZEROES) past the end, EINVAL for the rest.
    const Error error =
        (type == Command::kWrite || type == Command::kWriteZeroes) ? Error::kNoSpc : Error::kInval;
    return {error, DescribeRange(request) + " extends past the end of the export (" +
                       std::to_string(limits.size) + " bytes)"};
  }
  return {};
}

Error ErrorFromStatus(const Status& status) {
  if (status.code() == StatusCode::kResourceExhausted) return Error::kNoSpc;
  return Error::kIo;
}

}  // namespace cdp::nbd
