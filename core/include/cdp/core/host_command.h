// Running a host tool (qemu-img, qemu-system-x86_64, ip) and collecting what it printed.
#pragma once

#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp {

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal (timeout)
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv[0] (looked up in PATH) with stdin from /dev/null, no signal blocked and SIGINT and
// SIGTERM at their default actions (whatever the caller blocked), waiting at most timeout_ms
// (then SIGKILL). NotFound when the program is not installed ("install it: deploy/
// install-deps.sh"); a non-zero exit is not an error here — check exit_code.
Result<CommandResult> RunHostCommand(const std::vector<std::string>& argv, int timeout_ms);

// "qemu-img info ..." as one line, shell-quoted where needed, for messages.
std::string CommandLine(const std::vector<std::string>& argv);

}  // namespace cdp
