// TargetConfig: the target VM described by a small YAML file (cdpctl target start|stop|status;
// documented with every key in deploy/examples/target.yaml and docs/target-vm.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/units.h"

namespace cdp::failover {

struct TargetDisk {
  std::string volume;  // the virtio serial inside the VM
  std::string path;    // qcow2 (or raw, by extension) on the host; absolute after loading
  uint64_t size = 0;   // bytes: the source volume's size
};

struct TargetNic {
  std::string mode;  // replication NIC: "user"; service NIC: "user", "tap" or "none"
  std::string mac;   // 52:54:00:xx:xx:xx
  std::string tap;   // mode tap: the host tap interface
};

struct TargetConfig {
  std::string file;  // the config file it came from
  std::string name;
  uint64_t memory_mib = 512;
  unsigned cpus = 1;
  std::string kernel, initrd;  // the PE image (pe-boot/build-pe-image OUTDIR)
  // A PE rebuilt on the migrated OS's kernel by `cdpctl target follow-boot`, recorded in
  // pe_override_file() and used instead of the config's pe: (kernel and initrd above are then
  // its files). Empty when there is none.
  std::string pe_override;         // the file it came from
  std::string pe_override_kernel;  // its kernel release (KVER)
  std::string qmp_socket;
  std::string replication_endpoint;  // host side, tcp://HOST:PORT
  std::string replication_host;      // parsed from it
  uint16_t replication_port = 0;
  uint16_t guest_port = 0;  // where the pe-agent listens inside the VM (default: the same)
  TargetNic replication_nic;
  TargetNic service_nic;
  std::string uuid;            // SMBIOS system UUID (QEMU -uuid); default derived from name
  std::string accel = "auto";  // auto|kvm|tcg
  std::string state_dir;       // pid file, console log, state.json
  std::string metadata_disk;   // the pe-agent's metadata disk (qcow2)
  std::vector<TargetDisk> disks;
  double ready_timeout_seconds = 120;
  std::string qemu = "qemu-system-x86_64";
  std::string kernel_args;  // appended to the kernel command line

  std::string pid_file() const { return state_dir + "/" + name + ".pid"; }
  std::string console_log() const { return state_dir + "/" + name + ".console.log"; }
  std::string state_file() const { return state_dir + "/" + name + ".state.json"; }
  // Where follow-boot records the PE it built: {"kernel", "initrd", "kernel_release", "volume",
  // "made_at"} (docs/target-vm.md, "Following the migrated OS's kernel").
  std::string pe_override_file() const { return state_dir + "/" + name + ".pe.json"; }
  // "NAME:SIZE,..." for cdp.volumes= on the kernel command line.
  std::string VolumeSpecs() const;
};

// Loads and checks `path`. Every error names the file, the line and the key, and what is
// expected: an unknown key, a missing required key (name, pe.kernel, pe.initrd, qmp_socket,
// replication_endpoint, disks), a bad size, a volume name that is not valid or does not fit a
// virtio serial (20 bytes), two disks for one volume or at one path, a bad MAC, a bad endpoint.
// Relative paths are taken from the config file's directory. When pe_override_file() exists,
// its kernel and initrd replace the config's pe: (an override that is damaged or names files
// that are gone is an error naming it: remove it to boot the config's PE). Nothing on disk is
// touched.
Result<TargetConfig> LoadTargetConfig(const std::string& path);

// Reads the PE override at `path` into config (kernel, initrd, pe_override,
// pe_override_kernel). Absent file: OK, nothing changes. Exposed for follow-boot and tests.
Status ApplyPeOverride(const std::string& path, TargetConfig* config);

using ::cdp::ParseSize;  // cdp/core/units.h

}  // namespace cdp::failover
