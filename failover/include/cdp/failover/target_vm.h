// TargetVm: the target VM of a migration, booted into the PE (preinstallation environment) and
// waiting there, with the migrated disks attached, while the replicator keeps them up to date.
// Behind `cdpctl target start|stop|status` (docs/target-vm.md).
//
// The VM is a qemu-system-x86_64 process, daemonized, with:
//   - a QMP socket (config qmp_socket) — how it is stopped and asked for its state;
//   - the PE kernel + initramfs (pe-boot/build-pe-image), the kernel command line carrying the
//     pe-agent's port, the replication NIC's MAC and the volumes (cdp.listen, cdp.repl_mac,
//     cdp.volumes);
//   - one virtio-blk disk per volume (serial = volume name), qcow2, created with the volume's
//     size when absent, plus a small metadata disk (serial cdp-pe-meta) for the pe-agent's
//     durable cursors;
//   - a replication NIC (user networking, restricted, the host's replication_endpoint forwarded
//     to the pe-agent) and a service NIC (user, tap or none);
//   - KVM when a KVM guest really runs here (ProbeAccelerator), TCG otherwise.
// Files in state_dir: NAME.pid, NAME.console.log (the serial console, appended across boots),
// NAME.state.json (how it was started: accel, pid, pe_boot_seconds).
//
// Not thread-safe; one cdpctl at a time per VM.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"
#include "cdp/failover/kvm_probe.h"
#include "cdp/failover/target_config.h"

namespace cdp::failover {

// The XXH3-64 of one region of a volume's disk, as the pe-agent computed it in the VM.
struct RegionChecksum {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t xxh3 = 0;
};

// What a target VM is doing, as `cdpctl target status` reports it (TargetStateName's text).
enum class TargetState {
  kStopped,  // "stopped": no QEMU process
  kBooting,  // "booting": QEMU runs but the pe-agent does not answer (yet)
  kPeReady,  // "pe-ready": the pe-agent answers and its disks are in order
  kPeError,  // "pe-error": the pe-agent answers but refuses to replicate (error says why)
};

// "stopped", "booting", "pe-ready", "pe-error".
std::string TargetStateName(TargetState state);

struct TargetStatus {
  TargetState state = TargetState::kStopped;
  std::string vm_status;  // QMP query-status ("running", "paused", ...), "" when unknown
  int pid = 0;
  std::string accel;
  double pe_boot_seconds = 0;  // QEMU start -> pe-agent ready, measured by cdpctl target start
  double pe_kernel_to_ready_seconds = 0;  // the guest's uptime when the pe-agent was ready
  std::string kernel_release;
  std::string error;
  std::vector<wire::v1::PeVolumeStatus> volumes;
};

class TargetVm {
 public:
  explicit TargetVm(TargetConfig config) : config_(std::move(config)) {}

  // Boots the VM into the PE and returns once the pe-agent is ready (progress lines go to
  // `progress`). Already running and ready: OK, nothing changes. Errors, each with nothing
  // started or the VM stopped again: a missing PE image, a disk smaller than its volume or not
  // qcow2/raw, a new disk next to an old metadata disk, QEMU refusing its command line (its
  // message), the PE reporting pe-error (its reason), no ready within ready_timeout_seconds
  // (the console's last lines).
  Status Start(std::ostream& progress);

  // Stops the VM: QMP "quit", then SIGKILL after timeout_s. Not running: OK. A qmp_socket that
  // is not a QEMU monitor: ProtocolMismatch, nothing killed.
  Status Stop(std::ostream& progress, double timeout_s = 15);

  // The VM's state; Stopped is a state, not an error. ProtocolMismatch when qmp_socket is served
  // by something that is not a QEMU monitor, or one whose query-status reply has another shape.
  Result<TargetStatus> GetStatus();

  // Checksums of [offset, offset + length) of `volume`'s disk in `chunk`-byte regions (the
  // last one shorter), computed by the pe-agent inside the VM; *applied_lsn is the volume's
  // applied LSN when the last region was read. length 0 means to the end of the volume.
  // NotFound for a volume the target does not have; InvalidArgument for a range outside it;
  // Unavailable when the pe-agent does not answer.
  Result<std::vector<RegionChecksum>> Checksums(const std::string& volume, uint64_t offset,
                                                uint64_t length, uint64_t chunk,
                                                uint64_t* applied_lsn);

  // The QEMU command line for `accel` (exposed for tests and for --dry-run).
  std::vector<std::string> QemuArgs(const std::string& accel) const;

  const TargetConfig& config() const { return config_; }

  // The PE boot time (QEMU start -> pe-agent ready) its last Start recorded in its state file;
  // 0 when there is none (never started, or a damaged file).
  double RecordedPeBootSeconds() const;

 private:
  Status PrepareDisks(std::ostream& progress);
  // Grows a metadata disk smaller than the kept area needs (qemu-img resize). REQUIRES: no QEMU
  // uses it and no delta sits on it.
  Status GrowMetadataDisk(std::ostream& progress);
  int RunningPid() const;
  std::string ConsoleTail(size_t lines) const;

  TargetConfig config_;
};

// QEMU's drive id (QMP "device") of config.disks[index]: "disk<index>"; the metadata disk's is
// kTargetMetaDriveId.
std::string TargetDriveId(size_t index);
inline constexpr char kTargetMetaDriveId[] = "meta";

struct ImageInfo {
  std::string format;  // "qcow2", "raw", ...
  uint64_t virtual_size = 0;
};

// What qemu-img info --force-share says of an image (so a running VM's disk can be read).
// FailedPrecondition with qemu-img's message when it cannot be inspected.
Result<ImageInfo> InspectImage(const std::string& path);

// `cdpctl target status --json`: {"name", "state", "vm_status", "pid", "accel",
// "pe_boot_seconds", "pe_kernel_to_ready_seconds", "kernel_release", "pe_kernel" (the PE image's
// kernel file), "pe_override" (the follow-boot override applied, "" for none), "error",
// "replication_endpoint", "qmp_socket", "console_log",
// "volumes": [{"name", "device", "size_bytes", "applied_lsn", "boot_applied_lsn",
// "applied_bytes", "applied_records", "batches", "verify_seconds", "write_seconds",
// "flush_seconds", "cursor_seconds"}]}
std::string TargetStatusJson(const TargetStatus& status, const TargetConfig& config);
// The human form.
std::string TargetStatusText(const TargetStatus& status, const TargetConfig& config);

}  // namespace cdp::failover
