// BlockTracer on a tracefs instance.
//
// Layout of this file:
//   small POSIX helpers  sysfs/tracefs file reads and writes that keep errno, rmdir with retry;
//   ResolveTracedDevice  stat + /sys/dev/block/MAJ:MIN: partition start, whole disk, bio-based;
//   the parser           ParseBlockRqCompleteLine, allocation-free, on string_view;
//   the filter           what Create writes and Resume expects to find;
//   BlockTracer          Create / Resume / Poll / Drain / LostEvents / Detach / Remove.
//
// The one rule everything here keeps: a change to the protected device must never be missed
// silently. When in doubt the tracer over-reports (a failed write, a request that only partly
// overlaps the device) and the kernel's own loss counters are exposed through LostEvents.
#include "cdp/agent/block_tracer.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <utility>

#include "cdp/core/logging.h"

namespace cdp::agent {
namespace {

constexpr const char* kDefaultTracefs = "/sys/kernel/tracing";
constexpr const char* kDebugfsTracefs = "/sys/kernel/debug/tracing";
// Relative to an instance (or to the tracefs root for the top-level event).
constexpr const char* kEventDir = "events/block/block_rq_complete";
// Bytes asked of trace_pipe per read(2). The kernel hands out at most about a page per call,
// so this only bounds how much one call could ever return.
constexpr size_t kReadChunk = 64 * 1024;
// An incomplete line longer than this is not a trace line; it is dropped rather than grown.
constexpr size_t kMaxPartialLine = 64 * 1024;
// rmdir of an instance fails with EBUSY while a file in it is still open (our trace_pipe just
// closed, or `cat trace_pipe` of an operator): retry for up to kRmdirRetries * kRmdirWait.
constexpr int kRmdirRetries = 50;
constexpr std::chrono::milliseconds kRmdirWait(10);
// Kernel dev_t as stored in the tracepoint (include/linux/kdev_t.h): MAJOR << 20 | MINOR.
constexpr unsigned kKernelMinorBits = 20;
constexpr uint64_t kSectorSize = 512;

std::string ErrnoText(int err) {
  char buf[256];
  // GNU strerror_r: returns a pointer to the message, which may or may not be `buf`.
  return strerror_r(err, buf, sizeof(buf));
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::string_view TrimWhitespace(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

// Reads a small pseudo-file (sysfs, tracefs) whole. Sets *err to the errno of a failure.
bool ReadSmallFile(const std::string& path, std::string* out, int* err) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  out->clear();
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      close(fd);
      return false;
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return true;
}

// Reads a pseudo-file; NotFound when absent, IOError naming the path otherwise.
Result<std::string> ReadFileStatus(const std::string& path) {
  std::string text;
  int err = 0;
  if (!ReadSmallFile(path, &text, &err)) {
    if (err == ENOENT) return Status::NotFound(path + " does not exist");
    return Status::FromErrno(err, "cannot read " + path);
  }
  return text;
}

// Parses all of `s` as a decimal uint64 (no sign, no spaces); false on overflow or junk.
bool ParseUint(std::string_view s, uint64_t* value) {
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  *value = v;
  return true;
}

// Reads a sysfs file holding one decimal number.
Result<uint64_t> ReadUintFile(const std::string& path) {
  CDP_ASSIGN_OR_RETURN(std::string text, ReadFileStatus(path));
  uint64_t v = 0;
  if (!ParseUint(TrimWhitespace(text), &v)) {
    return Status::IOError(path + ": expected a number, read '" +
                           std::string(TrimWhitespace(text)) + "'");
  }
  return v;
}

// Writes `data` to a pseudo-file in one write(2). Returns 0 or the errno of the failure.
int WriteSmallFile(const std::string& path, std::string_view data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = 0;
  for (;;) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
    } else if (static_cast<size_t>(n) != data.size()) {
      err = EIO;  // tracefs and sysfs take a control write whole or not at all
    }
    break;
  }
  close(fd);
  return err;
}

Status WriteFileStatus(const std::string& path, std::string_view data) {
  int err = WriteSmallFile(path, data);
  if (err == 0) return Status::Ok();
  if (err == EACCES || err == EPERM) {
    return Status::FromErrno(err, "cannot write " + path + " (the tracer needs root)");
  }
  return Status::FromErrno(err,
                           "cannot write '" + std::string(TrimWhitespace(data)) + "' to " + path);
}

// rmdir of a tracefs instance, retried while it is busy. OK when it is already gone.
Status RemoveInstanceDir(const std::string& path) {
  for (int attempt = 0;; ++attempt) {
    if (rmdir(path.c_str()) == 0 || errno == ENOENT) return Status::Ok();
    int err = errno;
    if (err != EBUSY || attempt >= kRmdirRetries) {
      if (err == EBUSY) {
        return Status::FailedPrecondition(
            "tracefs instance " + path +
            " is in use (a file in it is open: another cdp-agent tracing this device, or `cat "
            "trace_pipe`?); stop that process and retry");
      }
      return Status::FromErrno(err, "cannot remove tracefs instance " + path);
    }
    std::this_thread::sleep_for(kRmdirWait);
  }
}

// Parses "MAJ:MIN\n" (a sysfs `dev` file).
Status ParseDevFile(const std::string& path, uint32_t* major_out, uint32_t* minor_out) {
  CDP_ASSIGN_OR_RETURN(std::string text, ReadFileStatus(path));
  std::string_view s = TrimWhitespace(text);
  size_t colon = s.find(':');
  uint64_t maj = 0, min = 0;
  if (colon == std::string_view::npos || !ParseUint(s.substr(0, colon), &maj) ||
      !ParseUint(s.substr(colon + 1), &min) || maj > 0xfff || min > 0xfffff) {
    return Status::IOError(path + ": expected MAJOR:MINOR, read '" + std::string(s) + "'");
  }
  *major_out = static_cast<uint32_t>(maj);
  *minor_out = static_cast<uint32_t>(min);
  return Status::Ok();
}

std::string Basename(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Dirname(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// --- parsing helpers: advance a string_view, never allocate -------------------------------

bool ConsumeUint(std::string_view* s, uint64_t* value) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < s->size() && (*s)[i] >= '0' && (*s)[i] <= '9') {
    uint64_t d = static_cast<uint64_t>((*s)[i] - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return false;
  s->remove_prefix(i);
  *value = v;
  return true;
}

bool ConsumeLiteral(std::string_view* s, std::string_view literal) {
  if (s->substr(0, literal.size()) != literal) return false;
  s->remove_prefix(literal.size());
  return true;
}

// --- the filter ------------------------------------------------------------------------------

// Largest request (in sectors) the disk's queue can ever build: merging stops there. A request
// of a partition's neighbour can be merged with one of the partition (the block layer merges on
// the whole disk), so the lower bound of the filter must reach back this far.
Result<uint64_t> MaxRequestSectors(const TracedDevice& dev) {
  const std::string queue = "/sys/dev/block/" + std::to_string(dev.disk_major) + ":" +
                            std::to_string(dev.disk_minor) + "/queue/";
  uint64_t max_sectors = 0;
  CDP_ASSIGN_OR_RETURN(uint64_t hw_kb, ReadUintFile(queue + "max_hw_sectors_kb"));
  max_sectors = hw_kb * 2;
  // Older kernels lack some of these; a missing limit means "that operation is not supported".
  for (const char* limit : {"discard_max_hw_bytes", "write_zeroes_max_bytes"}) {
    Result<uint64_t> bytes = ReadUintFile(queue + limit);
    if (bytes.ok()) max_sectors = std::max(max_sectors, *bytes / kSectorSize);
  }
  return max_sectors;
}

// The filter Create writes on the instance's block_rq_complete, and Resume expects to read back
// (the kernel prints it back exactly as written). Keeps write ('W', with an 'F' preflush prefix
// or an 'F' FUA suffix), discard ('D', 'DE') and everything else that is neither a read nor a
// flush ('N': write-zeroes, zone operations) of the whole disk; for a partition, only requests
// that can overlap its sector range.
Result<std::string> FilterFor(const TracedDevice& dev) {
  const uint64_t kernel_dev =
      (static_cast<uint64_t>(dev.disk_major) << kKernelMinorBits) | dev.disk_minor;
  std::string filter = "dev == " + std::to_string(kernel_dev) +
                       " && (rwbs ~ \"*W*\" || rwbs ~ \"*D*\" || rwbs ~ \"*N*\")";
  const bool partition = dev.major != dev.disk_major || dev.minor != dev.disk_minor;
  if (partition) {
    CDP_ASSIGN_OR_RETURN(uint64_t reach, MaxRequestSectors(dev));
    if (dev.start_sector > reach) {
      filter += " && sector >= " + std::to_string(dev.start_sector - reach);
    }
    const uint64_t end = dev.start_sector + (dev.size_bytes + kSectorSize - 1) / kSectorSize;
    filter += " && sector < " + std::to_string(end);
  }
  return filter;
}

// --- tracefs ---------------------------------------------------------------------------------

Status ValidateOptions(const BlockTracer::Options& options) {
  const std::string& name = options.instance_name;
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    return Status::InvalidArgument("invalid tracefs instance name '" + name +
                                   "': must be non-empty, without '/'");
  }
  if (options.buffer_kb == 0) {
    return Status::InvalidArgument("tracefs instance " + name + ": buffer_kb must be > 0");
  }
  return Status::Ok();
}

// Finds (or mounts) the tracefs root: a directory with an `instances` subdirectory.
Result<std::string> FindTracefsRoot(const std::string& option) {
  if (!option.empty()) {
    if (IsDir(option + "/instances")) return option;
    return Status::NotSupported("tracefs root " + option +
                                " is not a tracefs mount (it has no instances/ directory)");
  }
  const std::string standard = kDefaultTracefs;
  if (IsDir(standard + "/instances")) return standard;
  // On older systems tracefs is only reached through debugfs (which automounts it).
  const std::string legacy = kDebugfsTracefs;
  if (IsDir(legacy + "/instances")) return legacy;
  std::string why;
  if (mount("nodev", kDefaultTracefs, "tracefs", 0, nullptr) == 0) {
    if (IsDir(standard + "/instances")) {
      CDP_LOG(info) << "mounted tracefs on " << standard;
      return standard;
    }
    why = "tracefs mounted on " + standard + " has no instances/ directory";
  } else {
    why = std::string("mounting tracefs on ") + kDefaultTracefs + " failed: " + ErrnoText(errno);
  }
  return Status::NotSupported("no tracefs support: " + why +
                              " (mount -t tracefs nodev /sys/kernel/tracing; the kernel needs "
                              "CONFIG_FTRACE)");
}

// Puts the instance's text output in the one layout the parser reads. A new instance copies
// the top-level trace options, so an operator's `echo raw > trace_options` would otherwise change
// our format. Options this kernel does not know (EINVAL) are skipped.
Status SetTextFormatOptions(const std::string& instance) {
  for (const char* option : {"noraw", "nohex", "nobin", "nofields", "noblock"}) {
    int err = WriteSmallFile(instance + "/trace_options", option);
    if (err != 0 && err != EINVAL) {
      return Status::FromErrno(
          err, std::string("cannot set ") + option + " in " + instance + "/trace_options");
    }
  }
  return Status::Ok();
}

// Writes the filter; a rejected filter is reported with the kernel's own explanation.
Status WriteFilter(const std::string& instance, const std::string& filter) {
  const std::string path = instance + "/" + kEventDir + "/filter";
  int err = WriteSmallFile(path, filter);
  if (err == 0) return Status::Ok();
  if (err == EINVAL) {
    // After a rejected write the filter file shows the parse error with a caret under it.
    std::string explanation;
    int read_err = 0;
    if (ReadSmallFile(path, &explanation, &read_err)) {
      std::string flat;
      for (char c : TrimWhitespace(explanation)) flat += c == '\n' ? ' ' : c;
      explanation = flat;
    } else {
      explanation = "no explanation: " + ErrnoText(read_err);
    }
    return Status::InvalidArgument("the kernel rejected the block_rq_complete filter '" + filter +
                                   "' in " + instance + " (" + explanation + ")");
  }
  return Status::FromErrno(err, "cannot write the filter " + path);
}

// Disables the event and removes the directory; best effort on the enable.
Status DisableAndRemove(const std::string& instance) {
  int err = WriteSmallFile(instance + "/" + kEventDir + "/enable", "0");
  if (err != 0 && err != ENOENT) {
    CDP_LOG(warning) << "tracefs instance " << instance
                     << ": cannot disable block_rq_complete: " << ErrnoText(err);
  }
  return RemoveInstanceDir(instance);
}

// True when the pseudo-file holds exactly "1".
Result<bool> FileIsOne(const std::string& path) {
  std::string text;
  int err = 0;
  if (!ReadSmallFile(path, &text, &err)) {
    if (err == ENOENT) return false;
    return Status::FromErrno(err, "cannot read " + path);
  }
  return TrimWhitespace(text) == "1";
}

}  // namespace

// --- ResolveTracedDevice ------------------------------------------------------------------------

Result<TracedDevice> ResolveTracedDevice(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return Status::NotFound("--device " + path + " does not exist");
    }
    return Status::FromErrno(err, "--device " + path);
  }
  if (!S_ISBLK(st.st_mode)) {
    return Status::InvalidArgument("--device " + path + " is not a block device");
  }
  TracedDevice dev;
  dev.path = path;
  dev.major = major(st.st_rdev);
  dev.minor = minor(st.st_rdev);
  const std::string devno = std::to_string(dev.major) + ":" + std::to_string(dev.minor);
  const std::string link = "/sys/dev/block/" + devno;
  char real[PATH_MAX];
  if (realpath(link.c_str(), real) == nullptr) {
    return Status::NotFound("--device " + path + " (" + devno + ") has no " + link +
                            " in sysfs: device removed, or sysfs not mounted?");
  }
  const std::string sys_dir = real;
  dev.name = Basename(sys_dir);
  std::string disk_dir = sys_dir;
  auto in_context = [&](const Status& s) { return s.WithContext("--device " + path); };
  if (Exists(sys_dir + "/partition")) {
    Result<uint64_t> start = ReadUintFile(sys_dir + "/start");
    if (!start.ok()) return in_context(start.status());
    dev.start_sector = *start;
    disk_dir = Dirname(sys_dir);
    Status s = ParseDevFile(disk_dir + "/dev", &dev.disk_major, &dev.disk_minor);
    if (!s.ok()) return in_context(s);
  } else {
    dev.disk_major = dev.major;
    dev.disk_minor = dev.minor;
  }
  dev.disk_name = Basename(disk_dir);
  Result<uint64_t> sectors = ReadUintFile(sys_dir + "/size");
  if (!sectors.ok()) return in_context(sectors.status());
  if (*sectors > std::numeric_limits<uint64_t>::max() / kSectorSize) {
    return Status::IOError("--device " + path + ": implausible size " + std::to_string(*sectors) +
                           " sectors in " + sys_dir + "/size");
  }
  dev.size_bytes = *sectors * kSectorSize;
  Result<uint64_t> lbs = ReadUintFile(disk_dir + "/queue/logical_block_size");
  if (!lbs.ok()) return in_context(lbs.status());
  dev.logical_block_size = static_cast<uint32_t>(*lbs);
  // Bio-based drivers (device-mapper, md, nvme multipath heads, zram, brd) have no blk-mq
  // queue: their bios are remapped or served without ever becoming requests on this disk.
  if (!IsDir(disk_dir + "/mq")) {
    return Status::NotSupported("--device " + path + " (" + dev.disk_name +
                                ") is bio-based (device-mapper or md); block_rq_complete does "
                                "not see its requests; protect the underlying disks");
  }
  return dev;
}

// --- ParseBlockRqCompleteLine -----------------------------------------------------------------

bool ParseBlockRqCompleteLine(std::string_view line, const TracedDevice& dev, BlockEvent* event) {
  // "<comm>-<pid> [cpu] <flags> <ts>: block_rq_complete: MAJ,MIN RWBS (CMD) SECTOR + NR ..."
  // A task name is at most 15 characters, so it cannot contain the tag.
  static constexpr std::string_view kTag = " block_rq_complete: ";
  size_t at = line.find(kTag);
  if (at == std::string_view::npos) return false;
  std::string_view s = line.substr(at + kTag.size());

  uint64_t maj = 0, min = 0;
  if (!ConsumeUint(&s, &maj) || !ConsumeLiteral(&s, ",") || !ConsumeUint(&s, &min) ||
      !ConsumeLiteral(&s, " ")) {
    return false;
  }
  if (maj != dev.disk_major || min != dev.disk_minor) return false;

  size_t space = s.find(' ');
  if (space == 0 || space == std::string_view::npos) return false;
  std::string_view rwbs = s.substr(0, space);
  s.remove_prefix(space + 1);
  // An 'F' before the operation is a preflush ("FWS"); a lone 'F' or "FF" is a flush.
  char op = rwbs[0];
  if (op == 'F' && rwbs.size() > 1) op = rwbs[1];
  if (op != 'W' && op != 'D' && op != 'N') return false;

  // The command is empty on current kernels; on old ones a hex dump for passthrough requests.
  if (s.empty() || s[0] != '(') return false;
  size_t close = s.find(')');
  if (close == std::string_view::npos) return false;
  s.remove_prefix(close + 1);
  uint64_t sector = 0, nr = 0;
  if (!ConsumeLiteral(&s, " ") || !ConsumeUint(&s, &sector) || !ConsumeLiteral(&s, " + ") ||
      !ConsumeUint(&s, &nr)) {
    return false;
  }
  // After the count: " [ERR]" (old kernels) or " CLASS,LEVEL,HINT [ERR]" (6.x), or nothing if a
  // future kernel drops them; a digit here would mean the count was cut.
  if (!s.empty() && s[0] != ' ') return false;
  if (nr == 0 || sector > std::numeric_limits<uint64_t>::max() - nr) return false;
  // A failed request ("[-5]") is reported too: part of it may have reached the media.

  const uint64_t dev_first = dev.start_sector;
  const uint64_t dev_sectors = (dev.size_bytes + kSectorSize - 1) / kSectorSize;
  if (dev_first > std::numeric_limits<uint64_t>::max() - dev_sectors) return false;
  const uint64_t first = std::max(sector, dev_first);
  const uint64_t end = std::min(sector + nr, dev_first + dev_sectors);
  if (first >= end) return false;
  const uint64_t offset = (first - dev_first) * kSectorSize;
  const uint64_t end_bytes = std::min((end - dev_first) * kSectorSize, dev.size_bytes);
  if (offset >= end_bytes) return false;
  event->offset = offset;
  event->length = end_bytes - offset;
  return true;
}

// --- BlockTracer ------------------------------------------------------------------------------

BlockTracer::BlockTracer(TracedDevice dev, std::string instance_path)
    : dev_(std::move(dev)), instance_path_(std::move(instance_path)) {}

Result<std::unique_ptr<BlockTracer>> BlockTracer::Create(const TracedDevice& dev,
                                                         const Options& options) {
  CDP_RETURN_IF_ERROR(ValidateOptions(options));
  CDP_ASSIGN_OR_RETURN(std::string root, FindTracefsRoot(options.tracefs_root));
  if (!IsDir(root + "/" + kEventDir)) {
    return Status::NotSupported("the block_rq_complete tracepoint is not available (no " + root +
                                "/" + kEventDir + "): kernel built without block tracepoints?");
  }
  CDP_ASSIGN_OR_RETURN(std::string filter, FilterFor(dev));
  const std::string instance = root + "/instances/" + options.instance_name;

  if (Exists(instance)) {
    // Left by a crash or by a Detach whose Resume was not wanted. No disable first: if another
    // process still reads it, rmdir fails with EBUSY and that process keeps working.
    Status removed = RemoveInstanceDir(instance);
    if (!removed.ok()) return removed.WithContext("device " + dev.path);
    CDP_LOG(warning) << "device " << dev.path << ": removed stale tracefs instance " << instance
                     << " (its buffered events were discarded)";
  }
  if (mkdir(instance.c_str(), 0755) != 0) {
    int err = errno;
    if (err == EACCES || err == EPERM) {
      return Status::FromErrno(err, "cannot create tracefs instance " + instance + " (needs root)");
    }
    return Status::FromErrno(err, "cannot create tracefs instance " + instance);
  }
  // From here on the tracer owns the instance: returning an error destroys it, and its
  // destructor disables the event and removes the directory.
  std::unique_ptr<BlockTracer> tracer(new BlockTracer(dev, instance));
  const std::string event = instance + "/" + kEventDir;
  if (!IsDir(event)) {
    return Status::NotSupported("device " + dev.path + ": tracefs instance " + instance +
                                " has no " + kEventDir);
  }
  Status s = SetTextFormatOptions(instance);
  if (s.ok()) s = WriteFileStatus(instance + "/buffer_size_kb", std::to_string(options.buffer_kb));
  if (s.ok()) s = WriteFilter(instance, filter);
  if (s.ok()) s = WriteFileStatus(event + "/enable", "1");
  if (s.ok()) s = WriteFileStatus(instance + "/tracing_on", "1");
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(tracer->mu_);
    s = tracer->OpenPipe();
  }
  if (!s.ok()) return s.WithContext("device " + dev.path);
  CDP_LOG(info) << "device " << dev.path << " (" << dev.name << " on " << dev.disk_name
                << "): tracing block_rq_complete in " << instance << " with filter '" << filter
                << "'";
  return tracer;
}

Result<std::unique_ptr<BlockTracer>> BlockTracer::Resume(const TracedDevice& dev,
                                                         const Options& options) {
  CDP_RETURN_IF_ERROR(ValidateOptions(options));
  CDP_ASSIGN_OR_RETURN(std::string root, FindTracefsRoot(options.tracefs_root));
  const std::string instance = root + "/instances/" + options.instance_name;
  if (!IsDir(instance)) {
    return Status::NotFound("device " + dev.path + ": no tracefs instance " + instance +
                            " to resume (host rebooted, or the last stop was not clean)");
  }
  CDP_ASSIGN_OR_RETURN(std::string expected, FilterFor(dev));
  const std::string event = instance + "/" + kEventDir;
  Result<std::string> actual = ReadFileStatus(event + "/filter");
  if (!actual.ok()) {
    return Status::FailedPrecondition("device " + dev.path + ": tracefs instance " + instance +
                                      " is not one of ours: " + actual.status().message());
  }
  if (TrimWhitespace(*actual) != expected) {
    return Status::FailedPrecondition(
        "device " + dev.path + ": tracefs instance " + instance + " traces '" +
        std::string(TrimWhitespace(*actual)) + "', expected '" + expected +
        "' (device or partition table changed?); its events do not describe this device");
  }
  CDP_ASSIGN_OR_RETURN(bool enabled, FileIsOne(event + "/enable"));
  CDP_ASSIGN_OR_RETURN(bool tracing_on, FileIsOne(instance + "/tracing_on"));
  if (!enabled || !tracing_on) {
    return Status::FailedPrecondition("device " + dev.path + ": tracefs instance " + instance +
                                      " was turned off (" +
                                      (enabled ? "tracing_on" : "block_rq_complete/enable") +
                                      " is 0): changes made while it was off are unknown");
  }
  // Changing output options does not touch the ring buffer: safe on a live instance.
  CDP_RETURN_IF_ERROR(SetTextFormatOptions(instance));
  std::unique_ptr<BlockTracer> tracer(new BlockTracer(dev, instance));
  Status s;
  {
    std::lock_guard<std::mutex> lock(tracer->mu_);
    s = tracer->OpenPipe();
  }
  if (!s.ok()) {
    tracer->Detach();  // a failed Resume leaves the instance as it found it
    return s.WithContext("device " + dev.path);
  }
  CDP_LOG(info) << "device " << dev.path << ": resumed tracefs instance " << instance;
  return tracer;
}

BlockTracer::~BlockTracer() {
  if (detached_) return;
  Status s = Remove();
  if (!s.ok()) CDP_LOG(warning) << "device " << dev_.path << ": " << s;
}

Status BlockTracer::OpenPipe() {
  const std::string path = instance_path_ + "/trace_pipe";
  int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot open " + path);
  pipe_fd_ = fd;
  return Status::Ok();
}

Result<size_t> BlockTracer::ReadAvailable(const Sink& sink) {
  // REQUIRES: mu_ held.
  if (pipe_fd_ < 0) {
    return Status::FailedPrecondition("tracefs instance " + instance_path_ +
                                      ": tracer detached or removed");
  }
  char buf[kReadChunk];
  size_t delivered = 0;
  BlockEvent event;
  auto handle_line = [&](std::string_view line) {
    if (ParseBlockRqCompleteLine(line, dev_, &event)) {
      sink(event);
      ++delivered;
    } else if (line.find("[LOST ") != std::string_view::npos) {
      // "CPU:1 [LOST 123 EVENTS]": the ring buffer overflowed; LostEvents counts it too.
      CDP_LOG(warning) << "device " << dev_.path << ": tracefs instance " << instance_path_ << ": "
                       << TrimWhitespace(line) << "; changes went untracked";
    }
  };
  for (;;) {
    ssize_t n = read(pipe_fd_, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Status::FromErrno(errno, "cannot read " + instance_path_ + "/trace_pipe");
    }
    if (n == 0) break;
    std::string_view data(buf, static_cast<size_t>(n));
    if (!partial_.empty()) {
      size_t nl = data.find('\n');
      if (nl == std::string_view::npos) {
        if (partial_.size() + data.size() > kMaxPartialLine) {
          CDP_LOG(warning) << "tracefs instance " << instance_path_ << ": dropping a "
                           << partial_.size() + data.size() << "-byte line without newline";
          partial_.clear();
        } else {
          partial_.append(data);
        }
        continue;
      }
      partial_.append(data.substr(0, nl));
      handle_line(partial_);
      partial_.clear();
      data.remove_prefix(nl + 1);
    }
    while (!data.empty()) {
      const void* nl = memchr(data.data(), '\n', data.size());
      if (nl == nullptr) {
        partial_.assign(data);
        break;
      }
      size_t len = static_cast<size_t>(static_cast<const char*>(nl) - data.data());
      handle_line(data.substr(0, len));
      data.remove_prefix(len + 1);
    }
  }
  return delivered;
}

Status BlockTracer::WaitForEvents(int timeout_ms) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = pipe_fd_;
  }
  if (fd < 0) {
    return Status::FailedPrecondition("tracefs instance " + instance_path_ +
                                      ": tracer detached or removed");
  }
  // Wait without the lock, so a Drain (after a freeze) never waits for this timeout. Detach and
  // Remove are not called concurrently with the readers (see the header), so fd stays valid.
  struct pollfd pfd = {fd, POLLIN, 0};
  int ready = poll(&pfd, 1, timeout_ms);
  if (ready < 0) {
    if (errno == EINTR) return Status::Ok();
    return Status::FromErrno(errno, "poll on " + instance_path_ + "/trace_pipe");
  }
  if (ready > 0 && (pfd.revents & (POLLERR | POLLNVAL)) != 0) {
    return Status::IOError("poll on " + instance_path_ + "/trace_pipe: " +
                           ((pfd.revents & POLLNVAL) != 0 ? "descriptor not open" : "error"));
  }
  return Status::Ok();
}

Result<size_t> BlockTracer::Poll(int timeout_ms, const Sink& sink) {
  CDP_RETURN_IF_ERROR(WaitForEvents(timeout_ms));
  // Read even after a timeout: a non-blocking read costs one syscall and never misses a wakeup.
  std::lock_guard<std::mutex> lock(mu_);
  return ReadAvailable(sink);
}

Result<size_t> BlockTracer::Drain(const Sink& sink) {
  std::lock_guard<std::mutex> lock(mu_);
  return ReadAvailable(sink);
}

bool BlockTracer::HasPending() {
  // A Poll or Drain holds mu_ while it hands events to its sink. Waiting for it would stall the
  // caller (a status report); while a reader is busy, events count as pending: it has not
  // finished delivering them.
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock()) return true;
  if (pipe_fd_ < 0) return false;
  struct pollfd pfd = {pipe_fd_, POLLIN, 0};
  return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN) != 0;
}

Status BlockTracer::Reenable() {
  CDP_RETURN_IF_ERROR(WriteFileStatus(instance_path_ + "/tracing_on", "1"));
  CDP_RETURN_IF_ERROR(WriteFileStatus(instance_path_ + "/" + kEventDir + "/enable", "1"));
  CDP_LOG(warning) << "device " << dev_.path << ": re-enabled block tracing in " << instance_path_;
  return Status::Ok();
}

Result<uint64_t> BlockTracer::LostEvents() {
  const std::string per_cpu = instance_path_ + "/per_cpu";
  DIR* dir = opendir(per_cpu.c_str());
  if (dir == nullptr) return Status::FromErrno(errno, "cannot list " + per_cpu);
  uint64_t lost = 0;
  Status status;
  std::string text;
  while (struct dirent* entry = readdir(dir)) {
    if (strncmp(entry->d_name, "cpu", 3) != 0) continue;
    const std::string path = per_cpu + "/" + entry->d_name + "/stats";
    int err = 0;
    if (!ReadSmallFile(path, &text, &err)) {
      status = Status::FromErrno(err, "cannot read " + path);
      break;
    }
    std::string_view rest = text;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      // "overrun": overwritten before being read; "commit overrun": lost while nested writers
      // wrapped the buffer; "dropped events": refused because the buffer was full.
      for (std::string_view key : {"overrun:", "commit overrun:", "dropped events:"}) {
        if (line.substr(0, key.size()) != key) continue;
        uint64_t v = 0;
        if (!ParseUint(TrimWhitespace(line.substr(key.size())), &v)) {
          status = Status::IOError(path + ": cannot parse '" + std::string(line) + "'");
        }
        lost += v;
      }
    }
    if (!status.ok()) break;
  }
  closedir(dir);
  if (!status.ok()) return status;
  return lost;
}

Result<bool> BlockTracer::StillEnabled() {
  CDP_ASSIGN_OR_RETURN(bool tracing_on, FileIsOne(instance_path_ + "/tracing_on"));
  if (!tracing_on) return false;
  return FileIsOne(instance_path_ + "/" + kEventDir + "/enable");
}

void BlockTracer::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  if (pipe_fd_ >= 0) close(pipe_fd_);
  pipe_fd_ = -1;
  partial_.clear();
  detached_ = true;
}

Status BlockTracer::Remove() {
  std::lock_guard<std::mutex> lock(mu_);
  if (pipe_fd_ >= 0) close(pipe_fd_);
  pipe_fd_ = -1;
  partial_.clear();
  if (Exists(instance_path_)) CDP_RETURN_IF_ERROR(DisableAndRemove(instance_path_));
  // Once removed, the name may be reused by a new tracer: this one's destructor must not touch
  // it. A failed Remove is retried by the destructor.
  detached_ = true;
  return Status::Ok();
}

}  // namespace cdp::agent
