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

uint32_t Le32(std::string_view b, size_t at) {
  return static_cast<uint32_t>(Le16(b, at)) | static_cast<uint32_t>(Le16(b, at + 2)) << 16;
}

uint64_t Le64(std::string_view b, size_t at) {
  return static_cast<uint64_t>(Le32(b, at)) | static_cast<uint64_t>(Le32(b, at + 4)) << 32;
}

// A label field: up to the first NUL, trailing blanks cut.
std::string Label(std::string_view b) {
  std::string s(b.substr(0, b.find('\0')));
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// A GPT GUID as text: the first three fields little-endian, the rest as stored.
std::string FormatGuid(std::string_view b) {
  std::string swapped(16, '\0');
  const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int i = 0; i < 16; ++i) swapped[static_cast<size_t>(i)] = b[static_cast<size_t>(order[i])];
  return FormatUuid(swapped);
}

}  // namespace

std::map<int, std::string> PartitionUuids(std::string_view head, size_t sector_size) {
  std::map<int, std::string> out;
  if (head.size() >= 2 * sector_size && head.substr(sector_size, 8) == "EFI PART") {
    const std::string_view h = head.substr(sector_size);
    const uint64_t entries_lba = Le64(h, 72);
    const uint32_t count = Le32(h, 80);
    const uint32_t size = Le32(h, 84);
    if (size < 128 || count > 1024) return out;
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t at = entries_lba * sector_size + static_cast<uint64_t>(i) * size;
      if (at + 128 > head.size()) break;
      const std::string_view e = head.substr(at, 128);
      if (e.substr(0, 16) == std::string(16, '\0')) continue;  // unused
      out[static_cast<int>(i + 1)] = FormatGuid(e.substr(16, 16));
    }
    return out;
  }
  if (head.size() >= 512 && static_cast<uint8_t>(head[510]) == 0x55 &&
      static_cast<uint8_t>(head[511]) == 0xAA) {
    const uint32_t signature = Le32(head, 440);
    if (signature == 0) return out;
    for (int i = 0; i < 4; ++i) {
      const size_t entry = 446 + static_cast<size_t>(i) * 16;
      if (static_cast<uint8_t>(head[entry + 4]) == 0) continue;  // no partition type
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%08x-%02x", signature, i + 1);
      out[i + 1] = buf;
    }
  }
  return out;
}

Result<std::map<int, std::string>> ReadPartitionUuids(const std::string& disk) {
  auto head = ReadFileHead(disk, size_t{1} << 20);
  if (!head.ok()) return Status::IOError(head.status().message());
  return PartitionUuids(*head);
}

Result<FsId> IdentifyFilesystem(std::string_view head) {
  if (head.size() >= 2048 && Le16(head, 1024 + 0x38) == 0xEF53) {
    return FsId{"ext4", FormatUuid(head.substr(1024 + 0x68, 16)),
                Label(head.substr(1024 + 0x78, 16))};
  }
  if (head.size() >= 48 && head.substr(0, 4) == "XFSB") {
    return FsId{"xfs", FormatUuid(head.substr(32, 16)), Label(head.substr(108, 12))};
  }
  if (head.size() >= 4096 && head.substr(4086, 10) == "SWAPSPACE2") {
    return FsId{"swap", FormatUuid(head.substr(1024 + 12, 16)), Label(head.substr(1024 + 28, 16))};
  }
  // An LVM physical volume: "LABELONE" at the start of one of the first 4 sectors, "LVM2 001"
  // at 24 in it, the PV UUID (32 characters) at 32; blkid groups it 6-4-4-4-4-4-6.
  for (size_t sector = 0; sector < 4 && head.size() >= (sector + 1) * 512; ++sector) {
    const std::string_view label = head.substr(sector * 512, 512);
    if (label.substr(0, 8) != "LABELONE" || label.substr(24, 8) != "LVM2 001") continue;
    const std::string_view id = label.substr(32, 32);
    std::string uuid;
    size_t at = 0;
    for (size_t group : {6, 4, 4, 4, 4, 4, 6}) {
      if (!uuid.empty()) uuid += '-';
      uuid += id.substr(at, group);
      at += group;
    }
    return FsId{"LVM2_member", uuid, ""};
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
      std::string label = Label(head.substr(sig + 5, 11));
      if (label == "NO NAME") label.clear();
      return FsId{"vfat", buf, label};
    }
  }
  return Status::NotFound("no ext4, xfs, swap, LVM or FAT superblock");
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
