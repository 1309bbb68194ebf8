#include "cdp/pe/root_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

namespace cdp::pe {

Result<std::string> ResolveInRoot(const std::string& root, std::string_view path) {
  std::vector<std::string> todo;  // components still to walk, the next one last
  auto push_path = [&todo](std::string_view p) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find('/', start);
      if (end == std::string_view::npos) end = p.size();
      if (end > start) parts.emplace_back(p.substr(start, end - start));
      start = end + 1;
    }
    todo.insert(todo.end(), parts.rbegin(), parts.rend());
  };
  push_path(path);
  std::vector<std::string> done;
  auto host_path = [&root, &done]() {
    std::string p = root;
    for (const auto& c : done) p += "/" + c;
    return p;
  };
  int links = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.back());
    todo.pop_back();
    if (c == ".") continue;
    if (c == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    const std::string candidate = host_path() + "/" + c;
    struct stat st;
    if (::lstat(candidate.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) {
      done.push_back(std::move(c));
      continue;
    }
    if (++links > 40) {
      return Status::InvalidArgument("too many symlinks resolving " + std::string(path) + " in " +
                                     root);
    }
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = ::readlink(candidate.c_str(), target.data(), target.size());
    if (n < 0) return Status::FromErrno(errno, "cannot read the symlink " + candidate);
    target.resize(static_cast<size_t>(n));
    if (!target.empty() && target[0] == '/') done.clear();
    push_path(target);
  }
  return host_path();
}

}  // namespace cdp::pe
