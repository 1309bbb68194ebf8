#include "cdp/core/wire.h"

#include <unistd.h>

namespace cdp::wire {

Result<uint32_t> NegotiateVersion(const v1::Hello& hello, std::string_view peer_name) {
  const uint32_t low = std::max(hello.min_version(), kMinVersion);
  const uint32_t high = std::min(hello.max_version(), kMaxVersion);
  if (hello.min_version() > hello.max_version() || low > high) {
    return Status::ProtocolMismatch(std::string(peer_name) + " speaks protocol versions " +
                                    std::to_string(hello.min_version()) + ".." +
                                    std::to_string(hello.max_version()) + ", this build speaks " +
                                    std::to_string(kMinVersion) + ".." +
                                    std::to_string(kMaxVersion) + "; upgrade the older side");
  }
  return high;
}

v1::Hello MakeHello(v1::Role role, std::string identity, std::string volume) {
  v1::Hello hello;
  hello.set_min_version(kMinVersion);
  hello.set_max_version(kMaxVersion);
  hello.set_role(role);
  hello.set_identity(std::move(identity));
  hello.set_volume(std::move(volume));
  return hello;
}

v1::Header MakeErrorHeader(const Status& status, bool permanent) {
  v1::Header header;
  auto* error = header.mutable_error();
  error->set_code(static_cast<int32_t>(status.code()));
  error->set_message(status.message());
  error->set_permanent(permanent);
  return header;
}

Status StatusFromError(const v1::Error& error) {
  StatusCode code = static_cast<StatusCode>(error.code());
  if (code == StatusCode::kOk) code = StatusCode::kInternal;
  return Status(code, error.message());
}

v1::RecordHeader RecordToProto(const ChangeRecord& rec) {
  v1::RecordHeader h;
  h.set_lsn(rec.lsn);
  h.set_time_ns(rec.time_ns);
  h.set_offset(rec.offset);
  h.set_length(rec.length);
  h.set_kind(static_cast<v1::RecordKind>(rec.kind));
  h.set_crc32c(rec.crc32c);
  return h;
}

ChangeRecord RecordFromProto(const v1::RecordHeader& h) {
  ChangeRecord rec;
  rec.lsn = h.lsn();
  rec.time_ns = h.time_ns();
  rec.offset = h.offset();
  rec.length = h.length();
  rec.kind = static_cast<RecordKind>(h.kind());
  rec.crc32c = h.crc32c();
  return rec;
}

zmq::message_t FrameFromShared(const SharedBytes& bytes) {
  auto* keep = new SharedBytes(bytes);
  return zmq::message_t(
      const_cast<char*>(bytes->data()), bytes->size(),
      [](void*, void* hint) { delete static_cast<SharedBytes*>(hint); }, keep);
}

Status ValidateVolumeName(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '.' && name[0] != '-';
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-')) {
      ok = false;
    }
  }
  if (ok) return Status::Ok();
  return Status::InvalidArgument("bad volume name '" + std::string(name) +
                                 "': use 1-64 characters of A-Z a-z 0-9 . _ - (for example "
                                 "db01-sda)");
}

std::string PeStateName(v1::PeState state) {
  switch (state) {
    case v1::PE_STATE_UNSPECIFIED:
      return "unknown";
    case v1::PE_STATE_READY:
      return "pe-ready";
    case v1::PE_STATE_ERROR:
      return "pe-error";
    default:
      return "pe-state " + std::to_string(static_cast<int>(state));
  }
}

std::string BootModeName(v1::BootMode mode) {
  switch (mode) {
    case v1::BOOT_MODE_UNSPECIFIED:
      return "";
    case v1::BOOT_MODE_AUTO:
      return "auto";
    case v1::BOOT_MODE_SWITCH_ROOT:
      return "switch-root";
    case v1::BOOT_MODE_KEXEC:
      return "kexec";
    default:
      return "boot mode " + std::to_string(static_cast<int>(mode));
  }
}

Result<v1::BootMode> ParseBootMode(std::string_view text) {
  for (v1::BootMode mode : {v1::BOOT_MODE_AUTO, v1::BOOT_MODE_SWITCH_ROOT, v1::BOOT_MODE_KEXEC}) {
    if (text == BootModeName(mode)) return mode;
  }
  std::string message = "'";  // appended, not "'" + ...: GCC 12 -O3 warns falsely (-Wrestrict)
  message.append(text).append("' is not auto, switch-root or kexec");
  return Status::InvalidArgument(message);
}

std::string ProcessIdentity(std::string_view program) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return std::string(program) + "@" + host + "/" + std::to_string(getpid());
}

}  // namespace cdp::wire
