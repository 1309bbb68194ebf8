// Takeover: the pe-agent handing the target VM from the PE to the migrated OS (TakeoverRequest,
// docs/pe-agent.md §5). One method per step; every step reaches the machine through
// TakeoverSystem (mount, block ioctls, kexec, the adaptation), so a unit test drives the state
// machine with a fake and fails each step.
//
//   <start: TakeoverRequest>
//      |
//      v
//   CHECK ---------------------------------------------------.  not pe-ready, /newroot already
//      |                                                     |  mounted, unknown root volume or
//      v                                                     |  boot mode
//   FLUSH ---------------------------------------------------+  a disk's fdatasync failed
//      |  (ApplyBatch refused from here: refusing_batches())  |
//      v                                                     |
//   MOUNT (read-only, no journal replay) --------------------+  no ext4 on the root volume's
//      |  (boot auto: switch-root when the migrated OS has   |  disk or partitions; mount(2)
//      |   /lib/modules/<PE kernel>, else kexec)             |
//      v                                                     |
//   KEXEC_LOAD (boot kexec only) ----------------------------+  no kernel of its own, kexec not
//      |                                                     |  allowed, kexec_file_load refused
//      v                                                     |
//   PLAN: AdaptRoot as a dry run ----> KEXEC_UNLOAD ---------+  a check of AdaptRoot failed:
//      |  (every refusal is here, before anything is written) |  the replica is untouched
//      +-- dry run --------------------------------------.   |
//      v                                                 |   |
//   REMOUNT: unmount; RootWrittenFile(); read-write -----+---+  umount/mount(2) failed
//      |  (from here a failure leaves root_written())    |   |
//      v                                                 |   |
//   ADAPT ------------> KEXEC_UNLOAD (when loaded) ------+---+  writing a change failed
//      |                                                 |   |
//      v                                                 |   |
//   HAND_OVER -----------------------------------------------+  the takeover file not written
//      |  switch-root: write the takeover file           |   |
//      |  kexec: nothing yet (after the reply)           v   v
//      v                                               ROLL_BACK: unmount /newroot, batches
//   <finish: ok reply, handed_over()>                   applied again (refused for good once
//                                                       root_written(): the agent goes pe-error)
//      |                                                     |
//      |  (after the reply, the caller calls Finish())      v
//      v                                               <finish: ok=false reply, or ok=true for
//   switch-root: the process exits with                 a dry run; the agent serves again>
//   kTakeoverExitStatus; the PE's /init switch_roots
//   kexec: unmount, flush, REBOOT ----> (reboot failed) FATAL: KexecFailedFile written, the
//                                        next agent of this boot serves in pe-error
//
// Prepare (PrepareBootRequest, ahead of a cutover; the agent serves nothing meanwhile):
//
//   CHECK -> MOUNT (read-only, no journal replay) -> INITRAMFS -> unmount -> <serving>
//                                                      |  virtio drivers missing, not dry run:
//                                                      |  overlay (tmpfs) over the root, the
//                                                      |  planned config, update-initramfs or
//                                                      |  dracut in a chroot, the image kept
//                                                      |  in TakeoverConfig::prepare_dir
//   any failure: unmount -> <serving>; the replica is never written
//
// Each step is timed (cdp::StepTimeline), appended to the reply's steps (a failed one with the
// result "failed: <error>") and announced: "pe-agent: takeover step NAME (S.SSS s): RESULT".
//
// Not thread-safe: the pe-agent's one thread drives it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/status.h"
#include "cdp/core/step_timeline.h"
#include "cdp/core/wire.h"
#include "cdp/pe/boot_adaptation.h"
#include "cdp/pe/initramfs_rebuild.h"

namespace cdp::pe {

// The exit status of a pe-agent process that handed the VM over to the migrated OS by
// switch_root: the PE's /init switch_roots when the agent exits with it and the takeover file
// exists.
inline constexpr int kTakeoverExitStatus = 100;

// The machine's uptime in seconds (/proc/uptime; 0 when unreadable), for the PE's console lines.
double ProcUptimeSeconds();

// True when `proc_filesystems` (the text of /proc/filesystems: one "[nodev]\tNAME" per line)
// lists the filesystem type `type`.
bool FilesystemTypeListed(std::string_view proc_filesystems, std::string_view type);

// Makes the kernel know the filesystem type `type` before a mount(2) of it: Ok at once when
// /proc/filesystems lists it; otherwise runs `modprobe TYPE` and waits up to `timeout_seconds`
// for it to be listed (the PE's /init loads ext4 in the background while the pe-agent starts,
// so an early takeover can find it half loaded). NotFound names the type and the timeout.
Status WaitForFilesystemType(const std::string& type, double timeout_seconds);

// What a takeover does to the machine. LinuxTakeoverSystem is the real one; tests fake it.
class TakeoverSystem {
 public:
  virtual ~TakeoverSystem() = default;

  // Block ioctls (block_ioctl.h): "" or a note on what went wrong (not an error).
  virtual std::string DropBufferCache(const std::string& disk) = 0;
  virtual std::string RereadPartitions(const std::string& disk) = 0;
  // The partition devices of `disk` that exist, in order.
  virtual std::vector<std::string> PartitionsOf(const std::string& disk) = 0;
  // The filesystem on `device` (filesystem_id.h).
  virtual Result<FsId> ReadFsId(const std::string& device) = 0;
  // The PARTUUIDs of `disk`'s partition table by partition number (filesystem_id.h); empty
  // when it has none or cannot be read (fstab's PARTUUID= entries then find nothing).
  virtual std::map<int, std::string> ReadPartitionUuids(const std::string& disk) {
    (void)disk;
    return {};
  }

  // True when `dir` is the root of a mount.
  virtual bool IsMountPoint(const std::string& dir) = 0;
  // Creates `dir` when absent and mounts the ext4 on `device` there: read-write, or read-only
  // without journal replay ("noload": not one byte of the device written). The errno names
  // the command: "pe-agent: mount -t ext4 DEVICE DIR: ...".
  virtual Status MountExt4(const std::string& device, const std::string& dir, bool read_only) = 0;
  // Unmounts `dir` (detached when busy): "" or what went wrong.
  virtual std::string Unmount(const std::string& dir) = 0;
  // sync(2).
  virtual void Sync() = 0;

  // kexec.h: KexecFileLoad, KexecUnload, RebootIntoLoadedKernel.
  virtual Result<std::string> KexecLoad(const std::string& kernel_root, const std::string& kernel,
                                        const std::string& initrd_root, const std::string& initrd,
                                        const std::string& cmdline) = 0;
  virtual void KexecUnload() = 0;
  virtual Status RebootIntoLoadedKernel() = 0;

  // Prepare: a copy-on-write view of `lower` at `dir` (overlayfs, its upper and work directories
  // on a tmpfs mounted at `scratch`; the overlay module loaded when the kernel lacks it), and
  // its removal ("" or what went wrong).
  virtual Status MountOverlay(const std::string& lower, const std::string& scratch,
                              const std::string& dir) = 0;
  virtual std::string UnmountOverlay(const std::string& scratch, const std::string& dir) = 0;
  // Runs the migrated OS's own tools in a chroot (initramfs_rebuild.h).
  virtual ChrootRunner* Chroot() = 0;

  // The adaptation of the mounted root (boot_adaptation.h: AdaptRoot).
  virtual Result<std::vector<std::string>> AdaptRoot(AdaptRequest request,
                                                     std::vector<RootChange>* changes) = 0;
};

// The real machine: mount(2), the ioctls of block_ioctl.h, the syscalls of kexec.h, AdaptRoot.
class LinuxTakeoverSystem : public TakeoverSystem {
 public:
  std::string DropBufferCache(const std::string& disk) override;
  std::string RereadPartitions(const std::string& disk) override;
  std::vector<std::string> PartitionsOf(const std::string& disk) override;
  Result<FsId> ReadFsId(const std::string& device) override;
  std::map<int, std::string> ReadPartitionUuids(const std::string& disk) override;
  bool IsMountPoint(const std::string& dir) override;
  Status MountExt4(const std::string& device, const std::string& dir, bool read_only) override;
  std::string Unmount(const std::string& dir) override;
  void Sync() override;
  Result<std::string> KexecLoad(const std::string& kernel_root, const std::string& kernel,
                                const std::string& initrd_root, const std::string& initrd,
                                const std::string& cmdline) override;
  void KexecUnload() override;
  Status RebootIntoLoadedKernel() override;
  Status MountOverlay(const std::string& lower, const std::string& scratch,
                      const std::string& dir) override;
  std::string UnmountOverlay(const std::string& scratch, const std::string& dir) override;
  ChrootRunner* Chroot() override { return &chroot_; }
  Result<std::vector<std::string>> AdaptRoot(AdaptRequest request,
                                             std::vector<RootChange>* changes) override;

 private:
  LinuxChrootRunner chroot_;
};

struct TakeoverConfig {
  // Where the migrated OS's root is mounted (created when absent), and the file that tells the
  // PE's /init to switch_root into it (docs/pe-image.md §3).
  std::string newroot = "/newroot";
  std::string takeover_file = "/run/cdp-takeover";
  std::string sys_class_net = "/sys/class/net";  // the NICs a NIC mapping may name
  std::string kernel_release;                    // the PE's running kernel (uname -r)
  bool allow_kexec = false;                      // PeAgentOptions::allow_kexec
  // Prepare: where rebuilt initramfs images are kept for the takeover (a tmpfs: this boot only),
  // and the scratch directory of the overlay it rebuilds them in.
  std::string prepare_dir = "/run/cdp-prepared";
  std::string prepare_scratch = "/run/cdp-prepare";
  int rebuild_timeout_seconds = 1800;  // update-initramfs/dracut in the chroot
};

// One volume's disk as the takeover sees it. The BlockDevice stays the agent's.
struct TakeoverDisk {
  std::string volume;
  std::string path;               // /dev/vdX, or the --disk path
  BlockDevice* device = nullptr;  // flushed at FLUSH and before a kexec reboot
};

class Takeover {
 public:
  // Takes a line to print on the console and the log.
  using Announcer = std::function<void(const std::string&)>;

  // `system` must outlive this object.
  Takeover(TakeoverConfig config, TakeoverSystem* system, Announcer announce);

  // Runs `request` from CHECK to HAND_OVER, or to ROLL_BACK on a failure or a dry run (graph
  // above), and fills *reply completely: ok, error, steps, root_device, kernel_release,
  // boot_mode, changes. `state` and `state_error` are the agent's (CHECK refuses unless
  // PE_STATE_READY); `disks` are every volume's disks, in volume order. Returns true when handed
  // over: the caller sends the reply, stops serving, and calls Finish(). REQUIRES: not
  // handed_over().
  bool Run(const wire::v1::TakeoverRequest& request, wire::v1::PeState state,
           const std::string& state_error, const std::vector<TakeoverDisk>& disks,
           wire::v1::TakeoverReply* reply);

  // Runs `request` (graph above: check, mount read-only, initramfs) and fills *reply: ok,
  // error, steps, kernel_release, initramfs, rebuilt, changes (what the takeover will change
  // for it). Changes nothing on the replica. REQUIRES: not handed_over().
  void Prepare(const wire::v1::PrepareBootRequest& request, wire::v1::PeState state,
               const std::string& state_error, const std::vector<TakeoverDisk>& disks,
               wire::v1::PrepareBootReply* reply);

  // True from FLUSH until ROLL_BACK, and for good once handed over or root_written(): the agent
  // must refuse every ApplyBatch.
  bool refusing_batches() const { return refusing_batches_ || root_written_; }
  // A takeover mounted the migrated root read-write (REMOUNT) and then failed: the disks are no
  // longer a plain replica. The agent serves in pe-error from then on.
  bool root_written() const { return root_written_; }
  bool handed_over() const { return handed_over_; }

  // After the ok reply of a handover. switch-root: nothing (the process exits with
  // kTakeoverExitStatus; the root stays mounted). kexec: syncs, unmounts the new root, flushes
  // every disk and reboots into the loaded kernel; returns only when that failed, after writing
  // KexecFailedFile() and announcing a FATAL line.
  // REQUIRES: handed_over(); the disks of Run() still open.
  void Finish();

  // Where prepare-boot keeps the rebuilt initramfs images (TakeoverConfig::prepare_dir).
  const std::string& prepare_dir() const { return config_.prepare_dir; }
  // Written when a kexec reboot failed (beside the takeover file, in /run: this boot only); an
  // agent that finds it at start serves in pe-error.
  std::string KexecFailedFile() const { return config_.takeover_file + ".kexec-failed"; }
  // Written at REMOUNT, before the read-write mount (in /run: this boot only); an agent that
  // finds it at start serves in pe-error. A successful switch-root never returns to the PE.
  std::string RootWrittenFile() const { return config_.takeover_file + ".root-written"; }

 private:
  // The steps. Each returns its result line, or why it failed.
  Result<std::string> Check(const wire::v1::TakeoverRequest& request, wire::v1::PeState state,
                            const std::string& state_error);
  Result<std::string> Flush();
  Result<std::string> Mount(bool read_only);
  // Not a step: boot auto resolved after MOUNT, from the mounted root.
  wire::v1::BootMode ChooseBoot(wire::v1::BootMode asked) const;
  Result<std::string> LoadOwnKernel(const wire::v1::TakeoverRequest& request);
  // PLAN (dry_run: AdaptRoot's checks, nothing written) and ADAPT.
  Result<std::string> Adapt(const wire::v1::TakeoverRequest& request, bool dry_run);
  Result<std::string> Remount();
  Result<std::string> HandOver(const wire::v1::TakeoverRequest& request);
  // Prepare's INITRAMFS step for kernel `kver`.
  Result<std::string> PrepareInitramfs(bool dry_run, const std::string& kver,
                                       wire::v1::PrepareBootReply* reply);
  // Unloads a kernel loaded with kexec (by this request or a preload) and forgets it.
  void UnloadKexec();
  // Resets the per-request state for `reply` (Run and Prepare).
  void Begin(StepTimeline* timeline, wire::v1::TakeoverReply* reply,
             const std::vector<TakeoverDisk>& disks);
  // ROLL_BACK: "" or what went wrong unmounting.
  std::string RollBack();

  // Runs `fn` as the step `name`: timed by timeline_, appended to reply_->steps and announced.
  // Returns its status.
  Status RunStep(const std::string& name, const std::function<Result<std::string>()>& fn);
  std::string Init(const wire::v1::TakeoverRequest& request) const;

  TakeoverConfig config_;
  TakeoverSystem* system_;
  Announcer announce_;
  bool refusing_batches_ = false;
  bool newroot_mounted_ = false;  // config_.newroot is mounted by this takeover
  bool kexec_loaded_ = false;     // for this takeover's handover
  // What is loaded with kexec_file_load now (KVER, command line, the files' identities: inode,
  // size, mtime, ctime), by a dry run's preload or a takeover; "" when nothing is.
  std::string kexec_identity_;
  double kexec_loaded_at_ = 0;  // uptime seconds
  bool handed_over_ = false;
  bool root_written_ = false;

  // Of the request being run.
  StepTimeline* timeline_ = nullptr;
  wire::v1::TakeoverReply* reply_ = nullptr;
  std::vector<TakeoverDisk> disks_;
  const TakeoverDisk* root_disk_ = nullptr;
  std::string root_device_, root_uuid_;
  UuidMap disk_uuids_;
  TargetDisks target_;  // every disk and partition found at MOUNT
  wire::v1::BootMode boot_ = wire::v1::BOOT_MODE_UNSPECIFIED;
  std::string kernel_release_;  // the kernel the migrated OS will run
};

}  // namespace cdp::pe
