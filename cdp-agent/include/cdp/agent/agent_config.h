// Agent config files: one YAML file per protected volume (docs/operator-guide.md, "Config
// files"), so that one cdp-agent process can protect every disk of a server:
//
//   cdp-agent --config /etc/cdp/agent/sda.conf --config /etc/cdp/agent/sdb.conf
//   cdp-agent --config-dir /etc/cdp/agent --group db01      (cdp-agent@db01.service)
//
// A file's keys are the command-line flags with '-' turned into '_' (`checkpoint_interval: 1`
// stands for `--checkpoint-interval=1`); `trace: true` is the switch; `freeze` takes one mount
// point, a list of them, or `auto`. The file is read into the flags it stands for, so that the
// flags' own parsing and checks apply to it unchanged (main.cc).
//
// Errors name the file, the line and the key:
//   "/etc/cdp/agent/sda.conf:4: unknown key 'chekpoint_interval' (known: ...)"
//   "/etc/cdp/agent/sda.conf:6: key 'buffer_mib': expected a whole number, got 'lots'"
#pragma once

#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

// One volume's config file, read into the flags it stands for.
struct VolumeConfig {
  std::string path;    // the file
  std::string volume;  // its `volume` key; empty when absent
  // Its `group` key; when absent, the volume's name (a volume alone is a group of one).
  std::string group;
  // "--flag=value" for each key, in file order; "--trace" for `trace: true` (nothing for
  // false); one "--freeze=PATH" per list entry.
  std::vector<std::string> args;
  // The flag names it sets ("checkpoint-interval", ...), once each.
  std::vector<std::string> flags;
};

// The keys a config file may hold, in the order the operator guide lists them.
const std::vector<std::string>& ConfigKeys();

// Reads one config file. Errors (InvalidArgument unless said otherwise), each one line:
//   "FILE: cannot read it (REASON)"                           (NotFound when it does not exist)
//   "FILE:LINE: not YAML: REASON"
//   "FILE: expected a mapping of keys (volume: NAME, ...)"     (empty, a list, a scalar)
//   "FILE:LINE: unknown key 'KEY' (known: volume, group, ...)"
//   "FILE:LINE: key 'KEY' appears twice"
//   "FILE:LINE: key 'KEY': expected TYPE, got 'TEXT'"         TYPE: a string, true or false,
//                                                             a whole number, a number, a mount
//                                                             point, a list of them or auto
Result<VolumeConfig> LoadVolumeConfig(const std::string& path);

// Every DIR/*.conf (in name order) whose group is `group` (a file without a `group` key is in
// the group named after its volume). Errors: a file's LoadVolumeConfig error; NotFound "no
// config file in DIR is in group GROUP (DIR/*.conf: N files; a file's group is its `group` key,
// else its `volume`)"; NotFound / InvalidArgument "config dir DIR: ..." when it cannot be read;
// InvalidArgument when two files name the same volume.
Result<std::vector<VolumeConfig>> LoadGroupConfigs(const std::string& dir,
                                                   const std::string& group);

}  // namespace cdp::agent
