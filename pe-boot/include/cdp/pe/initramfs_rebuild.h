// Rebuilding the migrated OS's initramfs with the virtio drivers (docs/pe-agent.md §5,
// "Initramfs rebuild"), inside its own root, with its own tools: initramfs-tools'
// `update-initramfs -u -k KVER` (Debian, Ubuntu) or `dracut -f --kver KVER --add-drivers ...`
// (RHEL family). Runs ahead of the cutover (PrepareBoot), never in the outage.
//
// The commands run through a ChrootRunner, so unit tests fake it; LinuxChrootRunner is the real
// one (fork, chroot, exec, with /proc, /sys and /dev bind-mounted for the duration).
//
// Thread-safety: reentrant; LinuxChrootRunner keeps no state.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/pe/root_changes.h"

namespace cdp::pe {

// The drivers a rebuilt initramfs carries for the target's virtual hardware.
inline constexpr const char* kVirtioInitramfsDrivers[] = {"virtio_blk", "virtio_scsi", "virtio_pci",
                                                          "virtio_net"};

// Runs a command with another root directory.
class ChrootRunner {
 public:
  virtual ~ChrootRunner() = default;
  // Bind-mounts /proc, /sys and /dev onto ROOT/proc, ROOT/sys, ROOT/dev, runs `argv` (argv[0]
  // absolute inside ROOT) with ROOT as its root directory and "/" as its working directory, and
  // unmounts the three again, whether it succeeded or not (what failed to unmount is named in
  // the error). Returns its output (stdout and stderr, the last 16 KiB) when it exits 0; else
  // an error with its exit status and that output. TimedOut (it is killed) after
  // `timeout_seconds`.
  virtual Result<std::string> Run(const std::string& root, const std::vector<std::string>& argv,
                                  int timeout_seconds) = 0;
};

// The real runner: mount(2) MS_BIND, fork, chroot(2), execve with a fixed PATH and LANG=C.
class LinuxChrootRunner : public ChrootRunner {
 public:
  Result<std::string> Run(const std::string& root, const std::vector<std::string>& argv,
                          int timeout_seconds) override;
};

enum class InitramfsTool { kNone, kInitramfsTools, kDracut };

// Which tool builds the migrated OS's initramfs: /usr/sbin/update-initramfs (or /sbin/...) is
// initramfs-tools, /usr/bin/dracut (or /usr/sbin/...) dracut; kNone when neither is there.
InitramfsTool DetectInitramfsTool(const RootChanges& root);

// The virtio drivers of kVirtioInitramfsDrivers that the initramfs of `kver` in the migrated OS
// lacks (neither in it nor built into the kernel), when it lacks one that the target's boot needs
// (virtio_blk, virtio_pci or virtio_net: what the takeover's check requires; the target's disks
// are virtio-blk). An image that lacks only virtio_scsi needs no rebuild: empty. InitramfsModules'
// errors (NotFound when it has no initramfs for kver).
Result<std::vector<std::string>> MissingVirtioDrivers(const std::string& root,
                                                      const std::string& kver);

struct InitramfsRebuild {
  InitramfsTool tool = InitramfsTool::kNone;
  std::string kver;
  std::vector<std::string> argv;     // the command, run in the migrated root
  std::string image;                 // the image it writes: /boot/initrd.img-KVER, ...
  std::vector<std::string> drivers;  // the drivers it adds
};

// Plans the rebuild of kver's initramfs with `missing` (MissingVirtioDrivers): the command, and
// the configuration that keeps the drivers in every later rebuild, planned into *changes:
// initramfs-tools: `missing` appended to /etc/initramfs-tools/modules when MODULES (in
// /etc/initramfs-tools/initramfs.conf or conf.d/*, the last one set) is not `most`, which
// leaves them out; dracut: /etc/dracut.conf.d/90-cdp-virtio.conf with add_drivers+=" ... ".
// FailedPrecondition naming what to do when the migrated OS has neither tool.
// REQUIRES: `missing` is not empty.
Result<InitramfsRebuild> PlanInitramfsRebuild(RootChanges* changes, const std::string& kver,
                                              const std::vector<std::string>& missing);

// ---- prepared ahead, installed at takeover ----
//
// PrepareBoot (takeover.h) rebuilds the image over a copy-on-write layer, so the replica is not
// written, and keeps it in the PE: DIR/KVER/initrd (the new image) and DIR/KVER/manifest
// ("image PATH", "original-xxh3 HEX", "original-bytes N", "prepared STAMP", one per line), the
// original being the replica's image it was rebuilt from.

// Writes DIR/KVER/initrd and its manifest (atomically, the image first).
Status KeepPreparedInitramfs(const std::string& dir, const std::string& kver,
                             const std::string& image_path, const std::string& original,
                             const std::string& rebuilt, const std::string& stamp);

// The prepared images of DIR (every DIR/KVER holding a manifest and an initrd) as one blob, for
// the metadata disk's kept area (PeMetadata::SaveKept), so that the PE booted again, or the
// drill VM on a copy of that disk, finds them. "" when DIR holds none. Errors reading them.
// Blob: magic "CDPPRIN1" | count u32 | per image: KVER length u32 | KVER | manifest length u32
// | manifest | initrd length u64 | initrd (big-endian).
Result<std::string> PackPreparedInitramfs(const std::string& dir);

// Writes the images of a PackPreparedInitramfs blob back into DIR (atomically per file) and
// returns the KVERs written. A KVER that DIR already holds (a manifest there) is left as it is
// and not returned: DIR is the newer (a pe-agent restarted within one PE boot). Corruption
// naming what is wrong with a blob that is not one (a bad magic, a length past its end, a KVER
// that is not a plain file name); nothing is written then.
Result<std::vector<std::string>> UnpackPreparedInitramfs(std::string_view blob,
                                                         const std::string& dir);

// At takeover, for kernel `kver` of the migrated OS at changes->root(): when its initramfs lacks
// virtio drivers and DIR/KVER holds an image prepared from exactly its current image, plans
// installing that image over it and the configuration that keeps the drivers
// (PlanInitramfsRebuild), adds a note, and returns true. A prepared image whose original is not
// the current one adds an error (the replica's image changed since: prepare again) and returns
// true. Returns false when nothing is prepared for kver, or the initramfs lacks nothing: the
// caller checks it as usual (CheckInitramfsDrivers).
bool PlanPreparedInitramfs(RootChanges* changes, const std::string& dir, const std::string& kver,
                           std::vector<std::string>* errors, std::vector<std::string>* notes);

// For a kexec into kernel `kver` of the migrated OS at `root`: the image prepared for it
// (DIR/KVER/initrd, a path in the PE) when one was rebuilt from exactly the image `root` holds
// now; "" when none is prepared for kver (or the image lacks nothing any more). A prepared
// image whose original is not the current one: FailedPrecondition (prepare again).
Result<std::string> PreparedInitramfsFor(const std::string& dir, const std::string& root,
                                         const std::string& kver);

// Runs the rebuild's command in the migrated root at `root` (whose planned configuration was
// applied) through `runner`, then checks that the new image carries every driver. Returns the
// command's output's last line and the check, for the step's result.
Result<std::string> RunInitramfsRebuild(ChrootRunner* runner, const std::string& root,
                                        const InitramfsRebuild& rebuild, int timeout_seconds);

}  // namespace cdp::pe
