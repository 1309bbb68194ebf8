// ifupdown: /etc/network/interfaces(5) and the files it includes with `source` (a glob,
// relative to /etc/network) and `source-directory` (files named [A-Za-z0-9_-]+).
#include <fnmatch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>

#include "cdp/pe/root_path.h"
#include "net_formats.h"

namespace cdp::pe::net {

namespace {

const char kMain[] = "/etc/network/interfaces";

struct Stanza {
  std::string file;
  size_t line = 0;  // index of the `iface` line
  std::string name, family, method;
  std::vector<size_t> options;  // indexes of its option lines
};

struct Parsed {
  std::vector<std::string> files;  // in the order read
  std::map<std::string, text::LineFile> text;
  std::vector<Stanza> stanzas;
  std::vector<std::pair<std::string, size_t>> name_lines;  // auto / allow-* lines
};

bool StartsStanza(const std::string& word) {
  return word == "iface" || word == "mapping" || word == "auto" || word == "source" ||
         word == "source-directory" || word == "rename" || word == "no-auto-down" ||
         word == "no-scripts" || text::StartsWith(word, "allow-");
}

std::string Absolute(const std::string& path) {
  return path.empty() || path[0] == '/' ? path : "/etc/network/" + path;
}

bool SourceDirectoryName(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

void ParseFile(const RootChanges& root, const std::string& file, Parsed* p,
               std::set<std::string>* seen, std::vector<std::string>* errors) {
  if (!seen->insert(file).second) return;
  auto content = root.Read(file);
  if (!content.ok()) {
    if (!content.status().IsNotFound()) {
      errors->push_back("cannot read the migrated OS's " + file + ": " +
                        content.status().message());
    }
    return;
  }
  p->files.push_back(file);
  text::LineFile& lf = p->text[file] = text::LineFile::Split(*content);
  size_t current = SIZE_MAX;  // index in p->stanzas of the stanza whose options follow
  for (size_t i = 0; i < lf.lines.size(); ++i) {
    const auto f = text::Fields(lf.lines[i]);
    if (f.empty() || f[0][0] == '#') continue;
    if (!StartsStanza(f[0])) {
      if (current != SIZE_MAX) p->stanzas[current].options.push_back(i);
      continue;
    }
    current = SIZE_MAX;
    if (f[0] == "iface" && f.size() >= 2) {
      p->stanzas.push_back({file, i, f[1], f.size() > 2 ? f[2] : "", f.size() > 3 ? f[3] : "", {}});
      current = p->stanzas.size() - 1;
    } else if (f[0] == "auto" || text::StartsWith(f[0], "allow-")) {
      p->name_lines.emplace_back(file, i);
    } else if ((f[0] == "source" || f[0] == "source-directory") && f.size() >= 2) {
      const std::string path = Absolute(f[1]);
      const std::string dir = f[0] == "source" ? path.substr(0, path.rfind('/')) : path;
      const std::string pattern = f[0] == "source" ? path.substr(path.rfind('/') + 1) : "";
      auto host = ResolveInRoot(root.root(), dir.empty() ? "/" : dir);
      if (!host.ok()) continue;
      for (const auto& name : text::ListDir(*host)) {
        const bool take = f[0] == "source" ? fnmatch(pattern.c_str(), name.c_str(), 0) == 0
                                           : SourceDirectoryName(name);
        if (take && !IsBackupName(name)) ParseFile(root, dir + "/" + name, p, seen, errors);
      }
    }
  }
}

Parsed Parse(const RootChanges& root, std::vector<std::string>* errors) {
  Parsed p;
  std::set<std::string> seen;
  ParseFile(root, kMain, &p, &seen, errors);
  return p;
}

// The value fields of option `key` (also with '_' for '-') on line i of `lf`, or false.
bool Option(const text::LineFile& lf, size_t i, const std::string& key,
            std::vector<std::string>* values) {
  auto f = text::Fields(lf.lines[i]);
  if (f.empty()) return false;
  std::string k = f[0];
  std::replace(k.begin(), k.end(), '_', '-');
  if (k != key) return false;
  values->assign(f.begin() + 1, f.end());
  return true;
}

// Replaces the word `from` by `to` in the fields of `line`, keeping its indentation.
std::string ReplaceWord(const std::string& line, const std::string& from, const std::string& to) {
  auto f = text::Fields(line);
  for (auto& w : f) {
    if (w == from) w = to;
  }
  return text::IndentOf(line) + text::Join(f, " ");
}

}  // namespace

void ScanIfupdown(const RootChanges& root, std::vector<IfaceConfig>* found,
                  std::vector<std::string>* errors) {
  Parsed p = Parse(root, errors);
  for (const Stanza& s : p.stanzas) {
    IfaceConfig c{"ifupdown", s.file, static_cast<int>(s.line + 1), s.name, "", {}};
    c.virtual_iface = s.name.find('.') != std::string::npos;
    for (size_t i : s.options) {
      std::vector<std::string> v;
      if (Option(p.text[s.file], i, "address", &v) && !v.empty()) c.ips.push_back(text::IpOf(v[0]));
      for (const char* key : {"bond-slaves", "slaves", "bridge-ports", "vlan-raw-device"}) {
        if (Option(p.text[s.file], i, key, &v)) c.virtual_iface = true;
      }
    }
    found->push_back(std::move(c));
  }
}

void AdaptIfupdown(Context* ctx) {
  Parsed p = Parse(*ctx->changes, ctx->errors);
  std::map<std::string, std::vector<std::string>> whats;
  // A bond, bridge or VLAN over a mapped NIC, wherever it is declared.
  for (const Stanza& s : p.stanzas) {
    const text::LineFile& lf = p.text[s.file];
    const size_t dot = s.name.find('.');
    if (dot != std::string::npos && ctx->ByName(s.name.substr(0, dot)) >= 0) {
      ctx->RefuseStacked(text::At(s.file, s.line),
                         "VLAN " + s.name + " is over " + s.name.substr(0, dot),
                         ctx->ByName(s.name.substr(0, dot)));
    }
    for (size_t i : s.options) {
      std::vector<std::string> v;
      for (const char* key : {"bond-slaves", "slaves", "bridge-ports", "vlan-raw-device"}) {
        if (!Option(lf, i, key, &v)) continue;
        for (const auto& member : v) {
          const int n = ctx->ByName(member);
          if (n < 0) continue;
          const std::string kind = std::string(key) == "vlan-raw-device" ? "VLAN "
                                   : std::string(key) == "bridge-ports"  ? "bridge "
                                                                         : "bond ";
          ctx->RefuseStacked(
              text::At(s.file, i),
              kind + s.name + " is over " + member + " (" + text::Trim(lf.lines[i]) + ")", n);
        }
      }
      if (Option(lf, i, "bond-master", &v) && ctx->ByName(s.name) >= 0) {
        ctx->RefuseStacked(text::At(s.file, i),
                           s.name + " is a slave of bond " + (v.empty() ? "?" : v[0]),
                           ctx->ByName(s.name));
      }
    }
  }
  for (const Stanza& s : p.stanzas) {
    const int n = ctx->ByName(s.name);
    if (n < 0) continue;
    const NicMap& nic = (*ctx->nics)[static_cast<size_t>(n)];
    ctx->configured[static_cast<size_t>(n)] = true;
    text::LineFile& lf = p.text[s.file];
    std::vector<std::string>& what = whats[s.file];
    const std::string new_name = ctx->NewName(n);
    for (size_t i : s.options) {
      std::vector<std::string> v;
      if (Option(lf, i, "hwaddress", &v) && !v.empty() && text::Lower(v.back()) != nic.target_mac) {
        lf.lines[i] = ReplaceWord(lf.lines[i], v.back(), nic.target_mac);
        what.push_back(s.name + ": hwaddress " + v.back() + " -> " + nic.target_mac);
      }
    }
    const int family = s.family == "inet" ? 4 : s.family == "inet6" ? 6 : 0;
    if (family == text::FamilyOf(nic.address)) {
      if (s.method == "dhcp" || s.method == "auto") {
        ctx->notes->push_back("network: " + text::At(s.file, s.line) + ": " + s.name + " " +
                              s.family + " " + s.method + "; the plan's address " + nic.address +
                              " is left to the DHCP server");
      } else if (s.method == "static") {
        size_t address_line = s.line;
        bool have_address = false, have_gateway = false;
        std::string netmask;
        for (size_t i : s.options) {
          std::vector<std::string> v;
          if (Option(lf, i, "netmask", &v) && !v.empty()) netmask = v[0];
        }
        for (size_t i : s.options) {
          std::vector<std::string> v;
          if (Option(lf, i, "address", &v) && !v.empty() && !have_address) {
            have_address = true;
            address_line = i;
            std::string old = v[0];
            if (old.find('/') == std::string::npos && !netmask.empty()) old += "/" + netmask;
            if (v[0] != nic.address) {
              lf.lines[i] = text::IndentOf(lf.lines[i]) + "address " + nic.address;
              what.push_back(s.name + ": address " + old + " -> " + nic.address);
            }
          } else if (Option(lf, i, "netmask", &v) && text::PrefixOf(nic.address) != "") {
            lf.Remove(i);  // the prefix is in the address now
            what.push_back(s.name + ": netmask line removed (the prefix is in the address)");
          } else if (Option(lf, i, "gateway", &v) && !nic.gateway.empty()) {
            have_gateway = true;
            if (v.empty() || v[0] != nic.gateway) {
              lf.lines[i] = text::IndentOf(lf.lines[i]) + "gateway " + nic.gateway;
              what.push_back(s.name + ": gateway " + (v.empty() ? "" : v[0]) + " -> " +
                             nic.gateway);
            }
          }
        }
        const std::string indent =
            s.options.empty() ? "    " : text::IndentOf(lf.lines[s.options.front()]);
        if (!have_address) {
          lf.InsertAfter(s.line, indent + "address " + nic.address);
          what.push_back(s.name + ": address " + nic.address + " added");
        }
        if (!have_gateway && !nic.gateway.empty()) {
          lf.InsertAfter(address_line, indent + "gateway " + nic.gateway);
          what.push_back(s.name + ": gateway " + nic.gateway + " added");
        }
      }
    }
    if (new_name != s.name) {
      lf.lines[s.line] = ReplaceWord(lf.lines[s.line], s.name, new_name);
      what.push_back("iface " + s.name + " renamed " + new_name);
    }
  }
  // A physical NIC of the source that the plan maps to nothing has no counterpart on the target:
  // `auto` would fail networking.service ("Cannot find device") at every boot; allow-hotplug
  // brings it up only if such a NIC appears.
  std::set<std::string> unmapped;
  for (const Stanza& s : p.stanzas) {
    bool stacked = s.name == "lo" || s.name.find_first_of(".:") != std::string::npos;
    for (size_t i : s.options) {
      std::vector<std::string> v;
      for (const char* key : {"bond-slaves", "slaves", "bridge-ports", "vlan-raw-device",
                              "bond-master"}) {
        stacked = stacked || Option(p.text[s.file], i, key, &v);
      }
    }
    if (!stacked && ctx->ByName(s.name) < 0) unmapped.insert(s.name);
  }
  for (const auto& [file, i] : p.name_lines) {
    text::LineFile& lf = p.text[file];
    const auto words = text::Fields(lf.lines[i]);
    if (words.empty() || words[0] != "auto") continue;
    std::vector<std::string> keep{"auto"}, hotplug;
    for (size_t w = 1; w < words.size(); ++w) {
      (unmapped.count(words[w]) ? hotplug : keep).push_back(words[w]);
    }
    if (hotplug.empty()) continue;
    const std::string moved = "allow-hotplug " + text::Join(hotplug, " ");
    if (keep.size() == 1) {
      lf.lines[i] = moved;
    } else {
      lf.lines[i] = text::Join(keep, " ");
      lf.InsertAfter(i, moved);
    }
    whats[file].push_back("auto " + text::Join(hotplug, " ") +
                          " -> allow-hotplug (the plan maps no target NIC to it)");
  }
  // auto / allow-hotplug lines of renamed interfaces.
  if (!ctx->udevd) {
    for (const auto& [file, i] : p.name_lines) {
      text::LineFile& lf = p.text[file];
      for (const auto& word : text::Fields(lf.lines[i])) {
        const int n = ctx->ByName(word);
        if (n < 0 || ctx->NewName(n) == word) continue;
        lf.lines[i] = ReplaceWord(lf.lines[i], word, ctx->NewName(n));
        whats[file].push_back(text::Fields(lf.lines[i])[0] + " " + word + " renamed " +
                              ctx->NewName(n));
      }
    }
  }
  for (const auto& file : p.files) {
    if (whats[file].empty()) continue;
    ctx->changes->Write(file, p.text[file].Join(), "ifupdown: " + text::Join(whats[file], ", "));
  }
}

}  // namespace cdp::pe::net
