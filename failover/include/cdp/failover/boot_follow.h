// Keeping the target's PE on the migrated OS's own kernel (`cdpctl target follow-boot`,
// docs/target-vm.md "Following the migrated OS's kernel"), so the cutover's takeover is a
// switch_root and not a kexec:
//
//   1. ask the PE which kernel it runs (its status) and which one the migrated OS would boot
//      (a prepare-boot dry run for kexec: the newest kernel of the replica's /boot with its
//      initramfs and modules);
//   2. the same release: nothing to do;
//   3. otherwise export that kernel from the replica (ExportBoot), build a PE on it
//      (pe-boot/build-pe-image --kernel-from), record it in the target's PE override
//      (TargetConfig::pe_override_file(), which LoadTargetConfig applies: `target start`, drills
//      and cutovers boot it), restart the target into it and check that it runs that kernel;
//   4. prepare the boot (the pe-agent's prepare-boot: the virtio initramfs; a restart drops the
//      image an earlier prepare kept in the PE's memory).
//
// With `--watch` it repeats after each interval, so a kernel the source installs later (its
// /boot changes) is followed too. Replication waits only for the PE's restart.
#pragma once

#include <ostream>
#include <string>

#include "cdp/core/status.h"
#include "cdp/failover/target_config.h"

namespace cdp::failover {

// What follow-boot needs from the world; FollowBoot's tests fake it.
class BootFollowSystem {
 public:
  virtual ~BootFollowSystem() = default;
  // The kernel release the target's PE runs (it must be pe-ready).
  virtual Result<std::string> PeKernel(const TargetConfig& target) = 0;
  // The kernel release the migrated OS on `volume` would boot (its newest complete kernel).
  virtual Result<std::string> OsKernel(const TargetConfig& target, const std::string& volume) = 0;
  // Exports that kernel into `out_dir` (absent); returns the release exported.
  virtual Result<std::string> ExportKernel(const TargetConfig& target, const std::string& volume,
                                           const std::string& out_dir) = 0;
  // Builds a PE image (vmlinuz, initrd.img) into `pe_dir` from the exported tree `kernel_dir`.
  virtual Status BuildPe(const std::string& kernel_dir, const std::string& pe_dir) = 0;
  // Stops the target and starts it again with `target`'s PE; returns once it is pe-ready. With
  // `expect_kernel` set, first checks (holding the target's lock, so no cutover or drill runs
  // meanwhile) that the target is pe-ready on that kernel, and when it is not (a cutover
  // promoted it meanwhile, it was restarted by someone else) returns Aborted with the VM
  // untouched.
  virtual Status Restart(const TargetConfig& target, const std::string& expect_kernel) = 0;
  // The pe-agent's prepare-boot of `volume` (not a dry run); returns its summary line.
  virtual Result<std::string> PrepareBoot(const TargetConfig& target,
                                          const std::string& volume) = 0;
};

struct FollowBootOptions {
  std::string volume;           // the root volume
  bool prepare = true;          // run prepare-boot after a restart
  bool prepare_always = false;  // ...and also when nothing was rebuilt
};

struct FollowBootResult {
  std::string pe_kernel_before;  // what the PE ran when follow-boot started
  std::string os_kernel;         // what the migrated OS would boot
  bool rebuilt = false;          // a new PE was built and the target restarted into it
  std::string pe_dir;            // rebuilt: where the new PE image is
  std::string prepared;          // prepare-boot's summary ("" when it did not run)
};

// One pass of the steps above for `target` (as loaded, its override applied). Errors name the
// step: "PE status", "the migrated OS's kernel", "export", "build", "restart" (the target is then
// started again on the PE it ran before, which keeps serving; when the target was no longer
// pe-ready on its old kernel at the restart, nothing is touched) or "prepare-boot". Files: the
// export in STATE_DIR/NAME.boot/KVER (removed after the build), the PE in
// STATE_DIR/NAME.pe/KVER.SECONDS (a new directory each build, so the one an override names is
// never rebuilt in place; the others removed once the new one runs). Progress lines go to
// `progress`.
Result<FollowBootResult> FollowBoot(const TargetConfig& target, const FollowBootOptions& options,
                                    BootFollowSystem& system, std::ostream& progress);

// The real system: the target's pe-agent, ExportBoot, `build_pe_image` (the path of
// pe-boot/build-pe-image) with `pe_agent` (the pe-agent binary to put in the PE), TargetVm, and
// a prepare-boot with `prepare_timeout_seconds`.
class LinuxBootFollowSystem : public BootFollowSystem {
 public:
  LinuxBootFollowSystem(std::string build_pe_image, std::string pe_agent,
                        double prepare_timeout_seconds, std::ostream& progress)
      : build_pe_image_(std::move(build_pe_image)),
        pe_agent_(std::move(pe_agent)),
        prepare_timeout_seconds_(prepare_timeout_seconds),
        progress_(progress) {}
  Result<std::string> PeKernel(const TargetConfig& target) override;
  Result<std::string> OsKernel(const TargetConfig& target, const std::string& volume) override;
  Result<std::string> ExportKernel(const TargetConfig& target, const std::string& volume,
                                   const std::string& out_dir) override;
  Status BuildPe(const std::string& kernel_dir, const std::string& pe_dir) override;
  Status Restart(const TargetConfig& target, const std::string& expect_kernel) override;
  Result<std::string> PrepareBoot(const TargetConfig& target, const std::string& volume) override;

 private:
  std::string build_pe_image_, pe_agent_;
  double prepare_timeout_seconds_;
  std::ostream& progress_;
};

}  // namespace cdp::failover
