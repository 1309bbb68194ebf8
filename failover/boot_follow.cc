#include "cdp/failover/boot_follow.h"

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cdp/core/atomic_file.h"
#include "cdp/core/host_command.h"
#include "cdp/core/time_text.h"
#include "cdp/failover/boot_export.h"
#include "cdp/failover/target_agent.h"
#include "cdp/failover/target_snapshot.h"
#include "cdp/failover/target_vm.h"
#include "cdp/pe/pe_client.h"

namespace cdp::failover {

namespace fs = std::filesystem;
namespace v1 = wire::v1;

namespace {

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Removes every entry of `dir` but `keep` (best effort: a leftover only costs disk space).
void RemoveAllBut(const std::string& dir, const std::string& keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename() != keep) fs::remove_all(e.path(), ec);
  }
}

}  // namespace

Result<FollowBootResult> FollowBoot(const TargetConfig& target, const FollowBootOptions& options,
                                    BootFollowSystem& system, std::ostream& progress) {
  FollowBootResult result;
  auto pe_kernel = system.PeKernel(target);
  if (!pe_kernel.ok()) return pe_kernel.status().WithContext("PE status");
  result.pe_kernel_before = *pe_kernel;
  auto os_kernel = system.OsKernel(target, options.volume);
  if (!os_kernel.ok()) {
    return os_kernel.status().WithContext(
        "the migrated OS's kernel (the PE stays on " + *pe_kernel +
        "; a takeover would need the migrated OS to have /lib/modules/" + *pe_kernel + ")");
  }
  result.os_kernel = *os_kernel;

  auto prepare = [&]() -> Status {
    auto prepared = system.PrepareBoot(target, options.volume);
    if (!prepared.ok()) return prepared.status().WithContext("prepare-boot");
    result.prepared = *prepared;
    progress << "boot prepared: " << *prepared << "\n";
    return Status::Ok();
  };

  if (*os_kernel == *pe_kernel) {
    progress << "the PE of " << target.name << " runs " << *pe_kernel
             << ", the kernel the migrated OS on " << options.volume
             << " boots: a takeover is a switch_root; nothing to rebuild\n";
    if (options.prepare && options.prepare_always) CDP_RETURN_IF_ERROR(prepare());
    return result;
  }
  progress << "the PE of " << target.name << " runs " << *pe_kernel << "; the migrated OS on "
           << options.volume << " boots " << *os_kernel << ": rebuilding the PE on it\n";

  const std::string export_root = target.state_dir + "/" + target.name + ".boot";
  const std::string export_dir = export_root + "/" + *os_kernel;
  std::error_code ec;
  fs::remove_all(export_dir, ec);  // a killed run's leftover: ExportBoot wants it absent
  fs::remove_all(export_dir + ".tmp", ec);
  fs::create_directories(export_root, ec);
  auto exported = system.ExportKernel(target, options.volume, export_dir);
  if (!exported.ok()) return exported.status().WithContext("export");
  if (*exported != *os_kernel) {
    fs::remove_all(export_root, ec);
    return Status::Aborted("export: the replica's newest kernel changed from " + *os_kernel +
                           " to " + *exported + " meanwhile; run follow-boot again");
  }

  const std::string pe_root = target.state_dir + "/" + target.name + ".pe";
  // A new directory each build: the PE the target runs now (its override) is never touched.
  const std::string pe_name = *os_kernel + "." + std::to_string(NowNs() / 1000000000ull);
  const std::string pe_dir = pe_root + "/" + pe_name;
  fs::remove_all(pe_dir, ec);
  fs::create_directories(pe_root, ec);
  Status built = system.BuildPe(export_dir, pe_dir);
  fs::remove_all(export_root, ec);  // the kernel tree is in the PE image now
  if (!built.ok()) {
    fs::remove_all(pe_dir, ec);
    return built.WithContext("build");
  }

  // Record the new PE, then restart into it; on failure, back to the PE it ran before.
  const std::string override_file = target.pe_override_file();
  std::string previous_override;  // "" when there was none (or it could not be read)
  if (fs::exists(override_file, ec)) {
    auto old = ReadWholeFile(override_file);
    if (old.ok()) previous_override = *old;
  }
  nlohmann::json doc = {{"kernel", pe_dir + "/vmlinuz"},
                        {"initrd", pe_dir + "/initrd.img"},
                        {"kernel_release", *os_kernel},
                        {"volume", options.volume},
                        {"made_at", FormatRfc3339(NowNs())}};
  CDP_RETURN_IF_ERROR(WriteFileAtomic(override_file, doc.dump(2) + "\n"));
  TargetConfig next = target;
  Status applied = ApplyPeOverride(override_file, &next);
  Status restarted = applied.ok() ? system.Restart(next, *pe_kernel) : applied;
  Result<std::string> running = restarted;
  if (restarted.ok()) running = system.PeKernel(next);
  if (running.ok() && *running != *os_kernel) {
    running = Status::Internal("the restarted PE runs " + *running + ", not " + *os_kernel +
                               " (is " + pe_dir + "/vmlinuz that kernel?)");
  }
  if (!running.ok()) {
    // Back to the override the target ran with (its PE directory is another than pe_dir).
    Status restored = previous_override.empty() ? Status::Ok()
                                                : WriteFileAtomic(override_file, previous_override);
    if (previous_override.empty()) fs::remove(override_file, ec);
    fs::remove_all(pe_dir, ec);
    const Status failed = running.status().WithContext("restart");
    if (!restored.ok()) {
      return Status(failed.code(), failed.message() + "; and putting back the previous " +
                                       override_file + " failed: " + restored.message());
    }
    // Not stopped (no longer pe-ready on its old kernel, or the lock is held): nothing to undo.
    if (restarted.code() == StatusCode::kAborted ||
        restarted.code() == StatusCode::kFailedPrecondition) {
      return failed;
    }
    // The target must keep replicating: the PE it ran before.
    Status back = system.Restart(target, "");
    if (back.ok()) return failed;
    return Status(failed.code(), failed.message() + "; and starting it again on its PE of " +
                                     *pe_kernel + " failed: " + back.message());
  }
  RemoveAllBut(pe_root, pe_name);  // the PEs built before
  result.rebuilt = true;
  result.pe_dir = pe_dir;
  progress << "the PE of " << target.name << " runs " << *os_kernel << " (" << pe_dir
           << "): a takeover is a switch_root\n";
  if (options.prepare) CDP_RETURN_IF_ERROR(prepare());
  return result;
}

// ---- the real system ----

namespace {

// The target's pe-agent's prepare-boot of `volume`, as a control client.
Result<v1::PrepareBootReply> CallPrepareBoot(const TargetConfig& target, const std::string& volume,
                                             bool dry_run, v1::BootMode boot_mode, int timeout_ms) {
  CDP_ASSIGN_OR_RETURN(auto client, pe::PeClient::Connect(target.replication_endpoint,
                                                          v1::ROLE_CONTROL, "", 0, 10000));
  v1::PrepareBootRequest request;
  request.set_root_volume(volume);
  request.set_dry_run(dry_run);
  request.set_boot_mode(boot_mode);
  return client->PrepareBoot(request, timeout_ms);
}

}  // namespace

Result<std::string> LinuxBootFollowSystem::PeKernel(const TargetConfig& target) {
  TargetVm vm(target);
  CDP_ASSIGN_OR_RETURN(TargetStatus status, vm.GetStatus());
  if (status.state != TargetState::kPeReady) {
    return Status::FailedPrecondition(
        "target " + target.name + " is " + TargetStateName(status.state) +
        (status.error.empty() ? "" : " (" + status.error + ")") + ", not pe-ready");
  }
  return status.kernel_release;
}

Result<std::string> LinuxBootFollowSystem::OsKernel(const TargetConfig& target,
                                                    const std::string& volume) {
  // A dry run for kexec names the migrated OS's own kernel, not the PE's.
  CDP_ASSIGN_OR_RETURN(v1::PrepareBootReply reply, CallPrepareBoot(target, volume, /*dry_run=*/true,
                                                                   v1::BOOT_MODE_KEXEC, 120000));
  // The kernel is named once chosen, even when the initramfs check after it fails (that is
  // prepare-boot's to report, after the rebuild).
  if (!reply.kernel_release().empty()) return reply.kernel_release();
  if (!reply.ok()) return Status::FailedPrecondition(reply.error());
  return Status::ProtocolMismatch("the pe-agent's prepare-boot dry run named no kernel");
}

Result<std::string> LinuxBootFollowSystem::ExportKernel(const TargetConfig& target,
                                                        const std::string& volume,
                                                        const std::string& out_dir) {
  CDP_ASSIGN_OR_RETURN(BootExport e, ExportBoot(target, volume, out_dir, progress_));
  progress_ << "exported kernel " << e.kernel_release << " (LSN " << e.lsn << ", " << e.module_files
            << " module files)\n";
  return e.kernel_release;
}

Status LinuxBootFollowSystem::BuildPe(const std::string& kernel_dir, const std::string& pe_dir) {
  const std::vector<std::string> argv = {build_pe_image_, "--kernel-from", kernel_dir,
                                         "--pe-agent",    pe_agent_,       pe_dir};
  progress_ << "building the PE: " << CommandLine(argv) << "\n";
  CDP_ASSIGN_OR_RETURN(CommandResult r, RunHostCommand(argv, 20 * 60 * 1000));
  if (r.exit_code != 0) {
    return Status::IOError(CommandLine(argv) + " exited " + std::to_string(r.exit_code) + ": " +
                           r.output);
  }
  return Status::Ok();
}

Status LinuxBootFollowSystem::Restart(const TargetConfig& target,
                                      const std::string& expect_kernel) {
  // A drill, cutover or export of this target must not see it restart under it.
  CDP_ASSIGN_OR_RETURN(auto lock, TargetLock::Acquire(target, "a follow-boot restart"));
  TargetVm vm(target);
  if (!expect_kernel.empty()) {
    // The pass began minutes ago (export, build): a cutover may have promoted the target since.
    CDP_ASSIGN_OR_RETURN(TargetStatus status, vm.GetStatus());
    if (status.state != TargetState::kPeReady || status.kernel_release != expect_kernel) {
      return Status::Aborted("target " + target.name + " is no longer pe-ready on " +
                             expect_kernel + " (it is " + TargetStateName(status.state) +
                             (status.kernel_release.empty() ? "" : ", " + status.kernel_release) +
                             "; a cutover?): not restarted");
    }
  }
  CDP_RETURN_IF_ERROR(vm.Stop(progress_));
  return vm.Start(progress_);
}

Result<std::string> LinuxBootFollowSystem::PrepareBoot(const TargetConfig& target,
                                                       const std::string& volume) {
  CDP_ASSIGN_OR_RETURN(v1::PrepareBootReply reply,
                       CallPrepareBoot(target, volume, /*dry_run=*/false, v1::BOOT_MODE_UNSPECIFIED,
                                       static_cast<int>(prepare_timeout_seconds_ * 1000)));
  if (!reply.ok()) return Status::FailedPrecondition(reply.error());
  return "kernel " + reply.kernel_release() + ": " + PrepareBootSummary(reply);
}

}  // namespace cdp::failover
