// Agent config files (agent_config.h). yaml-cpp is called here only; its exceptions become
// Status at this adapter.
#include "cdp/agent/agent_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace cdp::agent {

namespace {

enum class KeyType { kString, kBool, kWhole, kNumber, kFreeze };

struct KeySpec {
  const char* key;
  KeyType type;
};

// The order of the operator guide's table.
constexpr KeySpec kKeys[] = {
    {"volume", KeyType::kString},
    {"group", KeyType::kString},
    {"server", KeyType::kString},
    {"device", KeyType::kString},
    {"trace", KeyType::kBool},
    {"freeze", KeyType::kFreeze},
    {"checkpoint_interval", KeyType::kNumber},
    {"freeze_limit_ms", KeyType::kWhole},
    {"buffer_mib", KeyType::kWhole},
    {"state_dir", KeyType::kString},
    {"nbd", KeyType::kString},
    {"ack", KeyType::kString},
    {"bandwidth_limit", KeyType::kNumber},
    {"trace_buffer_kb", KeyType::kWhole},
    {"tracefs", KeyType::kString},
    {"io_engine", KeyType::kString},
    {"drain_seconds", KeyType::kWhole},
    {"log_level", KeyType::kString},
    {"take_over", KeyType::kBool},
};

const char* TypeText(KeyType type) {
  switch (type) {
    case KeyType::kString:
      return "a string";
    case KeyType::kBool:
      return "true or false";
    case KeyType::kWhole:
      return "a whole number";
    case KeyType::kNumber:
      return "a number";
    case KeyType::kFreeze:
      return "a mount point, a list of them or auto";
  }
  return "?";
}

std::string Where(const std::string& path, const YAML::Node& node) {
  std::string where = path;
  if (node.Mark().line >= 0) where.append(":").append(std::to_string(node.Mark().line + 1));
  return where;
}

// The scalar's text as written, for messages ("" for a null, "[list]" / "{map}" otherwise).
std::string Shown(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsSequence()) return "[list]";
  if (n.IsMap()) return "{map}";
  return "";
}

bool IsWhole(const std::string& text) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return !text.empty() && ec == std::errc() && p == text.data() + text.size();
}

bool IsNumber(const std::string& text) {
  if (text.empty()) return false;
  char* end = nullptr;
  (void)std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

std::string FlagName(const std::string& key) {
  std::string flag = key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

std::string KnownKeys() {
  std::string known;
  for (const KeySpec& k : kKeys) {
    if (!known.empty()) known += ", ";
    known += k.key;
  }
  return known;
}

Result<YAML::Node> ParseFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      return Status::NotFound(path + ": cannot read it (no such file)");
    }
    return Status::InvalidArgument(path + ": cannot read it (permission denied, or not a file)");
  }
  std::stringstream text;
  text << in.rdbuf();
  try {
    return YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(path + ":" + std::to_string(e.mark.line + 1) +
                                   ": not YAML: " + e.msg);
  }
}

}  // namespace

const std::vector<std::string>& ConfigKeys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    for (const KeySpec& s : kKeys) k.push_back(s.key);
    return k;
  }();
  return keys;
}

Result<VolumeConfig> LoadVolumeConfig(const std::string& path) {
  CDP_ASSIGN_OR_RETURN(YAML::Node root, ParseFile(path));
  if (!root.IsMap()) {
    return Status::InvalidArgument(path + ": expected a mapping of keys (volume: NAME, ...)");
  }
  VolumeConfig config;
  config.path = path;
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const YAML::Node key_node = it->first;
    const YAML::Node value = it->second;
    const std::string key = key_node.IsScalar() ? key_node.Scalar() : Shown(key_node);
    const KeySpec* spec = nullptr;
    for (const KeySpec& k : kKeys) {
      if (key == k.key) spec = &k;
    }
    if (spec == nullptr) {
      return Status::InvalidArgument(Where(path, key_node) + ": unknown key '" + key +
                                     "' (known: " + KnownKeys() + ")");
    }
    if (!seen.insert(key).second) {
      return Status::InvalidArgument(Where(path, key_node) + ": key '" + key + "' appears twice");
    }
    auto wrong = [&]() {
      // A missing value's mark is the next line: name the key's.
      return Status::InvalidArgument(Where(path, value.IsNull() ? key_node : value) + ": key '" +
                                     key + "': expected " + TypeText(spec->type) + ", got '" +
                                     Shown(value) + "'");
    };
    const std::string flag = FlagName(key);
    const std::string text = value.IsScalar() ? value.Scalar() : std::string();
    switch (spec->type) {
      case KeyType::kString:
        if (!value.IsScalar() || text.empty()) return wrong();
        if (key == "volume") {
          config.volume = text;
        }
        if (key == "group") {
          config.group = text;
          continue;  // not a flag of its own: the process's group (main.cc)
        }
        config.args.push_back("--" + flag + "=" + text);
        break;
      case KeyType::kBool: {
        bool on = false;
        if (!value.IsScalar() || !YAML::convert<bool>::decode(value, on)) return wrong();
        if (on) config.args.push_back("--" + flag);
        break;
      }
      case KeyType::kWhole:
        if (!value.IsScalar() || !IsWhole(text)) return wrong();
        config.args.push_back("--" + flag + "=" + text);
        break;
      case KeyType::kNumber:
        if (!value.IsScalar() || !IsNumber(text)) return wrong();
        config.args.push_back("--" + flag + "=" + text);
        break;
      case KeyType::kFreeze:
        if (value.IsScalar() && !text.empty()) {
          config.args.push_back("--freeze=" + text);
        } else if (value.IsSequence() && value.size() > 0) {
          for (const YAML::Node& item : value) {
            if (!item.IsScalar() || item.Scalar().empty()) return wrong();
            config.args.push_back("--freeze=" + item.Scalar());
          }
        } else {
          return wrong();
        }
        break;
    }
    config.flags.push_back(flag);
  }
  if (config.group.empty()) config.group = config.volume;
  return config;
}

Result<std::vector<VolumeConfig>> LoadGroupConfigs(const std::string& dir,
                                                   const std::string& group) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return Status::NotFound("config dir " + dir + " is not a directory" +
                            (ec ? " (" + ec.message() + ")" : std::string()));
  }
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".conf") files.push_back(entry.path().string());
  }
  if (ec) return Status::InvalidArgument("config dir " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  std::vector<VolumeConfig> matched;
  for (const std::string& file : files) {
    CDP_ASSIGN_OR_RETURN(VolumeConfig config, LoadVolumeConfig(file));
    if (config.group != group) continue;
    for (const VolumeConfig& other : matched) {
      if (!config.volume.empty() && other.volume == config.volume) {
        return Status::InvalidArgument(file + " and " + other.path + " both protect volume '" +
                                       config.volume + "'; one file per volume");
      }
    }
    matched.push_back(std::move(config));
  }
  if (matched.empty()) {
    return Status::NotFound("no config file in " + dir + " is in group '" + group + "' (" + dir +
                            "/*.conf: " + std::to_string(files.size()) +
                            " files; a file's group is its `group` key, else its `volume`)");
  }
  return matched;
}

}  // namespace cdp::agent
