// journal-server: the durable change journal of the CDP appliance. Wiring only; the work is in
// cdp::journal::JournalServer.
#include <boost/program_options.hpp>
#include <iostream>

#include "cdp/core/command_line.h"
#include "cdp/core/process.h"
#include "cdp/core/units.h"
#include "cdp/journal/server.h"

namespace po = boost::program_options;

constexpr char kProgram[] = "journal-server";

int main(int argc, char** argv) {
  cdp::journal::ServerOptions options;
  std::string window, max_bytes, reserve;
  po::options_description desc(
      "journal-server: journals the change records of cdp-agents in RocksDB (acked only once\n"
      "synced to disk) and serves them to replicators in LSN order.\n\nUsage: journal-server "
      "--data-dir DIR --listen tcp://HOST:PORT\n\nOptions");
  desc.add_options()("data-dir", po::value(&options.data_dir)->required(),
                     "directory of the journal (created when absent)")(
      "listen", po::value(&options.listen)->required(),
      "ZeroMQ endpoint to serve, tcp://HOST:PORT")(
      "server-id", po::value(&options.server_id)->default_value("journal-server"),
      "name reported to peers and in status")(
      "retention-window", po::value(&window)->default_value("0"),
      "default history kept per volume (90s, 15m, 2h, 7d; 0 = everything); older records are "
      "folded into the volume's base image (cdpctl retention sets it per volume)")(
      "retention-max-bytes", po::value(&max_bytes)->default_value("0"),
      "default cap on a volume's journal bytes (512M, 10G; 0 = none); over it the oldest "
      "history is folded early, even inside the window, and that is reported")(
      "reserve-bytes", po::value(&reserve)->default_value("256M"),
      "free space kept on the journal's filesystem (RocksDB cannot recover from a full WAL "
      "disk): below it nothing is journaled or acked, agents fall back to dirty bitmaps, and "
      "journaling resumes once space is freed")(
      "fold-mbps", po::value(&options.retention.fold_mb_per_s)->default_value(0),
      "MB/s (10^6 bytes) of payload folded into base images; 0 = unlimited");
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine(kProgram, argc, argv, &desc, &vm, &level)) {
    return *exit_code;
  }
  auto window_s = cdp::ParseDuration(window);
  if (!window_s.ok()) {
    return cdp::UsageError(kProgram, "--retention-window: " + window_s.status().message());
  }
  options.retention.default_window_s = *window_s;
  if (max_bytes != "0") {
    auto bytes = cdp::ParseSize(max_bytes);
    if (!bytes.ok()) {
      return cdp::UsageError(kProgram, "--retention-max-bytes: " + bytes.status().message());
    }
    options.retention.default_max_bytes = *bytes;
  }
  auto reserve_bytes = cdp::ParseSize(reserve);
  if (!reserve_bytes.ok()) {
    return cdp::UsageError(kProgram, "--reserve-bytes: " + reserve_bytes.status().message());
  }
  options.reserve_bytes = *reserve_bytes;
  if (options.retention.fold_mb_per_s < 0) {
    return cdp::UsageError(kProgram, "--fold-mbps must be 0 or more");
  }
  const std::atomic<bool>* stop = cdp::StartDaemon(kProgram, level);

  auto server = cdp::journal::JournalServer::Start(options);
  if (!server.ok()) {
    std::cerr << "journal-server: " << server.status().message() << "\n";
    return 1;
  }
  cdp::Status s = (*server)->Run(stop);
  if (!s.ok()) {
    std::cerr << "journal-server: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
