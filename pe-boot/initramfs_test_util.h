// Test support: newc cpio archives (initramfs images) built in memory, for the tests of the
// initramfs listing, the virtio driver check and the initramfs rebuild. Tests only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace cdp::pe::testdata {

// One newc cpio entry (a regular file when mode is 0100644).
inline std::string NewcEntry(const std::string& name, const std::string& data,
                             uint32_t mode = 0100644) {
  static uint32_t ino = 1;
  char header[111];
  std::snprintf(header, sizeof(header),
                "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino++, mode, 0u, 0u,
                1u, 0u, static_cast<uint32_t>(data.size()), 0u, 0u, 0u, 0u,
                static_cast<uint32_t>(name.size() + 1), 0u);
  std::string out(header, 110);
  out += name;
  out += '\0';
  out.append((4 - out.size() % 4) % 4, '\0');
  out += data;
  out.append((4 - out.size() % 4) % 4, '\0');
  return out;
}

// A newc archive holding `files` (directories of their paths not listed), with its trailer.
inline std::string NewcArchive(const std::vector<std::string>& files) {
  std::string out = NewcEntry("usr", "", 040755);
  for (const auto& f : files) out += NewcEntry(f, "content of " + f);
  out += NewcEntry("TRAILER!!!", "", 0);
  return out;
}

}  // namespace cdp::pe::testdata
