// BlockTracer: change tracking of a block device that is in use, from the kernel's block
// tracepoints — no kernel module, no reboot. It owns one tracefs instance
// (instances/<name>) with `block/block_rq_complete` enabled and filtered on the whole disk's
// device number (and, for a partition, on its sector range), so only write, discard and
// write-zeroes completions of this device reach its ring buffer. Events are read from the
// instance's text pipe and handed out as byte extents relative to the protected device.
//
// A partition's requests are issued to its whole disk with absolute sectors: the tracer filters on
// the disk and subtracts the partition's start.
//
// Thread-safety: Poll, Drain, HasPending, LostEvents and StillEnabled may be called from any
// thread; reads are serialised internally.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp::agent {

// The protected device as the block layer sees it.
struct TracedDevice {
  std::string path;           // as given on the command line
  std::string name;           // sysfs name, e.g. "loop0p1"
  uint32_t major = 0, minor = 0;            // the device itself
  uint32_t disk_major = 0, disk_minor = 0;  // its whole disk (== the device for a whole disk)
  std::string disk_name;                    // e.g. "loop0"
  uint64_t start_sector = 0;  // a partition's first 512-byte sector on its disk; 0 for a disk
  uint64_t size_bytes = 0;
  uint32_t logical_block_size = 512;
};

// Resolves `path` through sysfs. Errors (one line, naming the path): does not exist, is not a
// block device, or is bio-based (device-mapper, md: no request completions to trace — protect the
// underlying disks instead).
Result<TracedDevice> ResolveTracedDevice(const std::string& path);

// One completed write, discard or write-zeroes, in bytes relative to the protected device
// (clipped to it).
struct BlockEvent {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Parses one line of a tracefs text pipe. Returns true and fills *event when the line is a
// block_rq_complete of a write ('W'), discard ('D') or write-zeroes ('N') with a non-zero length
// on `dev`'s disk inside the device's sector range; false for anything else (reads, flushes,
// other devices, other events, malformed lines). Tolerates the field layouts of kernels 4.x–6.x
// (the fields after "SECTOR + COUNT" differ).
bool ParseBlockRqCompleteLine(std::string_view line, const TracedDevice& dev, BlockEvent* event);

class BlockTracer {
 public:
  struct Options {
    // The tracefs mount. Empty: /sys/kernel/tracing, else /sys/kernel/debug/tracing; when
    // neither is mounted, tracefs is mounted on /sys/kernel/tracing.
    std::string tracefs_root;
    std::string instance_name;  // e.g. "cdp-agent.db01-sda"
    uint32_t buffer_kb = 4096;  // per-CPU ring buffer size of the instance (buffer_size_kb)
  };
  using Sink = std::function<void(const BlockEvent&)>;

  // Creates the instance (removing a stale one of the same name first: its events are
  // discarded), sets the buffer size and the filter, and enables the event. Errors: tracefs not
  // available ("no tracefs support ..."), block_rq_complete not available, permission denied.
  // On any error nothing is left behind in tracefs.
  static Result<std::unique_ptr<BlockTracer>> Create(const TracedDevice& dev,
                                                     const Options& options);

  // Re-attaches to an instance that a clean stop left enabled (Detach), keeping the events it
  // buffered meanwhile. NotFound when there is no such instance (e.g. after a reboot);
  // FailedPrecondition when it exists but does not trace this device with the same filter, or
  // the event is no longer enabled.
  static Result<std::unique_ptr<BlockTracer>> Resume(const TracedDevice& dev,
                                                     const Options& options);

  // Removes the instance (disables the event first). Idempotent.
  ~BlockTracer();

  // Waits up to timeout_ms for events, then reads every event available without blocking and
  // calls `sink` for each. Returns the number of events delivered.
  Result<size_t> Poll(int timeout_ms, const Sink& sink);

  // Reads until the buffer is empty, without waiting. After a FIFREEZE returned (no write is in
  // flight), one Drain delivers every completion that happened before it.
  Result<size_t> Drain(const Sink& sink);

  // True when events are waiting to be read (poll with a zero timeout). Does not wait for a
  // reader holding the read lock.
  bool HasPending();

  // Waits up to timeout_ms until events are waiting to be read, without reading them. OK on
  // timeout too; an error only when the pipe itself fails.
  Status WaitForEvents(int timeout_ms);

  // Turns tracing_on and the event's enable back on (after someone turned them off).
  Status Reenable();

  // Events the kernel lost since the instance was created: the sum over CPUs of "overrun" and
  // "dropped events" in per_cpu/cpuN/stats. Any increase means changes went untracked.
  Result<uint64_t> LostEvents();

  // False when someone turned the instance's tracing_on or the event's enable off.
  Result<bool> StillEnabled();

  // Leaves the instance enabled and closes it: events keep accumulating in its ring buffer
  // until Resume. Used on a clean stop, so a restart needs no resync.
  void Detach();

  // Disables the event and removes the instance now.
  Status Remove();

  const std::string& instance_path() const { return instance_path_; }
  const TracedDevice& device() const { return dev_; }

 private:
  BlockTracer(TracedDevice dev, std::string instance_path);
  Status OpenPipe();
  Result<size_t> ReadAvailable(const Sink& sink);

  const TracedDevice dev_;
  const std::string instance_path_;
  std::mutex mu_;
  int pipe_fd_ = -1;     // GUARDED_BY(mu_): trace_pipe, O_NONBLOCK
  std::string partial_;  // GUARDED_BY(mu_): an incomplete last line
  bool detached_ = false;
};

}  // namespace cdp::agent
