// cdp-agent: captures every write to protected devices and ships it to the journal-server.
// Wiring only: flags and config files (agent_config.h) become one AgentOptions per volume; the
// work is in cdp::agent::AgentProcess.
#include <boost/program_options.hpp>
#include <cstdlib>
#include <iostream>

#include "cdp/agent/agent.h"
#include "cdp/agent/agent_config.h"
#include "cdp/core/command_line.h"
#include "cdp/core/logging.h"
#include "cdp/core/process.h"
#include "cdp/core/test_hooks.h"

namespace po = boost::program_options;

namespace {

// The flags of one volume (a config file's keys are these with '-' turned into '_').
po::options_description VolumeFlags() {
  po::options_description desc(
      "Options of a volume (on the command line, or as keys of a "
      "--config file: checkpoint-interval -> checkpoint_interval)");
  desc.add_options()("server", po::value<std::string>(),
                     "journal-server endpoint, tcp://HOST:PORT")(
      "volume", po::value<std::string>(), "volume name (also the NBD export name)")(
      "device", po::value<std::string>(),
      "file or block device to protect (trace mode: a block device, a whole disk or a partition)")(
      "nbd", po::value<std::string>(), "NBD mode: listen address, unix:PATH or tcp:HOST:PORT")(
      "ack", po::value<std::string>()->default_value("async"),
      "NBD mode. async: a write completes once on the device (RPO = journal lag); sync: once "
      "durable on the journal-server (RPO 0)")("trace", po::bool_switch(),
                                               "trace mode: protect a device that is in use")(
      "freeze", po::value<std::vector<std::string>>(),
      "trace mode: mount point of a filesystem on --device (or on a partition or LVM volume of "
      "it), frozen briefly (FIFREEZE) for every consistency point; repeat for several, or "
      "'auto': every freezable filesystem mounted from the device")(
      "checkpoint-interval", po::value<double>()->default_value(1.0),
      "trace mode: seconds between consistency points (freezes)")(
      "freeze-limit-ms", po::value<int>()->default_value(200),
      "trace mode: a freeze that would last longer is abandoned (thawed at once) and retried; "
      "a watchdog process thaws after twice this even if the agent is stuck or killed")(
      "trace-buffer-kb", po::value<uint32_t>()->default_value(4096),
      "trace mode: per-CPU kernel trace buffer; an overrun costs a checksum resync")(
      "tracefs", po::value<std::string>(),
      "trace mode: tracefs mount (default: /sys/kernel/tracing, mounted if needed)")(
      "state-dir", po::value<std::string>(),
      "where the agent keeps its state between runs (default /var/lib/cdp-agent/VOLUME)")(
      "buffer-mib", po::value<uint64_t>()->default_value(32),
      "memory for records not yet durable; past it async mode tracks dirty regions instead (at "
      "least 2 in NBD mode, 8 in trace mode; NBD requests are at most half of it)")(
      "io-engine", po::value<std::string>()->default_value("auto"), "auto|io_uring|libaio")(
      "bandwidth-limit", po::value<double>()->default_value(0),
      "MB/s (10^6 bytes) of payload to the journal-server; 0 = unlimited. Past the limit records "
      "wait in the buffer (then, in NBD async mode, dirty regions; in trace mode the extent map)")(
      "drain-seconds", po::value<int>()->default_value(10),
      "on SIGTERM, how long to wait for buffered records to become durable")(
      "take-over", po::bool_switch(),
      "become the volume's writer although the journal-server has another agent as its writer, "
      "fencing that one (its writes are refused from then on); for an agent whose state dir was "
      "lost, or that replaces a host that is gone for good");
  return desc;
}

// One volume's AgentOptions from its flags, or the usage error (one line).
cdp::Result<cdp::agent::AgentOptions> VolumeOptions(const po::variables_map& vm) {
  cdp::agent::AgentOptions options;
  for (const char* required : {"server", "volume", "device"}) {
    if (!vm.count(required)) {
      return cdp::Status::InvalidArgument(std::string("the option '--") + required +
                                          "' is required but missing; see --help");
    }
  }
  auto get = [&vm](const char* name) {
    return vm.count(name) ? vm[name].as<std::string>() : std::string();
  };
  options.server = get("server");
  options.volume = get("volume");
  options.device = get("device");
  options.nbd = get("nbd");
  options.trace = vm["trace"].as<bool>();
  options.take_over = vm["take-over"].as<bool>();
  if (vm.count("freeze")) options.freeze_paths = vm["freeze"].as<std::vector<std::string>>();
  options.freeze_limit_ms = vm["freeze-limit-ms"].as<int>();
  options.trace_buffer_kb = vm["trace-buffer-kb"].as<uint32_t>();
  options.tracefs_root = get("tracefs");
  options.state_dir = get("state-dir");
  const uint64_t buffer_mib = vm["buffer-mib"].as<uint64_t>();
  const double checkpoint_seconds = vm["checkpoint-interval"].as<double>();
  auto mode = cdp::agent::ParseAckMode(get("ack"));
  auto io = cdp::ParseIoEngine(get("io-engine"));
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
  if (!bad.empty()) return cdp::Status::InvalidArgument(bad);
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
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> config_files;
  std::string config_dir, group;
  po::options_description desc(
      "cdp-agent: protects block devices and journals their changes on the journal-server.\n\n"
      "NBD in-line mode: clients use the device through the agent's NBD export (export name =\n"
      "volume name); every write is applied to the device and journaled, in order.\n"
      "  cdp-agent --server tcp://HOST:PORT --volume NAME --device PATH\n"
      "            --nbd unix:PATH|tcp:HOST:PORT [--ack async|sync] [--state-dir DIR]\n\n"
      "Trace mode: protects a block device that is mounted and in use, from the kernel's block\n"
      "tracepoints (no kernel module, no reboot); with --freeze, a short filesystem freeze every\n"
      "checkpoint interval makes a consistency point.\n"
      "  cdp-agent --server tcp://HOST:PORT --volume NAME --device /dev/XXX --trace\n"
      "            [--freeze MOUNTPOINT|auto] [--checkpoint-interval SECONDS] [--state-dir DIR]\n\n"
      "Several volumes in one process (one consistency group: one freeze of all their\n"
      "filesystems makes a group point), one YAML file per volume:\n"
      "  cdp-agent --config FILE [--config FILE...]\n"
      "  cdp-agent --config-dir DIR --group NAME     (every DIR/*.conf of group NAME)\n\n"
      "Options");
  desc.add_options()("config", po::value(&config_files),
                     "a volume's config file (YAML: the options below as keys, '-' -> '_'); "
                     "repeat for several volumes. With one, options on the command line "
                     "override its keys")(
      "config-dir", po::value(&config_dir),
      "protect the volumes of every DIR/*.conf whose `group` is --group (a file without one is "
      "in the group named after its volume)")(
      "group", po::value(&group),
      "with --config-dir: the group to protect; otherwise the consistency group's name "
      "(default: the volume's name)");
  desc.add(VolumeFlags());
  po::variables_map cli_vm;
  cdp::LogLevel level;
  if (auto exit_code = cdp::ParseCommandLine("cdp-agent", argc, argv, &desc, &cli_vm, &level)) {
    return *exit_code;
  }
  // The command line's own volume flags, kept apart to be merged with each config file.
  const po::options_description volume_flags = VolumeFlags();
  po::options_description cli_volume_desc;
  cli_volume_desc.add(volume_flags);
  po::options_description ignored;
  ignored.add_options()("config", po::value<std::vector<std::string>>())(
      "config-dir", po::value<std::string>())("group", po::value<std::string>())(
      "log-level", po::value<std::string>())("help,h", "");
  cli_volume_desc.add(ignored);
  po::parsed_options cli_parsed =
      po::command_line_parser(argc, argv).options(cli_volume_desc).run();
  std::vector<std::string> cli_volume_flags;
  for (const auto& opt : cli_parsed.options) {
    if (volume_flags.find_nothrow(opt.string_key, false) != nullptr) {
      cli_volume_flags.push_back(opt.string_key);
    }
  }

  std::vector<cdp::agent::VolumeConfig> configs;
  if (!config_dir.empty()) {
    if (group.empty()) return cdp::UsageError("cdp-agent", "--config-dir needs --group NAME");
    if (!config_files.empty()) {
      return cdp::UsageError("cdp-agent", "pass --config-dir or --config, not both");
    }
    auto loaded = cdp::agent::LoadGroupConfigs(config_dir, group);
    if (!loaded.ok()) return cdp::UsageError("cdp-agent", loaded.status().message());
    configs = std::move(*loaded);
  }
  for (const std::string& file : config_files) {
    auto loaded = cdp::agent::LoadVolumeConfig(file);
    if (!loaded.ok()) return cdp::UsageError("cdp-agent", loaded.status().message());
    configs.push_back(std::move(*loaded));
  }
  if (configs.size() > 1 && !cli_volume_flags.empty()) {
    return cdp::UsageError(
        "cdp-agent", "--" + cli_volume_flags[0] + " on the command line: with " +
                         std::to_string(configs.size()) +
                         " config files, options of a volume go in its file (the command line "
                         "may override them only with a single --config)");
  }

  std::vector<cdp::agent::AgentOptions> volumes;
  bool level_from_config = false;
  auto add_volume = [&](const cdp::agent::VolumeConfig* config) -> std::string {
    po::variables_map vm;
    try {
      po::store(cli_parsed, vm);
      if (config != nullptr) {
        po::options_description file_desc;
        file_desc.add(volume_flags);
        file_desc.add_options()("log-level", po::value<std::string>());
        po::store(po::command_line_parser(config->args).options(file_desc).run(), vm);
      }
      po::notify(vm);
    } catch (const po::error& e) {
      return std::string(e.what()) + "; see --help";
    }
    if (config != nullptr && cli_vm["log-level"].defaulted() && vm.count("log-level") &&
        !level_from_config) {
      if (!cdp::ParseLogLevel(vm["log-level"].as<std::string>(), &level)) {
        return "bad log_level '" + vm["log-level"].as<std::string>() +
               "': expected trace|debug|info|warning|error";
      }
      level_from_config = true;
    }
    auto options = VolumeOptions(vm);
    if (!options.ok()) return options.status().message();
    options->group = config != nullptr && !group.empty() && config_dir.empty()
                         ? group
                         : (config != nullptr ? config->group : group);
    volumes.push_back(std::move(*options));
    return "";
  };
  if (configs.empty()) {
    if (std::string bad = add_volume(nullptr); !bad.empty()) {
      return cdp::UsageError("cdp-agent", bad);
    }
  }
  for (const auto& config : configs) {
    if (std::string bad = add_volume(&config); !bad.empty()) {
      return cdp::UsageError("cdp-agent", config.path + ": " + bad);
    }
  }

  // Signals are taken synchronously by this thread; the worker threads never see them.
  cdp::BlockStopSignals();
  cdp::TuneAllocatorForLargeBuffers(/*mmap_threshold=*/4 << 20, /*trim_threshold=*/8 << 20);
  cdp::InitLogging("cdp-agent", level);

  auto process = cdp::agent::AgentProcess::Start(volumes);
  if (!process.ok()) {
    std::cerr << "cdp-agent: " << process.status().message() << "\n";
    return 1;
  }
#if CDP_TEST_HOOKS
  // Test build only (docs/testing.md): every freeze starts a save of each volume's state file
  // (on a thread of its own) while the filesystems are frozen — the state dir may be on one.
  if (std::getenv("CDP_AGENT_TEST_SAVE_STATE_WHILE_FROZEN") != nullptr) {
    cdp::agent::AgentProcess* p = process->get();
    cdp::test_hooks::SetSyncPointCallback("agent.freeze_cycle.all_frozen",
                                          [p] { p->SaveStatesInBackground(); });
  }
#endif
  cdp::WaitForStopSignal();
  cdp::Status s = (*process)->Stop();
  if (!s.ok()) {
    std::cerr << "cdp-agent: stop: " << s.ToString() << "\n";
    return 1;
  }
  return 0;
}
