// Line-level editing of the migrated OS's configuration files (network formats, fstab, GRUB):
// files are split into lines, edited line by line and joined again, so every line the
// adaptation does not change stays byte for byte as it was. Internal to pe-boot.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cdp::pe::text {

// A file as lines (without their '\n'), and whether it ended with a newline.
struct LineFile {
  std::vector<std::string> lines;
  bool final_newline = true;

  static LineFile Split(std::string_view content);
  // The content again; removed lines left out, inserted ones in place.
  std::string Join() const;
  // Edits that keep every line's index: line i is left out of Join, or followed by `line`.
  void Remove(size_t i);
  void InsertAfter(size_t i, const std::string& line);

 private:
  std::vector<bool> removed_;
  std::vector<std::vector<std::string>> inserted_;
};

std::string Trim(std::string_view s);
std::string Lower(std::string s);
std::vector<std::string> Fields(std::string_view line);                        // split on blanks
std::vector<std::string> SplitAny(std::string_view s, std::string_view seps);  // no empties
bool StartsWith(std::string_view s, std::string_view prefix);
bool EndsWith(std::string_view s, std::string_view suffix);
// The leading blanks of `line`.
std::string IndentOf(std::string_view line);
std::string Join(const std::vector<std::string>& items, std::string_view sep);
// "FILE:LINE" (1-based line).
std::string At(const std::string& file, size_t index0);
// Removes one pair of surrounding quotes ('..' or "..").
std::string Unquote(std::string_view s);

// "ADDR/PREFIX" -> "ADDR" (the whole string when there is no '/').
std::string IpOf(std::string_view address);
// "ADDR/PREFIX" -> "PREFIX" ("" when none).
std::string PrefixOf(std::string_view address);
// 4 (an IPv4 address, with or without /PREFIX), 6 (IPv6), 0 (neither).
int FamilyOf(std::string_view address);
// 24 -> "255.255.255.0".
std::string Netmask4(int prefix);

// A "KEY=VALUE" line of an INI-style or shell-style file: key and value trimmed; false when
// the line is no assignment (a comment, a section header, blank).
bool SplitAssignment(std::string_view line, std::string* key, std::string* value);

// One KEY=VALUE of an INI-style file (systemd units, NetworkManager keyfiles).
struct IniEntry {
  std::string section;      // "Match", "ipv4"
  size_t section_line = 0;  // index of its section's header (sections may repeat)
  std::string key, value;
  size_t line = 0;  // index of the entry's line
};
std::vector<IniEntry> ParseIni(const LineFile& file);
// The index of the last line of the section whose header is at `section_line`.
size_t SectionEnd(const LineFile& file, size_t section_line);

// Directory entries (names only, sorted) of DIR, a host path; empty when it cannot be read.
std::vector<std::string> ListDir(const std::string& dir);

}  // namespace cdp::pe::text
