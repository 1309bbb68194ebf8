#include "cdp/failover/boot_export.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "cdp/core/host_command.h"
#include "cdp/failover/target_snapshot.h"
#include "cdp/failover/target_vm.h"
#include "cdp/pe/boot_adaptation.h"
#include "cdp/pe/pe_client.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace fs = std::filesystem;
namespace v1 = wire::v1;

namespace {

uint32_t Le32(const unsigned char* p) {
  return p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
uint64_t Le64(const unsigned char* p) { return Le32(p) | (uint64_t{Le32(p + 4)} << 32); }

Result<std::string> ReadAt(int fd, uint64_t offset, size_t length, const std::string& path) {
  std::string buf(length, '\0');
  const ssize_t n = ::pread(fd, buf.data(), length, static_cast<off_t>(offset));
  if (n < 0) return Status::FromErrno(errno, "reading " + path);
  buf.resize(static_cast<size_t>(n));
  return buf;
}

// Runs `fn` when destroyed: the cleanup of one temporary thing.
struct Cleanup {
  std::function<void()> fn;
  ~Cleanup() {
    if (fn) fn();
  }
};

Status Run(const std::vector<std::string>& argv, int timeout_ms) {
  CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, timeout_ms));
  if (r.exit_code != 0) return Status::IOError(CommandLine(argv) + " failed: " + r.output);
  return Status::Ok();
}

}  // namespace

Result<std::vector<uint64_t>> CandidateFilesystemOffsets(const std::string& raw_image) {
  const int fd = ::open(raw_image.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "opening " + raw_image);
  Cleanup closer{[fd] { ::close(fd); }};
  std::vector<uint64_t> out = {0};
  CDP_ASSIGN_OR_RETURN(std::string mbr, ReadAt(fd, 0, 512, raw_image));
  if (mbr.size() < 512 || static_cast<unsigned char>(mbr[510]) != 0x55 ||
      static_cast<unsigned char>(mbr[511]) != 0xAA) {
    return out;  // no partition table
  }
  const auto* m = reinterpret_cast<const unsigned char*>(mbr.data());
  bool gpt = false;
  for (int i = 0; i < 4; ++i) {
    const unsigned char* e = m + 446 + 16 * i;
    const unsigned type = e[4];
    if (type == 0xEE) gpt = true;
    if (type == 0 || type == 0xEE || type == 0x05 || type == 0x0F || type == 0x85) continue;
    if (Le32(e + 8) != 0) out.push_back(uint64_t{Le32(e + 8)} * 512);
  }
  if (!gpt) return out;
  CDP_ASSIGN_OR_RETURN(std::string header, ReadAt(fd, 512, 512, raw_image));
  if (header.size() < 92 || header.compare(0, 8, "EFI PART") != 0) return out;
  const auto* h = reinterpret_cast<const unsigned char*>(header.data());
  const uint64_t entries_lba = Le64(h + 72);
  const uint32_t count = std::min<uint32_t>(Le32(h + 80), 256);
  const uint32_t size = Le32(h + 84);
  if (size < 128 || size > 4096) return out;
  CDP_ASSIGN_OR_RETURN(std::string entries,
                       ReadAt(fd, entries_lba * 512, size_t{count} * size, raw_image));
  for (uint32_t i = 0; i + 1 <= entries.size() / size; ++i) {
    const auto* e = reinterpret_cast<const unsigned char*>(entries.data()) + size_t{i} * size;
    bool used = false;
    for (int b = 0; b < 16; ++b) used = used || e[b] != 0;
    if (used && Le64(e + 32) != 0) out.push_back(Le64(e + 32) * 512);
  }
  return out;
}

Result<BootExport> ExportBoot(const TargetConfig& target, const std::string& volume,
                              const std::string& out_dir, std::ostream& progress) {
  const TargetDisk* disk = nullptr;
  for (const auto& d : target.disks) {
    if (d.volume == volume) disk = &d;
  }
  if (disk == nullptr) {
    return Status::NotFound("target " + target.name + " has no volume '" + volume + "' (" +
                            target.file + ")");
  }
  std::error_code ec;
  if (fs::exists(out_dir) && !fs::is_empty(out_dir, ec)) {
    return Status::FailedPrecondition(out_dir +
                                      " exists and is not empty; give a new directory");
  }
  const std::string tmp_out = out_dir + ".tmp";
  const std::string raw = target.state_dir + "/" + target.name + ".boot-export.raw";
  const std::string mnt = target.state_dir + "/" + target.name + ".boot-export.mnt";

  BootExport result;
  result.out_dir = out_dir;
  CDP_ASSIGN_OR_RETURN(auto lock, TargetLock::Acquire(target, "an export-boot"));
  // What an export killed midway left: its mount (and loop device), its copy, its deltas.
  if (fs::exists(mnt)) {
    (void)RunHostCommand({"umount", mnt}, kHostCommandMs);
    fs::remove(mnt, ec);
    if (fs::exists(mnt)) {
      return Status::FailedPrecondition(mnt + " is left by an export that died and cannot be "
                                              "removed (still mounted?); unmount it first");
    }
  }
  fs::remove(raw, ec);
  CDP_ASSIGN_OR_RETURN(std::string own, PutTargetOnOwnFiles(target));
  if (!own.empty()) progress << "committed what an earlier run left: " << own << "\n";
  Cleanup remove_raw{[&] { fs::remove(raw, ec); }};
  TargetSnapshot snapshot(target, "boot-delta");
  {
    // 1-2: freeze, copy the frozen file, thaw — thawing whatever happens.
    std::vector<std::string> done;
    auto client =
        pe::PeClient::Connect(target.replication_endpoint, v1::ROLE_CONTROL, "", 0, kPeConnectMs);
    if (!client.ok()) return client.status().WithContext("target " + target.name);
    CDP_ASSIGN_OR_RETURN(auto st, (*client)->Status(kPeCallMs));
    if (st.pe_state() != v1::PE_STATE_READY) {
      return Status::FailedPrecondition("target " + target.name + " is " +
                                        wire::PeStateName(st.pe_state()) + ": " + st.error());
    }
    std::map<std::string, uint64_t> lsn;
    CDP_ASSIGN_OR_RETURN(std::string frozen, snapshot.Freeze(&lsn));
    progress << frozen << "\n";
    result.lsn = lsn[volume];
    Status copied = Run({"qemu-img", "convert", "-O", "raw", disk->path, raw}, kImageConvertMs);
    Status thawed = snapshot.Thaw(&done);
    if (!thawed.ok()) {
      return thawed.WithContext(std::string("thawing the target after the copy") +
                                (copied.ok() ? "" : " (the copy failed too: " +
                                                        copied.message() + ")"));
    }
    CDP_RETURN_IF_ERROR(copied);
    progress << "volume " << volume << " copied at LSN " << result.lsn << "; "
             << (done.empty() ? std::string("thawed") : done.front()) << "\n";
  }

  // 3: find and mount the ext4 filesystem that holds /boot.
  CDP_ASSIGN_OR_RETURN(auto offsets, CandidateFilesystemOffsets(raw));
  std::string looked;
  const int fd = ::open(raw.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "opening " + raw);
  bool found = false;
  for (uint64_t off : offsets) {
    std::string head(4096, '\0');
    const ssize_t n = ::pread(fd, head.data(), head.size(), static_cast<off_t>(off));
    head.resize(n > 0 ? static_cast<size_t>(n) : 0);
    auto id = pe::IdentifyFilesystem(head);
    looked += (looked.empty() ? "" : ", ") + std::to_string(off) + ": " +
              (id.ok() ? id->type : std::string("nothing"));
    if (id.ok() && id->type == "ext4" && !found) {
      found = true;
      result.fs_offset = off;
      result.fs_uuid = id->uuid;
    }
  }
  ::close(fd);
  if (!found) {
    return Status::NotFound("volume " + volume + " holds no ext4 filesystem (looked at offset " +
                            looked + "); export-boot reads /boot from an ext4 root");
  }
  fs::create_directories(mnt, ec);
  // Read-write, so ext4 replays its journal (a kernel installed just now may sit only there);
  // the copy is private and thrown away.
  CDP_RETURN_IF_ERROR(Run(
      {"mount", "-t", "ext4", "-o", "loop,offset=" + std::to_string(result.fs_offset), raw, mnt},
      kHostCommandMs));
  Cleanup unmount{[&] {
    (void)RunHostCommand({"umount", mnt}, kHostCommandMs);
    fs::remove(mnt, ec);
  }};

  // 4: copy the kernel, initramfs, config and modules.
  CDP_ASSIGN_OR_RETURN(result.kernel_release, pe::ChooseOwnKernel(mnt));
  const std::string& kver = result.kernel_release;
  fs::remove_all(tmp_out, ec);
  fs::create_directories(tmp_out + "/boot", ec);
  fs::create_directories(tmp_out + "/lib/modules", ec);
  if (ec) return Status::IOError("cannot create " + tmp_out + ": " + ec.message());
  Cleanup remove_tmp{[&] { fs::remove_all(tmp_out, ec); }};
  for (const std::string name : {"vmlinuz-", "initrd.img-", "config-"}) {
    auto src = pe::ResolveInRoot(mnt, "/boot/" + name + kver);
    if (!src.ok() || !fs::exists(*src)) {
      if (name == "config-") continue;
      return Status::NotFound("/boot/" + name + kver + " vanished from the copy");
    }
    CDP_RETURN_IF_ERROR(
        Run({"cp", "--preserve=mode,timestamps", *src, tmp_out + "/boot/"}, kCopyCommandMs));
  }
  CDP_ASSIGN_OR_RETURN(const std::string modules, pe::ResolveInRoot(mnt, "/lib/modules/" + kver));
  CDP_RETURN_IF_ERROR(Run({"cp", "-a", modules, tmp_out + "/lib/modules/" + kver}, kCopyCommandMs));
  for (const auto& e : fs::recursive_directory_iterator(tmp_out + "/lib/modules/" + kver, ec)) {
    if (e.is_regular_file(ec)) ++result.module_files;
  }
  fs::remove(out_dir, ec);  // empty, or absent
  fs::rename(tmp_out, out_dir, ec);
  if (ec) return Status::IOError("cannot rename " + tmp_out + " to " + out_dir + ": " + ec.message());
  progress << "kernel " << kver << " exported to " << out_dir << "\n";
  return result;
}

}  // namespace cdp::failover
