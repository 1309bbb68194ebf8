// replicator: applies one volume's journal to a target image. Wiring only.
#include <boost/program_options.hpp>
#include <iostream>

#include "cdp/core/command_line.h"
#include "cdp/core/process.h"
#include "cdp/replicator/replicator.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  cdp::replicator::ReplicatorOptions options;
  std::string engine = "auto";
  po::options_description desc(
      "replicator: tails a volume's journal from the journal-server and applies it, in LSN\n"
      "order, to a target: a raw image file (created with the volume's size when absent), or\n"
      "the pe-agent of a target VM in its preinstallation environment (pe:tcp://HOST:PORT).\n"
      "The applied LSN is saved after the data is stable (for a PE target, inside the target);\n"
      "a restart or a reconnection resumes from it.\n\n"
      "Usage: replicator --server tcp://HOST:PORT --volume NAME --target PATH|pe:tcp://HOST:PORT\n"
      "                  [--state-dir DIR]\n\nOptions");
  desc.add_options()("server", po::value(&options.server)->required(),
                     "journal-server endpoint, tcp://HOST:PORT")(
      "volume", po::value(&options.volume)->required(), "volume to replicate")(
      "target", po::value(&options.target)->required(),
      "raw image file or block device, or pe:tcp://HOST:PORT (a target VM's pe-agent)")(
      "state-dir", po::value(&options.state_dir),
      "image targets: where the replica cursor is kept (default: the target's directory)")(
      "io-engine", po::value(&engine)->default_value("auto"), "auto|io_uring|libaio");
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine("replicator", argc, argv, &desc, &vm, &level)) {
    return *exit_code;
  }
  auto io = cdp::ParseIoEngine(engine);
  if (!io.ok()) return cdp::UsageError("replicator", io.status().message());
  options.io_engine = *io;
  const std::atomic<bool>* stop = cdp::StartDaemon("replicator", level);
  cdp::replicator::Replicator replicator(options);
  cdp::Status s = replicator.Run(stop);
  if (!s.ok()) {
    std::cerr << "replicator: " << s.message() << "\n";
    return 1;
  }
  return 0;
}
