// cdp-agent: captures every write to a protected device and ships it to the journal-server.
// Wiring only; the work is in cdp::agent::Agent.
#include <boost/program_options.hpp>
#include <csignal>
#include <iostream>

#include "cdp/agent/agent.h"
#include "cdp/core/command_line.h"
#include "cdp/core/logging.h"
#include "cdp/core/process.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  cdp::agent::AgentOptions options;
  std::string ack = "async", engine = "auto", log_level = "info";
  uint64_t buffer_mib = 32;
  po::options_description desc(
      "cdp-agent: protects a device in NBD in-line mode. Clients use the device through the\n"
      "agent's NBD export (export name = volume name); every write is applied to the device\n"
      "and journaled, in order, on the journal-server.\n\n"
      "Usage: cdp-agent --server tcp://HOST:PORT --volume NAME --device PATH\n"
      "                 --nbd unix:PATH|tcp:HOST:PORT [--ack async|sync] [--state-dir DIR]\n\n"
      "Options");
  desc.add_options()("server", po::value(&options.server)->required(),
                     "journal-server endpoint, tcp://HOST:PORT")(
      "volume", po::value(&options.volume)->required(), "volume name (also the NBD export name)")(
      "device", po::value(&options.device)->required(), "file or block device to protect")(
      "nbd", po::value(&options.nbd)->required(), "NBD listen address: unix:PATH or tcp:HOST:PORT")(
      "ack", po::value(&ack)->default_value("async"),
      "async: a write completes once on the device (RPO = journal lag); sync: once durable on "
      "the journal-server (RPO 0)")(
      "state-dir", po::value(&options.state_dir),
      "where the agent keeps its state between runs (default /var/lib/cdp-agent/VOLUME)")(
      "buffer-mib", po::value(&buffer_mib)->default_value(32),
      "memory for records not yet durable; past it async mode tracks dirty regions instead")(
      "io-engine", po::value(&engine)->default_value("auto"), "auto|io_uring|libaio")(
      "drain-seconds", po::value<int>()->default_value(10),
      "on SIGTERM, how long to wait for buffered records to become durable");
  cdp::AddCommonFlags(&desc, &log_level);
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code =
          cdp::ParseCommandLine("cdp-agent", argc, argv, desc, &vm, log_level, &level)) {
    return *exit_code;
  }
  auto mode = cdp::agent::ParseAckMode(ack);
  auto io = cdp::ParseIoEngine(engine);
  if (!mode.ok() || !io.ok() || buffer_mib == 0) {
    std::cerr << "cdp-agent: "
              << (!mode.ok() ? mode.status().message()
                  : !io.ok() ? io.status().message()
                             : std::string("--buffer-mib must be at least 1"))
              << "\n";
    return 2;
  }
  options.ack_mode = *mode;
  options.io_engine = *io;
  options.buffer_bytes = buffer_mib << 20;
  options.drain_ms = vm["drain-seconds"].as<int>() * 1000;
  if (options.state_dir.empty()) options.state_dir = "/var/lib/cdp-agent/" + options.volume;

  // Signals are taken synchronously by this thread; the worker threads never see them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  cdp::TuneAllocatorForLargeBuffers(/*mmap_threshold=*/4 << 20, /*trim_threshold=*/8 << 20);
  cdp::InitLogging("cdp-agent", level);

  auto agent = cdp::agent::Agent::Start(options);
  if (!agent.ok()) {
    std::cerr << "cdp-agent: " << agent.status().message() << "\n";
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  cdp::Status s = (*agent)->Stop();
  if (!s.ok()) {
    std::cerr << "cdp-agent: stop: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
