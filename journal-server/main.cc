// journal-server: the durable change journal of the CDP appliance. Wiring only; the work is in
// cdp::journal::JournalServer.
#include <boost/program_options.hpp>
#include <csignal>
#include <iostream>

#include "cdp/core/command_line.h"
#include "cdp/core/logging.h"
#include "cdp/core/process.h"
#include "cdp/journal/server.h"

namespace po = boost::program_options;

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  cdp::journal::ServerOptions options;
  std::string log_level = "info";
  po::options_description desc(
      "journal-server: journals the change records of cdp-agents in RocksDB (acked only once\n"
      "synced to disk) and serves them to replicators in LSN order.\n\nUsage: journal-server "
      "--data-dir DIR --listen tcp://HOST:PORT\n\nOptions");
  desc.add_options()("data-dir", po::value(&options.data_dir)->required(),
                     "directory of the journal (created when absent)")(
      "listen", po::value(&options.listen)->required(),
      "ZeroMQ endpoint to serve, tcp://HOST:PORT")(
      "server-id", po::value(&options.server_id)->default_value("journal-server"),
      "name reported to peers and in status");
  cdp::AddCommonFlags(&desc, &log_level);
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code =
          cdp::ParseCommandLine("journal-server", argc, argv, desc, &vm, log_level, &level)) {
    return *exit_code;
  }
  cdp::InitLogging("journal-server", level);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  cdp::TuneAllocatorForLargeBuffers();

  auto server = cdp::journal::JournalServer::Start(options);
  if (!server.ok()) {
    std::cerr << "journal-server: " << server.status().message() << "\n";
    return 1;
  }
  cdp::Status s = (*server)->Run(&g_stop);
  if (!s.ok()) {
    std::cerr << "journal-server: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
