#include "config_text.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <sstream>

namespace cdp::pe::text {

LineFile LineFile::Split(std::string_view content) {
  LineFile f;
  size_t start = 0;
  while (start < content.size()) {
    size_t end = content.find('\n', start);
    if (end == std::string_view::npos) end = content.size();
    f.lines.emplace_back(content.substr(start, end - start));
    start = end + 1;
  }
  f.final_newline = content.empty() || content.back() == '\n';
  return f;
}

std::string LineFile::Join() const {
  std::vector<std::string> all;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i >= removed_.size() || !removed_[i]) all.push_back(lines[i]);
    if (i < inserted_.size()) all.insert(all.end(), inserted_[i].begin(), inserted_[i].end());
  }
  std::string out;
  for (size_t i = 0; i < all.size(); ++i) {
    out += all[i];
    if (i + 1 < all.size() || final_newline) out += '\n';
  }
  return out;
}

void LineFile::Remove(size_t i) {
  if (removed_.size() <= i) removed_.resize(lines.size(), false);
  removed_[i] = true;
}

void LineFile::InsertAfter(size_t i, const std::string& line) {
  if (inserted_.size() <= i) inserted_.resize(lines.size());
  inserted_[i].push_back(line);
}

std::string Trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> Fields(std::string_view line) {
  std::vector<std::string> fields;
  std::istringstream in{std::string(line)};
  std::string f;
  while (in >> f) fields.push_back(f);
  return fields;
}

std::vector<std::string> SplitAny(std::string_view s, std::string_view seps) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find_first_of(seps, start);
    if (end == std::string_view::npos) end = s.size();
    std::string item = Trim(s.substr(start, end - start));
    if (!item.empty()) out.push_back(std::move(item));
    start = end + 1;
  }
  return out;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string IndentOf(std::string_view line) {
  size_t n = 0;
  while (n < line.size() && (line[n] == ' ' || line[n] == '\t')) ++n;
  return std::string(line.substr(0, n));
}

std::string Join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += item;
  }
  return out;
}

std::string At(const std::string& file, size_t index0) {
  return file + ":" + std::to_string(index0 + 1);
}

std::string Unquote(std::string_view s) {
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) {
    return std::string(s.substr(1, s.size() - 2));
  }
  return std::string(s);
}

std::string IpOf(std::string_view address) {
  return std::string(address.substr(0, address.find('/')));
}

std::string PrefixOf(std::string_view address) {
  const size_t slash = address.find('/');
  return slash == std::string_view::npos ? "" : std::string(address.substr(slash + 1));
}

int FamilyOf(std::string_view address) {
  const std::string ip = IpOf(address);
  unsigned char buf[16];
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1) return 4;
  if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) return 6;
  return 0;
}

std::string Netmask4(int prefix) {
  const uint32_t mask = prefix <= 0 ? 0 : prefix >= 32 ? 0xffffffffu : ~((1u << (32 - prefix)) - 1);
  return std::to_string(mask >> 24) + "." + std::to_string((mask >> 16) & 255) + "." +
         std::to_string((mask >> 8) & 255) + "." + std::to_string(mask & 255);
}

bool SplitAssignment(std::string_view line, std::string* key, std::string* value) {
  const std::string t = Trim(line);
  if (t.empty() || t[0] == '#' || t[0] == ';' || t[0] == '[') return false;
  const size_t eq = t.find('=');
  if (eq == std::string::npos) return false;
  *key = Trim(std::string_view(t).substr(0, eq));
  *value = Trim(std::string_view(t).substr(eq + 1));
  return !key->empty();
}

std::vector<IniEntry> ParseIni(const LineFile& file) {
  std::vector<IniEntry> out;
  std::string section;
  size_t section_line = 0;
  for (size_t i = 0; i < file.lines.size(); ++i) {
    const std::string t = Trim(file.lines[i]);
    if (t.size() >= 2 && t.front() == '[' && t.back() == ']') {
      section = t.substr(1, t.size() - 2);
      section_line = i;
      continue;
    }
    IniEntry e;
    if (!SplitAssignment(t, &e.key, &e.value)) continue;
    e.section = section;
    e.section_line = section_line;
    e.line = i;
    out.push_back(std::move(e));
  }
  return out;
}

size_t SectionEnd(const LineFile& file, size_t section_line) {
  size_t last = section_line;
  for (size_t i = section_line + 1; i < file.lines.size(); ++i) {
    const std::string t = Trim(file.lines[i]);
    if (!t.empty() && t.front() == '[') break;
    if (!t.empty()) last = i;
  }
  return last;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace cdp::pe::text
