#include "cdp/pe/root_changes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <filesystem>

#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/units.h"
#include "cdp/pe/root_path.h"

namespace cdp::pe {

namespace {

namespace fs = std::filesystem;

std::string Parent(const std::string& file) {
  const size_t slash = file.rfind('/');
  return slash == std::string::npos || slash == 0 ? "/" : file.substr(0, slash);
}

std::string Base(const std::string& file) { return file.substr(file.rfind('/') + 1); }

// The host path of `file` itself (its last component not followed: a symlink stays one).
Result<std::string> HostPathNoFollow(const std::string& root, const std::string& file) {
  CDP_ASSIGN_OR_RETURN(std::string dir, ResolveInRoot(root, Parent(file)));
  return dir + "/" + Base(file);
}

bool LExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

Status EnsureDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir + ": " + ec.message());
  return Status::Ok();
}

Status AppendSynced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "cannot open " + path);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "cannot write " + path);
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!synced) return Status::FromErrno(err, "cannot fsync " + path);
  return Status::Ok();
}

}  // namespace

std::string UtcStamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RootChanges::RootChanges(std::string root) : root_(std::move(root)) {}

Result<std::string> RootChanges::Read(const std::string& file) const {
  auto it = planned_.find(file);
  if (it != planned_.end()) {
    if (it->second.kind == Kind::kWrite) return it->second.content;
    return Status::NotFound(file + " is to be " +
                            (it->second.kind == Kind::kRemove ? "removed" : "a symlink"));
  }
  CDP_ASSIGN_OR_RETURN(const std::string path, ResolveInRoot(root_, file));
  return ReadWholeFile(path);
}

bool RootChanges::Exists(const std::string& file) const {
  auto it = planned_.find(file);
  if (it != planned_.end()) return it->second.kind != Kind::kRemove;
  auto path = HostPathNoFollow(root_, file);
  return path.ok() && LExists(*path);
}

RootChanges::Planned& RootChanges::Plan(const std::string& file, Kind kind) {
  auto [it, added] = planned_.try_emplace(file);
  if (added) {
    order_.push_back(file);
    auto path = HostPathNoFollow(root_, file);
    it->second.existed = path.ok() && LExists(*path);
  }
  it->second.kind = kind;
  return it->second;
}

void RootChanges::Write(const std::string& file, std::string content, const std::string& what) {
  auto current = Read(file);
  if (current.ok() && *current == content) return;
  Planned& p = Plan(file, Kind::kWrite);
  p.content = std::move(content);
  p.whats.push_back(what);
}

void RootChanges::Symlink(const std::string& file, const std::string& target,
                          const std::string& what) {
  Planned& p = Plan(file, Kind::kSymlink);
  p.content = target;
  p.whats.push_back(what);
}

void RootChanges::Remove(const std::string& file, const std::string& what) {
  Planned& p = Plan(file, Kind::kRemove);
  p.content.clear();
  p.whats.push_back(what);
}

std::vector<RootChange> RootChanges::Changes() const {
  std::vector<RootChange> out;
  for (const auto& file : order_) {
    const Planned& p = planned_.at(file);
    RootChange c;
    c.file = file;
    for (const auto& w : p.whats) c.what += (c.what.empty() ? "" : "; ") + w;
    if (p.existed) c.kept_at = file + kPreCutoverSuffix;
    out.push_back(std::move(c));
  }
  return out;
}

Status RootChanges::Apply(const std::string& stamp) const {
  std::string log;
  for (const auto& file : order_) {
    const Planned& p = planned_.at(file);
    const auto t0 = std::chrono::steady_clock::now();
    CDP_ASSIGN_OR_RETURN(const std::string path, HostPathNoFollow(root_, file));
    const std::string backup = path + kPreCutoverSuffix;
    struct stat st;
    mode_t mode = 0644;
    if (p.existed && ::lstat(path.c_str(), &st) == 0) {
      if (S_ISLNK(st.st_mode)) {
        std::error_code ec;
        const fs::path target = fs::read_symlink(path, ec);
        if (ec) return Status::IOError("cannot read the symlink " + file + ": " + ec.message());
        fs::remove(backup, ec);
        fs::create_symlink(target, backup, ec);
        if (ec) return Status::IOError("cannot keep the symlink " + file + ": " + ec.message());
      } else {
        mode = st.st_mode & 07777;
        CDP_ASSIGN_OR_RETURN(const std::string old, ReadWholeFile(path));
        CDP_RETURN_IF_ERROR(
            WriteFileAtomicWithMode(backup, old, mode).WithContext("keeping the previous " + file));
      }
    }
    CDP_RETURN_IF_ERROR(EnsureDir(Parent(path)));
    std::error_code ec;
    switch (p.kind) {
      case Kind::kWrite: {
        // Written through a symlink it would change the link's target, not the file named.
        if (LExists(path) && fs::is_symlink(path, ec)) fs::remove(path, ec);
        CDP_RETURN_IF_ERROR(WriteFileAtomicWithMode(path, p.content, mode).WithContext(file));
        break;
      }
      case Kind::kSymlink:
        fs::remove(path, ec);
        fs::create_symlink(p.content, path, ec);
        if (ec) return Status::IOError("cannot link " + file + ": " + ec.message());
        CDP_RETURN_IF_ERROR(SyncDirectory(Parent(path)));
        break;
      case Kind::kRemove:
        fs::remove(path, ec);
        if (ec) return Status::IOError("cannot remove " + file + ": " + ec.message());
        CDP_RETURN_IF_ERROR(SyncDirectory(Parent(path)));
        break;
    }
    // Each file is written and synced (with its previous content kept): say how long it took.
    CDP_LOG(info)
        << "pe-agent: adapted " << file << " (" << p.content.size() << " bytes) in "
        << FormatFixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                       3)
        << " s";
    std::string what;
    for (const auto& w : p.whats) what += (what.empty() ? "" : "; ") + w;
    log += stamp + " " + file + ": " + what +
           (p.existed ? "; previous content kept at " + file + kPreCutoverSuffix
                      : "; there was none") +
           "\n";
  }
  if (log.empty()) return Status::Ok();
  CDP_ASSIGN_OR_RETURN(const std::string log_path, ResolveInRoot(root_, kTakeoverLog));
  CDP_RETURN_IF_ERROR(EnsureDir(Parent(log_path)));
  return AppendSynced(log_path, log).WithContext("the takeover log");
}

}  // namespace cdp::pe
