// FsFreezer: short FIFREEZE/FITHAW of a mounted filesystem for consistency points, with a thaw
// watchdog so an application is never held frozen by a stuck or killed agent.
//
// The filesystem is held open only while it is needed — for one syncfs, and from just before a
// FIFREEZE to just after its FITHAW — never in between, so that it can be unmounted while the
// agent runs (an operator's umount, a shutdown). Each time, the path is opened and checked to
// still hold the filesystem it held at Start (same st_dev); when it does not (unmounted, or
// another filesystem mounted there) nothing is done and the call says so (NotFound). A frozen
// filesystem cannot be unmounted: the descriptors held during the freeze keep it mounted, so
// the watchdog can always thaw the filesystem that was frozen.
//
// The watchdog is a separate process (`cdp-thaw-watchdog`, installed next to `cdp-agent`),
// spawned by Start with one end of a unix stream socket pair from the agent (its fd 3). Before
// every FIFREEZE the agent sends it "frozen until now + hard_limit_ms" together with a descriptor
// of the filesystem (SCM_RIGHTS); after FITHAW it says "thawed", and the watchdog closes that
// descriptor. The watchdog issues FITHAW on it when the hard limit passes without "thawed", or at
// once when the socket closes while frozen (the agent died, e.g. kill -9), then closes it. It
// exits when the socket closes and ignores SIGTERM/SIGINT/SIGHUP/SIGPIPE so a process-group
// signal cannot remove it before the agent. It writes no log line between a freeze and its thaw
// (stderr may be a file on the frozen filesystem).
//
// Wire between agent and watchdog (one line each, ASCII): watchdog -> agent "R\n" once, when it
// is ready; agent -> watchdog "F <deadline_ms_monotonic>\n" before a freeze, sent in one
// sendmsg with exactly one descriptor of the filesystem attached, "E <deadline_ms_monotonic>\n"
// to move the deadline of the freeze in progress (a held freeze's lease, ExtendHold; ignored when
// not armed), and "T\n" after the thaw (or after a FIFREEZE that failed). A descriptor belongs to
// the line its bytes arrived in. Unknown lines, and an "F" without a descriptor, are logged and
// ignored (descriptors that came with them are closed).
//
// The agent writes with MSG_NOSIGNAL: FsFreezer never raises SIGPIPE and changes no signal
// disposition of the agent process.
//
// Thread-safety: one thread calls CheckMounted/SyncFs/Freeze/Thaw at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp::agent {

// OK when `path` is on the filesystem mounted from the block device major:minor (its st_dev).
// Any path on that filesystem will do, not only its mount point: FIFREEZE freezes the whole
// filesystem of whatever it is given. (Filesystems whose st_dev is not the block device, such as
// btrfs subvolumes, are refused.) Otherwise InvalidArgument, one line: "--freeze PATH is on
// device A:B, not on DEVICE (C:D); pass the mount point of the filesystem on --device", or
// "--freeze PATH does not exist".
Status CheckFreezePath(const std::string& path, uint32_t major, uint32_t minor,
                       const std::string& device_path);

// A filesystem that can be frozen and thawed: what a freeze cycle (group_freeze_cycle.h) needs
// of FsFreezer, so that a test can fake it. One thread uses it at a time.
class Freezable {
 public:
  virtual ~Freezable() = default;
  // FIFREEZE, with the thaw watchdog armed to thaw after hard_limit_ms (FsFreezer::Freeze).
  virtual Status Freeze(int hard_limit_ms) = 0;
  // Moves the watchdog's deadline to hard_limit_ms from now. REQUIRES: frozen().
  virtual Status ExtendHold(int hard_limit_ms) = 0;
  // FITHAW (FsFreezer::Thaw).
  virtual Status Thaw() = 0;
  virtual bool frozen() const = 0;
  virtual const std::string& mount_path() const = 0;
  // Which filesystem (its st_dev): two freezers of one filesystem freeze it once.
  virtual dev_t fs_dev() const = 0;
};

class FsFreezer : public Freezable {
 public:
  struct Options {
    std::string mount_path;
    int hard_limit_ms = 400;      // the watchdog thaws after this long frozen
    std::string watchdog_exe;     // empty: cdp-thaw-watchdog next to /proc/self/exe
  };

  // Notes which filesystem mount_path is on (its st_dev; the caller has checked that it is the
  // protected device's, CheckFreezePath) and spawns the watchdog; returns once the watchdog has
  // said it is ready. Holds no descriptor of the filesystem afterwards. Errors name the path:
  // IOError if it cannot be stat'ed, FailedPrecondition naming the missing watchdog executable,
  // Unavailable with the exit status of a watchdog that died at start, InvalidArgument for
  // hard_limit_ms <= 0.
  static Result<std::unique_ptr<FsFreezer>> Start(const Options& options);
  // Thaws if frozen, closes the socket (the watchdog exits) and reaps it, SIGKILLing it if it
  // has not exited within 2 s.
  ~FsFreezer();

  // Whether mount_path still holds the filesystem it held at Start: one stat, nothing opened.
  // NotFound, one line, when it does not: "PATH no longer holds the filesystem of device A:B
  // (PATH is now on device C:D: unmounted, or another filesystem mounted there)" or "... (PATH
  // does not exist any more)". IOError for any other stat failure.
  Status CheckMounted() const;
  // syncfs of the filesystem (writeback without blocking writers): opens mount_path, checks it
  // as CheckMounted does (same NotFound), syncfs, closes.
  Status SyncFs();
  // Opens mount_path and checks it (NotFound as CheckMounted, nothing frozen), hands the
  // descriptor to the watchdog with its deadline, then FIFREEZE; the descriptor stays open until
  // Thaw. FailedPrecondition ("already frozen") on EBUSY — someone else froze it; the watchdog
  // is disarmed again and nothing is thawed. Unavailable when the watchdog is gone (nothing is
  // frozen then). NotSupported naming the filesystem type when it cannot be frozen.
  // REQUIRES: !frozen() (else FailedPrecondition).
  Status Freeze() { return Freeze(options_.hard_limit_ms); }
  // Freeze with the watchdog's limit set to hard_limit_ms instead of Options::hard_limit_ms (a
  // held freeze: GroupFreeze::FreezeAndHold).
  Status Freeze(int hard_limit_ms) override;
  // Tells the watchdog to thaw hard_limit_ms from now instead. FailedPrecondition when not
  // frozen; Unavailable when the watchdog is gone (it can no longer thaw: thaw now).
  Status ExtendHold(int hard_limit_ms) override;
  // FITHAW, then disarms the watchdog and closes the descriptor. EINVAL (not frozen: the
  // watchdog already thawed) is reported as Aborted so the caller knows its freeze was cut short.
  // On any other FITHAW error frozen() stays true, the descriptor stays open and the watchdog
  // stays armed, so it still thaws at the hard limit. REQUIRES: frozen() (else
  // FailedPrecondition).
  Status Thaw() override;

  bool frozen() const override { return frozen_; }
  const std::string& mount_path() const override { return options_.mount_path; }
  // The filesystem this freezer freezes: st_dev of mount_path at Start.
  dev_t fs_dev() const override { return fs_dev_; }
  pid_t watchdog_pid() const { return watchdog_pid_; }

 private:
  FsFreezer() = default;
  // Opens mount_path and checks that it is on fs_dev_: the descriptor (caller closes it), or
  // NotFound / IOError as CheckMounted says.
  Result<int> OpenChecked(const std::string& purpose) const;
  Options options_;
  dev_t fs_dev_ = 0;    // st_dev of mount_path at Start: the filesystem this freezer freezes
  int frozen_fd_ = -1;  // the filesystem, open from Freeze to Thaw only
  int limit_ms_ = 0;    // the watchdog's limit of the freeze in progress
  int pipe_fd_ = -1;    // the agent's end of the socket pair to the watchdog
  pid_t watchdog_pid_ = -1;
  bool frozen_ = false;
};

// Sends all of `data` on the unix socket `fd` without ever raising SIGPIPE, with descriptor
// `pass_fd` (when >= 0) attached to its first bytes (SCM_RIGHTS): how the agent sends the
// watchdog an "F" line. Returns 0 or an errno value.
int SendWithDescriptor(int fd, std::string_view data, int pass_fd);

// The watchdog process's main loop (cdp-thaw-watchdog): ignores SIGTERM/SIGINT/SIGHUP/SIGPIPE
// (process-wide), sends "R\n" on command_fd (a unix stream socket), then reads commands and the
// descriptors that come with them from it and thaws as described above; mount_path is for
// messages only. Returns the process exit code: 0 after EOF, 1 when the agent cannot be reached
// or read, 2 when started without its command socket.
int RunThawWatchdog(int command_fd, const std::string& mount_path);

}  // namespace cdp::agent
