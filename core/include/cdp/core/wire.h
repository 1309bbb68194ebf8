// The cdp.v1 wire: framing, versions and the Hello handshake (see docs/wire-protocol.md).
//
// A message is multipart: [routing id, ROUTER side only] [Header] [payload]*. The Header frame
// is a serialized cdp.v1.Header; payload frames carry raw record payloads in record order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
#include <zmq.hpp>

#include "cdp.pb.h"
#include "cdp/core/record.h"
#include "cdp/core/status.h"

namespace cdp::wire {

namespace v1 = ::cdp::v1;

// The protocol versions this build speaks. A peer whose range does not meet ours gets a
// permanent ProtocolMismatch error.
inline constexpr uint32_t kMinVersion = 1;
inline constexpr uint32_t kMaxVersion = 1;

// One received message. `peer` is the ZeroMQ routing id (ROUTER side), empty otherwise.
struct Message {
  std::string peer;
  v1::Header header;
  std::vector<zmq::message_t> payloads;
};

// Picks the highest version both sides speak; ProtocolMismatch naming both ranges otherwise.
Result<uint32_t> NegotiateVersion(const v1::Hello& hello, std::string_view peer_name);

// Builds a Hello for this build's version range.
v1::Hello MakeHello(v1::Role role, std::string identity, std::string volume = "");

// Builds a Header carrying an Error for `status`.
v1::Header MakeErrorHeader(const Status& status, bool permanent);

// Turns a received Error back into a Status (code and message preserved).
Status StatusFromError(const v1::Error& error);

// Record header conversions (the payload is carried separately).
v1::RecordHeader RecordToProto(const ChangeRecord& rec);
ChangeRecord RecordFromProto(const v1::RecordHeader& header);

// Wraps shared bytes in a frame without copying; the frame keeps the bytes alive.
zmq::message_t FrameFromShared(const SharedBytes& bytes);

// A volume name is 1..64 characters of [A-Za-z0-9._-], not starting with '.' or '-'.
// InvalidArgument naming the name and the rule otherwise.
Status ValidateVolumeName(std::string_view name);

// The text of the pe-agent's enums (docs/pe-agent.md): what cdpctl prints and a cutover plan
// spells. These are the only mappings between them and text.
//   PeStateName:  PE_STATE_READY "pe-ready", PE_STATE_ERROR "pe-error", unspecified "unknown",
//                 a value this build does not know "pe-state N".
//   BootModeName: BOOT_MODE_AUTO "auto", BOOT_MODE_SWITCH_ROOT "switch-root", BOOT_MODE_KEXEC
//                 "kexec", unspecified "", a value this build does not know "boot mode N".
std::string PeStateName(v1::PeState state);
std::string BootModeName(v1::BootMode mode);

// Parses "auto", "switch-root" or "kexec"; InvalidArgument "'TEXT' is not auto, switch-root or
// kexec" otherwise.
Result<v1::BootMode> ParseBootMode(std::string_view text);

// "host/pid" of this process, for Hello.identity.
std::string ProcessIdentity(std::string_view program);

}  // namespace cdp::wire
