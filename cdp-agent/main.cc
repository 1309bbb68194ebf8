// cdp-agent: captures every write to a protected device and ships it to the journal-server.
// Wiring only; the work is in cdp::agent::Agent.
#include <boost/program_options.hpp>
#include <cstdlib>
#include <iostream>

#include "cdp/agent/agent.h"
#include "cdp/core/command_line.h"
#include "cdp/core/logging.h"
#include "cdp/core/process.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  cdp::agent::AgentOptions options;
  std::string ack = "async", engine = "auto";
  uint64_t buffer_mib = 32;
  double checkpoint_seconds = 1.0;
  po::options_description desc(
      "cdp-agent: protects a block device and journals its changes on the journal-server.\n\n"
      "NBD in-line mode: clients use the device through the agent's NBD export (export name =\n"
      "volume name); every write is applied to the device and journaled, in order.\n"
      "  cdp-agent --server tcp://HOST:PORT --volume NAME --device PATH\n"
      "            --nbd unix:PATH|tcp:HOST:PORT [--ack async|sync] [--state-dir DIR]\n\n"
      "Trace mode: protects a block device that is mounted and in use, from the kernel's block\n"
      "tracepoints (no kernel module, no reboot); with --freeze, a short filesystem freeze every\n"
      "checkpoint interval makes a consistency point.\n"
      "  cdp-agent --server tcp://HOST:PORT --volume NAME --device /dev/XXX --trace\n"
      "            [--freeze MOUNTPOINT] [--checkpoint-interval SECONDS] [--state-dir DIR]\n\n"
      "Options");
  desc.add_options()("server", po::value(&options.server)->required(),
                     "journal-server endpoint, tcp://HOST:PORT")(
      "volume", po::value(&options.volume)->required(), "volume name (also the NBD export name)")(
      "device", po::value(&options.device)->required(),
      "file or block device to protect (trace mode: a block device)")(
      "nbd", po::value(&options.nbd), "NBD mode: listen address, unix:PATH or tcp:HOST:PORT")(
      "ack", po::value(&ack)->default_value("async"),
      "NBD mode. async: a write completes once on the device (RPO = journal lag); sync: once "
      "durable on the journal-server (RPO 0)")(
      "trace", po::bool_switch(&options.trace), "trace mode: protect a device that is in use")(
      "freeze", po::value(&options.freeze_path),
      "trace mode: mount point of the filesystem on --device, frozen briefly (FIFREEZE) for "
      "every consistency point")(
      "checkpoint-interval", po::value(&checkpoint_seconds)->default_value(1.0),
      "trace mode: seconds between consistency points (freezes)")(
      "freeze-limit-ms", po::value(&options.freeze_limit_ms)->default_value(200),
      "trace mode: a freeze that would last longer is abandoned (thawed at once) and retried; "
      "a watchdog process thaws after twice this even if the agent is stuck or killed")(
      "trace-buffer-kb", po::value(&options.trace_buffer_kb)->default_value(4096),
      "trace mode: per-CPU kernel trace buffer; an overrun costs a checksum resync")(
      "tracefs", po::value(&options.tracefs_root),
      "trace mode: tracefs mount (default: /sys/kernel/tracing, mounted if needed)")(
      "state-dir", po::value(&options.state_dir),
      "where the agent keeps its state between runs (default /var/lib/cdp-agent/VOLUME)")(
      "buffer-mib", po::value(&buffer_mib)->default_value(32),
      "memory for records not yet durable; past it async mode tracks dirty regions instead (at "
      "least 2 in NBD mode, 8 in trace mode; NBD requests are at most half of it)")(
      "io-engine", po::value(&engine)->default_value("auto"), "auto|io_uring|libaio")(
      "bandwidth-limit", po::value<double>()->default_value(0),
      "MB/s (10^6 bytes) of payload to the journal-server; 0 = unlimited. Past the limit records "
      "wait in the buffer (then, in NBD async mode, dirty regions; in trace mode the extent map)")(
      "drain-seconds", po::value<int>()->default_value(10),
      "on SIGTERM, how long to wait for buffered records to become durable")(
      "take-over", po::bool_switch(&options.take_over),
      "become the volume's writer although the journal-server has another agent as its writer, "
      "fencing that one (its writes are refused from then on); for an agent whose state dir was "
      "lost, or that replaces a host that is gone for good");
  po::variables_map vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine("cdp-agent", argc, argv, &desc, &vm, &level)) {
    return *exit_code;
  }
  auto mode = cdp::agent::ParseAckMode(ack);
  auto io = cdp::ParseIoEngine(engine);
  std::string bad;
  if (!mode.ok()) {
    bad = mode.status().message();
  } else if (!io.ok()) {
    bad = io.status().message();
  } else if (buffer_mib > (1u << 20)) {
    bad = "--buffer-mib " + std::to_string(buffer_mib) + " is more than 1048576 (1 TiB)";
  } else if (auto b = cdp::agent::ValidateBufferBytes(buffer_mib << 20, options.trace); !b.ok()) {
    bad = b.message();
  } else if (!options.trace && options.nbd.empty()) {
    bad = "pass --nbd ADDRESS (NBD in-line mode) or --trace (trace mode)";
  } else if (!options.trace && (vm.count("freeze") || !vm["checkpoint-interval"].defaulted())) {
    bad = "--freeze and --checkpoint-interval need --trace";
  } else if (!(checkpoint_seconds >= 0.05 && checkpoint_seconds <= 86400)) {
    bad = "--checkpoint-interval must be between 0.05 and 86400 seconds";
  } else if (options.freeze_limit_ms < 10 || options.freeze_limit_ms > 60000) {
    bad = "--freeze-limit-ms must be between 10 and 60000";
  } else if (!(vm["bandwidth-limit"].as<double>() >= 0)) {
    bad = "--bandwidth-limit must be 0 (unlimited) or a positive MB/s";
  } else if (options.trace_buffer_kb < 4 || options.trace_buffer_kb > (1u << 20)) {
    bad = "--trace-buffer-kb must be between 4 and 1048576";
  }
  if (!bad.empty()) return cdp::UsageError("cdp-agent", bad);
  options.checkpoint_interval_ms = static_cast<int>(checkpoint_seconds * 1000);
  options.bandwidth_bytes_per_sec =
      static_cast<uint64_t>(vm["bandwidth-limit"].as<double>() * 1e6);
#if CDP_TEST_HOOKS
  // Test build only (docs/testing.md): hold each freeze this long, to test the thaw watchdog.
  if (const char* hold = std::getenv("CDP_AGENT_TEST_FREEZE_HOLD_MS")) {
    options.freeze_hold_ms = std::atoi(hold);
  }
#endif
  options.ack_mode = *mode;
  options.io_engine = *io;
  options.buffer_bytes = buffer_mib << 20;
  options.drain_ms = vm["drain-seconds"].as<int>() * 1000;
  if (options.state_dir.empty()) options.state_dir = "/var/lib/cdp-agent/" + options.volume;

  // Signals are taken synchronously by this thread; the worker threads never see them.
  cdp::BlockStopSignals();
  cdp::TuneAllocatorForLargeBuffers(/*mmap_threshold=*/4 << 20, /*trim_threshold=*/8 << 20);
  cdp::InitLogging("cdp-agent", level);

  auto agent = cdp::agent::Agent::Start(options);
  if (!agent.ok()) {
    std::cerr << "cdp-agent: " << agent.status().message() << "\n";
    return 1;
  }
  cdp::WaitForStopSignal();
  cdp::Status s = (*agent)->Stop();
  if (!s.ok()) {
    std::cerr << "cdp-agent: stop: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
