// FsFreezer: short FIFREEZE/FITHAW of a mounted filesystem for consistency points, with a thaw
// watchdog so an application is never held frozen by a stuck or killed agent.
//
// The watchdog is a separate process (`cdp-thaw-watchdog`, installed next to `cdp-agent`),
// spawned by Start with the filesystem already open (its fd 4) and one end of a unix stream
// socket pair from the agent (its fd 3). Before every FIFREEZE the agent tells it "frozen until
// now + hard_limit_ms"; after FITHAW it says "thawed". The watchdog issues FITHAW itself when the
// hard limit passes without "thawed", or at once when the socket closes while frozen (the agent
// died, e.g. kill -9). It exits when the socket closes and ignores SIGTERM/SIGINT/SIGHUP/SIGPIPE
// so a process-group signal cannot remove it before the agent. It writes no log line between a
// freeze and its thaw (stderr may be a file on the frozen filesystem).
//
// Wire between agent and watchdog (one line each, ASCII): watchdog -> agent "R\n" once, when it
// is ready; agent -> watchdog "F <deadline_ms_monotonic>\n" before a freeze, "T\n" after the
// thaw (or after a FIFREEZE that failed). Unknown lines are logged and ignored.
//
// The agent writes with MSG_NOSIGNAL: FsFreezer never raises SIGPIPE and changes no signal
// disposition of the agent process.
//
// Thread-safety: one thread calls Freeze/Thaw at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

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

class FsFreezer {
 public:
  struct Options {
    std::string mount_path;
    int hard_limit_ms = 400;      // the watchdog thaws after this long frozen
    std::string watchdog_exe;     // empty: cdp-thaw-watchdog next to /proc/self/exe
  };

  // Opens mount_path and spawns the watchdog; returns once the watchdog holds the filesystem
  // open and has said it is ready. Errors name the path: IOError if it cannot be opened,
  // FailedPrecondition naming the missing watchdog executable, Unavailable with the exit status
  // of a watchdog that died at start, InvalidArgument for hard_limit_ms <= 0.
  static Result<std::unique_ptr<FsFreezer>> Start(const Options& options);
  // Thaws if frozen, closes the socket (the watchdog exits) and reaps it, SIGKILLing it if it
  // has not exited within 2 s.
  ~FsFreezer();

  // Arms the watchdog, then FIFREEZE. FailedPrecondition ("already frozen") on EBUSY — someone
  // else froze it; the watchdog is disarmed again and nothing is thawed. Unavailable when the
  // watchdog is gone (nothing is frozen then). NotSupported naming the filesystem type when it
  // cannot be frozen. REQUIRES: !frozen() (else FailedPrecondition).
  Status Freeze();
  // FITHAW, then disarms the watchdog. EINVAL (not frozen: the watchdog already thawed) is
  // reported as Aborted so the caller knows its freeze was cut short. On any other FITHAW error
  // frozen() stays true and the watchdog stays armed, so it still thaws at the hard limit.
  // REQUIRES: frozen() (else FailedPrecondition).
  Status Thaw();

  bool frozen() const { return frozen_; }
  // The open mount path (for syncfs before a freeze).
  int mount_fd() const { return mount_fd_; }
  pid_t watchdog_pid() const { return watchdog_pid_; }

 private:
  FsFreezer() = default;
  Options options_;
  int mount_fd_ = -1;
  int pipe_fd_ = -1;  // the agent's end of the socket pair to the watchdog
  pid_t watchdog_pid_ = -1;
  bool frozen_ = false;
};

// The watchdog process's main loop (cdp-thaw-watchdog): ignores SIGTERM/SIGINT/SIGHUP/SIGPIPE
// (process-wide), sends "R\n" on command_fd (a socket), then reads commands from it and thaws
// mount_fd as described above. Returns the process exit code: 0 after EOF, 1 when the agent
// cannot be reached or read, 2 when started without its descriptors.
int RunThawWatchdog(int command_fd, int mount_fd, const std::string& mount_path);

}  // namespace cdp::agent
