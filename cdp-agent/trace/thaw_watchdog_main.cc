// cdp-thaw-watchdog: thaws a filesystem that cdp-agent froze and did not thaw in time, or whose
// agent died while it was frozen. Started by cdp-agent (FsFreezer::Start), never by hand: it
// expects its command socket on fd 3, on which the agent passes a descriptor of the filesystem
// with each freeze. The work is in cdp::agent::RunThawWatchdog.
#include <boost/program_options.hpp>
#include <string>

#include "cdp/agent/fs_freezer.h"
#include "cdp/core/command_line.h"
#include "cdp/core/logging.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  std::string mount;
  po::options_description desc(
      "cdp-thaw-watchdog: started by cdp-agent for --freeze. Reads \"F <deadline_ms>\" with a\n"
      "descriptor of the filesystem, and \"T\", from the agent (unix socket on fd 3); holds the\n"
      "filesystem open only from F to T and thaws it when a freeze outlives its deadline or the\n"
      "agent exits while it is frozen. Ignores SIGTERM, SIGINT and SIGHUP; exits when the agent\n"
      "closes the socket.\n\n"
      "Usage: cdp-thaw-watchdog --mount PATH 3<>COMMAND_SOCKET\n\n"
      "Options");
  desc.add_options()("mount", po::value(&mount)->required(),
                     "the filesystem's path (for messages; the agent passes the fs itself)");
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine("cdp-thaw-watchdog", argc, argv, &desc, &vm, &level)) {
    return *exit_code;
  }
  cdp::InitLogging("cdp-thaw-watchdog", level);
  return cdp::agent::RunThawWatchdog(/*command_fd=*/3, mount);
}
