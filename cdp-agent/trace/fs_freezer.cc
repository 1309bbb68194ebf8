// FsFreezer (agent side) and RunThawWatchdog (the cdp-thaw-watchdog process): see fs_freezer.h.
//
// Rule for both sides: nothing is written to a log between a FIFREEZE and the FITHAW that ends
// it, because stderr may be a file on the frozen filesystem and the write would then block until
// the thaw — which, for the watchdog, would be never. And neither side keeps a descriptor of the
// filesystem outside a freeze (or a syncfs): it would make the filesystem impossible to unmount.
#include "cdp/agent/fs_freezer.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "cdp/core/logging.h"

extern char** environ;

namespace cdp::agent {
namespace {

constexpr char kWatchdogName[] = "cdp-thaw-watchdog";
constexpr int kWatchdogCommandFd = 3;  // in the watchdog: its end of the socket pair
constexpr int kReadyTimeoutMs = 10000;
constexpr int kReapTimeoutMs = 2000;
constexpr size_t kMaxLineBytes = 256;

int64_t MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void CloseFd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

std::string ErrnoText(int err) {
  char buf[256];
  return strerror_r(err, buf, sizeof(buf));
}

// "exited with status 2" / "was killed by signal 9".
std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped (wait status " + std::to_string(status) + ")";
}

// SendWithDescriptor without a descriptor.
int SendAll(int fd, std::string_view data) { return SendWithDescriptor(fd, data, -1); }

std::string DevText(dev_t dev) {
  return std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

// The NotFound of a --freeze path that no longer holds the filesystem on `fs_dev`; `now` is what
// the path is, e.g. "PATH is now on device 8:1: ...".
Status NotHeld(const std::string& path, dev_t fs_dev, const std::string& now) {
  return Status::NotFound(path + " no longer holds the filesystem of device " + DevText(fs_dev) +
                          " (" + now + ")");
}

Status NotHeldByDevice(const std::string& path, dev_t fs_dev, dev_t now_dev) {
  return NotHeld(path, fs_dev,
                 path + " is now on device " + DevText(now_dev) +
                     ": unmounted, or another filesystem mounted there");
}

// Waits up to timeout_ms for `pid` (our child) to exit and reaps it; SIGKILLs it past that.
// Returns the wait status, or nullopt if it was already reaped elsewhere (ECHILD).
std::optional<int> ReapChild(pid_t pid, int timeout_ms) {
  const int64_t deadline = MonotonicMs() + timeout_ms;
  int status = 0;
  useconds_t nap_us = 1000;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (MonotonicMs() >= deadline) break;
    usleep(nap_us);
    if (nap_us < 50000) nap_us *= 2;
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return std::nullopt;
  }
  return status;
}

// Why the watchdog is gone, if it is (without reaping it): " (exited with status 1)" or "".
std::string PeekExit(pid_t pid) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != pid) return "";
  if (info.si_code == CLD_EXITED) {
    return " (exited with status " + std::to_string(info.si_status) + ")";
  }
  return " (was killed by signal " + std::to_string(info.si_status) + ")";
}

// The filesystem type of the mount `fd` is on, from /proc/self/mountinfo; "unknown" if not found.
std::string FsTypeOf(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return "unknown";
  const std::string dev = DevText(st.st_dev);
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    std::istringstream fields(line);
    std::string id, parent, majmin;
    if (!(fields >> id >> parent >> majmin) || majmin != dev) continue;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream rest(line.substr(sep + 3));
    std::string type;
    if (rest >> type) return type;
  }
  return "unknown";
}

}  // namespace

int SendWithDescriptor(int fd, std::string_view data, int pass_fd) {
  while (!data.empty()) {
    iovec iov = {const_cast<char*>(data.data()), data.size()};
    msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (pass_fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    pass_fd = -1;  // it went with the first bytes sent
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

Status CheckFreezePath(const std::string& path, uint32_t major_number, uint32_t minor_number,
                       const std::string& device_path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return Status::InvalidArgument("--freeze " + path + " does not exist");
    }
    return Status::InvalidArgument("--freeze " + path + ": " + ErrnoText(err));
  }
  if (major(st.st_dev) == major_number && minor(st.st_dev) == minor_number) return Status::Ok();
  return Status::InvalidArgument(
      "--freeze " + path + " is on device " + std::to_string(major(st.st_dev)) + ":" +
      std::to_string(minor(st.st_dev)) + ", not on " + device_path + " (" +
      std::to_string(major_number) + ":" + std::to_string(minor_number) +
      "); pass the mount point of the filesystem on --device");
}

Result<std::unique_ptr<FsFreezer>> FsFreezer::Start(const Options& options) {
  if (options.mount_path.empty()) {
    return Status::InvalidArgument("FsFreezer: no mount path given");
  }
  if (options.hard_limit_ms <= 0) {
    return Status::InvalidArgument("FsFreezer " + options.mount_path + ": hard limit " +
                                   std::to_string(options.hard_limit_ms) + " ms: must be positive");
  }
  // The destructor cleans up whatever the steps below got to.
  std::unique_ptr<FsFreezer> freezer(new FsFreezer());
  freezer->options_ = options;
  const std::string& path = options.mount_path;

  // Only noted, not held open: the filesystem must stay unmountable while the agent runs.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return Status::FromErrno(errno, "stat " + path + " to freeze it");
  }
  freezer->fs_dev_ = st.st_dev;

  std::string exe = options.watchdog_exe;
  if (exe.empty()) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
      return Status::FromErrno(errno, "readlink /proc/self/exe (to find the thaw watchdog)");
    }
    std::string dir(self, static_cast<size_t>(n));
    dir.resize(dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
    exe = dir + "/" + kWatchdogName;
  }
  if (access(exe.c_str(), X_OK) != 0) {
    return Status::FailedPrecondition("thaw watchdog " + exe + " is missing or not executable (" +
                                      ErrnoText(errno) + "); install " + kWatchdogName +
                                      " next to cdp-agent before using --freeze");
  }

  int sockets[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) {
    return Status::FromErrno(errno, "socketpair for the thaw watchdog");
  }
  freezer->pipe_fd_ = sockets[0];
  int child_end = sockets[1];
  // A copy above fd 3, so that the dup2 below is never dup2(3, 3), which would keep CLOEXEC.
  int child_cmd = fcntl(child_end, F_DUPFD_CLOEXEC, kWatchdogCommandFd + 1);
  const int dup_errno = errno;
  CloseFd(&child_end);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&actions, child_cmd, kWatchdogCommandFd);
  // The agent blocks SIGTERM/SIGINT for sigwait and ignores SIGPIPE; start the watchdog clean.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::string arg_mount = "--mount";
  char* argv[] = {exe.data(), arg_mount.data(), const_cast<char*>(path.c_str()), nullptr};
  int rc = child_cmd < 0
               ? dup_errno
               : posix_spawn(&freezer->watchdog_pid_, exe.c_str(), &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  CloseFd(&child_cmd);
  if (rc != 0) {
    freezer->watchdog_pid_ = -1;
    return Status::FromErrno(rc, "starting thaw watchdog " + exe);
  }

  // Wait for "R\n": the watchdog ignores the signals it must and reads commands.
  std::string got;
  const int64_t deadline = MonotonicMs() + kReadyTimeoutMs;
  while (got.find('\n') == std::string::npos) {
    const int64_t left = deadline - MonotonicMs();
    pollfd pfd = {freezer->pipe_fd_, POLLIN, 0};
    int ready = left > 0 ? poll(&pfd, 1, static_cast<int>(left)) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      const pid_t pid = freezer->watchdog_pid_;
      freezer->watchdog_pid_ = -1;
      ReapChild(pid, 0);
      return Status::TimedOut("thaw watchdog " + exe + " (pid " + std::to_string(pid) +
                              ") did not report ready within " +
                              std::to_string(kReadyTimeoutMs / 1000) + " s; killed it");
    }
    char buf[16];
    ssize_t n = ready < 0 ? -1 : read(freezer->pipe_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const pid_t pid = freezer->watchdog_pid_;
      freezer->watchdog_pid_ = -1;
      CloseFd(&freezer->pipe_fd_);
      std::optional<int> status = ReapChild(pid, kReapTimeoutMs);
      return Status::Unavailable("thaw watchdog " + exe + " (pid " + std::to_string(pid) + ") " +
                                 (status ? DescribeWaitStatus(*status) : std::string("exited")) +
                                 " before it was ready; see its messages above");
    }
    got.append(buf, static_cast<size_t>(n));
  }
  if (got != "R\n") {
    return Status::ProtocolMismatch("thaw watchdog " + exe + " said '" +
                                    got.substr(0, got.find('\n')) + "' instead of 'R'");
  }
  return freezer;
}

FsFreezer::~FsFreezer() {
  if (frozen_) {
    Status s = Thaw();
    if (!s.ok()) CDP_LOG(warning) << "closing the freezer of " << options_.mount_path << ": " << s;
  }
  CloseFd(&pipe_fd_);  // the watchdog sees EOF and exits
  if (watchdog_pid_ > 0) {
    std::optional<int> status = ReapChild(watchdog_pid_, kReapTimeoutMs);
    if (status && !(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)) {
      CDP_LOG(warning) << "thaw watchdog of " << options_.mount_path << " (pid " << watchdog_pid_
                       << ") " << DescribeWaitStatus(*status);
    }
  }
  CloseFd(&frozen_fd_);
}

Status FsFreezer::CheckMounted() const {
  const std::string& path = options_.mount_path;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return NotHeld(path, fs_dev_, path + " does not exist any more");
    }
    return Status::FromErrno(err, "stat " + path);
  }
  if (st.st_dev == fs_dev_) return Status::Ok();
  return NotHeldByDevice(path, fs_dev_, st.st_dev);
}

Result<int> FsFreezer::OpenChecked(const std::string& purpose) const {
  const std::string& path = options_.mount_path;
  // O_NONBLOCK only so that a FIFO cannot hang us here; FIFREEZE works on any fd of the fs.
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    CDP_RETURN_IF_ERROR(CheckMounted());  // gone meanwhile: say so in its words
    return Status::FromErrno(err, "opening " + path + " to " + purpose);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return Status::FromErrno(err, "fstat " + path);
  }
  if (st.st_dev != fs_dev_) {
    close(fd);
    return NotHeldByDevice(path, fs_dev_, st.st_dev);
  }
  return fd;
}

Status FsFreezer::SyncFs() {
  CDP_ASSIGN_OR_RETURN(int fd, OpenChecked("write it back"));
  const int rc = ::syncfs(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(err, "syncfs " + options_.mount_path);
  return Status::Ok();
}

Status FsFreezer::Freeze(int hard_limit_ms) {
  const std::string& path = options_.mount_path;
  if (frozen_) return Status::FailedPrecondition(path + " is already frozen by this agent");
  CDP_ASSIGN_OR_RETURN(int fd, OpenChecked("freeze it"));
  const int64_t deadline = MonotonicMs() + hard_limit_ms;
  // The watchdog gets its own descriptor of the filesystem before the freeze, so that it can
  // thaw it whatever becomes of us.
  if (pipe_fd_ < 0 ||
      SendWithDescriptor(pipe_fd_, "F " + std::to_string(deadline) + "\n", fd) != 0) {
    close(fd);
    return Status::Unavailable("thaw watchdog (pid " + std::to_string(watchdog_pid_) + ") is gone" +
                               PeekExit(watchdog_pid_) + "; not freezing " + path);
  }
  if (ioctl(fd, FIFREEZE, 0) == 0) {
    frozen_fd_ = fd;
    frozen_ = true;
    limit_ms_ = hard_limit_ms;
    return Status::Ok();
  }
  const int err = errno;
  // Not frozen by us: disarm. If the watchdog died meanwhile there is nothing to disarm.
  (void)SendAll(pipe_fd_, "T\n");
  const std::string fs_type = err == EOPNOTSUPP ? FsTypeOf(fd) : "";
  close(fd);
  switch (err) {
    case EBUSY:
      return Status::FailedPrecondition(path + " is already frozen (by someone else)");
    case EOPNOTSUPP:
      return Status::NotSupported("cannot freeze " + path + ": its filesystem (" + fs_type +
                                  ") does not support FIFREEZE");
    case EPERM:
      return Status::FromErrno(err, "FIFREEZE " + path + " (needs root or CAP_SYS_ADMIN)");
    default:
      return Status::FromErrno(err, "FIFREEZE " + path);
  }
}

Status FsFreezer::ExtendHold(int hard_limit_ms) {
  const std::string& path = options_.mount_path;
  if (!frozen_) return Status::FailedPrecondition(path + " is not frozen by this agent");
  if (SendAll(pipe_fd_, "E " + std::to_string(MonotonicMs() + hard_limit_ms) + "\n") != 0) {
    return Status::Unavailable("thaw watchdog (pid " + std::to_string(watchdog_pid_) + ") is gone" +
                               PeekExit(watchdog_pid_) + "; thaw " + path + " now");
  }
  limit_ms_ = hard_limit_ms;
  return Status::Ok();
}

Status FsFreezer::Thaw() {
  const std::string& path = options_.mount_path;
  if (!frozen_) return Status::FailedPrecondition(path + " is not frozen by this agent");
  if (ioctl(frozen_fd_, FITHAW, 0) != 0) {
    const int err = errno;
    if (err != EINVAL) {
      // Still frozen as far as we know: stay armed so the watchdog thaws it at the hard limit.
      return Status::FromErrno(err, "FITHAW " + path + " (the watchdog thaws it within " +
                                        std::to_string(limit_ms_) + " ms)");
    }
    frozen_ = false;
    CloseFd(&frozen_fd_);
    (void)SendAll(pipe_fd_, "T\n");  // in case someone else thawed it and the watchdog is armed
    return Status::Aborted("freeze of " + path + " was cut short by the watchdog (hard limit " +
                           std::to_string(limit_ms_) + " ms): writes may have landed during it");
  }
  frozen_ = false;
  CloseFd(&frozen_fd_);
  if (int err = SendAll(pipe_fd_, "T\n"); err != 0) {
    CDP_LOG(warning) << "thawed " << path << " but the thaw watchdog (pid " << watchdog_pid_
                     << ") is gone" << PeekExit(watchdog_pid_) << ": " << ErrnoText(err)
                     << "; the next freeze will fail";
  }
  return Status::Ok();
}

// --- the watchdog process ------------------------------------------------------------------------

namespace {

// A descriptor received from the agent, with the line it belongs to: the one holding the byte at
// `position` of the watchdog's buffer of unread bytes (the last byte of the read that carried
// it — a read stops at the message that carried a descriptor, and the agent sends each "F" line
// in one message with its descriptor).
struct ReceivedFd {
  size_t position;
  int fd;
};

// The watchdog's state: armed with a deadline and a descriptor of the frozen filesystem between
// "F" and "T".
struct WatchdogState {
  std::string mount_path;
  pid_t agent_pid;
  bool armed = false;
  int64_t deadline_ms = 0;
  int fs_fd = -1;  // while armed: the filesystem the agent freezes
  // Messages noticed while armed; written only once disarmed (see the rule at the top).
  std::vector<std::string> deferred;

  void Note(std::string message) {
    if (armed) {
      if (deferred.size() < 16) deferred.push_back(std::move(message));
    } else {
      CDP_LOG(warning) << message;
    }
  }

  // Closes the filesystem's descriptor (it must not keep the filesystem mounted) and writes
  // what was deferred.
  void Disarm() {
    armed = false;
    CloseFd(&fs_fd);
    for (const std::string& m : deferred) CDP_LOG(warning) << m;
    deferred.clear();
  }

  // FITHAW now, then say why. EINVAL means it was not frozen (the agent got there first).
  void ThawNow(const std::string& why) {
    const int rc = ioctl(fs_fd, FITHAW, 0);
    const int err = errno;
    Disarm();
    if (rc == 0) {
      CDP_LOG(warning) << why;
    } else if (err == EINVAL) {
      CDP_LOG(info) << mount_path << " was no longer frozen when the watchdog went to thaw it";
    } else {
      CDP_LOG(error) << "FITHAW " << mount_path << " failed: " << ErrnoText(err)
                     << "; thaw it by hand: fsfreeze -u " << mount_path;
    }
  }

  // Runs one line; `fds` are the descriptors that came with it (taken over: kept or closed).
  void Execute(std::string_view line, std::vector<int> fds) {
    auto close_all = [&fds] {
      for (int& fd : fds) CloseFd(&fd);
    };
    if (line == "T") {
      close_all();
      Disarm();
      return;
    }
    if (line.size() > 2 && line[0] == 'E' && line[1] == ' ' && fds.empty()) {
      int64_t deadline = 0;
      const char* end = line.data() + line.size();
      auto [p, ec] = std::from_chars(line.data() + 2, end, deadline);
      if (ec == std::errc() && p == end) {
        if (armed) deadline_ms = deadline;  // not armed: the freeze it was for is over
        return;
      }
    }
    if (line.size() > 2 && line[0] == 'F' && line[1] == ' ') {
      int64_t deadline = 0;
      const char* end = line.data() + line.size();
      auto [p, ec] = std::from_chars(line.data() + 2, end, deadline);
      if (ec == std::errc() && p == end && fds.size() == 1) {
        CloseFd(&fs_fd);  // an "F" without a "T" in between: the newer freeze counts
        fs_fd = fds[0];
        armed = true;
        deadline_ms = deadline;
        return;
      }
    }
    close_all();
    Note("ignoring command '" + std::string(line) + "' with " + std::to_string(fds.size()) +
         " descriptor(s) from the agent (pid " + std::to_string(agent_pid) +
         "): unknown, or an F without exactly one descriptor");
  }
};

// Reads what is there on the non-blocking socket `fd` into *pending, and the descriptors that
// came with it into *fds. Returns 0 when it would block, -1 at EOF, else an errno value.
int ReadAvailable(int fd, std::string* pending, std::vector<ReceivedFd>* fds) {
  for (;;) {
    char buf[512];
    iovec iov = {buf, sizeof(buf)};
    msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
    }
    pending->append(buf, static_cast<size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        // With no bytes (cannot happen on a stream socket) it goes with the next line.
        fds->push_back({pending->empty() ? 0 : pending->size() - 1, received});
      }
    }
    if (n == 0) return -1;
  }
}

}  // namespace

int RunThawWatchdog(int command_fd, const std::string& mount_path) {
  // A signal to the agent's process group must not remove the watchdog before the agent.
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) signal(sig, SIG_IGN);
  if (fcntl(command_fd, F_GETFD) < 0) {
    CDP_LOG(error) << "started without its command socket on fd " << command_fd << " (for "
                   << mount_path << "); it is started by cdp-agent, not by hand";
    return 2;
  }
  const int flags = fcntl(command_fd, F_GETFL);
  if (flags < 0 || fcntl(command_fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    CDP_LOG(error) << "fcntl O_NONBLOCK on the command socket: " << ErrnoText(errno);
    return 2;
  }
  WatchdogState state{mount_path, getppid()};
  if (int err = SendAll(command_fd, "R\n"); err != 0) {
    CDP_LOG(error) << "cannot report ready to the agent (pid " << state.agent_pid
                   << "): " << ErrnoText(err);
    return 1;
  }

  std::string pending;
  std::vector<ReceivedFd> fds;  // positions in `pending`, ascending
  for (;;) {
    int timeout = -1;
    if (state.armed) {
      const int64_t left = state.deadline_ms - MonotonicMs();
      timeout = left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
    }
    pollfd pfd = {command_fd, POLLIN, 0};
    if (poll(&pfd, 1, timeout) < 0 && errno != EINTR) {
      state.ThawNow("thawed " + mount_path + " after poll failed: " + ErrnoText(errno));
      return 1;
    }
    // Read everything there is, even on a timeout: a "T" (or a fresh "F") that is already
    // queued must win over a deadline that passed while we were not scheduled.
    const int got = ReadAvailable(command_fd, &pending, &fds);
    const bool eof = got != 0;
    const int read_error = got > 0 ? got : 0;
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::vector<int> line_fds;
      while (!fds.empty() && fds.front().position <= nl) {
        line_fds.push_back(fds.front().fd);
        fds.erase(fds.begin());
      }
      state.Execute(std::string_view(pending).substr(start, nl - start), std::move(line_fds));
    }
    pending.erase(0, start);
    for (ReceivedFd& r : fds) r.position -= start;
    if (pending.size() > kMaxLineBytes) {
      state.Note("dropping " + std::to_string(pending.size()) + " bytes and " +
                 std::to_string(fds.size()) + " descriptor(s) without a newline from the agent");
      pending.clear();
      for (ReceivedFd& r : fds) CloseFd(&r.fd);
      fds.clear();
    }

    if (eof) {
      if (state.armed) {
        state.ThawNow("agent (pid " + std::to_string(state.agent_pid) + ") exited while " +
                      mount_path + " was frozen; thawed");
      }
      for (ReceivedFd& r : fds) CloseFd(&r.fd);
      if (read_error != 0) {
        CDP_LOG(error) << "reading commands from the agent: " << ErrnoText(read_error);
        return 1;
      }
      return 0;
    }
    if (state.armed && MonotonicMs() >= state.deadline_ms) {
      state.ThawNow("thawed " + mount_path + ": the agent (pid " + std::to_string(state.agent_pid) +
                    ") held it frozen past its limit; its consistency point is reported aborted");
    }
  }
}

}  // namespace cdp::agent
