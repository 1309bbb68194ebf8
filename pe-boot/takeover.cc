#include "cdp/pe/takeover.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string_view>
#include <thread>

#include "block_ioctl.h"
#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/units.h"
#include "kexec.h"

namespace cdp::pe {

namespace v1 = wire::v1;

// How long a mount waits for the kernel to learn a filesystem type from its module: loading
// ext4 with jbd2 and mbcache takes well under a second, even under TCG on a loaded host.
constexpr double kFilesystemModuleWaitSeconds = 30;

double ProcUptimeSeconds() {
  std::ifstream in("/proc/uptime");
  double up = 0;
  in >> up;
  return up;
}

bool FilesystemTypeListed(std::string_view proc_filesystems, std::string_view type) {
  size_t start = 0;
  while (start < proc_filesystems.size()) {
    size_t end = proc_filesystems.find('\n', start);
    if (end == std::string_view::npos) end = proc_filesystems.size();
    std::string_view line = proc_filesystems.substr(start, end - start);
    const size_t tab = line.rfind('\t');
    std::string_view name = tab == std::string_view::npos ? line : line.substr(tab + 1);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.front()))) {
      name.remove_prefix(1);
    }
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) {
      name.remove_suffix(1);
    }
    if (name == type) return true;
    start = end + 1;
  }
  return false;
}

namespace {

bool KernelKnowsFilesystem(const std::string& type) {
  std::ifstream in("/proc/filesystems");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return FilesystemTypeListed(text, type);
}

}  // namespace

Status WaitForFilesystemType(const std::string& type, double timeout_seconds) {
  if (KernelKnowsFilesystem(type)) return Status::Ok();
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds));
  // modprobe returns once the module is in, or at once when another modprobe is loading it
  // (it is then listed in /proc/modules): either way, wait for the kernel to list the type.
  const std::string command = "modprobe " + type + " >/dev/null 2>&1";
  (void)std::system(command.c_str());
  while (!KernelKnowsFilesystem(type)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::NotFound("the kernel does not know the filesystem type " + type + " after " +
                              FormatFixed(timeout_seconds, 0) + " s (modprobe " + type +
                              "): the PE image lacks its module; rebuild it with build-pe-image");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::Ok();
}

// ---- the real machine ----

std::string LinuxTakeoverSystem::DropBufferCache(const std::string& disk) {
  return pe::DropBufferCache(disk);
}

std::string LinuxTakeoverSystem::RereadPartitions(const std::string& disk) {
  return pe::RereadPartitions(disk);
}

std::vector<std::string> LinuxTakeoverSystem::PartitionsOf(const std::string& disk) {
  return pe::PartitionsOf(disk);
}

Result<FsId> LinuxTakeoverSystem::ReadFsId(const std::string& device) {
  return pe::ReadFsId(device);
}

std::map<int, std::string> LinuxTakeoverSystem::ReadPartitionUuids(const std::string& disk) {
  auto ids = pe::ReadPartitionUuids(disk);
  return ids.ok() ? *ids : std::map<int, std::string>{};
}

bool LinuxTakeoverSystem::IsMountPoint(const std::string& dir) {
  // The root of a mount: its device differs from its parent's, or it is /.
  struct stat st, parent;
  if (::stat(dir.c_str(), &st) != 0) return false;
  if (::stat((dir + "/..").c_str(), &parent) != 0) return false;
  return st.st_dev != parent.st_dev || st.st_ino == parent.st_ino;
}

Status LinuxTakeoverSystem::MountExt4(const std::string& device, const std::string& dir,
                                      bool read_only) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir + ": " + ec.message());
  // Read-only must not write to the replica: without replaying the journal (a live source's
  // filesystem always needs recovery), which even a read-only mount does.
  const unsigned long flags = read_only ? MS_RDONLY : 0;
  const char* data = read_only ? "noload" : "";
  int rc = ::mount(device.c_str(), dir.c_str(), "ext4", flags, data);
  if (rc != 0 && errno == ENODEV) {
    // The PE's /init may still be loading ext4 (in the background): wait for it, then retry.
    if (Status known = WaitForFilesystemType("ext4", kFilesystemModuleWaitSeconds); !known.ok()) {
      return Status::IOError("pe-agent: mount -t ext4 " + device + " " + dir + ": " +
                             known.message());
    }
    rc = ::mount(device.c_str(), dir.c_str(), "ext4", flags, data);
  }
  if (rc != 0) {
    const int err = errno;
    return Status::FromErrno(err, "pe-agent: mount -t ext4 " + device + " " + dir +
                                      (err == ENODEV ? " (is the ext4 module loaded?)" : ""));
  }
  return Status::Ok();
}

std::string LinuxTakeoverSystem::Unmount(const std::string& dir) {
  if (::umount2(dir.c_str(), 0) != 0) {
    const int err = errno;
    // Something still uses it: detach it, so it goes once unused and the disk is free again.
    if (::umount2(dir.c_str(), MNT_DETACH) != 0) {
      return "cannot unmount " + dir + ": " + std::strerror(errno);
    }
    CDP_LOG(warning) << "pe-agent: " << dir << " was busy (" << std::strerror(err) << "); detached";
  }
  return "";
}

void LinuxTakeoverSystem::Sync() { ::sync(); }

Result<std::string> LinuxTakeoverSystem::KexecLoad(const std::string& kernel_root,
                                                   const std::string& kernel,
                                                   const std::string& initrd_root,
                                                   const std::string& initrd,
                                                   const std::string& cmdline) {
  return KexecFileLoad(kernel_root, kernel, initrd_root, initrd, cmdline);
}

void LinuxTakeoverSystem::KexecUnload() { pe::KexecUnload(); }

Status LinuxTakeoverSystem::RebootIntoLoadedKernel() { return pe::RebootIntoLoadedKernel(); }

Status LinuxTakeoverSystem::MountOverlay(const std::string& lower, const std::string& scratch,
                                         const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(scratch, ec);
  if (ec) return Status::IOError("cannot create " + scratch + ": " + ec.message());
  if (::mount("cdp-prepare", scratch.c_str(), "tmpfs", 0, "mode=0700") != 0) {
    return Status::FromErrno(errno, "pe-agent: mount -t tmpfs " + scratch);
  }
  for (const char* d : {"/upper", "/work"}) std::filesystem::create_directories(scratch + d, ec);
  std::filesystem::create_directories(dir, ec);
  const std::string options =
      "lowerdir=" + lower + ",upperdir=" + scratch + "/upper,workdir=" + scratch + "/work";
  int rc = ::mount("overlay", dir.c_str(), "overlay", 0, options.c_str());
  if (rc != 0 && errno == ENODEV) {
    // The PE's /init does not load overlay: load it now (only a drill's prepare needs it).
    if (WaitForFilesystemType("overlay", kFilesystemModuleWaitSeconds).ok()) {
      rc = ::mount("overlay", dir.c_str(), "overlay", 0, options.c_str());
    } else {
      errno = ENODEV;
    }
  }
  if (rc != 0) {
    const int err = errno;
    ::umount2(scratch.c_str(), MNT_DETACH);
    return Status::FromErrno(err, "pe-agent: mount -t overlay -o " + options + " overlay " + dir +
                                      (err == ENODEV ? " (no overlay module in the PE?)" : ""));
  }
  return Status::Ok();
}

std::string LinuxTakeoverSystem::UnmountOverlay(const std::string& scratch,
                                                const std::string& dir) {
  std::string out = Unmount(dir);
  const std::string tmpfs = Unmount(scratch);
  if (!tmpfs.empty()) out += (out.empty() ? "" : "; ") + tmpfs;
  return out;
}

Result<std::vector<std::string>> LinuxTakeoverSystem::AdaptRoot(AdaptRequest request,
                                                                std::vector<RootChange>* changes) {
  return pe::AdaptRoot(std::move(request), changes);
}

// ---- the takeover ----

Takeover::Takeover(TakeoverConfig config, TakeoverSystem* system, Announcer announce)
    : config_(std::move(config)), system_(system), announce_(std::move(announce)) {}

std::string Takeover::Init(const v1::TakeoverRequest& request) const {
  return request.init().empty() ? "/sbin/init" : request.init();
}

Status Takeover::RunStep(const std::string& name, const std::function<Result<std::string>()>& fn) {
  Status status;
  timeline_->Step(
      name,
      [&]() -> Result<std::string> {
        Result<std::string> result = fn();
        if (!result.ok()) status = result.status();
        return result;
      },
      nullptr);
  const StepReport& report = timeline_->steps().back();
  const double seconds = report.end - report.start;
  v1::TakeoverStep* step = reply_->add_steps();
  step->set_name(name);
  step->set_seconds(seconds);
  step->set_result(report.ok ? report.result : "failed: " + report.result);
  announce_("pe-agent: takeover step " + name + " (" + FormatFixed(seconds, 3) +
            " s): " + step->result());
  return status;
}

void Takeover::Begin(StepTimeline* timeline, v1::TakeoverReply* reply,
                     const std::vector<TakeoverDisk>& disks) {
  timeline_ = timeline;
  reply_ = reply;
  disks_ = disks;
  root_disk_ = nullptr;
  root_device_.clear();
  root_uuid_.clear();
  disk_uuids_.clear();
  target_ = TargetDisks();
  boot_ = v1::BOOT_MODE_UNSPECIFIED;
  kernel_release_ = config_.kernel_release;
  reply->set_kernel_release(kernel_release_);
}

bool Takeover::Run(const v1::TakeoverRequest& request, v1::PeState state,
                   const std::string& state_error, const std::vector<TakeoverDisk>& disks,
                   v1::TakeoverReply* reply) {
  StepTimeline timeline(nullptr);
  Begin(&timeline, reply, disks);

  Status s = RunStep("check", [&] { return Check(request, state, state_error); });
  if (s.ok()) s = RunStep("flush", [&] { return Flush(); });
  // Every check runs on a read-only mount first (PLAN): a refused takeover leaves the replica
  // exactly as the journal made it, so replication goes on as if nothing happened.
  if (s.ok()) s = RunStep("mount", [&] { return Mount(/*read_only=*/true); });
  if (s.ok()) {
    boot_ = ChooseBoot(request.boot_mode());
    reply->set_boot_mode(boot_);
    if (boot_ == v1::BOOT_MODE_KEXEC) {
      s = RunStep("kexec-load", [&] { return LoadOwnKernel(request); });
    }
  }
  if (s.ok()) s = RunStep("plan", [&] { return Adapt(request, /*dry_run=*/true); });
  if (s.ok() && !request.dry_run()) s = RunStep("remount", [&] { return Remount(); });
  if (s.ok() && !request.dry_run()) s = RunStep("adapt", [&] { return Adapt(request, false); });
  if (!kexec_identity_.empty() && (!s.ok() || boot_ != v1::BOOT_MODE_KEXEC)) UnloadKexec();
  if (s.ok() && !request.dry_run()) s = RunStep("handover", [&] { return HandOver(request); });
  timeline_ = nullptr;

  const std::string what = request.dry_run() ? "takeover dry run" : "takeover";
  if (!s.ok() || request.dry_run()) {
    std::string error = s.ok() ? "" : s.message();
    const std::string unmount = RollBack();
    if (!unmount.empty()) error += (error.empty() ? "" : "; ") + unmount;
    if (root_written_) {
      error +=
          "; the migrated OS's root was mounted read-write before this failure, so the "
          "target's disks are no longer a plain replica: replication stays off (pe-error) "
          "until the target VM is started again (cdpctl target stop, start)";
    }
    reply->set_ok(error.empty());
    reply->set_error(error);
    announce_("pe-agent: " + what + (error.empty() ? " passed" : " failed: " + error) +
              (root_written_ ? "" : "; serving again"));
    return false;
  }
  reply->set_ok(true);
  handed_over_ = true;
  announce_("pe-agent: takeover: handing over to " + Init(request) + " on " + root_device_ +
            " at " + config_.newroot + " at " + FormatFixed(ProcUptimeSeconds(), 2) +
            " s of uptime");
  return true;
}

Result<std::string> Takeover::Check(const v1::TakeoverRequest& request, v1::PeState state,
                                    const std::string& state_error) {
  if (state != v1::PE_STATE_READY) {
    return Status::FailedPrecondition("pe-agent: the target is not ready: " + state_error +
                                      "; a takeover needs a pe-ready target");
  }
  if (newroot_mounted_ || system_->IsMountPoint(config_.newroot)) {
    return Status::FailedPrecondition(
        "pe-agent: " + config_.newroot +
        " is already a mount point (a takeover left over?); unmount it first");
  }
  std::string known;
  for (const TakeoverDisk& d : disks_) {
    if (d.volume == request.root_volume()) root_disk_ = &d;
    known += (known.empty() ? "" : ", ") + d.volume;
  }
  if (root_disk_ == nullptr) {
    return Status::NotFound("pe-agent: this target has no volume '" + request.root_volume() +
                            "' (it has: " + known +
                            "); name the volume that holds the migrated OS's root filesystem");
  }
  if (!v1::BootMode_IsValid(request.boot_mode())) {
    return Status::InvalidArgument("pe-agent: " + wire::BootModeName(request.boot_mode()) +
                                   " is not auto, switch-root or kexec");
  }
  return wire::PeStateName(state) + "; root volume " + root_disk_->volume + " on " +
         root_disk_->path;
}

Result<std::string> Takeover::Flush() {
  refusing_batches_ = true;  // no batch is applied from here on
  std::string disks, notes;
  for (const TakeoverDisk& d : disks_) {
    CDP_RETURN_IF_ERROR(
        d.device->Flush().WithContext("pe-agent: volume " + d.volume + ": flushing " + d.path));
    const std::string note = system_->DropBufferCache(d.path);
    if (!note.empty()) notes += "; " + note;
    disks += (disks.empty() ? "" : ", ") + d.path;
  }
  return "flushed " + disks + "; batches are refused from now on" + notes;
}

Result<std::string> Takeover::Mount(bool read_only) {
  std::string notes;
  // Partitions written by the replicator since the PE booted appear only once the kernel
  // re-reads the partition tables; the fstab check needs every disk's, not only the root's.
  for (const TakeoverDisk& d : disks_) {
    const std::string note = system_->RereadPartitions(d.path);
    if (!note.empty()) notes += "; " + note;
    target_.disks.push_back(d.path);
    std::vector<std::string> devices{d.path};
    for (auto& p : system_->PartitionsOf(d.path)) devices.push_back(std::move(p));
    const auto partuuids =
        devices.size() > 1 ? system_->ReadPartitionUuids(d.path) : std::map<int, std::string>{};
    for (const std::string& dev : devices) {
      auto id = system_->ReadFsId(dev);
      TargetFs found;
      found.device = dev;
      found.disk = d.path;
      // A partition's number: the digits its name ends with (vda2, nvme0n1p2).
      size_t digits = dev.size();
      while (digits > d.path.size() && std::isdigit(static_cast<unsigned char>(dev[digits - 1]))) {
        --digits;
      }
      if (dev != d.path && digits < dev.size()) found.partition = std::stoi(dev.substr(digits));
      if (auto it = partuuids.find(found.partition); found.partition > 0 && it != partuuids.end()) {
        found.partuuid = it->second;
      }
      if (id.ok()) found.id = *id;
      target_.filesystems.push_back(std::move(found));
      if (id.ok()) disk_uuids_.emplace(id->uuid, dev);
      if (&d == root_disk_ && root_device_.empty() && id.ok() && id->type == "ext4") {
        root_device_ = dev;
        root_uuid_ = id->uuid;
      }
    }
  }
  if (root_device_.empty()) {
    std::string found;
    for (const auto& [uuid, dev] : disk_uuids_) found += (found.empty() ? "" : ", ") + dev;
    return Status::NotFound("pe-agent: volume " + root_disk_->volume + ": no ext4 filesystem on " +
                            root_disk_->path +
                            " nor on its partitions (filesystems found on the target: " +
                            (found.empty() ? std::string("none") : found) +
                            "); the migrated OS's root must be ext4: check root_volume" + notes);
  }
  CDP_RETURN_IF_ERROR(system_->MountExt4(root_device_, config_.newroot, read_only));
  newroot_mounted_ = true;
  reply_->set_root_device(root_device_);
  std::string all;
  for (const auto& [uuid, dev] : disk_uuids_) all += (all.empty() ? "" : ", ") + dev + "=" + uuid;
  return root_device_ + " (ext4 UUID " + root_uuid_ + ") at " + config_.newroot +
         (read_only ? " read-only" : " read-write") + "; filesystems on the target: " + all + notes;
}

Result<std::string> Takeover::Remount() {
  const std::string unmount = system_->Unmount(config_.newroot);
  if (!unmount.empty()) return Status::IOError("pe-agent: " + unmount);
  newroot_mounted_ = false;
  // From the read-write mount on, the replica is written (journal replay, the adaptation): a
  // failure after it must not let replication resume over it, even after a crash of this agent.
  CDP_RETURN_IF_ERROR(WriteFileAtomic(RootWrittenFile(),
                                      "the takeover of " + root_device_ + " mounted it read-write")
                          .WithContext("pe-agent: marking the replica as written"));
  root_written_ = true;
  CDP_RETURN_IF_ERROR(system_->MountExt4(root_device_, config_.newroot, /*read_only=*/false));
  newroot_mounted_ = true;
  return root_device_ + " at " + config_.newroot + " read-write";
}

v1::BootMode Takeover::ChooseBoot(v1::BootMode asked) const {
  if (asked != v1::BOOT_MODE_UNSPECIFIED && asked != v1::BOOT_MODE_AUTO) return asked;
  // On the PE's kernel (switch_root) when the migrated OS has modules for it, else on its own
  // newest kernel (kexec, loaded before anything is changed).
  auto modules = ResolveInRoot(config_.newroot, "/lib/modules/" + config_.kernel_release);
  std::error_code ec;
  return modules.ok() && std::filesystem::is_directory(*modules, ec) ? v1::BOOT_MODE_SWITCH_ROOT
                                                                     : v1::BOOT_MODE_KEXEC;
}

Result<std::string> Takeover::LoadOwnKernel(const v1::TakeoverRequest& request) {
  CDP_ASSIGN_OR_RETURN(kernel_release_, ChooseOwnKernel(config_.newroot));
  reply_->set_kernel_release(kernel_release_);
  const std::string kernel = "/boot/vmlinuz-" + kernel_release_;
  std::string initrd = InitramfsPath(config_.newroot, kernel_release_);
  // An image rebuilt with virtio ahead (PrepareBoot) is what adapt installs over the replica's:
  // the kernel must boot that one, not the one without the drivers it loads from disk now.
  CDP_ASSIGN_OR_RETURN(const std::string prepared,
                       PreparedInitramfsFor(config_.prepare_dir, config_.newroot, kernel_release_));
  const std::string initrd_root = prepared.empty() ? config_.newroot : "/";
  if (!prepared.empty()) initrd = prepared;
  const std::string cmdline =
      "root=UUID=" + root_uuid_ + " " +
      (request.kernel_args().empty() ? std::string("ro") : request.kernel_args());
  if (request.dry_run() && !request.preload_kexec()) {
    return "would kexec_file_load " + kernel + " with " + initrd +
           (prepared.empty() ? "" : " (prepared)") + ", command line '" + cmdline + "'";
  }
  if (!config_.allow_kexec) {
    return Status::FailedPrecondition(
        "pe-agent: kexec is not allowed in this run (only the PE's agent, started with "
        "--allow-kexec, may reboot the machine); ask for boot switch-root");
  }
  // The same files (by inode, size, mtime and ctime: a package that rewrote them changes the
  // ctime) and command line as a load before (the precheck's preload): it is still loaded.
  const auto identity_of = [](const std::string& root, const std::string& path) -> std::string {
    auto resolved = ResolveInRoot(root, path);
    struct stat st;
    if (!resolved.ok() || ::stat(resolved->c_str(), &st) != 0) return "";
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
           std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ctim.tv_sec) + "." +
           std::to_string(st.st_ctim.tv_nsec);
  };
  const std::string kernel_id = identity_of(config_.newroot, kernel);
  const std::string initrd_id = identity_of(initrd_root, initrd);
  const std::string identity = kernel_release_ + "\n" + cmdline + "\n" + kernel + "=" + kernel_id +
                               "\n" + initrd + "=" + initrd_id;
  const bool known = !kernel_id.empty() && !initrd_id.empty();
  if (known && identity == kexec_identity_) {
    kexec_loaded_ = !request.dry_run();
    return "kernel " + kernel_release_ + " and " + initrd + " loaded at " +
           FormatFixed(kexec_loaded_at_, 2) +
           " s of uptime (the precheck's preload), unchanged since: not loaded again; command "
           "line '" +
           cmdline + "'";
  }
  if (!kexec_identity_.empty()) UnloadKexec();  // another kernel, or changed files
  CDP_ASSIGN_OR_RETURN(const std::string loaded,
                       system_->KexecLoad(config_.newroot, kernel, initrd_root, initrd, cmdline));
  kexec_identity_ = known ? identity : "loaded";  // never equal to a later identity when unknown
  kexec_loaded_at_ = ProcUptimeSeconds();
  kexec_loaded_ = !request.dry_run();
  return loaded + "; command line '" + cmdline + "'" +
         (request.dry_run() ? "; kept loaded for the takeover" : "");
}

void Takeover::UnloadKexec() {
  system_->KexecUnload();
  kexec_identity_.clear();
  kexec_loaded_ = false;
}

Result<std::string> Takeover::Adapt(const v1::TakeoverRequest& request, bool dry_run) {
  AdaptRequest adapt;
  adapt.root = config_.newroot;
  adapt.root_device = root_device_;
  adapt.root_uuid = root_uuid_;
  adapt.kernel_release = kernel_release_;
  adapt.init = Init(request);
  adapt.disk_uuids = disk_uuids_;
  adapt.target = target_;
  adapt.target.root_device = root_device_;
  adapt.target.root_uuid = root_uuid_;
  for (const TakeoverDisk& d : disks_) {
    auto source = request.source_disks().find(d.volume);
    adapt.target.source_disks.push_back(source == request.source_disks().end() ? ""
                                                                               : source->second);
  }
  adapt.dry_run = dry_run;
  adapt.prepared_dir = config_.prepare_dir;
  for (const auto& n : request.nics()) {
    adapt.nics.push_back({n.mac(), n.address(), n.gateway(), n.source_mac(), n.source_name()});
  }
  if (!adapt.nics.empty()) {
    CDP_ASSIGN_OR_RETURN(adapt.present_nics, ListNics(config_.sys_class_net));
  }
  std::vector<RootChange> changes;
  CDP_ASSIGN_OR_RETURN(auto notes, system_->AdaptRoot(std::move(adapt), &changes));
  reply_->clear_changes();  // the plan's, replaced by what was done
  for (const RootChange& c : changes) {
    v1::BootChange* change = reply_->add_changes();
    change->set_file(c.file);
    change->set_what(c.what);
    change->set_kept_at(c.kept_at);
  }
  std::string out = boot_ == v1::BOOT_MODE_KEXEC
                        ? "boot: kexec into its own kernel " + kernel_release_
                        : "boot: switch_root on the PE's kernel " + kernel_release_;
  for (const auto& n : notes) out += "; " + n;
  return out;
}

Result<std::string> Takeover::HandOver(const v1::TakeoverRequest& request) {
  if (boot_ == v1::BOOT_MODE_KEXEC) {
    return "after this reply the pe-agent unmounts " + config_.newroot +
           ", flushes the disks and reboots into kernel " + kernel_release_ + " (kexec)";
  }
  CDP_RETURN_IF_ERROR(WriteFileAtomic(config_.takeover_file,
                                      "root " + config_.newroot + "\ninit " + Init(request) + "\n")
                          .WithContext("pe-agent: writing the takeover file"));
  return "the pe-agent exits with status " + std::to_string(kTakeoverExitStatus) +
         "; the PE's /init switch_roots into " + config_.newroot + " (" + Init(request) + ")";
}

void Takeover::Prepare(const v1::PrepareBootRequest& request, v1::PeState state,
                       const std::string& state_error, const std::vector<TakeoverDisk>& disks,
                       v1::PrepareBootReply* reply) {
  StepTimeline timeline(nullptr);
  v1::TakeoverReply steps;
  Begin(&timeline, &steps, disks);
  v1::TakeoverRequest as_takeover;
  as_takeover.set_root_volume(request.root_volume());
  as_takeover.set_boot_mode(request.boot_mode());
  Status s = RunStep("check", [&] { return Check(as_takeover, state, state_error); });
  if (s.ok()) {
    // Nothing is applied while this runs (one thread), but the page cache may predate the
    // last batches: the mount must read what the disks hold.
    for (const TakeoverDisk& d : disks_) (void)system_->DropBufferCache(d.path);
    s = RunStep("mount", [&] { return Mount(/*read_only=*/true); });
  }
  if (s.ok()) {
    boot_ = ChooseBoot(request.boot_mode());
    if (boot_ == v1::BOOT_MODE_KEXEC) {
      // The migrated OS boots its own kernel: without one there is nothing to prepare for (and
      // follow-boot asks this way to learn the kernel the migrated OS would boot).
      auto own = ChooseOwnKernel(config_.newroot);
      if (own.ok()) {
        kernel_release_ = *own;
      } else {
        s = own.status();
      }
    }
  }
  if (s.ok()) {
    reply->set_kernel_release(kernel_release_);
    s = RunStep("initramfs",
                [&] { return PrepareInitramfs(request.dry_run(), kernel_release_, reply); });
  }
  timeline_ = nullptr;
  std::string error = s.ok() ? "" : s.message();
  const std::string unmount = RollBack();
  if (!unmount.empty()) error += (error.empty() ? "" : "; ") + unmount;
  reply->set_ok(error.empty());
  reply->set_error(error);
  *reply->mutable_steps() = steps.steps();
  announce_("pe-agent: prepare-boot" + std::string(request.dry_run() ? " dry run" : "") +
            (error.empty() ? " passed" : " failed: " + error) + "; serving again");
}

Result<std::string> Takeover::PrepareInitramfs(bool dry_run, const std::string& kver,
                                               v1::PrepareBootReply* reply) {
  const std::string image = InitramfsPath(config_.newroot, kver);
  reply->set_initramfs(image);
  CDP_ASSIGN_OR_RETURN(const auto missing, MissingVirtioDrivers(config_.newroot, kver));
  if (missing.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(config_.prepare_dir + "/" + kver, ec);  // nothing to install
    return image + " has the virtio drivers (or kernel " + kver +
           " builds them in); nothing to "
           "rebuild";
  }
  RootChanges planned(config_.newroot);
  CDP_ASSIGN_OR_RETURN(const InitramfsRebuild plan, PlanInitramfsRebuild(&planned, kver, missing));
  std::string drivers, command;
  for (const auto& d : missing) drivers += (drivers.empty() ? "" : ", ") + d;
  for (const auto& a : plan.argv) command += (command.empty() ? "" : " ") + a;
  auto add_change = [reply](const std::string& file, const std::string& what,
                            const std::string& kept_at) {
    v1::BootChange* c = reply->add_changes();
    c->set_file(file);
    c->set_what(what);
    c->set_kept_at(kept_at);
  };
  for (const RootChange& c : planned.Changes()) add_change(c.file, c.what, c.kept_at);
  add_change(image, "rebuilt with " + drivers + " (installed at takeover)",
             image + kPreCutoverSuffix);
  // Prepared before (in this PE boot, or restored from the metadata disk) from exactly the image
  // the replica holds now: kept as it is (follow-boot --watch asks every pass). One prepared
  // from an image the replica no longer holds (a package upgrade rewrote it) is replaced.
  auto kept = PreparedInitramfsFor(config_.prepare_dir, config_.newroot, kver);
  if (kept.ok() && !kept->empty()) {
    reply->set_rebuilt(true);
    return image + " has no " + drivers + "; the image prepared for it (" + *kept +
           ") was rebuilt from its current content: nothing to rebuild";
  }
  const std::string stale = kept.ok() ? ""
                                      : "; the image prepared before was rebuilt from another " +
                                            image + " than the replica holds now";
  if (dry_run) {
    return image + " has no " + drivers + ": would run " + command +
           " in a chroot over a copy-on-write layer and keep the image for the takeover" + stale;
  }
  if (!kept.ok()) {
    std::error_code ec;
    std::filesystem::remove_all(config_.prepare_dir + "/" + kver, ec);
    if (ec) {
      return Status::IOError("cannot remove the stale prepared image " + config_.prepare_dir + "/" +
                             kver + ": " + ec.message());
    }
  }
  const std::string merged = config_.prepare_scratch + "-root";
  CDP_RETURN_IF_ERROR(system_->MountOverlay(config_.newroot, config_.prepare_scratch, merged));
  auto result = [&]() -> Result<std::string> {
    RootChanges over(merged);
    CDP_ASSIGN_OR_RETURN(const InitramfsRebuild again, PlanInitramfsRebuild(&over, kver, missing));
    CDP_RETURN_IF_ERROR(over.Apply(UtcStamp()));
    CDP_ASSIGN_OR_RETURN(std::string done, RunInitramfsRebuild(system_->Chroot(), merged, again,
                                                               config_.rebuild_timeout_seconds));
    CDP_ASSIGN_OR_RETURN(const std::string original_path, ResolveInRoot(config_.newroot, image));
    CDP_ASSIGN_OR_RETURN(const std::string rebuilt_path, ResolveInRoot(merged, image));
    CDP_ASSIGN_OR_RETURN(const std::string original, ReadWholeFile(original_path));
    CDP_ASSIGN_OR_RETURN(const std::string rebuilt, ReadWholeFile(rebuilt_path));
    CDP_RETURN_IF_ERROR(
        KeepPreparedInitramfs(config_.prepare_dir, kver, image, original, rebuilt, UtcStamp()));
    reply->set_rebuilt(true);
    return done + "; kept in " + config_.prepare_dir + "/" + kver + " (" +
           std::to_string(rebuilt.size()) + " bytes) for the takeover" +
           (stale.empty() ? "" : " (it replaces one prepared from an older image)");
  }();
  const std::string unmount = system_->UnmountOverlay(config_.prepare_scratch, merged);
  if (!result.ok()) {
    return unmount.empty() ? result.status() : result.status().WithContext(unmount);
  }
  if (!unmount.empty()) return *result + "; " + unmount;
  return result;
}

std::string Takeover::RollBack() {
  std::string unmount;
  if (newroot_mounted_) unmount = system_->Unmount(config_.newroot);
  if (unmount.empty()) newroot_mounted_ = false;
  refusing_batches_ = false;
  return unmount;
}

void Takeover::Finish() {
  if (!kexec_loaded_) return;  // switch-root: the PE's /init takes it from here
  announce_("pe-agent: kexec: unmounting " + config_.newroot + ", flushing, rebooting at " +
            FormatFixed(ProcUptimeSeconds(), 2) + " s of uptime");
  system_->Sync();
  const std::string unmount = newroot_mounted_ ? system_->Unmount(config_.newroot) : "";
  if (unmount.empty()) {
    newroot_mounted_ = false;
  } else {
    announce_("pe-agent: kexec: " + unmount + " (synced; rebooting anyway)");
  }
  for (const TakeoverDisk& d : disks_) (void)d.device->Flush();
  system_->Sync();
  const Status rebooted = system_->RebootIntoLoadedKernel();
  // Only when the reboot failed: the next agent of this boot refuses to apply.
  (void)WriteFileAtomic(KexecFailedFile(), rebooted.message());
  announce_("pe-agent: FATAL: " + rebooted.message() +
            " ; the target stays in the PE with the migrated OS unmounted: reboot the target VM");
}

}  // namespace cdp::pe
