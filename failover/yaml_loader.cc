#include "yaml_loader.h"

#include <cstdlib>
#include <regex>

namespace cdp::failover {

namespace fs = std::filesystem;

namespace {

std::string Join(const std::string& context, const std::string& key) {
  return context.empty() ? key : context + "." + key;
}

bool ValidVariableName(const std::string& name) {
  static const std::regex re("^[A-Za-z_][A-Za-z0-9_]*$");
  return std::regex_match(name, re);
}

}  // namespace

Result<YAML::Node> LoadYamlFile(const std::string& path, const std::string& what) {
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return Status::NotFound(what + " " + path + " cannot be read (missing or no access)");
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(path + ":" + std::to_string(e.mark.line + 1) +
                                   ": not valid YAML: " + e.msg);
  }
}

Status YamlLoader::Error(const YAML::Node& node, const std::string& key,
                         const std::string& what) const {
  std::string where = file;
  if (node.IsDefined() && node.Mark().line >= 0) {
    where.append(":").append(std::to_string(node.Mark().line + 1));
  }
  return Status::InvalidArgument(where + ": " + (key.empty() ? "" : "'" + key + "': ") + what);
}

Status YamlLoader::CheckKeys(const YAML::Node& map, const std::string& context,
                             const std::set<std::string>& known) const {
  if (!map.IsMap()) return Error(map, context, "expected a mapping of keys");
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>("");
    if (!known.count(key)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      return Error(kv.first, Join(context, key), "unknown key (known here: " + list + ")");
    }
  }
  return Status::Ok();
}

Result<std::string> YamlLoader::String(const YAML::Node& map, const std::string& key,
                                       const std::string& context, bool required,
                                       const std::string& fallback) const {
  const YAML::Node n = map[key];
  const std::string full = Join(context, key);
  if (!n.IsDefined() || n.IsNull()) {
    if (required) return Error(map, full, "missing (required)");
    return fallback;
  }
  if (!n.IsScalar()) return Error(n, full, "expected a single value");
  return n.as<std::string>();
}

Result<std::string> YamlLoader::Path(const YAML::Node& map, const std::string& key,
                                     const std::string& context, bool required,
                                     const std::string& fallback) const {
  CDP_ASSIGN_OR_RETURN(std::string p, String(map, key, context, required, fallback));
  if (p.empty()) return p;
  return Absolute(p);
}

std::string YamlLoader::Absolute(const std::string& p) const {
  return (dir / p).lexically_normal().string();
}

Result<uint64_t> YamlLoader::Number(const YAML::Node& map, const std::string& key,
                                    const std::string& context, uint64_t fallback, uint64_t min,
                                    uint64_t max) const {
  const YAML::Node n = map[key];
  const std::string full = Join(context, key);
  if (!n.IsDefined() || n.IsNull()) return fallback;
  const std::string text = n.IsScalar() ? n.as<std::string>() : "";
  size_t used = 0;
  uint64_t v = 0;
  try {
    if (text.find_first_not_of("0123456789") != std::string::npos) throw 0;
    v = std::stoull(text, &used);
  } catch (...) {
    used = 0;
  }
  if (text.empty() || used != text.size() || v < min || v > max) {
    return Error(n, full,
                 "'" + text + "' is not a whole number in " + std::to_string(min) + ".." +
                     std::to_string(max));
  }
  return v;
}

Result<double> YamlLoader::Seconds(const YAML::Node& map, const std::string& key,
                                   const std::string& context, double fallback) const {
  const YAML::Node n = map[key];
  if (!n.IsDefined() || n.IsNull()) return fallback;
  // Plain decimals only: stod would also take "inf", "nan", hex and exponents.
  static const std::regex re("^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$");
  const std::string text = n.IsScalar() ? n.as<std::string>() : "";
  double v = 0;
  if (std::regex_match(text, re)) {
    try {
      v = std::stod(text);
    } catch (...) {
      v = 0;
    }
  }
  if (!(v > 0)) {
    return Error(n, Join(context, key),
                 "'" + text + "' is not a positive number of seconds (e.g. 30 or 0.5)");
  }
  return v;
}

Result<std::vector<std::string>> YamlLoader::List(const YAML::Node& map, const std::string& key,
                                                  const std::string& context, bool required) const {
  const YAML::Node n = map[key];
  const std::string full = Join(context, key);
  std::vector<std::string> out;
  if (!n.IsDefined() || n.IsNull()) {
    if (required) return Error(map, full, "missing (required)");
    return out;
  }
  if (!n.IsSequence()) return Error(n, full, "expected a list ([A, B] or one '- A' per line)");
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      return Error(n[i], full + "[" + std::to_string(i) + "]", "expected a single value");
    }
    out.push_back(n[i].as<std::string>());
  }
  return out;
}

Status YamlLoader::ExpandEnvironment(YAML::Node node, const std::string& context,
                                     const std::map<std::string, std::string>& placeholders) const {
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      YAML::Node value = it->second;  // shares the node: assigning to it edits the document
      CDP_RETURN_IF_ERROR(
          ExpandEnvironment(value, Join(context, it->first.as<std::string>("")), placeholders));
    }
    return Status::Ok();
  }
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      YAML::Node item = node[i];
      CDP_RETURN_IF_ERROR(
          ExpandEnvironment(item, context + "[" + std::to_string(i) + "]", placeholders));
    }
    return Status::Ok();
  }
  if (!node.IsScalar()) return Status::Ok();
  const std::string text = node.Scalar();
  std::string out;
  size_t pos = 0;
  for (;;) {
    const size_t start = text.find("${", pos);
    if (start == std::string::npos) break;
    const size_t end = text.find('}', start + 2);
    const std::string name =
        end == std::string::npos ? "" : text.substr(start + 2, end - start - 2);
    if (!ValidVariableName(name)) {
      return Error(node, context,
                   "'" + text +
                       "' has a '${' that is not ${NAME} (NAME: a letter or _, then "
                       "letters, digits or _)");
    }
    out += text.substr(pos, start - pos);
    pos = end + 1;
    if (const auto p = placeholders.find(name); p != placeholders.end()) {
      if (p->second != context) {
        return Error(
            node, context,
            "${" + name + "} is no environment variable: it may stand only in " + p->second);
      }
      out += "${" + name + "}";
      continue;
    }
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) {
      return Error(node, context, "${" + name + "} is not set in the environment");
    }
    if (*value == '\0') return Error(node, context, "${" + name + "} is empty in the environment");
    out += value;
  }
  if (pos == 0) return Status::Ok();  // nothing to expand: keep the node as it is
  out += text.substr(pos);
  node = out;
  return Status::Ok();
}

bool ValidMac(const std::string& mac) {
  static const std::regex re("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$");
  if (!std::regex_match(mac, re)) return false;
  const int first = std::stoi(mac.substr(0, 2), nullptr, 16);
  return (first & 1) == 0;  // unicast
}

}  // namespace cdp::failover
