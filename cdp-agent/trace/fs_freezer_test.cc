// Tests of FsFreezer and the cdp-thaw-watchdog process: path checks and start-up errors run
// anywhere; freezing runs as root on a fresh ext4 filesystem on a loop device (64 MiB sparse
// file), which the fixture removes again even when a test fails. The watchdog executable is the
// one built next to this test (or $CDP_THAW_WATCHDOG).
//
// Waits are generous upper bounds polled in small steps; no test asserts that something is fast.
// A write to a frozen filesystem sleeps uninterruptibly until the thaw, so writers are child
// processes that are watched (never `timeout`, which would hang waiting for them).
#include "cdp/agent/fs_freezer.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::agent {
namespace {

using ::testing::HasSubstr;

// Upper bounds for things that must happen "soon"; far above what they take.
constexpr int kSoonMs = 10000;
// How long a writer must stay blocked to count as held by a freeze.
constexpr int kStillBlockedMs = 1000;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string WatchdogExe() {
  if (const char* env = std::getenv("CDP_THAW_WATCHDOG")) return env;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "cdp-thaw-watchdog";
  std::string dir(self, static_cast<size_t>(n));
  return dir.substr(0, dir.rfind('/')) + "/cdp-thaw-watchdog";
}

#define REQUIRE_WATCHDOG_BUILT()                                             \
  ASSERT_EQ(access(WatchdogExe().c_str(), X_OK), 0)                          \
      << WatchdogExe() << " is missing: build the cdp-thaw-watchdog target " \
      << "(or set CDP_THAW_WATCHDOG)"

FsFreezer::Options OptionsFor(const std::string& path, int hard_limit_ms) {
  FsFreezer::Options options;
  options.mount_path = path;
  options.hard_limit_ms = hard_limit_ms;
  options.watchdog_exe = WatchdogExe();
  return options;
}

// Waits up to timeout_ms for our child `pid` to exit; its wait status, or nullopt if still
// running (then it is not reaped).
std::optional<int> WaitForChild(pid_t pid, int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (NowMs() >= deadline) return std::nullopt;
    usleep(10000);
  }
}

// Waits up to timeout_ms until `pid` has exited, without reaping it (it may not be our child).
bool WaitUntilExited(pid_t pid, int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    siginfo_t info = {};
    if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) {
      return true;
    }
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    if (NowMs() >= deadline) return false;
    usleep(10000);
  }
}

// "Sig*" masks in /proc/PID/status are hex bitmaps, bit (signal - 1).
uint64_t IgnoredSignals(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigIgn:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  }
  return 0;
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The descriptors, working directory and root of process `pid` that are `path` or under it, as
// "fd 4 -> /tmp/x/mnt" (empty when none).
std::vector<std::string> HeldUnder(pid_t pid, const std::string& path) {
  std::vector<std::string> held;
  const std::string proc = "/proc/" + std::to_string(pid);
  std::vector<std::pair<std::string, std::string>> links = {{"cwd", proc + "/cwd"},
                                                            {"root", proc + "/root"}};
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(proc + "/fd", ec)) {
    links.emplace_back("fd " + entry.path().filename().string(), entry.path().string());
  }
  for (const auto& [what, link] : links) {
    std::string target = std::filesystem::read_symlink(link, ec).string();
    if (!ec && (target == path || target.rfind(path + "/", 0) == 0)) {
      held.push_back(what + " -> " + target);
    }
  }
  return held;
}

// HeldUnder once it is empty (descriptors are closed a moment after the command that ends
// their use), or as it is after kSoonMs.
std::vector<std::string> HeldUnderOnceReleased(pid_t pid, const std::string& path) {
  const int64_t deadline = NowMs() + kSoonMs;
  std::vector<std::string> held = HeldUnder(pid, path);
  while (!held.empty() && NowMs() < deadline) {
    usleep(10000);
    held = HeldUnder(pid, path);
  }
  return held;
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs a shell command; its exit status (-1 if it could not run), stdout trimmed into *out.
int Sh(const std::string& command, std::string* out = nullptr) {
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return -1;
  std::string text;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, n);
  int status = pclose(p);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (out != nullptr) *out = text;
  return status < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Empty when this process can make, mount and freeze a loop filesystem; else what is missing.
std::string MissingPrerequisite() {
  if (geteuid() != 0) return "not running as root";
  for (const char* tool : {"losetup", "mkfs.ext4", "mount", "umount", "fsfreeze"}) {
    if (Sh(std::string("command -v ") + tool + " >/dev/null 2>&1") != 0) {
      return std::string(tool) + " not found (util-linux, e2fsprogs)";
    }
  }
  if (access("/dev/loop-control", R_OK | W_OK) != 0) return "no /dev/loop-control";
  return "";
}

#define SKIP_OR_FAIL_WITHOUT(missing)                                                        \
  do {                                                                                       \
    if (!(missing).empty()) {                                                                \
      if (std::getenv("CI") != nullptr) {                                                    \
        FAIL() << "freeze test needs root, a loop device, mkfs.ext4 and mount (CI is set): " \
               << (missing);                                                                 \
      }                                                                                      \
      GTEST_SKIP() << "freeze test skipped: " << (missing);                                  \
    }                                                                                        \
  } while (0)

// An ext4 filesystem on a loop device over a sparse file, mounted on a temp dir. The destructor
// undoes every step that was done, ignoring errors: thaw, unmount, detach, remove.
class LoopFilesystem {
 public:
  LoopFilesystem() : dir_("fs_freezer_test") {}
  ~LoopFilesystem() {
    if (mounted_) {
      Sh("fsfreeze -u " + Quote(mount_path()) + " >/dev/null 2>&1");
      bool unmounted = false;
      for (int i = 0; i < 50 && !unmounted; ++i) {
        unmounted = Sh("umount " + Quote(mount_path()) + " 2>/dev/null") == 0;
        if (!unmounted) usleep(100000);
      }
      if (!unmounted) Sh("umount -l " + Quote(mount_path()));
    }
    if (!loop_.empty()) Sh("losetup -d " + Quote(loop_));
  }

  // Empty on success; else what failed.
  std::string Create() {
    if (!dir_.ok()) return "cannot create a temp dir";
    const std::string image = dir_.File("fs.img");
    int fd = open(image.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, 64 << 20) != 0) return "cannot create " + image;
    close(fd);
    if (Sh("losetup -f --show " + Quote(image), &loop_) != 0 || loop_.empty()) {
      loop_.clear();
      return "losetup -f --show " + image + " failed";
    }
    if (Sh("mkfs.ext4 -q -E nodiscard " + Quote(loop_) + " >/dev/null 2>&1") != 0) {
      return "mkfs.ext4 " + loop_ + " failed";
    }
    if (mkdir(mount_path().c_str(), 0755) != 0) return "mkdir " + mount_path() + " failed";
    if (Sh("mount " + Quote(loop_) + " " + Quote(mount_path())) != 0) {
      return "mount " + loop_ + " " + mount_path() + " failed";
    }
    mounted_ = true;
    struct stat st;
    if (stat(loop_.c_str(), &st) != 0) return "stat " + loop_ + " failed";
    major_ = major(st.st_rdev);
    minor_ = minor(st.st_rdev);
    return "";
  }

  // umount / mount again of the same filesystem; the exit status of the command.
  int Unmount() {
    const int rc = Sh("umount " + Quote(mount_path()) + " 2>&1");
    if (rc == 0) mounted_ = false;
    return rc;
  }
  int Mount() {
    const int rc = Sh("mount " + Quote(loop_) + " " + Quote(mount_path()));
    if (rc == 0) mounted_ = true;
    return rc;
  }

  std::string mount_path() const { return dir_.File("mnt"); }
  const std::string& loop_device() const { return loop_; }
  uint32_t major_number() const { return major_; }
  uint32_t minor_number() const { return minor_; }

 private:
  cdp::testing::TempDir dir_;  // destroyed last: after the unmount
  std::string loop_;
  bool mounted_ = false;
  uint32_t major_ = 0, minor_ = 0;
};

// Tests that freeze a real filesystem. Child processes the test starts are killed and reaped
// in TearDown, after a thaw, even when the test failed halfway.
class FsFreezerOnLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_OR_FAIL_WITHOUT(MissingPrerequisite());
    REQUIRE_WATCHDOG_BUILT();
    fs_ = std::make_unique<LoopFilesystem>();
    const std::string failed = fs_->Create();
    SKIP_OR_FAIL_WITHOUT(failed);
    mnt_ = fs_->mount_path();
  }

  void TearDown() override {
    if (fs_ != nullptr) Sh("fsfreeze -u " + Quote(mnt_) + " >/dev/null 2>&1");
    for (pid_t pid : children_) {
      kill(pid, SIGKILL);
      WaitForChild(pid, kSoonMs);
    }
    for (pid_t pid : others_) {
      kill(pid, SIGKILL);
      if (!WaitForChild(pid, kSoonMs)) WaitUntilExited(pid, kSoonMs);  // ours if reparented
    }
    fs_.reset();
  }

  // Starts a child process that creates mnt_/NAME, writes "x\n" to it and fsyncs it; it exits
  // 0 once all of that is done (which blocks while the filesystem is frozen).
  pid_t StartWriter(const std::string& name) {
    const std::string path = mnt_ + "/" + name;
    pid_t pid = fork();
    if (pid == 0) {
      close_range(3, ~0U, 0);  // not the freezer's socket: the watchdog must see its EOF
      int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
      bool ok = fd >= 0 && write(fd, "x\n", 2) == 2 && fsync(fd) == 0;
      _exit(ok ? 0 : 1);
    }
    if (pid > 0) children_.push_back(pid);
    return pid;
  }

  // Waits for a child started here; its wait status or nullopt if it is still running.
  std::optional<int> WaitFor(pid_t pid, int timeout_ms) {
    std::optional<int> status = WaitForChild(pid, timeout_ms);
    if (status) std::erase(children_, pid);
    return status;
  }

  // Expects the writer to finish with success within kSoonMs, and its file to hold "x\n".
  void ExpectWriterFinishes(pid_t writer, const std::string& name) {
    std::optional<int> status = WaitFor(writer, kSoonMs);
    ASSERT_TRUE(status.has_value()) << "the write to " << name << " is still blocked";
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
    EXPECT_EQ(ReadFileText(mnt_ + "/" + name), "x\n");
  }

  std::unique_ptr<LoopFilesystem> fs_;
  std::string mnt_;
  std::vector<pid_t> children_;  // ours: killed and reaped in TearDown
  std::vector<pid_t> others_;    // not ours (e.g. an orphaned watchdog): killed in TearDown
};

// --- anywhere ------------------------------------------------------------------------------------

TEST(CheckFreezePath, AcceptsAnyPathOnTheFilesystem) {
  cdp::testing::TempDir dir("fs_freezer_test");
  ASSERT_TRUE(dir.ok());
  ASSERT_EQ(mkdir(dir.File("sub").c_str(), 0755), 0);
  struct stat st;
  ASSERT_EQ(stat(dir.path().c_str(), &st), 0);
  // Not only the mount root: FIFREEZE acts on the filesystem of whatever path it is given.
  for (const std::string& path : {dir.path(), dir.File("sub")}) {
    Status s = CheckFreezePath(path, major(st.st_dev), minor(st.st_dev), "/dev/sdz1");
    EXPECT_TRUE(s.ok()) << path << ": " << s;
  }
}

TEST(CheckFreezePath, NamesBothDevicesWhenThePathIsElsewhere) {
  struct stat st;
  ASSERT_EQ(stat("/tmp", &st), 0);
  const uint32_t other_minor = minor(st.st_dev) + 1;
  Status s = CheckFreezePath("/tmp", major(st.st_dev), other_minor, "/dev/sdz1");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "--freeze /tmp is on device " + std::to_string(major(st.st_dev)) + ":" +
                             std::to_string(minor(st.st_dev)) + ", not on /dev/sdz1 (" +
                             std::to_string(major(st.st_dev)) + ":" + std::to_string(other_minor) +
                             "); pass the mount point of the filesystem on --device");
}

TEST(CheckFreezePath, SaysWhenThePathDoesNotExist) {
  Status s = CheckFreezePath("/nonexistent/cdp-mnt", 7, 0, "/dev/loop0");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "--freeze /nonexistent/cdp-mnt does not exist");
}

TEST(FsFreezer, StartNamesAMissingWatchdogExecutable) {
  cdp::testing::TempDir dir("fs_freezer_test");
  FsFreezer::Options options = OptionsFor(dir.path(), 400);
  options.watchdog_exe = dir.File("no-such-watchdog");
  auto freezer = FsFreezer::Start(options);
  ASSERT_FALSE(freezer.ok());
  EXPECT_EQ(freezer.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(freezer.status().message(),
              HasSubstr("thaw watchdog " + dir.File("no-such-watchdog") + " is missing"));
}

TEST(FsFreezer, StartNamesAMissingMountPath) {
  auto freezer = FsFreezer::Start(OptionsFor("/nonexistent/cdp-mnt", 400));
  ASSERT_FALSE(freezer.ok());
  EXPECT_EQ(freezer.status().code(), StatusCode::kIOError);
  EXPECT_THAT(freezer.status().message(), HasSubstr("stat /nonexistent/cdp-mnt to freeze it"));
}

TEST(FsFreezer, StartRejectsANonPositiveHardLimit) {
  auto freezer = FsFreezer::Start(OptionsFor("/tmp", 0));
  ASSERT_FALSE(freezer.ok());
  EXPECT_EQ(freezer.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(freezer.status().message(), HasSubstr("hard limit 0 ms"));
}

TEST(FsFreezer, StartReportsHowAWatchdogThatDiedAtStartEnded) {
  FsFreezer::Options options = OptionsFor("/tmp", 400);
  options.watchdog_exe = "/bin/false";
  auto freezer = FsFreezer::Start(options);
  ASSERT_FALSE(freezer.ok());
  EXPECT_EQ(freezer.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(freezer.status().message(), HasSubstr("thaw watchdog /bin/false (pid "));
  EXPECT_THAT(freezer.status().message(), HasSubstr(") exited with status 1 before it was ready"));
}

TEST(FsFreezer, StartFindsTheWatchdogNextToTheExecutable) {
  REQUIRE_WATCHDOG_BUILT();
  if (std::getenv("CDP_THAW_WATCHDOG") != nullptr) GTEST_SKIP() << "CDP_THAW_WATCHDOG is set";
  cdp::testing::TempDir dir("fs_freezer_test");
  FsFreezer::Options options = OptionsFor(dir.path(), 400);
  options.watchdog_exe.clear();
  auto freezer = FsFreezer::Start(options);
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  EXPECT_GT((*freezer)->watchdog_pid(), 0);
  EXPECT_FALSE((*freezer)->frozen());
}

TEST(FsFreezer, WatchdogIgnoresGroupSignalsAndIsReapedOnDestruction) {
  REQUIRE_WATCHDOG_BUILT();
  cdp::testing::TempDir dir("fs_freezer_test");
  auto started = FsFreezer::Start(OptionsFor(dir.path(), 400));
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<FsFreezer> freezer = std::move(*started);
  const pid_t pid = freezer->watchdog_pid();
  // Start returns after the watchdog's "ready", which it sends after setting these.
  const uint64_t ignored = IgnoredSignals(pid);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) {
    EXPECT_TRUE(ignored & (uint64_t{1} << (sig - 1))) << "signal " << sig << " is not ignored";
  }
  freezer.reset();
  errno = 0;
  EXPECT_EQ(kill(pid, 0), -1) << "watchdog " << pid << " is still there (or a zombie)";
  EXPECT_EQ(errno, ESRCH);
}

TEST(FsFreezer, ThawWithoutFreezeIsAPreconditionError) {
  REQUIRE_WATCHDOG_BUILT();
  cdp::testing::TempDir dir("fs_freezer_test");
  auto freezer = FsFreezer::Start(OptionsFor(dir.path(), 400));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  Status s = (*freezer)->Thaw();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), dir.path() + " is not frozen by this agent");
}

TEST(FsFreezer, FreezeRefusesWhenTheWatchdogIsGone) {
  REQUIRE_WATCHDOG_BUILT();
  cdp::testing::TempDir dir("fs_freezer_test");
  auto freezer = FsFreezer::Start(OptionsFor(dir.path(), 400));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  const pid_t pid = (*freezer)->watchdog_pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_TRUE(WaitUntilExited(pid, kSoonMs));
  Status s = (*freezer)->Freeze();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "thaw watchdog (pid " + std::to_string(pid) +
                             ") is gone (was killed by signal 9); not freezing " + dir.path());
  EXPECT_FALSE((*freezer)->frozen());
}

TEST(FsFreezer, FreezeNamesAFilesystemThatCannotFreeze) {
  REQUIRE_WATCHDOG_BUILT();
  if (geteuid() != 0) {
    if (std::getenv("CI") != nullptr) FAIL() << "needs root (CI is set)";
    GTEST_SKIP() << "needs root: FIFREEZE checks CAP_SYS_ADMIN first";
  }
  auto freezer = FsFreezer::Start(OptionsFor("/proc", 400));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  Status s = (*freezer)->Freeze();
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_EQ(s.message(), "cannot freeze /proc: its filesystem (proc) does not support FIFREEZE");
  EXPECT_FALSE((*freezer)->frozen());
}

// --- on a loop filesystem (root) -----------------------------------------------------------------

TEST_F(FsFreezerOnLoopTest, CheckFreezePathMatchesTheLoopDevice) {
  ASSERT_EQ(mkdir((mnt_ + "/sub").c_str(), 0755), 0);
  for (const std::string& path : {mnt_, mnt_ + "/sub"}) {
    Status s = CheckFreezePath(path, fs_->major_number(), fs_->minor_number(), fs_->loop_device());
    EXPECT_TRUE(s.ok()) << path << ": " << s;
  }
  struct stat st;
  ASSERT_EQ(stat("/tmp", &st), 0);
  Status s = CheckFreezePath("/tmp", fs_->major_number(), fs_->minor_number(), fs_->loop_device());
  EXPECT_EQ(s.message(), "--freeze /tmp is on device " + std::to_string(major(st.st_dev)) + ":" +
                             std::to_string(minor(st.st_dev)) + ", not on " + fs_->loop_device() +
                             " (" + std::to_string(fs_->major_number()) + ":" +
                             std::to_string(fs_->minor_number()) +
                             "); pass the mount point of the filesystem on --device");
}

TEST_F(FsFreezerOnLoopTest, FreezeBlocksWritesUntilThaw) {
  auto freezer = FsFreezer::Start(OptionsFor(mnt_, 60000));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  ASSERT_TRUE((*freezer)->Freeze().ok());
  EXPECT_TRUE((*freezer)->frozen());
  pid_t writer = StartWriter("f");
  ASSERT_GT(writer, 0);
  EXPECT_FALSE(WaitFor(writer, kStillBlockedMs).has_value()) << "a write got through the freeze";

  Status s = (*freezer)->Thaw();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_FALSE((*freezer)->frozen());
  ExpectWriterFinishes(writer, "f");
}

// Issue 15 item 13: the freezer and its watchdog hold the filesystem only during a freeze, so it
// can be unmounted while they run; an unmounted (or covered) mount point is reported, nothing is
// frozen, and freezing works again once the filesystem is back.
TEST_F(FsFreezerOnLoopTest, HoldsTheFilesystemOnlyDuringAFreezeSoItCanBeUnmounted) {
  auto started = FsFreezer::Start(OptionsFor(mnt_, 60000));
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<FsFreezer> freezer = std::move(*started);
  const pid_t watchdog = freezer->watchdog_pid();
  EXPECT_TRUE(freezer->CheckMounted().ok());
  EXPECT_TRUE(freezer->SyncFs().ok());

  ASSERT_TRUE(freezer->Freeze().ok());
  // While frozen both hold it: the watchdog must be able to thaw, and it cannot be unmounted.
  EXPECT_THAT(HeldUnder(getpid(), mnt_), ::testing::SizeIs(1));
  for (int i = 0; i < 100 && HeldUnder(watchdog, mnt_).empty(); ++i) usleep(10000);
  EXPECT_THAT(HeldUnder(watchdog, mnt_), ::testing::SizeIs(1)) << "the watchdog has no descriptor";
  EXPECT_NE(fs_->Unmount(), 0) << "a frozen filesystem was unmounted";
  ASSERT_TRUE(freezer->Thaw().ok());
  EXPECT_THAT(HeldUnder(getpid(), mnt_), ::testing::IsEmpty());
  EXPECT_THAT(HeldUnderOnceReleased(watchdog, mnt_), ::testing::IsEmpty())
      << "the watchdog kept it open";

  ASSERT_EQ(fs_->Unmount(), 0) << "umount " << mnt_ << " with the freezer running";
  struct stat parent;
  ASSERT_EQ(stat(mnt_.c_str(), &parent), 0);
  const std::string expected =
      mnt_ + " no longer holds the filesystem of device " + std::to_string(fs_->major_number()) +
      ":" + std::to_string(fs_->minor_number()) + " (" + mnt_ + " is now on device " +
      std::to_string(major(parent.st_dev)) + ":" + std::to_string(minor(parent.st_dev)) +
      ": unmounted, or another filesystem mounted there)";
  Status s = freezer->CheckMounted();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), expected);
  s = freezer->SyncFs();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  s = freezer->Freeze();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), expected);
  EXPECT_FALSE(freezer->frozen());

  // Another filesystem over the mount point is not ours either.
  ASSERT_EQ(Sh("mount -t tmpfs cdp-test-tmpfs " + Quote(mnt_)), 0);
  s = freezer->Freeze();
  Sh("umount " + Quote(mnt_));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(" no longer holds the filesystem of device "));

  ASSERT_EQ(fs_->Mount(), 0);
  EXPECT_TRUE(freezer->CheckMounted().ok());
  ASSERT_TRUE(freezer->Freeze().ok());
  pid_t writer = StartWriter("f");
  EXPECT_FALSE(WaitFor(writer, kStillBlockedMs).has_value()) << "a write got through the freeze";
  EXPECT_TRUE(freezer->Thaw().ok());
  ExpectWriterFinishes(writer, "f");
}

TEST_F(FsFreezerOnLoopTest, DestructorThawsAndReapsTheWatchdog) {
  auto started = FsFreezer::Start(OptionsFor(mnt_, 60000));
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<FsFreezer> freezer = std::move(*started);
  const pid_t watchdog = freezer->watchdog_pid();
  ASSERT_TRUE(freezer->Freeze().ok());
  pid_t writer = StartWriter("f");
  EXPECT_FALSE(WaitFor(writer, kStillBlockedMs).has_value()) << "a write got through the freeze";

  freezer.reset();
  ExpectWriterFinishes(writer, "f");
  errno = 0;
  EXPECT_EQ(kill(watchdog, 0), -1) << "watchdog " << watchdog << " is still there";
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(FsFreezerOnLoopTest, SecondFreezerSeesAlreadyFrozenAndThawsNothing) {
  auto first = FsFreezer::Start(OptionsFor(mnt_, 60000));
  ASSERT_TRUE(first.ok()) << first.status();
  // A short limit: had the failed Freeze left this watchdog armed, it would thaw in 300 ms.
  auto second = FsFreezer::Start(OptionsFor(mnt_, 300));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE((*first)->Freeze().ok());

  Status s = (*second)->Freeze();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), mnt_ + " is already frozen (by someone else)");
  EXPECT_FALSE((*second)->frozen());

  pid_t writer = StartWriter("f");
  EXPECT_FALSE(WaitFor(writer, 3 * kStillBlockedMs).has_value())
      << "the filesystem was thawed after the refused freeze";
  s = (*first)->Thaw();
  EXPECT_TRUE(s.ok()) << s;
  ExpectWriterFinishes(writer, "f");
}

TEST_F(FsFreezerOnLoopTest, WatchdogThawsAtTheHardLimitAndThawReportsAborted) {
  auto freezer = FsFreezer::Start(OptionsFor(mnt_, 300));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  // Twice: after thawing on its own the watchdog must arm again for the next freeze.
  for (const char* name : {"f1", "f2"}) {
    SCOPED_TRACE(name);
    ASSERT_TRUE((*freezer)->Freeze().ok());
    pid_t writer = StartWriter(name);
    ExpectWriterFinishes(writer, name);  // nobody thaws but the watchdog

    Status s = (*freezer)->Thaw();
    EXPECT_EQ(s.code(), StatusCode::kAborted);
    EXPECT_THAT(s.message(), HasSubstr("freeze of " + mnt_ + " was cut short by the watchdog"));
    EXPECT_FALSE((*freezer)->frozen());
  }
}

// Issue 17, item 4: a held freeze (the cutover's quiesce) is armed with its own limit and its
// lease renewed (ExtendHold, the watchdog's "E" line); past the renewed limit the watchdog thaws.
TEST_F(FsFreezerOnLoopTest, AHeldFreezeHasItsOwnLimitAndItsLeaseIsRenewed) {
  auto freezer = FsFreezer::Start(OptionsFor(mnt_, 300));
  ASSERT_TRUE(freezer.ok()) << freezer.status();
  EXPECT_EQ((*freezer)->ExtendHold(1000).code(), StatusCode::kFailedPrecondition)
      << "nothing frozen: nothing to extend";
  ASSERT_TRUE((*freezer)->Freeze(2 * kStillBlockedMs).ok());
  pid_t writer = StartWriter("held");
  EXPECT_FALSE(WaitFor(writer, kStillBlockedMs).has_value())
      << "the watchdog thawed at Options::hard_limit_ms, not at the held freeze's limit";
  ASSERT_TRUE((*freezer)->ExtendHold(3 * kStillBlockedMs).ok());
  EXPECT_FALSE(WaitFor(writer, 2 * kStillBlockedMs).has_value())
      << "the watchdog thawed at the first limit despite the renewal";
  ExpectWriterFinishes(writer, "held");  // past the renewed limit: the watchdog thaws
  Status s = (*freezer)->Thaw();
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s;
}

TEST_F(FsFreezerOnLoopTest, WatchdogThawsAndExitsWhenTheAgentIsKilled) {
  // The killed agent's watchdog is reparented to us, so that we can see how it exits.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct ResetSubreaper {
    ~ResetSubreaper() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } reset_subreaper;

  int report[2];
  ASSERT_EQ(pipe2(report, O_CLOEXEC), 0);
  const FsFreezer::Options options = OptionsFor(mnt_, 60000);
  pid_t agent = fork();
  ASSERT_GE(agent, 0);
  if (agent == 0) {
    // The "agent": freeze with a limit the test never reaches, report, wait to be killed.
    close(report[0]);
    std::string line;
    auto freezer = FsFreezer::Start(options);
    if (!freezer.ok()) {
      line = "E " + freezer.status().ToString();
    } else if (Status s = (*freezer)->Freeze(); !s.ok()) {
      line = "E " + s.ToString();
    } else {
      line = "P " + std::to_string((*freezer)->watchdog_pid());
    }
    line += "\n";
    if (write(report[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(1);
    if (line[0] == 'P') {
      for (;;) pause();
    }
    _exit(1);
  }
  children_.push_back(agent);
  close(report[1]);
  pollfd pfd = {report[0], POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, kSoonMs), 1) << "the agent child did not report";
  char buf[512];
  ssize_t n = read(report[0], buf, sizeof(buf));
  close(report[0]);
  ASSERT_GT(n, 0);
  const std::string line(buf, static_cast<size_t>(n));
  ASSERT_EQ(line.substr(0, 2), "P ") << line;
  const pid_t watchdog = std::stoi(line.substr(2));
  ASSERT_GT(watchdog, 0);
  others_.push_back(watchdog);

  pid_t writer = StartWriter("f");
  EXPECT_FALSE(WaitFor(writer, kStillBlockedMs).has_value()) << "a write got through the freeze";
  ASSERT_EQ(kill(agent, SIGKILL), 0);
  std::optional<int> agent_status = WaitFor(agent, kSoonMs);
  ASSERT_TRUE(agent_status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*agent_status));

  ExpectWriterFinishes(writer, "f");  // long before the 60 s limit: the watchdog saw EOF
  std::optional<int> watchdog_status = WaitForChild(watchdog, kSoonMs);
  ASSERT_TRUE(watchdog_status.has_value()) << "watchdog " << watchdog << " did not exit";
  std::erase(others_, watchdog);
  EXPECT_TRUE(WIFEXITED(*watchdog_status) && WEXITSTATUS(*watchdog_status) == 0)
      << "wait status " << *watchdog_status;
}

// RunThawWatchdog directly (in a child process): commands split across reads with the descriptor
// on any piece of its "F" line, unknown commands and an "F" without a descriptor ignored, "T"
// disarms (and closes the descriptor), and a passed deadline thaws.
TEST_F(FsFreezerOnLoopTest, RunThawWatchdogReassemblesSplitCommandsAndIgnoresUnknownOnes) {
  int mount_fd = open(mnt_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(mount_fd, 0);
  struct CloseMount {
    int fd;
    ~CloseMount() { close(fd); }
  } close_mount{mount_fd};
  int sockets[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets), 0);
  pid_t watchdog = fork();
  ASSERT_GE(watchdog, 0);
  if (watchdog == 0) {
    close(sockets[0]);
    close(mount_fd);  // it has only what the "agent" passes
    _exit(RunThawWatchdog(sockets[1], mnt_));
  }
  children_.push_back(watchdog);
  close(sockets[1]);
  const int agent = sockets[0];
  auto send_piece = [&](const std::string& piece, bool with_fd = false) {
    EXPECT_EQ(SendWithDescriptor(agent, piece, with_fd ? mount_fd : -1), 0);
    usleep(20000);  // gives the watchdog a chance to read each piece on its own
  };
  char ready[2];
  ASSERT_EQ(read(agent, ready, 2), 2);
  EXPECT_EQ(std::string(ready, 2), "R\n");

  // Armed with a 300 ms limit, then disarmed by a split "T": our own freeze must survive.
  // An "F" without a descriptor (the second) arms nothing.
  std::string deadline = std::to_string(NowMs() + 300);
  send_piece("HELLO\nF ");
  send_piece(deadline.substr(0, 3), /*with_fd=*/true);
  send_piece(deadline.substr(3) + "\nF not-a-number\n");
  ASSERT_EQ(ioctl(mount_fd, FIFREEZE, 0), 0);
  send_piece("T");
  send_piece("\nF " + std::to_string(NowMs() + 300) + "\n");
  pid_t writer = StartWriter("f1");
  EXPECT_FALSE(WaitFor(writer, 3 * kStillBlockedMs).has_value())
      << "the watchdog thawed after it was disarmed";
  EXPECT_EQ(ioctl(mount_fd, FITHAW, 0), 0) << "the filesystem was no longer frozen";
  ExpectWriterFinishes(writer, "f1");
  EXPECT_THAT(HeldUnderOnceReleased(watchdog, mnt_), ::testing::IsEmpty()) << "kept after T";

  // Armed by a split "F", never disarmed: the watchdog thaws at the deadline.
  deadline = std::to_string(NowMs() + 300);
  send_piece("F");
  send_piece(" " + deadline.substr(0, 5));
  send_piece(deadline.substr(5) + "\n", /*with_fd=*/true);
  ASSERT_EQ(ioctl(mount_fd, FIFREEZE, 0), 0);
  writer = StartWriter("f2");
  ExpectWriterFinishes(writer, "f2");
  errno = 0;
  EXPECT_EQ(ioctl(mount_fd, FITHAW, 0), -1);
  EXPECT_EQ(errno, EINVAL) << "the watchdog did not thaw";
  EXPECT_THAT(HeldUnderOnceReleased(watchdog, mnt_), ::testing::IsEmpty()) << "kept after its thaw";

  close(agent);  // EOF: the watchdog exits 0
  std::optional<int> status = WaitFor(watchdog, kSoonMs);
  ASSERT_TRUE(status.has_value()) << "the watchdog did not exit on EOF";
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "wait status " << *status;
}

}  // namespace
}  // namespace cdp::agent
