// cdpctl: the operator's command line. Parses the flags, finds the command in the table and
// runs it; each command group is a file under commands/, the work is in cdp::ctl, cdp::journal
// and cdp::failover.
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/logging.h"
#include "cdp/core/transport.h"
#include "commands/command.h"

namespace cdp::ctl {
namespace {

// In --help order: the commands that talk to the journal-server (--server) first.
const Command* const kCommands[] = {
    &kStatusCommand, &kPointsCommand,    &kCheckpointCommand, &kRestoreCommand,
    &kExportCommand, &kRetentionCommand, &kWaitSyncedCommand, &kSourceCommand,
    &kTargetCommand, &kCutoverCommand,   &kDrillCommand,
};

constexpr std::string_view kExitCodes =
    "Exit codes: 0 ok; 1 error (the server does not answer or refuses, a command, cutover or\n"
    "drill failed; target status: pe-error); 2 bad usage (unknown command or argument, a\n"
    "missing or bad value, a target config or plan that does not load); 3 timeout (wait-synced,\n"
    "checkpoint, target start/stop; target status: stopped or booting, not ready yet).\n";

std::string UsageText() {
  std::string text = "cdpctl: operate the CDP appliance.\n\nUsage:\n";
  for (bool server : {true, false}) {
    for (const Command* c : kCommands) {
      if (c->needs_server == server) text += c->usage;
    }
    text += "\n";
  }
  return text += kExitCodes;
}

const Command* FindCommand(std::string_view name) {
  for (const Command* c : kCommands) {
    if (c->name == name) return c;
  }
  return nullptr;
}

// A number of seconds > 0, the whole of `text`.
bool ParsePositiveSeconds(const std::string& text, double* out) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    return false;
  }
  if (used != text.size() || !(v > 0)) return false;
  *out = v;
  return true;
}

// Parses every flag and word of the command line into *args; "" when it parsed, else why not.
// Sets *help on -h, --help or help anywhere.
std::string ParseArgs(const std::vector<std::string>& words, Args* args, bool* help) {
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& a = words[i];
    const bool has_value = i + 1 < words.size();
    // Flags that take a value, and where it goes.
    std::string* value = nullptr;
    std::optional<std::string>* optional_value = nullptr;
    if (a == "-h" || a == "--help" || a == "help") {
      *help = true;
      return "";
    } else if (a == "--json") {
      args->json = true;
      continue;
    } else if (a == "--force") {
      args->force = true;
      continue;
    } else if (a == "--dry-run") {
      args->dry_run = true;
      continue;
    } else if (a == "--prepare-always") {
      args->prepare_always = true;
      continue;
    } else if (a == "--pe-agent") {
      value = &args->pe_agent;
    } else if (a == "--pe-builder") {
      value = &args->pe_builder;
    } else if (a == "--watch") {
      if (!has_value) return a + " needs a value";
      const std::string& t = words[++i];
      if (!ParsePositiveSeconds(t, &args->watch)) return "bad --watch '" + t + "' (seconds, > 0)";
      continue;
    } else if (a == "--server") {
      value = &args->server;
    } else if (a == "--at") {
      value = &args->at;
    } else if (a == "--output") {
      value = &args->output;
    } else if (a == "--nbd") {
      value = &args->nbd;
    } else if (a == "--label") {
      value = &args->label;
    } else if (a == "--window") {
      optional_value = &args->window;
    } else if (a == "--max-bytes") {
      optional_value = &args->max_bytes;
    } else if (a == "--offset") {
      value = &args->offset;
    } else if (a == "--length") {
      value = &args->length;
    } else if (a == "--chunk") {
      value = &args->chunk;
    } else if (a == "--plan") {
      value = &args->plan;
    } else if (a == "--config") {
      value = &args->config;
    } else if (a == "--out") {
      value = &args->out;
    } else if (a == "--volume") {
      value = &args->volume;
    } else if (a == "--address") {
      if (!has_value) return a + " needs a value";
      args->addresses.push_back(words[++i]);
      continue;
    } else if (a == "--timeout") {
      if (!has_value) return a + " needs a value";
      const std::string& t = words[++i];
      if (!ParsePositiveSeconds(t, &args->timeout)) return "bad --timeout '" + t + "'";
      continue;
    } else if (args->command.empty() && !a.empty() && a[0] != '-') {
      args->command = a;
      continue;
    } else if ((args->command == "target" || args->command == "source") &&
               args->subcommand.empty() && !a.empty() && a[0] != '-') {
      args->subcommand = a;
      continue;
    } else {
      return "unknown argument '" + a + "'";
    }
    if (!has_value) return a + " needs a value";
    if (value != nullptr) {
      *value = words[++i];
    } else {
      *optional_value = words[++i];
    }
  }
  return "";
}

ExitCode Run(const std::vector<std::string>& words) {
  Args args;
  bool help = false;
  if (std::string why = ParseArgs(words, &args, &help); !why.empty()) return Usage(why);
  if (help) {
    std::cout << UsageText();
    return ExitCode::kOk;
  }
  if (args.command.empty()) return Usage("no command given");
  const Command* command = FindCommand(args.command);
  if (command == nullptr) return Usage("unknown command '" + args.command + "'");
  if (command->needs_server) {
    if (args.server.empty()) return Usage("--server tcp://HOST:PORT is required");
    if (Status s = ValidateEndpoint(args.server); !s.ok()) return Usage(s.message());
  }
  return command->run(args);
}

}  // namespace

ExitCode Usage(std::string_view why) {
  std::cerr << "cdpctl: " << why << "\n\n" << UsageText();
  return ExitCode::kUsage;
}

}  // namespace cdp::ctl

int main(int argc, char** argv) {
  // Library warnings (the NBD server of `export`) go to stderr; stdout stays the command's.
  cdp::InitLogging("cdpctl", cdp::LogLevel::kWarning);
  return static_cast<int>(cdp::ctl::Run(std::vector<std::string>(argv + 1, argv + argc)));
}
