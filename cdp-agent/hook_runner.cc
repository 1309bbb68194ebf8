#include "cdp/agent/hook_runner.h"

#include <chrono>

#include "cdp/core/host_command.h"
#include "cdp/core/units.h"

namespace cdp::agent {

namespace {

// The last non-empty line of `output`, at most 512 bytes; "(no output)" when there is none.
std::string LastLine(const std::string& output) {
  size_t end = output.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return "(no output)";
  size_t begin = output.rfind('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  if (end + 1 - begin > 512) begin = end + 1 - 512;
  return output.substr(begin, end + 1 - begin);
}

}  // namespace

Status RunHooks(const std::vector<Hook>& hooks, std::vector<HookRun>* runs) {
  for (size_t i = 0; i < hooks.size(); ++i) {
    const Hook& hook = hooks[i];
    const std::string which = "pre-freeze hook " + std::to_string(i + 1);
    if (hook.argv.empty() || hook.argv[0].empty()) {
      return Status::InvalidArgument(which + " has no command");
    }
    const int timeout_ms = hook.timeout_ms > 0 ? hook.timeout_ms : kDefaultHookTimeoutMs;
    HookRun run;
    run.command = CommandLine(hook.argv);
    const std::string named = which + " (" + run.command + ")";
    HostCommandOptions options;
    options.own_process_group = true;
    options.keep_output_tail = kHookOutputTail;
    options.timeout_is_result = true;
    const auto start = std::chrono::steady_clock::now();
    auto result = RunHostCommand(hook.argv, timeout_ms, options);
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!result.ok()) {
      runs->push_back(run);
      if (result.status().IsNotFound()) {
        return Status::FailedPrecondition(named + " cannot run: " + hook.argv[0] +
                                          " is not installed (or not in PATH)");
      }
      return Status(result.status().code(), named + " cannot run: " + result.status().message());
    }
    run.exit_code = result->exit_code;
    run.output = result->output;
    runs->push_back(run);
    if (result->timed_out) {
      return Status::TimedOut(named + " did not finish within " +
                              FormatFixed(timeout_ms / 1000.0, timeout_ms % 1000 == 0 ? 0 : 1) +
                              " s (its process group was killed): " + LastLine(run.output));
    }
    if (result->exit_code != 0) {
      return Status::FailedPrecondition(named +
                                        (result->exit_code < 0
                                             ? " was killed by a signal"
                                             : " exited " + std::to_string(result->exit_code)) +
                                        ": " + LastLine(run.output));
    }
  }
  return Status::Ok();
}

}  // namespace cdp::agent
