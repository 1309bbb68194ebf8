// cdpctl target start|status|checksum|export-boot|follow-boot|prepare-boot|takeover-plan|stop: the
// target VM
// and its PE.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cdp/failover/boot_export.h"
#include "cdp/failover/boot_follow.h"
#include "cdp/failover/cutover.h"
#include "cdp/failover/cutover_plan.h"
#include "cdp/failover/target_vm.h"
#include "cdp/pe/pe_client.h"
#include "command.h"

namespace cdp::ctl {
namespace {

using failover::TargetConfig;
using failover::TargetVm;

ExitCode ExportBoot(const Args& args, const TargetConfig& config) {
  if (args.volume.empty() || args.out.empty()) {
    return Usage("target export-boot needs --volume and --out");
  }
  auto exported = failover::ExportBoot(config, args.volume, args.out, std::cerr);
  if (!exported.ok()) return Fail("target export-boot", exported.status());
  const auto& e = *exported;
  if (args.json) {
    std::cout << nlohmann::json({{"kernel_release", e.kernel_release},
                                 {"lsn", e.lsn},
                                 {"fs_offset", e.fs_offset},
                                 {"fs_uuid", e.fs_uuid},
                                 {"out", e.out_dir},
                                 {"module_files", e.module_files}})
                     .dump()
              << "\n";
  } else {
    std::cout << "kernel " << e.kernel_release << " of volume " << args.volume << " (LSN " << e.lsn
              << ", ext4 " << e.fs_uuid << " at offset " << e.fs_offset << ") exported to "
              << e.out_dir << " with " << e.module_files
              << " module files; next: pe-boot/build-pe-image --kernel-from " << e.out_dir
              << " PEDIR, point the config's pe: at it, cdpctl target stop, cdpctl target "
                 "start\n";
  }
  return ExitCode::kOk;
}

ExitCode Checksum(const Args& args, TargetVm& vm) {
  if (args.volume.empty()) return Usage("target checksum needs --volume NAME");
  uint64_t offset = 0, length = 0, chunk = 0;
  if ((args.offset != "0" && !ParseBytes(args.offset, &offset)) ||
      (args.length != "0" && !ParseBytes(args.length, &length)) ||
      !ParseBytes(args.chunk, &chunk)) {
    return Usage("bad --offset, --length or --chunk (bytes, or with K/M/G)");
  }
  uint64_t applied = 0;
  auto sums = vm.Checksums(args.volume, offset, length, chunk, &applied);
  if (!sums.ok()) return Fail("target checksum", sums.status());
  char hex[17];
  nlohmann::json regions = nlohmann::json::array();
  for (const auto& r : *sums) {
    snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(r.xxh3));
    if (args.json) {
      regions.push_back({{"offset", r.offset}, {"length", r.length}, {"xxh3", hex}});
    } else {
      std::cout << r.offset << " " << r.length << " " << hex << "\n";
    }
  }
  if (args.json) {
    std::cout << nlohmann::json(
                     {{"volume", args.volume}, {"applied_lsn", applied}, {"regions", regions}})
                     .dump()
              << "\n";
  }
  return ExitCode::kOk;
}

// A pe-agent's takeover or prepare-boot reply: with `json` one object {"ok", "error", FIELDS...,
// "steps": [{"name", "seconds", "result"}], "changes": [{"file", "what", "kept_at"}]};
// otherwise a line per step, a line per change (after `change_prefix`), the error on stderr.
template <typename Reply>
void PrintPeReply(const Reply& reply, bool json, nlohmann::json fields,
                  const std::string& change_prefix, const std::string& command) {
  if (json) {
    nlohmann::json steps = nlohmann::json::array(), changes = nlohmann::json::array();
    for (const auto& s : reply.steps()) {
      steps.push_back({{"name", s.name()}, {"seconds", s.seconds()}, {"result", s.result()}});
    }
    for (const auto& c : reply.changes()) {
      changes.push_back({{"file", c.file()}, {"what", c.what()}, {"kept_at", c.kept_at()}});
    }
    fields["ok"] = reply.ok();
    fields["error"] = reply.error();
    fields["steps"] = steps;
    fields["changes"] = changes;
    std::cout << fields.dump() << "\n";
    return;
  }
  for (const auto& s : reply.steps()) {
    std::printf("%-10s %7.3f s  %s\n", s.name().c_str(), s.seconds(), s.result().c_str());
  }
  for (const auto& c : reply.changes()) {
    std::cout << change_prefix << c.file() << ": " << c.what()
              << (c.kept_at().empty() ? "" : " (previous content kept at " + c.kept_at() + ")")
              << "\n";
  }
  if (!reply.ok()) std::cerr << "cdpctl: " << command << ": " << reply.error() << "\n";
}

// PrepareBoot of the pe-agent (docs/pe-agent.md §5): kOk when it passed, kError otherwise.
ExitCode PrepareBoot(const Args& args, const TargetConfig& config) {
  if (args.volume.empty()) return Usage("target prepare-boot needs --volume ROOT_VOLUME");
  auto client =
      pe::PeClient::Connect(config.replication_endpoint, wire::v1::ROLE_CONTROL, "", 0, 10000);
  if (!client.ok()) return Fail("target prepare-boot", client.status());
  wire::v1::PrepareBootRequest request;
  request.set_root_volume(args.volume);
  request.set_dry_run(args.dry_run);
  auto reply = (*client)->PrepareBoot(request, static_cast<int>(args.timeout * 1000));
  if (!reply.ok()) return Fail("target prepare-boot", reply.status());
  PrintPeReply(*reply, args.json,
               {{"kernel_release", reply->kernel_release()},
                {"initramfs", reply->initramfs()},
                {"rebuilt", reply->rebuilt()}},
               "at takeover: ", "target prepare-boot");
  return reply->ok() ? ExitCode::kOk : ExitCode::kError;
}

// One pass of follow-boot: waits (with --server) until every volume of the target is synced,
// then failover::FollowBoot. Prints its result (a line, or --json an object).
ExitCode FollowBootOnce(const Args& args, failover::BootFollowSystem& system) {
  // Loaded each pass: the override the last pass wrote is what the target runs now.
  auto config = failover::LoadTargetConfig(args.config);
  if (!config.ok()) return Fail("target follow-boot", config.status());
  if (!args.server.empty()) {
    for (const auto& d : config->disks) {
      Status synced = journal::WaitSynced(args.server, d.volume, args.timeout, std::cerr);
      if (!synced.ok()) {
        return Fail("target follow-boot",
                    synced.WithContext("waiting for volume " + d.volume + " to be synced"));
      }
    }
  }
  failover::FollowBootOptions options;
  options.volume = args.volume;
  options.prepare_always = args.prepare_always;
  const auto start = std::chrono::steady_clock::now();
  auto r = failover::FollowBoot(*config, options, system, std::cerr);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (args.json) {
    nlohmann::json doc = {{"ok", r.ok()},
                          {"error", r.ok() ? "" : r.status().message()},
                          {"seconds", seconds}};
    if (r.ok()) {
      doc.update({{"pe_kernel_before", r->pe_kernel_before},
                  {"os_kernel", r->os_kernel},
                  {"rebuilt", r->rebuilt},
                  {"pe_dir", r->pe_dir},
                  {"prepared", r->prepared}});
    }
    std::cout << doc.dump() << std::endl;
  }
  if (!r.ok()) return Fail("target follow-boot", r.status());
  if (!args.json) {
    std::cout << "target " << config->name << ": PE on " << r->os_kernel
              << (r->rebuilt ? " (rebuilt from " + r->pe_kernel_before + ", " + r->pe_dir + ")"
                             : " (unchanged)")
              << (r->prepared.empty() ? "" : "; boot prepared") << " in " << FormatFixed(seconds, 1)
              << " s" << std::endl;
  }
  return ExitCode::kOk;
}

// follow-boot: once, or with --watch every SECONDS until SIGINT/SIGTERM (a failed pass is
// printed and the next one comes; exit 0 on the signal).
ExitCode FollowBoot(const Args& args) {
  if (args.volume.empty()) return Usage("target follow-boot needs --volume ROOT_VOLUME");
  const std::string pe_agent = args.pe_agent.empty() ? CDP_DEFAULT_PE_AGENT : args.pe_agent;
  const std::string builder = args.pe_builder.empty() ? CDP_DEFAULT_PE_BUILDER : args.pe_builder;
  failover::LinuxBootFollowSystem system(builder, pe_agent, args.timeout, std::cerr);
  if (args.watch <= 0) return FollowBootOnce(args, system);
  std::atomic<bool>* cancel = CancelOnSignals();
  while (!cancel->load()) {
    (void)FollowBootOnce(args, system);
    const auto next = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(args.watch * 1000));
    while (!cancel->load() && std::chrono::steady_clock::now() < next) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  std::cerr << "cdpctl: target follow-boot: stopped by a signal\n";
  return ExitCode::kOk;
}

// The cutover's takeover as a dry run (failover::PlanTakeover): kOk when it would pass.
ExitCode TakeoverPlan(const Args& args) {
  auto plan = failover::LoadCutoverPlan(args.plan);
  if (!plan.ok()) {
    Fail("target takeover-plan", plan.status());
    return ExitCode::kUsage;
  }
  auto reply = failover::PlanTakeover(*plan);
  if (!reply.ok()) return Fail("target takeover-plan", reply.status());
  PrintPeReply(*reply, args.json,
               {{"root_device", reply->root_device()}, {"kernel_release", reply->kernel_release()}},
               "would change ", "target takeover-plan");
  return reply->ok() ? ExitCode::kOk : ExitCode::kError;
}

ExitCode StartOrStop(const Args& args, TargetVm& vm) {
  Status s = args.subcommand == "start" ? vm.Start(std::cout) : vm.Stop(std::cout);
  if (!s.ok()) {
    Fail("target " + args.subcommand, s);
    return s.IsTimedOut() ? ExitCode::kTimedOut : ExitCode::kError;
  }
  return ExitCode::kOk;
}

// kOk when pe-ready, kError when pe-error or on errors, kTimedOut (not ready yet) otherwise.
ExitCode ShowStatus(const Args& args, const TargetConfig& config, TargetVm& vm) {
  auto status = vm.GetStatus();
  if (!status.ok()) return Fail("target status", status.status());
  std::cout << (args.json ? failover::TargetStatusJson(*status, config) + "\n"
                          : failover::TargetStatusText(*status, config));
  if (status->state == failover::TargetState::kPeReady) return ExitCode::kOk;
  if (status->state == failover::TargetState::kPeError) return ExitCode::kError;
  return ExitCode::kTimedOut;
}

ExitCode RunTarget(const Args& args) {
  const std::string& sub = args.subcommand;
  if (sub != "start" && sub != "stop" && sub != "status" && sub != "checksum" &&
      sub != "export-boot" && sub != "follow-boot" && sub != "prepare-boot" &&
      sub != "takeover-plan") {
    return Usage(
        "target needs start, stop, status, checksum, export-boot, follow-boot, prepare-boot or "
        "takeover-plan (got '" +
        sub + "')");
  }
  if (sub == "takeover-plan") {
    if (args.plan.empty()) return Usage("target takeover-plan needs --plan FILE");
    return TakeoverPlan(args);
  }
  if (args.config.empty()) return Usage("target " + sub + " needs --config FILE");
  if (sub == "follow-boot") return FollowBoot(args);
  auto config = failover::LoadTargetConfig(args.config);
  if (!config.ok()) {
    Fail("target " + sub, config.status());
    return ExitCode::kUsage;
  }
  TargetVm vm(*config);
  if (sub == "export-boot") return ExportBoot(args, *config);
  if (sub == "prepare-boot") return PrepareBoot(args, *config);
  if (sub == "checksum") return Checksum(args, vm);
  if (sub == "start" || sub == "stop") return StartOrStop(args, vm);
  return ShowStatus(args, *config, vm);
}

}  // namespace

const Command kTargetCommand = {
    "target", false,
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
    "  cdpctl [--server tcp://HOST:PORT] target follow-boot --config FILE --volume ROOT_VOLUME\n"
    "                       [--watch SECONDS] [--timeout SECONDS] [--prepare-always]\n"
    "                       [--pe-agent PATH] [--pe-builder PATH] [--json]\n"
    "      keeps the PE on the migrated OS's own kernel, so the cutover is a switch_root: when\n"
    "      the kernel the replica's OS boots is not the PE's, exports it, builds a PE on it\n"
    "      (PATH of pe-boot/build-pe-image, with the pe-agent binary PATH; defaults: this\n"
    "      build's), records it in STATE_DIR/NAME.pe.json (target start and drill VMs boot\n"
    "      it), restarts the target into it (only if still pe-ready on its old kernel) and\n"
    "      runs prepare-boot (also when nothing was rebuilt with --prepare-always; an image\n"
    "      prepared already is kept). With --server it first waits until every volume is\n"
    "      synced; --watch repeats every SECONDS until SIGTERM; --timeout bounds the sync wait\n"
    "      and prepare-boot (default 300). Exit 0 when the PE runs the OS's kernel and\n"
    "      prepare-boot (if run) passed, 1 otherwise; with --watch 0 once stopped by a signal\n"
    "      (docs/target-vm.md); root\n"
    "  cdpctl target prepare-boot --config FILE --volume ROOT_VOLUME [--dry-run] [--json]\n"
    "                       [--timeout SECONDS]\n"
    "      ahead of a cutover: when the migrated OS's initramfs lacks the virtio drivers, the\n"
    "      pe-agent rebuilds it (update-initramfs or dracut, in a chroot over a copy-on-write\n"
    "      layer: the replica is not written) and keeps it for the takeover, which installs it;\n"
    "      replication waits meanwhile. Prints each step and what the takeover will change;\n"
    "      exit 0 when it passed, 1 otherwise. --timeout default 300 s (a rebuild under TCG\n"
    "      may need more)\n"
    "  cdpctl target takeover-plan --plan FILE [--json]\n"
    "      the takeover the cutover of FILE would ask of its target, as a dry run (the\n"
    "      cutover's precheck sends the same): the pe-agent mounts the root read-only, runs\n"
    "      every check of the adaptation and lists each change it would make to the migrated\n"
    "      OS (network, fstab, GRUB, initramfs, services); nothing is written. Exit 0 when it\n"
    "      would pass, 1 with every problem found (file and line)\n"
    "  cdpctl target stop   --config FILE\n"
    "      stops the VM over QMP (quit; SIGKILL after 15 s); not running: nothing to do\n"
    "      (FILE: see deploy/examples/target.yaml)\n",
    RunTarget};

}  // namespace cdp::ctl
