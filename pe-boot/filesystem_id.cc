#include "cdp/pe/filesystem_id.h"

#include <cstdint>
#include <cstdio>

#include "cdp/core/atomic_file.h"

namespace cdp::pe {

namespace {

uint16_t Le16(std::string_view b, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[at]) |
                               (static_cast<uint8_t>(b[at + 1]) << 8));
}

// "0a1b2c3d-..." of 16 bytes.
std::string FormatUuid(std::string_view b) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[static_cast<uint8_t>(b[i]) >> 4];
    out += kHex[static_cast<uint8_t>(b[i]) & 15];
  }
  return out;
}

}  // namespace

Result<FsId> IdentifyFilesystem(std::string_view head) {
  if (head.size() >= 2048 && Le16(head, 1024 + 0x38) == 0xEF53) {
    return FsId{"ext4", FormatUuid(head.substr(1024 + 0x68, 16))};
  }
  if (head.size() >= 48 && head.substr(0, 4) == "XFSB") {
    return FsId{"xfs", FormatUuid(head.substr(32, 16))};
  }
  if (head.size() >= 4096 && head.substr(4086, 10) == "SWAPSPACE2") {
    return FsId{"swap", FormatUuid(head.substr(1024 + 12, 16))};
  }
  if (head.size() >= 512 && static_cast<uint8_t>(head[510]) == 0x55 &&
      static_cast<uint8_t>(head[511]) == 0xAA && Le16(head, 11) >= 512) {
    // FAT: FAT32 when the 16-bit FAT size is 0; the serial follows the extended boot signature.
    const bool fat32 = Le16(head, 22) == 0;
    const size_t sig = fat32 ? 66 : 38;
    if (static_cast<uint8_t>(head[sig]) == 0x29) {
      const uint32_t serial = static_cast<uint32_t>(Le16(head, sig + 1)) |
                              static_cast<uint32_t>(Le16(head, sig + 3)) << 16;
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%04x-%04x", serial >> 16, serial & 0xffff);
      return FsId{"vfat", buf};
    }
  }
  return Status::NotFound("no ext4, xfs, swap or FAT superblock");
}

Result<FsId> ReadFsId(const std::string& path) {
  auto head = ReadFileHead(path, 4096);
  // A missing path is not "no filesystem" (NotFound): it cannot be read.
  if (!head.ok()) return Status::IOError(head.status().message());
  auto id = IdentifyFilesystem(*head);
  if (!id.ok()) return id.status().WithContext(path);
  return id;
}

}  // namespace cdp::pe
