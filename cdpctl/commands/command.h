// cdpctl's commands: the flags they read, their exit codes, and the table entry each command
// group (commands/*.cc) defines and main.cc dispatches through.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/journal/control_client.h"

namespace cdp::ctl {

// What cdpctl exits with (`cdpctl --help` and docs/operator-guide.md list them). Scripts and
// tests depend on the values: append only, never renumber.
enum class ExitCode : int {
  kOk = 0,
  // The command failed: the server does not answer or refuses, an I/O error, a failed cutover
  // or drill; `target status`: the PE reports an error (pe-error).
  kError = 1,
  // Bad usage: unknown command or argument, a missing or malformed value, a target config or
  // a plan that does not load.
  kUsage = 2,
  // Timed out: wait-synced, checkpoint, target start/stop; `target status`: the target is not
  // ready yet (stopped, booting).
  kTimedOut = 3,
};

// Every flag and word of the command line, parsed by main.cc wherever it appears. A command
// reads the ones it needs and ignores the others.
struct Args {
  std::string server;      // --server tcp://HOST:PORT
  std::string command;     // the first word
  std::string subcommand;  // target's and source's second word (start, stop, status, checksum,
                           // prepare-boot...)
  std::string volume;      // --volume
  std::string config;      // --config (target)
  std::string plan;        // --plan (cutover, drill)
  std::string out;         // --out (target export-boot)
  std::string at;          // --at (restore, export)
  std::string output;      // --output (restore)
  std::string nbd;         // --nbd (export)
  std::string label;       // --label (checkpoint)
  std::optional<std::string> window;     // --window (retention)
  std::optional<std::string> max_bytes;  // --max-bytes (retention)
  std::string offset = "0";              // --offset (target checksum)
  std::string length = "0";              // --length (target checksum)
  std::string chunk = "64M";             // --chunk (target checksum)
  std::vector<std::string> addresses;    // --address, repeated (source fence)
  bool json = false;                     // --json
  bool force = false;                    // --force (restore)
  bool dry_run = false;                  // --dry-run (target prepare-boot)
  double timeout = 300;                  // --timeout SECONDS (wait-synced), > 0
  double watch = 0;                      // --watch SECONDS (target follow-boot), 0 = once
  bool prepare_always = false;           // --prepare-always (target follow-boot)
  std::string pe_agent;                  // --pe-agent PATH (target follow-boot)
  std::string pe_builder;                // --pe-builder PATH (target follow-boot)
};

// One entry of main.cc's command table.
struct Command {
  std::string_view name;
  // Needs --server: main.cc refuses the command without a valid one before calling run.
  bool needs_server;
  // Its lines of `cdpctl --help`, each ending in a newline.
  std::string_view usage;
  ExitCode (*run)(const Args& args);
};

// The commands, one definition per file under commands/.
extern const Command kStatusCommand;      // status.cc
extern const Command kPointsCommand;      // points.cc
extern const Command kCheckpointCommand;  // points.cc
extern const Command kRestoreCommand;     // restore.cc
extern const Command kExportCommand;      // export.cc
extern const Command kRetentionCommand;   // retention.cc
extern const Command kWaitSyncedCommand;  // status.cc
extern const Command kTargetCommand;      // target.cc
extern const Command kCutoverCommand;     // failover.cc
extern const Command kDrillCommand;       // failover.cc
extern const Command kSourceCommand;      // source.cc

// Prints "cdpctl: WHY", a blank line and the whole usage to stderr; returns ExitCode::kUsage.
// Defined in main.cc, which holds the table the usage is built from.
ExitCode Usage(std::string_view why);

// Parses a byte count given on the command line (a number, or 64M, 1G...).
bool ParseBytes(const std::string& text, uint64_t* out);

// Prints "cdpctl: WHAT: MESSAGE" to stderr and returns ExitCode::kError.
ExitCode Fail(std::string_view what, const Status& status);

// Connects to args.server (a control client, 5 s to answer). Prints "cdpctl: WHY" to stderr
// and returns nullptr when the server does not answer.
std::unique_ptr<journal::ControlClient> ConnectToServer(const Args& args);

// Blocks SIGINT and SIGTERM in every thread (ZeroMQ's included: they start later and inherit
// the mask) and takes them in one thread with sigwait, so no system call of the engines is ever
// interrupted (cppzmq throws on EINTR) and they see only the returned flag, set on the first
// signal. Call once, before starting threads; the flag lives for the whole process.
std::atomic<bool>* CancelOnSignals();

}  // namespace cdp::ctl
