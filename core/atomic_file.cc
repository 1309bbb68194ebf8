#include "cdp/core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <limits>
#include <optional>

namespace cdp {

namespace {

// WriteFileAtomic with the mode of the new file: `exact_mode` set -> fchmod to it, else 0644
// less the umask.
Status WriteAtomically(const std::string& path, const std::string& data,
                       std::optional<mode_t> exact_mode) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "cannot create " + tmp);
  auto fail = [&](const std::string& what) {
    Status s = Status::FromErrno(errno, what + " " + tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  if (exact_mode && ::fchmod(fd, *exact_mode) != 0) return fail("cannot chmod");
  if (::fsync(fd) != 0) return fail("cannot fsync");
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = Status::FromErrno(errno, "cannot rename " + tmp + " to " + path);
    ::unlink(tmp.c_str());
    return s;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return SyncDirectory(dir.empty() ? "." : dir);
}

}  // namespace

Status WriteFileAtomic(const std::string& path, const std::string& data) {
  return WriteAtomically(path, data, std::nullopt);
}

Status WriteFileAtomicWithMode(const std::string& path, const std::string& data, mode_t mode) {
  return WriteAtomically(path, data, mode);
}

Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot open directory " + dir + " to sync it");
  Status s;
  if (::fsync(fd) != 0) s = Status::FromErrno(errno, "cannot fsync directory " + dir);
  ::close(fd);
  return s;
}

Result<std::string> ReadFileHead(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + " does not exist");
    return Status::FromErrno(errno, "cannot open " + path);
  }
  std::string out;
  char buf[1 << 16];
  while (out.size() < max_bytes) {
    const ssize_t n = ::read(fd, buf, std::min(sizeof(buf), max_bytes - out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Status::FromErrno(errno, "cannot read " + path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

Result<std::string> ReadWholeFile(const std::string& path) {
  return ReadFileHead(path, std::numeric_limits<size_t>::max());
}

}  // namespace cdp
