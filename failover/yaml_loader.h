// Internal to cdp_failover: what the YAML files of this component (the target config, the
// cutover plan) share when they are read. Every error is InvalidArgument
// "FILE:LINE: 'key.path': what is wrong (what is expected)".
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::failover {

// Reads and parses `path`. NotFound "WHAT PATH cannot be read (missing or no access)" when the
// file cannot be opened; InvalidArgument "PATH:LINE: not valid YAML: ..." when it does not parse.
Result<YAML::Node> LoadYamlFile(const std::string& path, const std::string& what);

// Reads the values of one file's nodes with its error context. `context` arguments are the
// dotted key path of the map being read ("" at the top, "network[0]", "source.quiesce").
// Holds no state beyond the two members; the nodes it reads are YAML::Node (not thread-safe).
struct YamlLoader {
  std::string file;           // named in every error
  std::filesystem::path dir;  // relative paths are taken from here (the file's directory)

  // InvalidArgument "FILE[:LINE]: ['KEY': ]WHAT" with the line of `node` when it has one.
  Status Error(const YAML::Node& node, const std::string& key, const std::string& what) const;

  // Rejects keys outside `known` (listing the known ones), and a node that is no mapping.
  Status CheckKeys(const YAML::Node& map, const std::string& context,
                   const std::set<std::string>& known) const;

  // A scalar; `fallback` when absent or null, or "missing (required)" when `required`.
  Result<std::string> String(const YAML::Node& map, const std::string& key,
                             const std::string& context, bool required,
                             const std::string& fallback = "") const;

  // String(), made absolute from `dir` and normalized ("" stays "").
  Result<std::string> Path(const YAML::Node& map, const std::string& key,
                           const std::string& context, bool required,
                           const std::string& fallback = "") const;

  // `p` made absolute from `dir` and normalized.
  std::string Absolute(const std::string& p) const;

  // A whole number in min..max; `fallback` when absent or null.
  Result<uint64_t> Number(const YAML::Node& map, const std::string& key, const std::string& context,
                          uint64_t fallback, uint64_t min, uint64_t max) const;

  // A number of seconds > 0, fractions allowed ("30", "0.5"); `fallback` when absent or null.
  Result<double> Seconds(const YAML::Node& map, const std::string& key, const std::string& context,
                         double fallback) const;

  // A list of scalars ([a, b] or one "- a" per line); empty when absent or null, or
  // "missing (required)" when `required`. Emptiness is the caller's to judge.
  Result<std::vector<std::string>> List(const YAML::Node& map, const std::string& key,
                                        const std::string& context, bool required) const;

  // Replaces every ${NAME} in every scalar value under `node` (keys are left alone) with the
  // environment variable NAME, in place. An unset or empty variable is an error naming the key
  // and the variable. `placeholders` maps names that are NOT environment variables to the one
  // key path where they may stand; there they are left as they are, elsewhere they are an error.
  // Only "${" followed by NAME and "}" is special (NAME: a letter or _, then letters, digits, _).
  Status ExpandEnvironment(YAML::Node node, const std::string& context,
                           const std::map<std::string, std::string>& placeholders) const;
};

// A unicast MAC in lower case, "52:54:00:12:34:56".
bool ValidMac(const std::string& mac);

}  // namespace cdp::failover
