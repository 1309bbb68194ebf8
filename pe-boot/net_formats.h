// The network formats of net_adaptation.h, one Scan and one Adapt per format family, and what
// they share. Internal to pe-boot.
#pragma once

#include <string>
#include <vector>

#include "cdp/pe/net_adaptation.h"
#include "config_text.h"

namespace cdp::pe::net {

// What every format's Adapt works with.
struct Context {
  const std::vector<NicMap>* nics = nullptr;
  bool udevd = false;
  RootChanges* changes = nullptr;
  std::vector<std::string>* errors = nullptr;
  std::vector<std::string>* notes = nullptr;
  std::vector<bool> configured;  // per mapping: a config of a known format carries it

  // The mapping whose source MAC (or target MAC: already adapted) is `mac`; -1 when none.
  int ByMac(const std::string& mac) const;
  // The mapping whose source name is `name`; -1 when none.
  int ByName(const std::string& name) const;
  // The name the NIC of mapping `i` has on the target: its old one when pinned by a .link
  // (udevd), else the target kernel's name for it.
  std::string NewName(int i) const;
  // "NIC mapping N (source MAC X)".
  std::string Which(int i) const;
  // Appends the refusal of a bond/bridge/VLAN over mapping i's NIC.
  void RefuseStacked(const std::string& at, const std::string& what, int i) const;
};

// The host path of DIR in the migrated root and its regular files (names, sorted) whose name
// `keep` accepts.
std::vector<std::string> FilesIn(const RootChanges& root, const std::string& dir,
                                 bool (*keep)(const std::string& name));

// One configuration file of the migrated OS, read: its content as planned so far, its lines, and
// its KEY=VALUE entries (INI-style and shell-style files; empty sections for the latter).
struct ConfigFile {
  std::string file;  // the migrated OS's path
  std::string content;
  text::LineFile lf;
  std::vector<text::IniEntry> entries;
};

// ConfigFile of every file FilesIn(root, dir, keep) names; a file that cannot be read adds an
// error naming it to *errors (when not null) and is left out.
std::vector<ConfigFile> ReadConfigFiles(const RootChanges& root, const std::string& dir,
                                        bool (*keep)(const std::string& name),
                                        std::vector<std::string>* errors);

// True for names of editors' and package managers' leftovers (~, .bak, .orig, .rpmnew,
// .rpmsave, .dpkg-*, .cdp-pre-cutover), which no format reads.
bool IsBackupName(const std::string& name);

// `addresses` (ADDR/PREFIX or ADDR items) with the first of `address`'s family replaced by it
// (appended when there is none); *old gets the one replaced ("" when none).
std::vector<std::string> ReplaceFirstOfFamily(std::vector<std::string> addresses,
                                              const std::string& address, std::string* old);

void ScanIfupdown(const RootChanges& root, std::vector<IfaceConfig>* found,
                  std::vector<std::string>* errors);
void AdaptIfupdown(Context* ctx);
void ScanNetworkd(const RootChanges& root, std::vector<IfaceConfig>* found,
                  std::vector<std::string>* errors);
void AdaptNetworkd(Context* ctx);
void ScanNmKeyfiles(const RootChanges& root, std::vector<IfaceConfig>* found,
                    std::vector<std::string>* errors);
void AdaptNmKeyfiles(Context* ctx);
void ScanNetplan(const RootChanges& root, std::vector<IfaceConfig>* found,
                 std::vector<std::string>* errors);
void AdaptNetplan(Context* ctx);
void ScanIfcfg(const RootChanges& root, std::vector<IfaceConfig>* found,
               std::vector<std::string>* errors);
void AdaptIfcfg(Context* ctx);

}  // namespace cdp::pe::net
