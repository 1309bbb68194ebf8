// Running a host tool (qemu-img, qemu-system-x86_64, ip) and collecting what it printed.
#pragma once

#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp {

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal (timeout)
  std::string output;  // stdout and stderr, interleaved
  bool timed_out = false;  // killed at the timeout (HostCommandOptions::timeout_is_result)
};

// How RunHostCommand runs a command beyond its defaults.
struct HostCommandOptions {
  // Starts the command in a process group of its own and kills the whole group (SIGKILL) at the
  // timeout, so a shell's children die with it (the agent's pre-freeze hooks).
  bool own_process_group = false;
  // Keeps only the last this many bytes of output (0: all of it).
  size_t keep_output_tail = 0;
  // A timeout is a result (timed_out, exit_code -1, the output so far) instead of TimedOut.
  bool timeout_is_result = false;
};

// Runs argv[0] (looked up in PATH) with stdin from /dev/null, no signal blocked and SIGINT and
// SIGTERM at their default actions (whatever the caller blocked), waiting at most timeout_ms
// (then SIGKILL). NotFound when the program is not installed ("install it: deploy/
// install-deps.sh"); a non-zero exit is not an error here — check exit_code.
Result<CommandResult> RunHostCommand(const std::vector<std::string>& argv, int timeout_ms);
// The same with `options`.
Result<CommandResult> RunHostCommand(const std::vector<std::string>& argv, int timeout_ms,
                                     const HostCommandOptions& options);

// "qemu-img info ..." as one line, shell-quoted where needed, for messages.
std::string CommandLine(const std::vector<std::string>& argv);

}  // namespace cdp
