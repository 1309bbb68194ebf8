// Pre-freeze hooks: the commands a cutover's quiesce runs on the source before the group freeze
// (`psql -c CHECKPOINT`, an application's "flush now"), in order, each with a timeout. A hook runs
// without a shell (its argv as given, looked up in PATH), stdin from /dev/null, in a process
// group of its own that is killed (SIGKILL) at its timeout, so a shell's children go with it; its
// stdout and stderr are kept, the last kHookOutputTail bytes. The first hook that fails stops the
// run: nothing is frozen then.
//
// Thread-safety: RunHooks may run on any thread, several at once.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

inline constexpr size_t kHookOutputTail = 4096;  // output bytes kept per hook
inline constexpr int kDefaultHookTimeoutMs = 10000;

struct Hook {
  std::vector<std::string> argv;
  int timeout_ms = kDefaultHookTimeoutMs;  // <= 0: kDefaultHookTimeoutMs
};

struct HookRun {
  std::string command;  // the command line, shell-quoted where needed
  int exit_code = -1;   // -1: killed at its timeout (or by a signal)
  std::string output;   // the tail of stdout and stderr
  double seconds = 0;
};

// Runs `hooks` in order until one fails; every hook run (the failed one last) goes to *runs.
// The error names the hook by its number (1-based) and command line, and says how it failed,
// with the last line of its output ("(no output)" when none):
//   FailedPrecondition "pre-freeze hook 2 (psql -c CHECKPOINT) exited 3: ERROR: ..."
//   TimedOut           "pre-freeze hook 1 (sleep 60) did not finish within 0.2 s (its process
//                       group was killed): (no output)"
//   FailedPrecondition "pre-freeze hook 1 (psql -c CHECKPOINT) cannot run: psql is not installed
//                       (or not in PATH)"
//   InvalidArgument    "pre-freeze hook 1 has no command"
Status RunHooks(const std::vector<Hook>& hooks, std::vector<HookRun>* runs);

}  // namespace cdp::agent
