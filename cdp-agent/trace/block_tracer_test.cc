// Tests of BlockTracer: the line parser on canned lines of several kernels, and the tracer on
// real loop devices (root, losetup and tracefs needed: skipped without them, failed under CI).
#include "cdp/agent/block_tracer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cdp/core/testing/temp_dir.h"

namespace cdp::agent {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// --- ParseBlockRqCompleteLine ------------------------------------------------------------------

TracedDevice WholeLoop0() {
  TracedDevice dev;
  dev.path = "/dev/loop0";
  dev.name = "loop0";
  dev.major = dev.disk_major = 7;
  dev.minor = dev.disk_minor = 0;
  dev.disk_name = "loop0";
  dev.size_bytes = 64 * kMiB;
  return dev;
}

// loop0p1: sectors [2048, 2048 + 40960) of loop0.
TracedDevice Loop0p1() {
  TracedDevice dev = WholeLoop0();
  dev.path = "/dev/loop0p1";
  dev.name = "loop0p1";
  dev.major = 259;
  dev.minor = 0;
  dev.start_sector = 2048;
  dev.size_bytes = 40960 * 512;
  return dev;
}

// A line as this kernel (6.18, with ioprio) prints it.
std::string NewLine(const std::string& body) {
  return "     ksoftirqd/1-22      [001] ..s..  9518.407185: block_rq_complete: " + body;
}

::testing::AssertionResult Parses(const std::string& line, const TracedDevice& dev, uint64_t offset,
                                  uint64_t length) {
  BlockEvent event;
  if (!ParseBlockRqCompleteLine(line, dev, &event)) {
    return ::testing::AssertionFailure() << "not accepted: " << line;
  }
  if (event.offset != offset || event.length != length) {
    return ::testing::AssertionFailure()
           << "parsed [" << event.offset << ", +" << event.length << "), expected [" << offset
           << ", +" << length << ") from: " << line;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Rejected(const std::string& line, const TracedDevice& dev) {
  BlockEvent event;
  if (ParseBlockRqCompleteLine(line, dev, &event)) {
    return ::testing::AssertionFailure()
           << "accepted as [" << event.offset << ", +" << event.length << "): " << line;
  }
  return ::testing::AssertionSuccess();
}

TEST(ParseBlockRqCompleteLine, NewKernelWrite) {
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 40 + 8 be,0,4 [0]"), WholeLoop0(), 40 * 512, 8 * 512));
  EXPECT_TRUE(Parses(NewLine("7,0 W () 0 + 1 none,0,0 [0]"), WholeLoop0(), 0, 512));
}

TEST(ParseBlockRqCompleteLine, OldKernelLayouts) {
  // 4.x/5.x: no ioprio; irq-info flags of four characters.
  EXPECT_TRUE(
      Parses("              dd-2411  [000] d.h1   123.456789: block_rq_complete: 7,0 WS "
             "() 2048 + 256 [0]",
             WholeLoop0(), 2048 * 512, 256 * 512));
  // Without irq-info and context-info columns.
  EXPECT_TRUE(
      Parses(" 123.456789: block_rq_complete: 7,0 W () 8 + 8 [0]", WholeLoop0(), 4096, 4096));
  // Passthrough command dumped in the parentheses (old kernels), with spaces in it.
  EXPECT_TRUE(
      Parses(NewLine("7,0 W (2a 00 00 00 00 08 00 00 08 00) 8 + 8 [0]"), WholeLoop0(), 4096, 4096));
  // Nothing after the count.
  EXPECT_TRUE(Parses(NewLine("7,0 W () 8 + 8"), WholeLoop0(), 4096, 4096));
}

TEST(ParseBlockRqCompleteLine, WriteFlagsAndPreflush) {
  EXPECT_TRUE(Parses(NewLine("7,0 FWS () 16 + 8 be,0,4 [0]"), WholeLoop0(), 16 * 512, 4096));
  EXPECT_TRUE(Parses(NewLine("7,0 WFS () 16 + 8 be,0,4 [0]"), WholeLoop0(), 16 * 512, 4096));
  EXPECT_TRUE(Parses(NewLine("7,0 FWFSM () 16 + 8 be,0,4 [0]"), WholeLoop0(), 16 * 512, 4096));
  EXPECT_TRUE(Parses(NewLine("7,0 WM () 16 + 8 be,0,4 [0]"), WholeLoop0(), 16 * 512, 4096));
}

TEST(ParseBlockRqCompleteLine, DiscardAndSecureErase) {
  EXPECT_TRUE(Parses(NewLine("7,0 DS () 2048 + 128 be,0,4 [0]"), WholeLoop0(), kMiB, 65536));
  EXPECT_TRUE(Parses(NewLine("7,0 D () 2048 + 128 [0]"), WholeLoop0(), kMiB, 65536));
  EXPECT_TRUE(Parses(NewLine("7,0 DE () 2048 + 128 [0]"), WholeLoop0(), kMiB, 65536));
}

TEST(ParseBlockRqCompleteLine, WriteZeroes) {
  EXPECT_TRUE(Parses(NewLine("7,0 NS () 4096 + 128 be,0,4 [0]"), WholeLoop0(), 2 * kMiB, 65536));
  EXPECT_TRUE(Parses(NewLine("7,0 N () 4096 + 128 [0]"), WholeLoop0(), 2 * kMiB, 65536));
}

TEST(ParseBlockRqCompleteLine, FailedWriteIsStillReported) {
  // Part of a failed write may have reached the media: over-reporting is the safe side.
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 40 + 8 be,0,4 [-5]"), WholeLoop0(), 40 * 512, 4096));
}

TEST(ParseBlockRqCompleteLine, ReadsAndFlushesRejected) {
  for (const char* rwbs : {"R", "RS", "RA", "RM", "RSM", "FR", "F", "FF", "FFS", "FS"}) {
    EXPECT_TRUE(
        Rejected(NewLine(std::string("7,0 ") + rwbs + " () 40 + 8 be,0,4 [0]"), WholeLoop0()))
        << rwbs;
  }
}

TEST(ParseBlockRqCompleteLine, OtherDevicesRejected) {
  EXPECT_TRUE(Rejected(NewLine("7,1 WS () 40 + 8 be,0,4 [0]"), WholeLoop0()));
  EXPECT_TRUE(Rejected(NewLine("8,0 WS () 40 + 8 be,0,4 [0]"), WholeLoop0()));
  EXPECT_TRUE(Rejected(NewLine("70,0 WS () 40 + 8 be,0,4 [0]"), WholeLoop0()));
  // Requests carry the whole disk's number, never the partition's.
  EXPECT_TRUE(Rejected(NewLine("259,0 WS () 2100 + 8 be,0,4 [0]"), Loop0p1()));
}

TEST(ParseBlockRqCompleteLine, OtherEventsRejected) {
  EXPECT_TRUE(
      Rejected("     dd-1 [000] .....  1.0: block_rq_issue: 7,0 WS 4096 () 40 + 8 be,0,4 "
               "[dd]",
               WholeLoop0()));
  EXPECT_TRUE(
      Rejected("     dd-1 [000] .....  1.0: block_rq_insert: 7,0 WS 4096 () 40 + 8 "
               "be,0,4 [dd]",
               WholeLoop0()));
  EXPECT_TRUE(Rejected("CPU:1 [LOST 123 EVENTS]", WholeLoop0()));
}

TEST(ParseBlockRqCompleteLine, PartitionOffsets) {
  const TracedDevice p1 = Loop0p1();
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 2048 + 8 be,0,4 [0]"), p1, 0, 4096));
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 2064 + 8 be,0,4 [0]"), p1, 16 * 512, 4096));
  // Last sector of the partition.
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 43007 + 1 be,0,4 [0]"), p1, 40959 * 512, 512));
  // Outside it, on either side, and just touching its ends.
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 40 + 8 be,0,4 [0]"), p1));
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 2040 + 8 be,0,4 [0]"), p1));
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 43008 + 8 be,0,4 [0]"), p1));
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 81920 + 8 be,0,4 [0]"), p1));
}

TEST(ParseBlockRqCompleteLine, PartitionClipping) {
  const TracedDevice p1 = Loop0p1();
  // A request merged across the partition's start or end is clipped to the partition.
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 2040 + 16 be,0,4 [0]"), p1, 0, 8 * 512));
  EXPECT_TRUE(Parses(NewLine("7,0 WS () 43000 + 16 be,0,4 [0]"), p1, 40952 * 512, 8 * 512));
  EXPECT_TRUE(Parses(NewLine("7,0 DS () 0 + 131072 be,0,4 [0]"), p1, 0, 40960 * 512));
  // And a whole disk to its size.
  EXPECT_TRUE(
      Parses(NewLine("7,0 WS () 131064 + 16 be,0,4 [0]"), WholeLoop0(), 131064 * 512, 8 * 512));
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 131072 + 16 be,0,4 [0]"), WholeLoop0()));
}

TEST(ParseBlockRqCompleteLine, ZeroLengthRejected) {
  EXPECT_TRUE(Rejected(NewLine("7,0 WS () 40 + 0 be,0,4 [0]"), WholeLoop0()));
  // Passthrough requests are traced with sector 0 and no length.
  EXPECT_TRUE(Rejected(NewLine("7,0 N () 0 + 0 none,0,0 [0]"), WholeLoop0()));
  EXPECT_TRUE(Rejected(NewLine("7,0 FWS () 0 + 0 be,0,4 [0]"), WholeLoop0()));
}

TEST(ParseBlockRqCompleteLine, MalformedRejected) {
  const TracedDevice dev = WholeLoop0();
  for (const char* body : {
           "",
           "7,0",
           "7,0 ",
           "7,0 WS",
           "7,0 WS ",
           "7,0 WS () ",
           "7,0 WS () 40",
           "7,0 WS () 40 +",
           "7,0 WS () 40 + ",
           "7,0 WS () 40 + x",
           "7,0 WS () 40 +8",
           "7,0 WS () 40+8",
           "7,0 WS (40 + 8",
           "7,0 WS 40 + 8 [0]",
           "7,0  WS () 40 + 8 [0]",
           "7;0 WS () 40 + 8 [0]",
           ",0 WS () 40 + 8 [0]",
           "7, WS () 40 + 8 [0]",
           "7,0 WS () -40 + 8 [0]",
           "7,0 WS () 40 + 8x [0]",
           "7,0 WS () 99999999999999999999999 + 8 [0]",
           "7,0 WS () 18446744073709551615 + 8 [0]",
           "7,0 WS () 40 + 99999999999999999999999 [0]",
       }) {
    EXPECT_TRUE(Rejected(NewLine(body), dev)) << "'" << body << "'";
  }
  EXPECT_TRUE(Rejected("block_rq_complete: 7,0 WS () 40 + 8 [0]", dev));  // no timestamp part
  EXPECT_TRUE(Rejected("garbage", dev));
  EXPECT_TRUE(Rejected("", dev));
}

// --- ResolveTracedDevice and option checks (no root needed) --------------------------------------

TEST(ResolveTracedDevice, MissingPath) {
  Result<TracedDevice> dev = ResolveTracedDevice("/nonexistent/cdp-disk");
  ASSERT_FALSE(dev.ok());
  EXPECT_EQ(dev.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(dev.status().message(), "--device /nonexistent/cdp-disk does not exist");
}

TEST(ResolveTracedDevice, NotABlockDevice) {
  for (const char* path : {"/dev/null", "/"}) {
    Result<TracedDevice> dev = ResolveTracedDevice(path);
    ASSERT_FALSE(dev.ok()) << path;
    EXPECT_EQ(dev.status().code(), StatusCode::kInvalidArgument) << path;
    EXPECT_EQ(dev.status().message(), std::string("--device ") + path + " is not a block device");
  }
}

// Finds a bio-based disk on this machine (zram, brd, device-mapper, md): a block device node in
// /dev whose /sys/block entry has no mq/ directory.
std::string FindBioBasedDevice() {
  for (const char* name : {"zram0", "ram0", "dm-0", "md0", "md127"}) {
    struct stat st;
    std::string node = std::string("/dev/") + name;
    std::string mq = std::string("/sys/block/") + name + "/mq";
    if (stat(node.c_str(), &st) == 0 && S_ISBLK(st.st_mode) &&
        stat((std::string("/sys/block/") + name).c_str(), &st) == 0 && stat(mq.c_str(), &st) != 0) {
      return node;
    }
  }
  return "";
}

TEST(ResolveTracedDevice, BioBasedRefused) {
  const std::string node = FindBioBasedDevice();
  if (node.empty()) GTEST_SKIP() << "no bio-based block device (zram, brd, dm, md) here";
  Result<TracedDevice> dev = ResolveTracedDevice(node);
  ASSERT_FALSE(dev.ok());
  EXPECT_EQ(dev.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(dev.status().message().find("--device " + node), std::string::npos);
  EXPECT_NE(dev.status().message().find("is bio-based"), std::string::npos);
  EXPECT_NE(dev.status().message().find("protect the underlying disks"), std::string::npos);
}

TEST(BlockTracerOptions, BadInstanceNameAndBuffer) {
  for (const char* name : {"", ".", "..", "a/b"}) {
    BlockTracer::Options options;
    options.instance_name = name;
    Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(WholeLoop0(), options);
    ASSERT_FALSE(tracer.ok()) << name;
    EXPECT_EQ(tracer.status().code(), StatusCode::kInvalidArgument) << name;
  }
  BlockTracer::Options options;
  options.instance_name = "cdp-test";
  options.buffer_kb = 0;
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(WholeLoop0(), options);
  ASSERT_FALSE(tracer.ok());
  EXPECT_EQ(tracer.status().code(), StatusCode::kInvalidArgument);
}

TEST(BlockTracerOptions, TracefsRootThatIsNotTracefs) {
  cdp::testing::TempDir dir("block_tracer_test");
  ASSERT_TRUE(dir.ok());
  BlockTracer::Options options;
  options.tracefs_root = dir.path();
  options.instance_name = "cdp-test";
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(WholeLoop0(), options);
  ASSERT_FALSE(tracer.ok());
  EXPECT_EQ(tracer.status().code(), StatusCode::kNotSupported);
  EXPECT_NE(tracer.status().message().find(dir.path()), std::string::npos)
      << tracer.status().message();
  Result<std::unique_ptr<BlockTracer>> resumed = BlockTracer::Resume(WholeLoop0(), options);
  ASSERT_FALSE(resumed.ok());
  EXPECT_NE(resumed.status().message().find(dir.path()), std::string::npos);
}

// --- kernel tests --------------------------------------------------------------------------------

std::string TracefsRoot() {
  struct stat st;
  for (const char* root : {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}) {
    if (stat((std::string(root) + "/instances").c_str(), &st) == 0) return root;
  }
  return "";
}

// Empty when this process can run the kernel tests; else what is missing.
std::string MissingPrerequisite() {
  if (geteuid() != 0) return "not running as root";
  if (system("losetup --version >/dev/null 2>&1") != 0) return "losetup (util-linux) not found";
  if (TracefsRoot().empty()) {
    return "tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)";
  }
  if (access("/dev/loop-control", R_OK | W_OK) != 0) return "no /dev/loop-control";
  return "";
}

#define REQUIRE_KERNEL_ENVIRONMENT()                                                      \
  do {                                                                                    \
    const std::string missing = MissingPrerequisite();                                    \
    if (!missing.empty()) {                                                               \
      if (getenv("CI") != nullptr) {                                                      \
        FAIL() << "kernel test needs root, losetup and tracefs (CI is set): " << missing; \
      }                                                                                   \
      GTEST_SKIP() << "kernel test skipped: " << missing;                                 \
    }                                                                                     \
  } while (0)

// Runs a shell command; returns its stdout (trimmed) and sets *ok.
std::string Run(const std::string& command, bool* ok) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    *ok = false;
    return out;
  }
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *ok = pclose(p) == 0;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// A loop device over a file, detached on destruction (also when an assertion failed).
class LoopDevice {
 public:
  // Attaches `file`; with `partitions`, the kernel scans its partition table (losetup -P).
  LoopDevice(const std::string& file, bool partitions) {
    bool ok = false;
    std::string out = Run(
        std::string("losetup ") + (partitions ? "-P " : "") + "-f --show '" + file + "' 2>&1", &ok);
    if (ok && out.rfind("/dev/loop", 0) == 0) {
      path_ = out;
    } else {
      error_ = out;
    }
  }
  ~LoopDevice() {
    if (path_.empty()) return;
    bool ok = false;
    std::string out = Run("losetup -d '" + path_ + "' 2>&1", &ok);
    if (!ok) ADD_FAILURE() << "losetup -d " << path_ << ": " << out;
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }

 private:
  std::string path_;
  std::string error_;
};

// Removes a tracefs instance on destruction, whatever the test left behind.
class InstanceGuard {
 public:
  explicit InstanceGuard(std::string name)
      : name_(std::move(name)), path_(TracefsRoot() + "/instances/" + name_) {}
  ~InstanceGuard() {
    struct stat st;
    if (stat(path_.c_str(), &st) != 0) return;
    for (int i = 0; i < 100 && rmdir(path_.c_str()) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (stat(path_.c_str(), &st) == 0) ADD_FAILURE() << "cannot remove " << path_;
  }
  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }
  bool Exists() const {
    struct stat st;
    return stat(path_.c_str(), &st) == 0;
  }

 private:
  std::string name_;
  std::string path_;
};

std::string UniqueInstanceName(const std::string& test) {
  return "cdp-test-" + std::to_string(getpid()) + "-" + test;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

bool WriteFile(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  close(fd);
  return ok;
}

// O_DIRECT I/O on a block device, so every call is one request completed before it returns.
class DirectIo {
 public:
  explicit DirectIo(const std::string& path) {
    fd_ = open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (posix_memalign(&buf_, 4096, kMaxIo) != 0) buf_ = nullptr;
    if (buf_ != nullptr) memset(buf_, 0xab, kMaxIo);
  }
  ~DirectIo() {
    if (fd_ >= 0) close(fd_);
    free(buf_);
  }
  bool ok() const { return fd_ >= 0 && buf_ != nullptr; }

  ::testing::AssertionResult Write(uint64_t offset, uint64_t length) {
    if (length > kMaxIo) return ::testing::AssertionFailure() << "write too long";
    ssize_t n = pwrite(fd_, buf_, length, static_cast<off_t>(offset));
    if (n != static_cast<ssize_t>(length)) {
      return ::testing::AssertionFailure() << "pwrite at " << offset << ": " << strerror(errno);
    }
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Read(uint64_t offset, uint64_t length) {
    if (length > kMaxIo) return ::testing::AssertionFailure() << "read too long";
    ssize_t n = pread(fd_, buf_, length, static_cast<off_t>(offset));
    if (n != static_cast<ssize_t>(length)) {
      return ::testing::AssertionFailure() << "pread at " << offset << ": " << strerror(errno);
    }
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Ioctl(unsigned long request, const char* name, uint64_t offset,
                                   uint64_t length) {
    uint64_t range[2] = {offset, length};
    if (ioctl(fd_, request, range) != 0) {
      return ::testing::AssertionFailure() << name << " at " << offset << ": " << strerror(errno);
    }
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Discard(uint64_t offset, uint64_t length) {
    return Ioctl(BLKDISCARD, "BLKDISCARD", offset, length);
  }
  ::testing::AssertionResult ZeroOut(uint64_t offset, uint64_t length) {
    return Ioctl(BLKZEROOUT, "BLKZEROOUT", offset, length);
  }

 private:
  static constexpr size_t kMaxIo = 1024 * 1024;
  int fd_ = -1;
  void* buf_ = nullptr;
};

struct Extent {
  uint64_t offset, end;
  bool operator==(const Extent& o) const { return offset == o.offset && end == o.end; }
};

std::ostream& operator<<(std::ostream& os, const Extent& e) {
  return os << "[" << e.offset << ", " << e.end << ")";
}

// Collects events and reports them as sorted, merged extents (how requests were split or
// which operation zeroing used is the kernel's business; the bytes covered are not).
class Collector {
 public:
  BlockTracer::Sink sink() {
    return [this](const BlockEvent& e) { events_.push_back(e); };
  }
  std::vector<Extent> Merged() const {
    std::vector<Extent> extents;
    for (const BlockEvent& e : events_) extents.push_back({e.offset, e.offset + e.length});
    std::sort(extents.begin(), extents.end(),
              [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
    std::vector<Extent> merged;
    for (const Extent& e : extents) {
      if (!merged.empty() && e.offset <= merged.back().end) {
        merged.back().end = std::max(merged.back().end, e.end);
      } else {
        merged.push_back(e);
      }
    }
    return merged;
  }
  size_t size() const { return events_.size(); }
  void Clear() { events_.clear(); }

 private:
  std::vector<BlockEvent> events_;
};

// A sparse file of `size` bytes in `dir`.
std::string SparseFile(const cdp::testing::TempDir& dir, const std::string& name, uint64_t size) {
  std::string path = dir.File(name);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return "";
  bool ok = ftruncate(fd, static_cast<off_t>(size)) == 0;
  close(fd);
  return ok ? path : "";
}

// Writes an MBR with one Linux partition of `sectors` sectors at `start` (sfdisk may be absent).
bool WriteMbr(const std::string& path, uint32_t start, uint32_t sectors) {
  unsigned char mbr[512] = {};
  unsigned char* entry = mbr + 446;
  entry[0] = 0x00;                                    // not bootable
  entry[1] = 0xfe, entry[2] = 0xff, entry[3] = 0xff;  // CHS: use LBA
  entry[4] = 0x83;                                    // Linux
  entry[5] = 0xfe, entry[6] = 0xff, entry[7] = 0xff;
  for (int i = 0; i < 4; ++i) {
    entry[8 + i] = static_cast<unsigned char>(start >> (8 * i));
    entry[12 + i] = static_cast<unsigned char>(sectors >> (8 * i));
  }
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pwrite(fd, mbr, sizeof(mbr), 0) == static_cast<ssize_t>(sizeof(mbr));
  close(fd);
  return ok;
}

// Makes sure `loop` has partition 1 at [start, start + sectors): kernels built without the MBR
// parser (CONFIG_MSDOS_PARTITION) ignore the table, so then it is added with BLKPG, as
// addpart(8) does.
::testing::AssertionResult EnsurePartition(const std::string& loop, uint32_t start,
                                           uint32_t sectors) {
  const std::string name = loop.substr(loop.rfind('/') + 1);
  struct stat st;
  if (stat(("/sys/block/" + name + "/" + name + "p1").c_str(), &st) == 0) {
    return ::testing::AssertionSuccess();
  }
  int fd = open(loop.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ::testing::AssertionFailure() << "open " << loop << ": " << strerror(errno);
  struct blkpg_partition part = {};
  part.start = static_cast<long long>(start) * 512;
  part.length = static_cast<long long>(sectors) * 512;
  part.pno = 1;
  struct blkpg_ioctl_arg arg = {};
  arg.op = BLKPG_ADD_PARTITION;
  arg.datalen = sizeof(part);
  arg.data = &part;
  int rc = ioctl(fd, BLKPG, &arg);
  int err = errno;
  close(fd);
  if (rc != 0) {
    return ::testing::AssertionFailure()
           << "BLKPG_ADD_PARTITION on " << loop << ": " << strerror(err);
  }
  return ::testing::AssertionSuccess();
}

// Everything a kernel test needs: a temp dir, a loop device over a sparse file, the resolved
// device, tracer options with a unique instance name, and guards that clean all of it up.
class KernelTest : public ::testing::Test {
 protected:
  void Attach(uint64_t size, bool with_partition) {
    ASSERT_TRUE(dir_.ok());
    image_ = SparseFile(dir_, "disk.img", size);
    ASSERT_FALSE(image_.empty());
    if (with_partition) {
      ASSERT_TRUE(WriteMbr(image_, kPartStart, kPartSectors));
    }
    loop_ = std::make_unique<LoopDevice>(image_, with_partition);
    ASSERT_TRUE(loop_->ok()) << "losetup: " << loop_->error();
    if (with_partition) {
      ASSERT_TRUE(EnsurePartition(loop_->path(), kPartStart, kPartSectors));
    }
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    instance_ = std::make_unique<InstanceGuard>(UniqueInstanceName(name));
    options_.instance_name = instance_->name();
  }

  // Resolves `path`, waiting a little for a partition node to appear.
  void Resolve(const std::string& path, TracedDevice* dev) {
    struct stat st;
    for (int i = 0; i < 200 && stat(path.c_str(), &st) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Result<TracedDevice> resolved = ResolveTracedDevice(path);
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    *dev = *resolved;
  }

  static constexpr uint32_t kPartStart = 2048;
  static constexpr uint32_t kPartSectors = 40960;

  cdp::testing::TempDir dir_{"block_tracer_test"};
  std::string image_;
  // Destroyed in reverse order: the instance guard first, then the loop device.
  std::unique_ptr<LoopDevice> loop_;
  std::unique_ptr<InstanceGuard> instance_;
  BlockTracer::Options options_;
};

TEST_F(KernelTest, ResolvesWholeLoopDevice) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  struct stat st;
  ASSERT_EQ(stat(loop_->path().c_str(), &st), 0);
  EXPECT_EQ(dev.path, loop_->path());
  EXPECT_EQ("/dev/" + dev.name, loop_->path());
  EXPECT_EQ(dev.disk_name, dev.name);
  EXPECT_EQ(dev.major, major(st.st_rdev));
  EXPECT_EQ(dev.minor, minor(st.st_rdev));
  EXPECT_EQ(dev.disk_major, dev.major);
  EXPECT_EQ(dev.disk_minor, dev.minor);
  EXPECT_EQ(dev.start_sector, 0u);
  EXPECT_EQ(dev.size_bytes, 64 * kMiB);
  EXPECT_EQ(dev.logical_block_size, 512u);
}

TEST_F(KernelTest, WritesDiscardsAndZeroingAreReportedReadsAreNot) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  EXPECT_EQ((*tracer)->instance_path(), instance_->path());
  EXPECT_EQ(ReadFile(instance_->path() + "/events/block/block_rq_complete/filter"),
            "dev == " + std::to_string((uint64_t{dev.disk_major} << 20) | dev.disk_minor) +
                " && (rwbs ~ \"*W*\" || rwbs ~ \"*D*\" || rwbs ~ \"*N*\")");

  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  ASSERT_TRUE(io.Write(20480, 4096));
  ASSERT_TRUE(io.Write(8 * kMiB, 65536));
  ASSERT_TRUE(io.Discard(1 * kMiB, 65536));
  ASSERT_TRUE(io.ZeroOut(2 * kMiB, 65536));
  ASSERT_TRUE(io.Read(0, 65536));
  ASSERT_TRUE(io.Read(16 * kMiB, 65536));

  // Every I/O above has completed, so one Drain sees all of it (the FIFREEZE guarantee).
  EXPECT_TRUE((*tracer)->HasPending());
  Collector got;
  Result<size_t> n = (*tracer)->Drain(got.sink());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, got.size());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{20480, 24576},
                                               {1 * kMiB, 1 * kMiB + 65536},
                                               {2 * kMiB, 2 * kMiB + 65536},
                                               {8 * kMiB, 8 * kMiB + 65536}}));
  EXPECT_FALSE((*tracer)->HasPending());

  Result<uint64_t> lost = (*tracer)->LostEvents();
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ(*lost, 0u);
  Result<bool> enabled = (*tracer)->StillEnabled();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_TRUE(*enabled);

  ASSERT_TRUE((*tracer)->Remove().ok());
  EXPECT_FALSE(instance_->Exists());
  EXPECT_TRUE((*tracer)->Remove().ok());  // idempotent
}

TEST_F(KernelTest, PollWaitsForAWrite) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();

  Collector got;
  Result<size_t> none = (*tracer)->Poll(0, got.sink());
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, 0u);

  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(io.Write(12288, 8192));
  });
  size_t total = 0;
  for (int i = 0; i < 50 && got.size() == 0; ++i) {
    Result<size_t> n = (*tracer)->Poll(200, got.sink());
    ASSERT_TRUE(n.ok()) << n.status();
    total += *n;
  }
  writer.join();
  EXPECT_EQ(total, got.size());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{12288, 20480}}));

  // The destructor removes the instance.
  tracer->reset();
  EXPECT_FALSE(instance_->Exists());
}

TEST_F(KernelTest, PartitionEventsAreRelativeToThePartition) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, true));
  TracedDevice part;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path() + "p1", &part));
  TracedDevice disk;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &disk));
  EXPECT_EQ(part.name, disk.name + "p1");
  EXPECT_EQ(part.disk_name, disk.name);
  EXPECT_EQ(part.disk_major, disk.major);
  EXPECT_EQ(part.disk_minor, disk.minor);
  EXPECT_FALSE(part.major == disk.major && part.minor == disk.minor);
  EXPECT_EQ(part.start_sector, kPartStart);
  EXPECT_EQ(part.size_bytes, uint64_t{kPartSectors} * 512);

  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(part, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  const std::string filter = ReadFile(instance_->path() + "/events/block/block_rq_complete/filter");
  EXPECT_NE(filter.find(" && sector < " + std::to_string(kPartStart + kPartSectors)),
            std::string::npos)
      << filter;

  {
    DirectIo p1(part.path);
    ASSERT_TRUE(p1.ok());
    ASSERT_TRUE(p1.Write(8192, 4096));
    ASSERT_TRUE(p1.Write(part.size_bytes - 4096, 4096));  // its last block
    ASSERT_TRUE(p1.Discard(4 * kMiB, 65536));
  }
  {
    DirectIo whole(disk.path);
    ASSERT_TRUE(whole.ok());
    ASSERT_TRUE(whole.Write(4096, 4096));        // between the MBR and p1
    ASSERT_TRUE(whole.Write(40 * kMiB, 65536));  // past p1's end
    // Through the whole disk but inside p1: this changes p1, so it is reported.
    ASSERT_TRUE(whole.Write(uint64_t{kPartStart} * 512 + 65536, 4096));
    // Straddling p1's end: only the part inside p1 counts.
    ASSERT_TRUE(whole.Write(uint64_t{kPartStart + kPartSectors} * 512 - 4096, 8192));
  }
  Collector got;
  Result<size_t> n = (*tracer)->Drain(got.sink());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{8192, 12288},
                                               {65536, 69632},
                                               {4 * kMiB, 4 * kMiB + 65536},
                                               {part.size_bytes - 4096, part.size_bytes}}));
  ASSERT_TRUE((*tracer)->Remove().ok());
  EXPECT_FALSE(instance_->Exists());
}

TEST_F(KernelTest, ResumeDeliversEventsBufferedWhileDetached) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  {
    Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
    ASSERT_TRUE(tracer.ok()) << tracer.status();
    ASSERT_TRUE(io.Write(0, 4096));  // never read before the Detach
    (*tracer)->Detach();
  }
  // The destructor of a detached tracer leaves the instance enabled.
  ASSERT_TRUE(instance_->Exists());
  // Someone switched the instance to another output format meanwhile: Resume restores ours
  // (the events in the ring buffer are binary; only their printing changes).
  ASSERT_TRUE(WriteFile(instance_->path() + "/trace_options", "raw"));
  ASSERT_TRUE(io.Write(32768, 4096));

  Result<std::unique_ptr<BlockTracer>> resumed = BlockTracer::Resume(dev, options_);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  Collector got;
  Result<size_t> n = (*resumed)->Drain(got.sink());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{0, 4096}, {32768, 36864}}));
  Result<uint64_t> lost = (*resumed)->LostEvents();
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_EQ(*lost, 0u);

  // Events after the Resume arrive too.
  ASSERT_TRUE(io.Write(65536, 4096));
  got.Clear();
  n = (*resumed)->Poll(1000, got.sink());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{65536, 69632}}));
  ASSERT_TRUE((*resumed)->Remove().ok());
  EXPECT_FALSE(instance_->Exists());
}

TEST_F(KernelTest, ResumeRefusesMissingChangedOrDisabledInstances) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, true));
  TracedDevice disk, part;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &disk));
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path() + "p1", &part));

  Result<std::unique_ptr<BlockTracer>> missing = BlockTracer::Resume(disk, options_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();
  EXPECT_FALSE(instance_->Exists());

  {
    Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(disk, options_);
    ASSERT_TRUE(tracer.ok()) << tracer.status();
    (*tracer)->Detach();
  }
  // Same name, another device (the partition instead of its disk): its events are not ours.
  Result<std::unique_ptr<BlockTracer>> other = BlockTracer::Resume(part, options_);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kFailedPrecondition) << other.status();
  EXPECT_TRUE(instance_->Exists()) << "a refused Resume must leave the instance alone";

  // Someone turned the event off meanwhile: changes may have been missed.
  ASSERT_TRUE(WriteFile(instance_->path() + "/events/block/block_rq_complete/enable", "0"));
  Result<std::unique_ptr<BlockTracer>> disabled = BlockTracer::Resume(disk, options_);
  ASSERT_FALSE(disabled.ok());
  EXPECT_EQ(disabled.status().code(), StatusCode::kFailedPrecondition) << disabled.status();
  EXPECT_NE(disabled.status().message().find("turned off"), std::string::npos);

  ASSERT_TRUE(WriteFile(instance_->path() + "/events/block/block_rq_complete/enable", "1"));
  ASSERT_TRUE(WriteFile(instance_->path() + "/tracing_on", "0"));
  disabled = BlockTracer::Resume(disk, options_);
  ASSERT_FALSE(disabled.ok());
  EXPECT_EQ(disabled.status().code(), StatusCode::kFailedPrecondition) << disabled.status();

  // Create replaces what Resume refused.
  Result<std::unique_ptr<BlockTracer>> fresh = BlockTracer::Create(disk, options_);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  Result<bool> enabled = (*fresh)->StillEnabled();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_TRUE(*enabled);
}

TEST_F(KernelTest, StillEnabledSeesTracingTurnedOff) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  ASSERT_TRUE(WriteFile(instance_->path() + "/tracing_on", "0"));
  Result<bool> enabled = (*tracer)->StillEnabled();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_FALSE(*enabled);
  ASSERT_TRUE(WriteFile(instance_->path() + "/tracing_on", "1"));
  ASSERT_TRUE(WriteFile(instance_->path() + "/events/block/block_rq_complete/enable", "0"));
  enabled = (*tracer)->StillEnabled();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_FALSE(*enabled);

  // Both off; Reenable turns both back on and events flow again.
  ASSERT_TRUE(WriteFile(instance_->path() + "/tracing_on", "0"));
  ASSERT_TRUE((*tracer)->Reenable().ok());
  enabled = (*tracer)->StillEnabled();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_TRUE(*enabled);
  EXPECT_EQ(ReadFile(instance_->path() + "/tracing_on"), "1");
  EXPECT_EQ(ReadFile(instance_->path() + "/events/block/block_rq_complete/enable"), "1");
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  ASSERT_TRUE(io.Write(4096, 4096));
  Collector got;
  ASSERT_TRUE((*tracer)->Drain(got.sink()).ok());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{4096, 8192}}));
}

TEST_F(KernelTest, WaitForEventsDoesNotConsume) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  // Nothing happens: a timeout is not an error.
  Status waited = (*tracer)->WaitForEvents(10);
  EXPECT_TRUE(waited.ok()) << waited;
  EXPECT_FALSE((*tracer)->HasPending());

  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(io.Write(40960, 4096));
  });
  for (int i = 0; i < 100 && !(*tracer)->HasPending(); ++i) {
    waited = (*tracer)->WaitForEvents(100);
    ASSERT_TRUE(waited.ok()) << waited;
  }
  writer.join();
  EXPECT_TRUE((*tracer)->HasPending());
  waited = (*tracer)->WaitForEvents(0);
  EXPECT_TRUE(waited.ok()) << waited;
  EXPECT_TRUE((*tracer)->HasPending()) << "WaitForEvents must not read";
  Collector got;
  ASSERT_TRUE((*tracer)->Drain(got.sink()).ok());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{40960, 45056}}));
  EXPECT_FALSE((*tracer)->HasPending());

  (*tracer)->Detach();
  EXPECT_FALSE((*tracer)->WaitForEvents(0).ok());
  EXPECT_FALSE((*tracer)->Drain(got.sink()).ok());
  EXPECT_FALSE((*tracer)->HasPending());
}

TEST_F(KernelTest, HasPendingDoesNotWaitForAReader) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  ASSERT_TRUE(io.Write(0, 4096));
  // The sink runs while the reader holds the tracer's lock: a HasPending from another thread
  // must answer (true: the reader is not done) instead of waiting for it.
  int calls = 0;
  bool pending_during_drain = false;
  Result<size_t> n = (*tracer)->Drain([&](const BlockEvent&) {
    ++calls;
    std::thread other([&] { pending_during_drain = (*tracer)->HasPending(); });
    other.join();
  });
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(pending_during_drain);
  EXPECT_FALSE((*tracer)->HasPending());
}

TEST_F(KernelTest, OverrunIsCountedAsLost) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  options_.buffer_kb = 4;
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  // Far more events than a few pages per CPU can hold, none read meanwhile.
  for (uint64_t i = 0; i < 4000; ++i) ASSERT_TRUE(io.Write((i % 8192) * 4096, 4096));
  Result<uint64_t> lost = (*tracer)->LostEvents();
  ASSERT_TRUE(lost.ok()) << lost.status();
  EXPECT_GT(*lost, 0u);
  Collector got;
  Result<size_t> n = (*tracer)->Drain(got.sink());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_LT(got.size(), size_t{4000});
}

TEST_F(KernelTest, CreateReplacesAStaleInstance) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  // A stale instance of the same name, tracing something else.
  ASSERT_EQ(mkdir(instance_->path().c_str(), 0755), 0) << strerror(errno);
  ASSERT_TRUE(WriteFile(instance_->path() + "/events/block/block_rq_complete/filter", "dev == 1"));
  ASSERT_TRUE(WriteFile(instance_->path() + "/events/block/block_rq_complete/enable", "1"));

  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(tracer.ok()) << tracer.status();
  EXPECT_EQ(
      ReadFile(instance_->path() + "/events/block/block_rq_complete/filter").find("dev == 1 "),
      std::string::npos);
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  ASSERT_TRUE(io.Write(4096, 4096));
  Collector got;
  ASSERT_TRUE((*tracer)->Drain(got.sink()).ok());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{4096, 8192}}));
}

TEST_F(KernelTest, CreateLeavesAnInstanceInUseAlone) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  Result<std::unique_ptr<BlockTracer>> first = BlockTracer::Create(dev, options_);
  ASSERT_TRUE(first.ok()) << first.status();
  // A second tracer of the same name (a second agent for the same device) must not steal it.
  Result<std::unique_ptr<BlockTracer>> second = BlockTracer::Create(dev, options_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition) << second.status();
  EXPECT_NE(second.status().message().find("in use"), std::string::npos);
  DirectIo io(loop_->path());
  ASSERT_TRUE(io.ok());
  ASSERT_TRUE(io.Write(4096, 4096));
  Collector got;
  ASSERT_TRUE((*first)->Drain(got.sink()).ok());
  EXPECT_EQ(got.Merged(), (std::vector<Extent>{{4096, 8192}}));
}

TEST_F(KernelTest, CreateFailureLeavesNothingBehind) {
  REQUIRE_KERNEL_ENVIRONMENT();
  ASSERT_NO_FATAL_FAILURE(Attach(64 * kMiB, false));
  TracedDevice dev;
  ASSERT_NO_FATAL_FAILURE(Resolve(loop_->path(), &dev));
  // A buffer the kernel refuses (it checks available memory before allocating) fails after
  // the mkdir: the instance must be gone again.
  options_.buffer_kb = 1u << 31;
  Result<std::unique_ptr<BlockTracer>> tracer = BlockTracer::Create(dev, options_);
  ASSERT_FALSE(tracer.ok());
  EXPECT_NE(tracer.status().message().find("buffer_size_kb"), std::string::npos) << tracer.status();
  EXPECT_FALSE(instance_->Exists());
}

}  // namespace
}  // namespace cdp::agent
