// cdpctl: the operator's command line. Wiring only; the work is in cdp::ctl.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/logging.h"
#include "cdp/core/time_text.h"
#include "cdp/core/units.h"
#include "cdp/ctl/image_export.h"
#include "cdp/ctl/journal_views.h"
#include "cdp/ctl/restore.h"
#include "cdp/failover/boot_export.h"
#include "cdp/failover/cutover.h"
#include "cdp/failover/drill.h"
#include "cdp/failover/target_vm.h"
#include "cdp/journal/control_client.h"
#include "cdp/nbd/nbd_server.h"

namespace {

constexpr const char* kUsage =
    "cdpctl: operate the CDP appliance.\n"
    "\n"
    "Usage:\n"
    "  cdpctl --server tcp://HOST:PORT status [--json]\n"
    "      per volume: captured, durable and applied LSN, lag in seconds, bytes received\n"
    "  cdpctl --server tcp://HOST:PORT points --volume NAME [--json]\n"
    "      the volume's consistency points, oldest first: LSN, time (UTC), origin (flush,\n"
    "      freeze, operator, cutover, sync) and labels; --json: [{\"lsn\", \"time\",\n"
    "      \"origin\", \"label\", \"operator_labels\"}]\n"
    "  cdpctl --server tcp://HOST:PORT checkpoint --volume NAME [--label TEXT]\n"
    "      asks the volume's agent for a consistency point now and prints its LSN once it is\n"
    "      durable in the journal: origin operator in NBD mode, a filesystem freeze in trace\n"
    "      mode (with --freeze); a point already at the last LSN (a flush) stays what it is and\n"
    "      gets the label among its operator_labels\n"
    "  cdpctl --server tcp://HOST:PORT restore --volume NAME --at TIME|LSN --output PATH\n"
    "                                          [--force]\n"
    "      writes the volume as it was at the latest consistency point at or before TIME or LSN\n"
    "      (an integer is an LSN; TIME is RFC 3339, e.g. 2026-11-26T17:39:40Z, or relative:\n"
    "      -90s, -15m, -2h, -1d) to PATH: qcow2 when PATH ends in .qcow2, raw otherwise, sparse,\n"
    "      with progress on stderr. An existing PATH is refused without --force. A point inside\n"
    "      a history gap is refused, naming the nearest restorable points. The file appears\n"
    "      under PATH only once complete and synced (docs/restore.md)\n"
    "  cdpctl --server tcp://HOST:PORT export --volume NAME --at TIME|LSN\n"
    "                                         --nbd unix:PATH|tcp:HOST:PORT\n"
    "      serves the volume as it was at that point (chosen as for restore) read-only over NBD,\n"
    "      export name NAME, until SIGINT/SIGTERM: mount it (nbd-client, qemu-nbd), boot it or\n"
    "      copy it (qemu-img, nbdcopy) without restoring it first\n"
    "  cdpctl --server tcp://HOST:PORT retention --volume NAME [--window DURATION]\n"
    "                                            [--max-bytes SIZE] [--json]\n"
    "      sets (when given) and shows the volume's retention: history older than the window\n"
    "      (90s, 15m, 2h, 7d; 0 = keep everything) is folded into its base image; over\n"
    "      max-bytes (512M, 10G; 0 = no cap) the oldest history is folded early, and reported\n"
    "      (docs/retention.md)\n"
    "  cdpctl --server tcp://HOST:PORT wait-synced --volume NAME [--timeout SECONDS]\n"
    "      exit 0 once the replica has applied every write the agent captured and the agent has\n"
    "      nothing left to send; exit 3 on timeout (default 300 s) with the reason (a volume\n"
    "      that is not known yet is waited for, and named in the timeout message)\n"
    "\n"
    "  cdpctl target start  --config FILE\n"
    "      boots the target VM into the PE (creating its qcow2 disks when absent) and returns\n"
    "      once its pe-agent is ready; already running: nothing changes\n"
    "  cdpctl target status --config FILE [--json]\n"
    "      state (pe-ready, pe-error, booting, stopped), PE boot seconds, applied LSN per volume;\n"
    "      exit 0 when pe-ready, 3 when stopped or booting, 1 on errors\n"
    "  cdpctl target checksum --config FILE --volume NAME [--offset BYTES] [--length BYTES]\n"
    "                       [--chunk BYTES] [--json]\n"
    "      XXH3-64 of the volume's disk in the target VM, per chunk (default 64 MiB; the whole\n"
    "      volume by default), computed by the pe-agent: one line 'OFFSET LENGTH XXH3' each\n"
    "  cdpctl target export-boot --config FILE --volume NAME --out DIR [--json]\n"
    "      copies the migrated OS's newest kernel (boot/vmlinuz-KVER, boot/initrd.img-KVER,\n"
    "      lib/modules/KVER) out of the running target's replica of NAME into DIR, for\n"
    "      pe-boot/build-pe-image --kernel-from DIR: a PE on that kernel takes over by\n"
    "      switch_root (docs/target-vm.md); root\n"
    "  cdpctl target stop   --config FILE\n"
    "      stops the VM over QMP (quit; SIGKILL after 15 s); not running: nothing to do\n"
    "      (FILE: see deploy/examples/target.yaml)\n"
    "  cdpctl cutover --plan FILE [--json]\n"
    "      moves the service to the target: precheck, pre-verify (while the source serves),\n"
    "      quiesce the source, drain, verify, fence, promote (switch_root or kexec into the\n"
    "      migrated OS), health check; a timeline on stderr and the report (with --json as\n"
    "      JSON) on stdout; exit 0 only on success. A failure before the promotion resumes the\n"
    "      source where it can (docs/cutover.md; plan keys: docs/cutover-plan.md).\n"
    "      SIGINT/SIGTERM before the fence stop it and resume the source; after the fence they\n"
    "      only cut the wait for the health check short\n"
    "  cdpctl drill --plan FILE [--json]\n"
    "      boots a copy-on-write copy of the target's disks as a second VM in the isolated\n"
    "      namespace drill.namespace, promotes it, runs the health check there and tears it all\n"
    "      down; replication goes on and the source is never touched. SIGINT/SIGTERM stop the\n"
    "      drill and tear it down; exit 0 only on success (docs/drill.md); root\n"
    "\n"
    "Exit codes: 0 ok, 1 error (server unreachable), 2 bad usage, 3 timeout.\n";

int Usage(const std::string& why) {
  std::cerr << "cdpctl: " << why << "\n\n" << kUsage;
  return 2;
}

// cdpctl target start|stop|status --config FILE [--json]
// Parses a byte count given on the command line (a number, or 64M, 1G...).
bool ParseBytes(const std::string& text, uint64_t* out) {
  auto v = cdp::failover::ParseSize(text);
  if (!v.ok()) return false;
  *out = *v;
  return true;
}

struct ChecksumArgs {
  std::string offset = "0", length = "0", chunk = "64M";
};

int RunTarget(const std::string& subcommand, const std::string& config_path, bool json,
              const std::string& volume, const ChecksumArgs& range, const std::string& out) {
  if (subcommand != "start" && subcommand != "stop" && subcommand != "status" &&
      subcommand != "checksum" && subcommand != "export-boot") {
    return Usage("target needs start, stop, status, checksum or export-boot (got '" + subcommand +
                 "')");
  }
  if (config_path.empty()) return Usage("target " + subcommand + " needs --config FILE");
  auto config = cdp::failover::LoadTargetConfig(config_path);
  if (!config.ok()) {
    std::cerr << "cdpctl: target " << subcommand << ": " << config.status().message() << "\n";
    return 2;
  }
  cdp::failover::TargetVm vm(*config);
  if (subcommand == "export-boot") {
    if (volume.empty() || out.empty()) return Usage("target export-boot needs --volume and --out");
    auto exported = cdp::failover::ExportBoot(*config, volume, out, std::cerr);
    if (!exported.ok()) {
      std::cerr << "cdpctl: target export-boot: " << exported.status().message() << "\n";
      return 1;
    }
    const auto& e = *exported;
    if (json) {
      std::cout << nlohmann::json({{"kernel_release", e.kernel_release},
                                   {"lsn", e.lsn},
                                   {"fs_offset", e.fs_offset},
                                   {"fs_uuid", e.fs_uuid},
                                   {"out", e.out_dir},
                                   {"module_files", e.module_files}})
                       .dump()
                << "\n";
    } else {
      std::cout << "kernel " << e.kernel_release << " of volume " << volume << " (LSN " << e.lsn
                << ", ext4 " << e.fs_uuid << " at offset " << e.fs_offset << ") exported to "
                << e.out_dir << " with " << e.module_files
                << " module files; next: pe-boot/build-pe-image --kernel-from " << e.out_dir
                << " PEDIR, point the config's pe: at it, cdpctl target stop, cdpctl target "
                   "start\n";
    }
    return 0;
  }
  if (subcommand == "checksum") {
    if (volume.empty()) return Usage("target checksum needs --volume NAME");
    uint64_t offset = 0, length = 0, chunk = 0;
    if ((range.offset != "0" && !ParseBytes(range.offset, &offset)) ||
        (range.length != "0" && !ParseBytes(range.length, &length)) ||
        !ParseBytes(range.chunk, &chunk)) {
      return Usage("bad --offset, --length or --chunk (bytes, or with K/M/G)");
    }
    uint64_t applied = 0;
    auto sums = vm.Checksums(volume, offset, length, chunk, &applied);
    if (!sums.ok()) {
      std::cerr << "cdpctl: target checksum: " << sums.status().message() << "\n";
      return 1;
    }
    char hex[17];
    nlohmann::json regions = nlohmann::json::array();
    for (const auto& r : *sums) {
      snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(r.xxh3));
      if (json) {
        regions.push_back({{"offset", r.offset}, {"length", r.length}, {"xxh3", hex}});
      } else {
        std::cout << r.offset << " " << r.length << " " << hex << "\n";
      }
    }
    if (json) {
      std::cout << nlohmann::json(
                       {{"volume", volume}, {"applied_lsn", applied}, {"regions", regions}})
                       .dump()
                << "\n";
    }
    return 0;
  }
  if (subcommand == "start" || subcommand == "stop") {
    cdp::Status s = subcommand == "start" ? vm.Start(std::cout) : vm.Stop(std::cout);
    if (!s.ok()) {
      std::cerr << "cdpctl: target " << subcommand << ": " << s.message() << "\n";
      return s.IsTimedOut() ? 3 : 1;
    }
    return 0;
  }
  auto status = vm.GetStatus();
  if (!status.ok()) {
    std::cerr << "cdpctl: target status: " << status.status().message() << "\n";
    return 1;
  }
  std::cout << (json ? cdp::failover::TargetStatusJson(*status, *config) + "\n"
                     : cdp::failover::TargetStatusText(*status, *config));
  if (status->state == cdp::failover::TargetState::kPeReady) return 0;
  if (status->state == cdp::failover::TargetState::kPeError) return 1;
  return 3;
}

// cdpctl cutover --plan FILE [--json]
// Set by SIGINT/SIGTERM during a cutover or a drill: the engines stop safely (they poll it).
std::atomic<bool> g_cancel{false};

// SIGINT and SIGTERM are blocked in every thread (ZeroMQ's included: they start later and
// inherit the mask) and taken by one thread with sigwait, so no system call of the engines is
// ever interrupted (cppzmq throws on EINTR) and the engines see only the flag.
void CancelOnSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) g_cancel = true;
  }).detach();
}

// Loads the plan of `command` (cutover, drill); prints why not and returns nullopt otherwise.
std::optional<cdp::failover::CutoverPlan> LoadPlan(const std::string& command,
                                                   const std::string& plan_path) {
  auto plan = cdp::failover::LoadCutoverPlan(plan_path);
  if (!plan.ok()) {
    std::cerr << "cdpctl: " << command << ": " << plan.status().message() << "\n";
    return std::nullopt;
  }
  return std::move(*plan);
}

// The human table of a cutover's or a drill's steps.
void PrintSteps(const std::vector<cdp::failover::StepReport>& steps) {
  for (const auto& s : steps) {
    std::printf("%-11s %7.2f %7.2f  %s  %s\n", s.name.c_str(), s.start, s.end,
                s.ok ? "ok    " : "FAILED", s.result.c_str());
  }
}

int RunCutover(const std::string& plan_path, bool json) {
  if (plan_path.empty()) return Usage("cutover needs --plan FILE");
  auto plan = LoadPlan("cutover", plan_path);
  if (!plan) return 2;
  CancelOnSignals();
  cdp::failover::CutoverEngine engine(std::move(*plan), &std::cerr, &g_cancel);
  const cdp::failover::CutoverReport report = engine.Run();
  if (json) {
    std::cout << cdp::failover::CutoverReportJson(report) << "\n";
  } else {
    PrintSteps(report.steps);
    if (report.ok) {
      std::printf("cutover ok: downtime %.2f s\n", report.downtime_seconds);
    } else {
      std::printf("cutover FAILED: %s%s%s\n", report.error.c_str(),
                  report.rollback.empty() ? "" : "; ", report.rollback.c_str());
    }
  }
  return report.ok ? 0 : 1;
}

int RunDrill(const std::string& plan_path, bool json) {
  if (plan_path.empty()) return Usage("drill needs --plan FILE");
  auto plan = LoadPlan("drill", plan_path);
  if (!plan) return 2;
  CancelOnSignals();
  cdp::failover::DrillEngine engine(std::move(*plan), &std::cerr, &g_cancel);
  const cdp::failover::DrillReport report = engine.Run();
  if (json) {
    std::cout << cdp::failover::DrillReportJson(report) << "\n";
  } else {
    PrintSteps(report.steps);
    std::printf(report.ok ? "drill ok\n" : "drill FAILED: %s\n", report.error.c_str());
  }
  return report.ok ? 0 : 1;
}

int RunRestore(const std::string& server, const std::string& volume, const std::string& at,
               const std::string& output, bool force) {
  if (volume.empty() || at.empty() || output.empty()) {
    return Usage("restore needs --volume NAME, --at TIME|LSN and --output PATH");
  }
  auto spec = cdp::ctl::ParseAt(at, cdp::NowNanos());
  if (!spec.ok()) return Usage(spec.status().message());
  CancelOnSignals();
  cdp::ctl::RestoreOptions options{server, volume, *spec, output, force, &g_cancel};
  auto result = cdp::ctl::Restore(options, std::cerr, isatty(STDERR_FILENO) == 1);
  if (!result.ok()) {
    std::cerr << "cdpctl: restore: " << result.status().message() << "\n";
    return 1;
  }
  const auto& r = *result;
  std::printf("restored volume %s at LSN %llu (%s, %s) to %s: %s, %llu bytes, %llu bytes of data, "
              "%.2f s\n",
              volume.c_str(), static_cast<unsigned long long>(r.point.lsn()),
              cdp::FormatRfc3339(r.point.time_ns()).c_str(),
              cdp::ctl::OriginName(r.point.origin()).c_str(), output.c_str(),
              r.format == cdp::ctl::ImageFormat::kQcow2 ? "qcow2" : "raw",
              static_cast<unsigned long long>(r.size_bytes),
              static_cast<unsigned long long>(r.data_bytes), r.seconds);
  return 0;
}

int RunRetention(const std::string& server, const std::string& volume,
                 const std::optional<std::string>& window,
                 const std::optional<std::string>& max_bytes, bool json) {
  if (volume.empty()) return Usage("retention needs --volume NAME");
  std::optional<uint64_t> window_s, max;
  if (window) {
    auto w = cdp::ParseDuration(*window);
    if (!w.ok()) return Usage("--window " + w.status().message());
    window_s = *w;
  }
  if (max_bytes) {
    if (*max_bytes == "0") {
      max = 0;
    } else {
      auto m = cdp::ParseSize(*max_bytes);
      if (!m.ok()) return Usage("--max-bytes " + m.status().message() + " (or 0 for no cap)");
      max = *m;
    }
  }
  auto client = cdp::journal::ControlClient::Connect(server, 5000);
  if (!client.ok()) {
    std::cerr << "cdpctl: " << client.status().message() << "\n";
    return 1;
  }
  auto r = (*client)->Retention(volume, window_s, max, 10000);
  if (!r.ok()) {
    std::cerr << "cdpctl: retention: " << r.status().message() << "\n";
    return 1;
  }
  if (json) {
    std::cout << nlohmann::json({{"volume", r->volume()},
                                 {"window_s", r->window_s()},
                                 {"max_bytes", r->max_bytes()},
                                 {"window_default", r->window_default()},
                                 {"max_bytes_default", r->max_bytes_default()},
                                 {"base_lsn", r->base_lsn()},
                                 {"durable_lsn", r->durable_lsn()},
                                 {"journal_bytes", r->journal_bytes()},
                                 {"oldest_point_lsn", r->oldest_point_lsn()},
                                 {"oldest_point_time",
                                  r->oldest_point_time_ns() ? cdp::FormatRfc3339(r->oldest_point_time_ns()) : ""},
                                 {"early_folds", r->early_folds()},
                                 {"early_fold_lsn", r->early_fold_lsn()},
                                 {"history_lost_before",
                                  r->early_folds() ? cdp::FormatRfc3339(r->early_fold_time_ns()) : ""}})
                     .dump()
              << "\n";
  } else {
    std::cout << cdp::ctl::RetentionText(*r);
  }
  return 0;
}

int RunExport(const std::string& server, const std::string& volume, const std::string& at,
              const std::string& nbd) {
  if (volume.empty() || at.empty() || nbd.empty()) {
    return Usage("export needs --volume NAME, --at TIME|LSN and --nbd unix:PATH|tcp:HOST:PORT");
  }
  auto spec = cdp::ctl::ParseAt(at, cdp::NowNanos());
  if (!spec.ok()) return Usage(spec.status().message());
  if (auto address = cdp::nbd::ParseNbdListenAddress(nbd); !address.ok()) {
    return Usage(address.status().message());
  }
  CancelOnSignals();
  cdp::ctl::ExportOptions options{server, volume, *spec, nbd};
  cdp::Status s = cdp::ctl::ServeExport(
      options, &g_cancel, [&](const cdp::v1::ConsistencyPoint& p, const std::string& bound) {
        std::printf("exporting volume %s at LSN %llu (%s, %s) read-only on %s, export name '%s'; "
                    "stop with SIGINT or SIGTERM\n",
                    volume.c_str(), static_cast<unsigned long long>(p.lsn()),
                    cdp::FormatRfc3339(p.time_ns()).c_str(),
                    cdp::ctl::OriginName(p.origin()).c_str(), bound.c_str(), volume.c_str());
        std::fflush(stdout);
      });
  if (!s.ok()) {
    std::cerr << "cdpctl: export: " << s.message() << "\n";
    return 1;
  }
  std::printf("export of volume %s stopped\n", volume.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Library warnings (the NBD server of `export`) go to stderr; stdout stays the command's.
  cdp::InitLogging("cdpctl", cdp::LogLevel::kWarning);
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string server, command, subcommand, volume, config, plan, out, at, output, nbd;
  std::optional<std::string> window, max_bytes;
  std::string label;
  ChecksumArgs range;
  bool json = false, force = false;
  double timeout = 300;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= args.size()) throw std::string(flag) + " needs a value";
      return args[++i];
    };
    try {
      if (a == "-h" || a == "--help" || a == "help") {
        std::cout << kUsage;
        return 0;
      } else if (a == "--server") {
        server = value("--server");
      } else if (a == "--json") {
        json = true;
      } else if (a == "--force") {
        force = true;
      } else if (a == "--at") {
        at = value("--at");
      } else if (a == "--output") {
        output = value("--output");
      } else if (a == "--nbd") {
        nbd = value("--nbd");
      } else if (a == "--label") {
        label = value("--label");
      } else if (a == "--window") {
        window = value("--window");
      } else if (a == "--max-bytes") {
        max_bytes = value("--max-bytes");
      } else if (a == "--offset") {
        range.offset = value("--offset");
      } else if (a == "--length") {
        range.length = value("--length");
      } else if (a == "--chunk") {
        range.chunk = value("--chunk");
      } else if (a == "--plan") {
        plan = value("--plan");
      } else if (a == "--config") {
        config = value("--config");
      } else if (a == "--out") {
        out = value("--out");
      } else if (a == "--volume") {
        volume = value("--volume");
      } else if (a == "--timeout") {
        const std::string t = value("--timeout");
        size_t used = 0;
        try {
          timeout = std::stod(t, &used);
        } catch (...) {
          used = 0;
        }
        if (used != t.size() || timeout <= 0) return Usage("bad --timeout '" + t + "'");
      } else if (command.empty() && !a.empty() && a[0] != '-') {
        command = a;
      } else if (command == "target" && subcommand.empty() && !a.empty() && a[0] != '-') {
        subcommand = a;
      } else {
        return Usage("unknown argument '" + a + "'");
      }
    } catch (const std::string& why) {
      return Usage(why);
    }
  }
  if (command.empty()) return Usage("no command given");
  if (command == "target") return RunTarget(subcommand, config, json, volume, range, out);
  if (command == "cutover") return RunCutover(plan, json);
  if (command == "drill") return RunDrill(plan, json);
  if (server.empty()) return Usage("--server tcp://HOST:PORT is required");
  if (cdp::Status s = cdp::ValidateEndpoint(server); !s.ok()) return Usage(s.message());

  if (command == "status") {
    auto client = cdp::journal::ControlClient::Connect(server, 5000);
    if (!client.ok()) {
      std::cerr << "cdpctl: " << client.status().message() << "\n";
      return 1;
    }
    auto reply = (*client)->Status(5000);
    if (!reply.ok()) {
      std::cerr << "cdpctl: status: " << reply.status().message() << "\n";
      return 1;
    }
    std::cout << (json ? cdp::ctl::StatusJson(*reply) + "\n" : cdp::ctl::StatusTable(*reply));
    return 0;
  }
  if (command == "points") {
    if (volume.empty()) return Usage("points needs --volume NAME");
    auto client = cdp::journal::ControlClient::Connect(server, 5000);
    if (!client.ok()) {
      std::cerr << "cdpctl: " << client.status().message() << "\n";
      return 1;
    }
    auto points = (*client)->Points(volume, 10000);
    if (!points.ok()) {
      std::cerr << "cdpctl: points: " << points.status().message() << "\n";
      return 1;
    }
    std::cout << (json ? cdp::ctl::PointsJson(*points) + "\n" : cdp::ctl::PointsTable(*points));
    return 0;
  }
  if (command == "restore") return RunRestore(server, volume, at, output, force);
  if (command == "export") return RunExport(server, volume, at, nbd);
  if (command == "checkpoint") {
    if (volume.empty()) return Usage("checkpoint needs --volume NAME");
    auto client = cdp::journal::ControlClient::Connect(server, 5000);
    if (!client.ok()) {
      std::cerr << "cdpctl: " << client.status().message() << "\n";
      return 1;
    }
    auto point = (*client)->Checkpoint(volume, label, 15000);
    if (!point.ok()) {
      std::cerr << "cdpctl: checkpoint: " << point.status().message() << "\n";
      return point.status().IsTimedOut() ? 3 : 1;
    }
    // The point may have been there already (a flush at that LSN): it carries the label now.
    const std::string labels = cdp::ctl::PointLabels(*point);
    std::cerr << "checkpoint of volume " << volume << " at LSN " << point->lsn() << " ("
              << cdp::FormatRfc3339(point->time_ns()) << ", "
              << cdp::ctl::OriginName(point->origin())
              << (labels.empty() ? "" : ", '" + labels + "'") << ")\n";
    std::cout << point->lsn() << "\n";
    return 0;
  }
  if (command == "retention") return RunRetention(server, volume, window, max_bytes, json);
  if (command == "wait-synced") {
    if (volume.empty()) return Usage("wait-synced needs --volume NAME");
    cdp::Status s = cdp::journal::WaitSynced(server, volume, timeout, std::cerr);
    if (s.ok()) {
      std::cout << "volume " << volume << " is synced\n";
      return 0;
    }
    std::cerr << "cdpctl: wait-synced: " << s.message() << "\n";
    return s.IsTimedOut() ? 3 : 1;
  }
  return Usage("unknown command '" + command + "'");
}
