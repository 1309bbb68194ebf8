// Boot adaptation of the migrated OS at takeover (docs/pe-agent.md §5): the checks and the
// changes the pe-agent makes to the replica's root filesystem before the PE's /init switch_roots
// into it (or kexec boots its kernel). Pure functions over the directory where that filesystem is
// mounted (/newroot in the PE, a temporary directory in tests) and over what the caller found on
// the target (its disks' filesystem UUIDs, its NICs, the running kernel), so every rule is testable
// without a VM.
//
// Two kinds of migrated OS:
//   - an unmodified distribution (Debian, Ubuntu, RHEL family): its own network configuration
//     (net_adaptation.h), /etc/fstab and GRUB's root device (fstab_adaptation.h), VMware-only
//     services (vmware_services.h) are adapted; every change is planned into a RootChanges
//     (root_changes.h), listed by a dry run, and applied with the previous content kept;
//   - our own contract (the busybox lab source): /etc/cdp/net.conf lists its interfaces,
//     `iface MAC ADDR/PREFIX [GATEWAY]` per line, and is rewritten from the NIC mappings. A
//     migrated OS that has /etc/cdp/net.conf is this kind.
// Both: /boot/initrd.img-KVER (or /boot/initramfs-KVER.img) and /lib/modules/KVER for the
// kernel it runs, with the virtio drivers (initramfs_rebuild.h rebuilds it ahead of the window).
//
// Paths inside the migrated OS are resolved as if its root were `/` (absolute symlinks such as
// /sbin/init -> /lib/systemd/systemd stay inside it): see ResolveInRoot (root_path.h). The
// filesystem ids come from filesystem_id.h, the initramfs listing from initramfs.h; files are
// changed with core's WriteFileAtomicWithMode.
//
// Thread-safety: every function is reentrant; none keeps state.
#pragma once

#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/pe/filesystem_id.h"
#include "cdp/pe/fstab_adaptation.h"
#include "cdp/pe/initramfs.h"
#include "cdp/pe/root_changes.h"
#include "cdp/pe/root_path.h"

namespace cdp::pe {

// ---- fstab ----

struct FstabEntry {
  int line = 0;             // 1-based line number in the file
  std::string spec;         // "UUID=..." (quotes removed), "/dev/vda1", "LABEL=..."
  std::string mount_point;  // "/", "/data", "none"
  std::string type;         // "ext4", "swap"
};

// Parses fstab text: one entry per non-blank, non-comment line with at least 3 fields.
std::vector<FstabEntry> ParseFstab(std::string_view text);

// Filesystem UUIDs (lowercase) found on the target's disks and partitions -> where
// ("/dev/vda1").
using UuidMap = std::map<std::string, std::string>;

// Checks ROOT/etc/fstab against the filesystems on the target's disks: every `UUID=` entry with
// a mount point (not swap, not "none") must name a UUID in `on_disks`, and the entry for `/`,
// when it is by UUID, must name `root_uuid` (the filesystem mounted at ROOT). Errors, one per
// bad line, are appended to *errors, e.g.
//   fstab line 3: UUID=... (/data) is on no disk of this target; the migrated OS would not
//   mount it
// Entries by device path or LABEL cannot be checked here; each adds a note to *notes.
// A missing /etc/fstab is an error (the root volume is probably the wrong one).
void CheckFstab(const std::string& root, const UuidMap& on_disks, const std::string& root_uuid,
                std::vector<std::string>* errors, std::vector<std::string>* notes);

// ---- network ----

// One interface as the migrated OS must configure it (a line of /etc/cdp/net.conf; a NIC of
// net_adaptation.h).
struct NicConfig {
  std::string mac;      // the target's NIC, aa:bb:cc:dd:ee:ff (lowercase after ValidateNics)
  std::string address;  // ADDR/PREFIX
  std::string gateway;  // optional
  std::string source_mac;   // the source's NIC that had it; optional (lowercase after ValidateNics)
  std::string source_name;  // its name on the source ("ens192"); optional
};

// The NICs of this machine: MAC (lowercase) -> interface name, from SYS_CLASS_NET/*/address
// (loopback and all-zero addresses left out). IOError when the directory cannot be read.
Result<std::map<std::string, std::string>> ListNics(const std::string& sys_class_net);

// Checks the mappings and normalizes their MACs to lowercase: each MAC well formed and on a
// NIC in `present` (MAC -> interface), no MAC twice, each address ADDR/PREFIX (IPv4 or IPv6),
// each gateway (when set) an address of the same family, each source MAC (when set) well formed.
// Errors, naming the mapping, are appended to *errors.
void ValidateNics(std::vector<NicConfig>* nics, const std::map<std::string, std::string>& present,
                  std::vector<std::string>* errors);

// The net.conf the takeover writes: a comment line, then `iface MAC ADDRESS[ GATEWAY]` per NIC.
std::string FormatNetConf(const std::vector<NicConfig>& nics);

// Replaces ROOT/etc/cdp/net.conf with FormatNetConf(nics): the previous file is first copied to
// net.conf.pre-cutover, then the new one is written beside it (net.conf.tmp), fsynced and
// renamed over it (and the directory fsynced), so after a crash the file is either the old or the
// new one, never a mix. The file keeps the previous one's mode. Returns what changed, for the
// step's result. REQUIRES: ValidateNics accepted `nics`, and `nics` is not empty.
Result<std::string> RewriteNetConf(const std::string& root, const std::vector<NicConfig>& nics);

// ---- drivers and kernel ----

// The module name of a path or file name: "kernel/drivers/block/virtio_blk.ko.xz" ->
// "virtio_blk" ('-' read as '_', as modprobe does). Empty when it is not a .ko[.gz|.xz|.zst].
std::string ModuleNameOf(std::string_view path);

// The migrated OS's initramfs of kernel `kver`, a path inside it: /boot/initrd.img-KVER (Debian)
// when it exists, else /boot/initramfs-KVER.img (RHEL) when that exists, else the first.
std::string InitramfsPath(const std::string& root, const std::string& kver);

// The modules in the migrated OS's initramfs for kernel `kver`: the lines of
// ROOT/INITRAMFS.modules when present (names or paths of .ko files), else the .ko
// entries of ROOT/INITRAMFS (INITRAMFS = InitramfsPath). NotFound when neither exists;
// ListInitramfs' errors.
Result<std::set<std::string>> InitramfsModules(const std::string& root, const std::string& kver);

// The modules built into kernel `kver` of the migrated OS (ROOT/lib/modules/KVER/
// modules.builtin); empty when that file is absent.
std::set<std::string> BuiltinModules(const std::string& root, const std::string& kver);

// Checks that the migrated OS's initramfs for `kver` has virtio_blk, virtio_pci and virtio_net
// (or that its kernel builds them in). Appends one error naming what is missing, e.g.
//   the migrated OS's initramfs /boot/initrd.img-KVER has no virtio_blk; it would not find its
//   disk on the target: rebuild it with virtio drivers (update-initramfs) before the cutover
void CheckInitramfsDrivers(const std::string& root, const std::string& kver,
                           std::vector<std::string>* errors, std::vector<std::string>* notes);

// Checks that the migrated OS has modules for the kernel it will run after switch_root (the
// PE's, `kver`): ROOT/lib/modules/KVER is a directory. Appends, otherwise:
//   the PE runs kernel X but the migrated OS has no modules for it (it has: Y); rebuild the PE
//   from the replica's /boot and /lib/modules (build-pe-image --kernel-from)
// Returns whether it passed.
bool CheckKernelModules(const std::string& root, const std::string& kver,
                        std::vector<std::string>* errors);

// The kernel a kexec boots when the migrated OS is not to run on the PE's kernel: the newest
// KVER (version order, as `sort -V`) for which ROOT/boot/vmlinuz-KVER, ROOT/boot/initrd.img-KVER
// and ROOT/lib/modules/KVER all exist. NotFound otherwise:
//   the migrated OS has no kernel to kexec into: no /boot/vmlinuz-KVER with its
//   /boot/initrd.img-KVER and /lib/modules/KVER (it has: vmlinuz-A, vmlinuz-B)
Result<std::string> ChooseOwnKernel(const std::string& root);

// Checks that `init` is an absolute path (no whitespace) to an executable file in the migrated
// OS. Appends an error otherwise.
void CheckInit(const std::string& root, const std::string& init, std::vector<std::string>* errors);

// ---- the whole step ----

struct AdaptRequest {
  std::string root;            // where the migrated OS's root filesystem is mounted
  std::string root_device;     // where it was mounted from, for messages
  std::string root_uuid;       // its UUID
  std::string kernel_release;  // the running (PE) kernel, which the migrated OS will run
  std::string init = "/sbin/init";
  std::vector<NicConfig> nics;                      // the mappings of the takeover request
  std::map<std::string, std::string> present_nics;  // ListNics of the PE
  UuidMap disk_uuids;  // every filesystem on the target's disks (when `target` has none)
  // The target's disks, their filesystems and the source's disk names, for fstab and GRUB.
  // Without filesystems, disk_uuids and root_device stand for them.
  TargetDisks target;
  // Where PrepareBoot keeps rebuilt initramfs images (initramfs_rebuild.h); "" = none.
  std::string prepared_dir;
  bool dry_run = false;  // check only; change nothing
};

// The whole adaptation: every check (kernel modules, init, fstab and GRUB's root device, NIC
// mappings and the network configuration, initramfs drivers) runs and plans its changes (the
// network, fstab device names, root=, VMware-only services off); only when all pass and not
// dry_run are the changes made (RootChanges::Apply: previous contents kept beside the files,
// /var/log/cdp-takeover.log appended); with /etc/cdp/net.conf (our contract) the network is
// that file, rewritten by RewriteNetConf. Returns the notes (what was checked, changed, or would
// change) for the step's result, and fills *changes (when not null) with the changes made or,
// for a dry run, that would be made; or FailedPrecondition with every problem found, joined by
// "; ". On error nothing was changed.
Result<std::vector<std::string>> AdaptRoot(AdaptRequest request,
                                           std::vector<RootChange>* changes = nullptr);

}  // namespace cdp::pe
