// Test support: a temporary directory that is removed with everything in it on destruction,
// including when the test failed. Header-only; for tests only.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

namespace cdp::testing {

class TempDir {
 public:
  // Creates BASE/PREFIX.XXXXXX; BASE defaults to $TMPDIR (or /tmp). ok() is false if that
  // failed. Tests of O_DIRECT pass "/var/tmp": /tmp may be a tmpfs, which refuses O_DIRECT.
  explicit TempDir(const std::string& prefix = "cdp_test", const std::string& base = "") {
    const std::filesystem::path dir =
        base.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(base);
    std::string pattern = (dir / (prefix + ".XXXXXX")).string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

  // The whole content of a file ("" when it cannot be read).
  static std::string Read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

 private:
  std::string path_;
};

}  // namespace cdp::testing
