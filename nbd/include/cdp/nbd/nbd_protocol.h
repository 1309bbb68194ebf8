// NBD wire protocol: constants and pure encode/parse functions for the fixed-newstyle
// handshake and the simple-reply transmission phase.
//
// Reference: the NBD protocol specification, doc/proto.md in
// https://github.com/NetworkBlockDevice/nbd. Every number below is a wire value defined there;
// the enums are append only, never renumber. All integers on the wire are big-endian.
//
// Nothing here does I/O: NbdServer (nbd_server.h) reads bytes from a socket and hands them to
// these functions, which makes every framing rule testable without a socket.
//
// Thread-safety: all functions are pure and safe to call concurrently.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::nbd {

// ---------------------------------------------------------------------------------------------
// Magic numbers.

inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943;          // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454f5054;       // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9;  // option reply header
inline constexpr uint32_t kRequestMagic = 0x25609513;              // transmission request
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;          // transmission simple reply

// ---------------------------------------------------------------------------------------------
// Fixed message sizes in bytes.

// Server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
inline constexpr size_t kGreetingSize = 18;
// Client option header: IHAVEOPT, 32-bit option, 32-bit payload length.
inline constexpr size_t kOptionHeaderSize = 16;
// Server option reply header: magic, 32-bit option, 32-bit reply type, 32-bit payload length.
inline constexpr size_t kOptionReplyHeaderSize = 20;
// Transmission request: magic, flags, type, handle, offset, length.
inline constexpr size_t kRequestHeaderSize = 28;
// Transmission simple reply: magic, error, handle.
inline constexpr size_t kSimpleReplyHeaderSize = 16;
// Zero padding after an NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was negotiated.
inline constexpr size_t kExportNameZeroPadding = 124;
// Strings (export names, messages) MUST NOT be longer than this (proto.md, "Conventions").
inline constexpr size_t kMaxStringLength = 4096;

// ---------------------------------------------------------------------------------------------
// Flags. Bit numbers are from proto.md; append only, never renumber.

// Handshake flags: 16 bits, sent by the server right after the two magics.
enum HandshakeFlag : uint16_t {
  kFlagFixedNewstyle = 1 << 0,  // NBD_FLAG_FIXED_NEWSTYLE
  kFlagNoZeroes = 1 << 1,       // NBD_FLAG_NO_ZEROES
};

// Client flags: 32 bits, the client's answer to the handshake flags. The server MUST drop the
// connection on any bit it does not know.
enum ClientFlag : uint32_t {
  kClientFlagFixedNewstyle = 1 << 0,  // NBD_FLAG_C_FIXED_NEWSTYLE
  kClientFlagNoZeroes = 1 << 1,       // NBD_FLAG_C_NO_ZEROES
};
inline constexpr uint32_t kKnownClientFlags = kClientFlagFixedNewstyle | kClientFlagNoZeroes;

// Transmission flags: 16 bits, describe the export to the client.
enum TransmissionFlag : uint16_t {
  kTransHasFlags = 1 << 0,         // NBD_FLAG_HAS_FLAGS (always set)
  kTransReadOnly = 1 << 1,         // NBD_FLAG_READ_ONLY
  kTransSendFlush = 1 << 2,        // NBD_FLAG_SEND_FLUSH
  kTransSendFua = 1 << 3,          // NBD_FLAG_SEND_FUA
  kTransRotational = 1 << 4,       // NBD_FLAG_ROTATIONAL
  kTransSendTrim = 1 << 5,         // NBD_FLAG_SEND_TRIM
  kTransSendWriteZeroes = 1 << 6,  // NBD_FLAG_SEND_WRITE_ZEROES
  kTransSendDf = 1 << 7,           // NBD_FLAG_SEND_DF
  kTransCanMultiConn = 1 << 8,     // NBD_FLAG_CAN_MULTI_CONN
  kTransSendResize = 1 << 9,       // NBD_FLAG_SEND_RESIZE
  kTransSendCache = 1 << 10,       // NBD_FLAG_SEND_CACHE
  kTransSendFastZero = 1 << 11,    // NBD_FLAG_SEND_FAST_ZERO
};

// Command flags: 16 bits in every transmission request.
enum CommandFlag : uint16_t {
  kCmdFlagFua = 1 << 0,       // NBD_CMD_FLAG_FUA
  kCmdFlagNoHole = 1 << 1,    // NBD_CMD_FLAG_NO_HOLE (WRITE_ZEROES)
  kCmdFlagDf = 1 << 2,        // NBD_CMD_FLAG_DF (READ, structured replies only)
  kCmdFlagReqOne = 1 << 3,    // NBD_CMD_FLAG_REQ_ONE (BLOCK_STATUS)
  kCmdFlagFastZero = 1 << 4,  // NBD_CMD_FLAG_FAST_ZERO (WRITE_ZEROES)
};

// ---------------------------------------------------------------------------------------------
// Option haggling. Append only, never renumber.

// NBD_OPT_*: the "option" field of a client option request.
enum class Option : uint32_t {
  kExportName = 1,        // NBD_OPT_EXPORT_NAME: old-style final option, no error path
  kAbort = 2,             // NBD_OPT_ABORT
  kList = 3,              // NBD_OPT_LIST
  kPeekExport = 4,        // NBD_OPT_PEEK_EXPORT (withdrawn)
  kStartTls = 5,          // NBD_OPT_STARTTLS
  kInfo = 6,              // NBD_OPT_INFO
  kGo = 7,                // NBD_OPT_GO
  kStructuredReply = 8,   // NBD_OPT_STRUCTURED_REPLY
  kListMetaContext = 9,   // NBD_OPT_LIST_META_CONTEXT
  kSetMetaContext = 10,   // NBD_OPT_SET_META_CONTEXT
  kExtendedHeaders = 11,  // NBD_OPT_EXTENDED_HEADERS
};

// Bit 31 marks an option reply type as an error.
inline constexpr uint32_t kOptionReplyErrorBit = 0x80000000u;

// NBD_REP_*: the "reply type" field of a server option reply.
enum class OptionReply : uint32_t {
  kAck = 1,                                      // NBD_REP_ACK
  kServer = 2,                                   // NBD_REP_SERVER
  kInfo = 3,                                     // NBD_REP_INFO
  kMetaContext = 4,                              // NBD_REP_META_CONTEXT
  kErrUnsup = kOptionReplyErrorBit + 1,          // NBD_REP_ERR_UNSUP
  kErrPolicy = kOptionReplyErrorBit + 2,         // NBD_REP_ERR_POLICY
  kErrInvalid = kOptionReplyErrorBit + 3,        // NBD_REP_ERR_INVALID
  kErrPlatform = kOptionReplyErrorBit + 4,       // NBD_REP_ERR_PLATFORM
  kErrTlsReqd = kOptionReplyErrorBit + 5,        // NBD_REP_ERR_TLS_REQD
  kErrUnknown = kOptionReplyErrorBit + 6,        // NBD_REP_ERR_UNKNOWN
  kErrShutdown = kOptionReplyErrorBit + 7,       // NBD_REP_ERR_SHUTDOWN
  kErrBlockSizeReqd = kOptionReplyErrorBit + 8,  // NBD_REP_ERR_BLOCK_SIZE_REQD
  kErrTooBig = kOptionReplyErrorBit + 9,         // NBD_REP_ERR_TOO_BIG
};

// NBD_INFO_*: information types requested by, and answered to, NBD_OPT_INFO / NBD_OPT_GO.
enum class InfoType : uint16_t {
  kExport = 0,       // NBD_INFO_EXPORT: size + transmission flags (mandatory)
  kName = 1,         // NBD_INFO_NAME: canonical export name
  kDescription = 2,  // NBD_INFO_DESCRIPTION
  kBlockSize = 3,    // NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum
};

// ---------------------------------------------------------------------------------------------
// Transmission. Append only, never renumber.

// NBD_CMD_*: the "type" field of a transmission request.
enum class Command : uint16_t {
  kRead = 0,         // NBD_CMD_READ
  kWrite = 1,        // NBD_CMD_WRITE (payload of `length` bytes follows the header)
  kDisc = 2,         // NBD_CMD_DISC (no reply)
  kFlush = 3,        // NBD_CMD_FLUSH
  kTrim = 4,         // NBD_CMD_TRIM
  kCache = 5,        // NBD_CMD_CACHE
  kWriteZeroes = 6,  // NBD_CMD_WRITE_ZEROES
  kBlockStatus = 7,  // NBD_CMD_BLOCK_STATUS
  kResize = 8,       // NBD_CMD_RESIZE
};

// NBD_E*: the "error" field of a reply. These are protocol values, not the host's errno (they
// merely happen to match Linux).
enum class Error : uint32_t {
  kOk = 0,
  kPerm = 1,        // NBD_EPERM
  kIo = 5,          // NBD_EIO
  kNoMem = 12,      // NBD_ENOMEM
  kInval = 22,      // NBD_EINVAL
  kNoSpc = 28,      // NBD_ENOSPC
  kOverflow = 75,   // NBD_EOVERFLOW
  kNotSup = 95,     // NBD_ENOTSUP
  kShutdown = 108,  // NBD_ESHUTDOWN
};

// Names for logs: "NBD_OPT_GO", "NBD_CMD_WRITE", "NBD_EINVAL", "NBD_REP_ERR_UNSUP".
// Unknown values yield e.g. "NBD_OPT_<42>".
std::string OptionName(uint32_t option);
std::string CommandName(uint16_t type);
std::string ErrorName(Error error);
std::string OptionReplyName(uint32_t reply_type);

// ---------------------------------------------------------------------------------------------
// Big-endian load/store. REQUIRES: `p` points at enough bytes.

uint16_t LoadBe16(const char* p);
uint32_t LoadBe32(const char* p);
uint64_t LoadBe64(const char* p);
void AppendBe16(std::string* out, uint16_t v);
void AppendBe32(std::string* out, uint32_t v);
void AppendBe64(std::string* out, uint64_t v);

// ---------------------------------------------------------------------------------------------
// Handshake.

// Encodes the server greeting: NBDMAGIC, IHAVEOPT, `handshake_flags`.
std::string EncodeGreeting(uint16_t handshake_flags);

// Parses a server greeting (used by test clients). ProtocolMismatch if either magic is wrong,
// InvalidArgument if `bytes` is not exactly kGreetingSize long. Returns the handshake flags.
Result<uint16_t> ParseGreeting(std::string_view bytes);

// A client option request header, after the IHAVEOPT magic has been checked.
struct OptionHeader {
  uint32_t option = 0;  // an Option value, or anything the client sent
  uint32_t length = 0;  // bytes of option payload that follow the header
};

// Parses a kOptionHeaderSize-byte option header. InvalidArgument on a wrong size,
// ProtocolMismatch (naming the bytes received) if the magic is not IHAVEOPT.
Result<OptionHeader> ParseOptionHeader(std::string_view bytes);
// Encodes an option header followed by nothing; the caller appends `length` payload bytes.
std::string EncodeOptionHeader(uint32_t option, uint32_t length);

// The payload of NBD_OPT_INFO and NBD_OPT_GO:
//   32-bit name length, name, 16-bit request count, count x 16-bit NBD_INFO_* types.
struct InfoRequest {
  std::string name;                  // empty selects the default export
  std::vector<uint16_t> info_types;  // InfoType values (unknown ones are kept, and ignored)
};

// Parses an NBD_OPT_INFO / NBD_OPT_GO payload. InvalidArgument with a message saying which
// field is inconsistent with the payload length (name running past the end, odd or wrong
// number of info request bytes, name over kMaxStringLength).
Result<InfoRequest> ParseInfoRequest(std::string_view payload);
// Encodes `request` as an NBD_OPT_INFO / NBD_OPT_GO payload (the inverse of the above).
std::string EncodeInfoRequest(const InfoRequest& request);

// A server option reply header.
struct OptionReplyHeader {
  uint32_t option = 0;      // the option being answered
  uint32_t reply_type = 0;  // an OptionReply value
  uint32_t length = 0;      // payload bytes that follow
};

// Parses a kOptionReplyHeaderSize-byte option reply header (used by test clients).
// InvalidArgument on a wrong size, ProtocolMismatch on a wrong magic.
Result<OptionReplyHeader> ParseOptionReplyHeader(std::string_view bytes);

// Encodes a complete option reply: header plus `payload`.
std::string EncodeOptionReply(uint32_t option, OptionReply type, std::string_view payload);
// NBD_REP_ACK for `option`.
std::string EncodeAck(uint32_t option);
// NBD_REP_SERVER describing export `name` (answer to NBD_OPT_LIST).
std::string EncodeServerReply(uint32_t option, std::string_view name);
// NBD_REP_INFO / NBD_INFO_EXPORT: export size and transmission flags.
std::string EncodeInfoExport(uint32_t option, uint64_t size, uint16_t transmission_flags);
// NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block size.
std::string EncodeInfoBlockSize(uint32_t option, uint32_t minimum, uint32_t preferred,
                                uint32_t maximum);
// NBD_REP_INFO / NBD_INFO_NAME: the canonical export name.
std::string EncodeInfoName(uint32_t option, std::string_view name);
// An error reply of type `error` (REQUIRES: an error type, bit 31 set) whose payload is the
// human-readable `message`, truncated to kMaxStringLength bytes.
std::string EncodeOptionError(uint32_t option, OptionReply error, std::string_view message);

// The reply to NBD_OPT_EXPORT_NAME: 64-bit size, 16-bit transmission flags, and 124 zero bytes
// unless the client negotiated NBD_FLAG_C_NO_ZEROES.
std::string EncodeExportNameReply(uint64_t size, uint16_t transmission_flags, bool no_zeroes);

// ---------------------------------------------------------------------------------------------
// Transmission.

// A transmission request header, after the request magic has been checked.
struct RequestHeader {
  uint16_t flags = 0;   // CommandFlag bits
  uint16_t type = 0;    // a Command value, or anything the client sent
  uint64_t handle = 0;  // opaque, echoed in the reply
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Parses a kRequestHeaderSize-byte request header. InvalidArgument on a wrong size,
// ProtocolMismatch naming the magic received if it is not kRequestMagic.
Result<RequestHeader> ParseRequestHeader(std::string_view bytes);
// Encodes a request header (used by test clients).
std::string EncodeRequestHeader(const RequestHeader& request);

// A simple reply header.
struct SimpleReply {
  uint32_t error = 0;  // an Error value; 0 is success
  uint64_t handle = 0;
};

// Encodes a simple reply header; for a successful NBD_CMD_READ the data follows it.
std::string EncodeSimpleReply(Error error, uint64_t handle);
// Parses a simple reply header (used by test clients). InvalidArgument on a wrong size,
// ProtocolMismatch on a wrong magic.
Result<SimpleReply> ParseSimpleReply(std::string_view bytes);

// What a server exports, as seen by the request validator.
struct ExportLimits {
  uint64_t size = 0;            // export size in bytes
  uint32_t min_block_size = 1;  // advertised minimum: offsets and lengths must be multiples
  uint32_t max_block_size = 0;  // advertised maximum length for READ, WRITE, WRITE_ZEROES
  bool read_only = false;
};

// The validator's answer: Error::kOk, or the error to put in the reply and why.
struct RequestVerdict {
  Error error = Error::kOk;
  std::string message;  // empty when ok; otherwise names the command and the bad range

  bool ok() const { return error == Error::kOk; }
};

// Checks `request` against `limits` before anything is applied, per proto.md ("Block size
// constraints", "Error values"), with one deliberate difference noted below:
//   - unknown or unsupported command type (CACHE, BLOCK_STATUS, RESIZE, ...) -> ENOTSUP
//     (proto.md suggests EINVAL; ENOTSUP tells the operator reading the client's error what
//     actually happened, and clients treat unexpected values as EINVAL anyway);
//   - a command flag not valid for the command (FUA is valid on every command, NO_HOLE on
//     WRITE_ZEROES; nothing else is negotiated) -> EINVAL;
//   - WRITE, TRIM or WRITE_ZEROES on a read-only export -> EPERM;
//   - READ, WRITE or WRITE_ZEROES longer than max_block_size -> EINVAL;
//   - offset or length not a multiple of min_block_size -> EINVAL;
//   - READ or TRIM past the end of the export -> EINVAL;
//   - WRITE or WRITE_ZEROES past the end of the export -> ENOSPC.
// FLUSH and DISC carry no range and are always accepted. The verdict does not say whether a
// WRITE payload follows: the caller must still consume `length` bytes for any WRITE.
RequestVerdict ValidateRequest(const RequestHeader& request, const ExportLimits& limits);

// Maps an ExportTarget failure to the error put in the reply: ResourceExhausted -> ENOSPC,
// everything else -> EIO. REQUIRES: !status.ok().
Error ErrorFromStatus(const Status& status);

}  // namespace cdp::nbd
