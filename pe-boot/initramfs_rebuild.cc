#include "cdp/pe/initramfs_rebuild.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>

#include "cdp/core/atomic_file.h"
#include "cdp/core/record.h"
#include "cdp/pe/boot_adaptation.h"
#include "cdp/pe/initramfs.h"
#include "cdp/pe/root_path.h"
#include "config_text.h"

namespace cdp::pe {

namespace {

constexpr size_t kOutputTail = 16 * 1024;

bool IsExecutable(const RootChanges& root, const char* path) {
  auto host = ResolveInRoot(root.root(), path);
  struct stat st;
  return host.ok() && ::stat(host->c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         (st.st_mode & 0111) != 0;
}

std::string FirstExecutable(const RootChanges& root, std::initializer_list<const char*> paths) {
  for (const char* p : paths) {
    if (IsExecutable(root, p)) return p;
  }
  return "";
}

// MODULES= of initramfs-tools: initramfs.conf, then conf.d/* in order (the last one set wins).
std::string InitramfsToolsModules(const RootChanges& root) {
  std::string modules = "most";
  std::vector<std::string> files = {"/etc/initramfs-tools/initramfs.conf"};
  if (auto dir = ResolveInRoot(root.root(), "/etc/initramfs-tools/conf.d"); dir.ok()) {
    for (const auto& name : text::ListDir(*dir))
      files.push_back("/etc/initramfs-tools/conf.d/" + name);
  }
  for (const auto& file : files) {
    auto content = root.Read(file);
    if (!content.ok()) continue;
    for (const auto& line : text::LineFile::Split(*content).lines) {
      std::string key, value;
      if (text::SplitAssignment(line, &key, &value) && key == "MODULES") {
        modules = text::Unquote(value);
      }
    }
  }
  return modules;
}

std::string LastLine(const std::string& output) {
  const auto lines = text::LineFile::Split(output).lines;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (!text::Trim(*it).empty()) return text::Trim(*it);
  }
  return "";
}

std::string Digest(const std::string& bytes) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(bytes.data(), bytes.size())));
  return buf;
}

// DIR/KVER/manifest of a prepared image (KeepPreparedInitramfs).
struct PreparedManifest {
  std::string image, original_digest, stamp;
};

std::optional<PreparedManifest> ReadPreparedManifest(const std::string& at) {
  auto manifest = ReadWholeFile(at + "/manifest");
  if (!manifest.ok()) return std::nullopt;
  PreparedManifest m;
  for (const auto& line : text::LineFile::Split(*manifest).lines) {
    const auto f = text::Fields(line);
    if (f.size() < 2) continue;
    if (f[0] == "image") m.image = f[1];
    if (f[0] == "original-xxh3") m.original_digest = f[1];
    if (f[0] == "prepared") m.stamp = f[1];
  }
  return m;
}

std::string StalePreparedImage(const std::string& kver, const PreparedManifest& m) {
  return "the initramfs prepared for " + kver + " (" + m.stamp + ") was rebuilt from another " +
         m.image +
         " than the replica holds now (it changed since): run cdpctl target prepare-boot again "
         "before the cutover";
}

}  // namespace

Status KeepPreparedInitramfs(const std::string& dir, const std::string& kver,
                             const std::string& image_path, const std::string& original,
                             const std::string& rebuilt, const std::string& stamp) {
  const std::string at = dir + "/" + kver;
  std::error_code ec;
  std::filesystem::create_directories(at, ec);
  if (ec) return Status::IOError("cannot create " + at + ": " + ec.message());
  CDP_RETURN_IF_ERROR(WriteFileAtomic(at + "/initrd", rebuilt));
  return WriteFileAtomic(at + "/manifest", "image " + image_path + "\noriginal-xxh3 " +
                                               Digest(original) + "\noriginal-bytes " +
                                               std::to_string(original.size()) + "\nprepared " +
                                               stamp + "\n");
}

namespace {
constexpr char kPackMagic[8] = {'C', 'D', 'P', 'P', 'R', 'I', 'N', '1'};

// A KVER as a directory name: no path separator, not "." or "..", not empty, printable.
bool PlainFileName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c != '/' && c > ' ' && c < 0x7f; });
}
}  // namespace

Result<std::string> PackPreparedInitramfs(const std::string& dir) {
  std::vector<std::string> kvers;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (PlainFileName(name) && std::filesystem::exists(it->path() / "manifest") &&
        std::filesystem::exists(it->path() / "initrd")) {
      kvers.push_back(name);
    }
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Status::IOError("cannot list " + dir + ": " + ec.message());
  }
  if (kvers.empty()) return std::string();
  std::sort(kvers.begin(), kvers.end());
  std::string out(kPackMagic, sizeof(kPackMagic));
  PutBigEndian32(&out, static_cast<uint32_t>(kvers.size()));
  for (const auto& kver : kvers) {
    CDP_ASSIGN_OR_RETURN(const std::string manifest, ReadWholeFile(dir + "/" + kver + "/manifest"));
    CDP_ASSIGN_OR_RETURN(const std::string initrd, ReadWholeFile(dir + "/" + kver + "/initrd"));
    PutBigEndian32(&out, static_cast<uint32_t>(kver.size()));
    out += kver;
    PutBigEndian32(&out, static_cast<uint32_t>(manifest.size()));
    out += manifest;
    PutBigEndian64(&out, initrd.size());
    out += initrd;
  }
  return out;
}

Result<std::vector<std::string>> UnpackPreparedInitramfs(std::string_view blob,
                                                         const std::string& dir) {
  struct Image {
    std::string kver;
    std::string_view manifest, initrd;
  };
  auto bad = [](const std::string& what) {
    return Status::Corruption("the kept prepared images are damaged: " + what);
  };
  if (blob.size() < sizeof(kPackMagic) + 4 ||
      std::memcmp(blob.data(), kPackMagic, sizeof(kPackMagic)) != 0) {
    return bad("no CDPPRIN1 magic");
  }
  size_t at = sizeof(kPackMagic);
  const uint32_t count = GetBigEndian32(blob.data() + at);
  at += 4;
  // A field: its big-endian length (4 or 8 bytes), then that many bytes; false when either runs
  // past the end.
  auto field = [&](size_t length_bytes, std::string_view* out) {
    if (blob.size() - at < length_bytes) return false;
    const uint64_t n =
        length_bytes == 4 ? GetBigEndian32(blob.data() + at) : GetBigEndian64(blob.data() + at);
    at += length_bytes;
    if (n > blob.size() - at) return false;
    *out = blob.substr(at, n);
    at += n;
    return true;
  };
  std::vector<Image> images;
  for (uint32_t i = 0; i < count; ++i) {
    Image image;
    std::string_view kver;
    if (!field(4, &kver)) {
      return bad("image " + std::to_string(i) + "'s kernel release runs past the end");
    }
    if (!PlainFileName(kver)) {
      return bad("image " + std::to_string(i) + " has a bad kernel release");
    }
    image.kver = std::string(kver);
    if (!field(4, &image.manifest))
      return bad("the manifest of " + image.kver + " runs past the end");
    if (!field(8, &image.initrd)) return bad("the initrd of " + image.kver + " runs past the end");
    images.push_back(std::move(image));
  }
  if (at != blob.size()) return bad(std::to_string(blob.size() - at) + " bytes after the images");
  std::vector<std::string> kvers;
  for (const auto& image : images) {
    const std::string to = dir + "/" + image.kver;
    std::error_code ec;
    if (std::filesystem::exists(to + "/manifest", ec)) continue;
    std::filesystem::create_directories(to, ec);
    if (ec) return Status::IOError("cannot create " + to + ": " + ec.message());
    CDP_RETURN_IF_ERROR(WriteFileAtomic(to + "/initrd", std::string(image.initrd)));
    CDP_RETURN_IF_ERROR(WriteFileAtomic(to + "/manifest", std::string(image.manifest)));
    kvers.push_back(image.kver);
  }
  return kvers;
}

bool PlanPreparedInitramfs(RootChanges* changes, const std::string& dir, const std::string& kver,
                           std::vector<std::string>* errors, std::vector<std::string>* notes) {
  const std::string at = dir + "/" + kver;
  const auto manifest = ReadPreparedManifest(at);
  if (!manifest) return false;
  const std::string& image = manifest->image;
  const std::string& stamp = manifest->stamp;
  auto missing = MissingVirtioDrivers(changes->root(), kver);
  if (!missing.ok() || missing->empty()) return false;
  auto current = changes->Read(image);
  if (!current.ok() || Digest(*current) != manifest->original_digest) {
    errors->push_back(StalePreparedImage(kver, *manifest));
    return true;
  }
  auto rebuilt = ReadWholeFile(at + "/initrd");
  if (!rebuilt.ok()) {
    errors->push_back("the initramfs prepared for " + kver + " cannot be read: " +
                      rebuilt.status().message() + "; run cdpctl target prepare-boot again");
    return true;
  }
  auto plan = PlanInitramfsRebuild(changes, kver, *missing);
  if (!plan.ok()) {
    errors->push_back(plan.status().message());
    return true;
  }
  changes->Write(image, *rebuilt,
                 "rebuilt with " + text::Join(*missing, ", ") + " by prepare-boot at " + stamp);
  notes->push_back("drivers: " + text::Join(*missing, ", ") + " in the initramfs prepared for " +
                   image + " at " + stamp + " (installed now)");
  return true;
}

Result<std::string> PreparedInitramfsFor(const std::string& dir, const std::string& root,
                                         const std::string& kver) {
  const std::string at = dir + "/" + kver;
  const auto manifest = ReadPreparedManifest(at);
  if (!manifest) return std::string();
  auto missing = MissingVirtioDrivers(root, kver);
  if (!missing.ok() || missing->empty()) return std::string();
  RootChanges view(root);
  auto current = view.Read(manifest->image);
  if (!current.ok() || Digest(*current) != manifest->original_digest) {
    return Status::FailedPrecondition(StalePreparedImage(kver, *manifest));
  }
  return at + "/initrd";
}

InitramfsTool DetectInitramfsTool(const RootChanges& root) {
  if (!FirstExecutable(root, {"/usr/sbin/update-initramfs", "/sbin/update-initramfs"}).empty()) {
    return InitramfsTool::kInitramfsTools;
  }
  if (!FirstExecutable(root, {"/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"}).empty()) {
    return InitramfsTool::kDracut;
  }
  return InitramfsTool::kNone;
}

Result<std::vector<std::string>> MissingVirtioDrivers(const std::string& root,
                                                      const std::string& kver) {
  const auto builtin = BuiltinModules(root, kver);
  CDP_ASSIGN_OR_RETURN(const auto modules, InitramfsModules(root, kver));
  std::vector<std::string> missing;
  bool boot_needs_one = false;
  for (const char* d : kVirtioInitramfsDrivers) {
    if (builtin.count(d) || modules.count(d)) continue;
    missing.push_back(d);
    boot_needs_one = boot_needs_one || std::string_view(d) != "virtio_scsi";
  }
  if (!boot_needs_one) missing.clear();
  return missing;
}

Result<InitramfsRebuild> PlanInitramfsRebuild(RootChanges* changes, const std::string& kver,
                                              const std::vector<std::string>& missing) {
  InitramfsRebuild r;
  r.kver = kver;
  r.drivers = missing;
  r.tool = DetectInitramfsTool(*changes);
  r.image = InitramfsPath(changes->root(), kver);
  const std::string list = text::Join(missing, " ");
  switch (r.tool) {
    case InitramfsTool::kInitramfsTools: {
      r.argv = {FirstExecutable(*changes, {"/usr/sbin/update-initramfs", "/sbin/update-initramfs"}),
                "-u", "-k", kver};
      const std::string setting = InitramfsToolsModules(*changes);
      if (setting != "most") {
        const std::string file = "/etc/initramfs-tools/modules";
        auto old = changes->Read(file);
        std::string content = old.ok() ? *old : "";
        if (!content.empty() && content.back() != '\n') content += '\n';
        content += "# added by the cdp pe-agent: the target's virtual hardware is virtio\n";
        for (const auto& m : missing) content += m + "\n";
        changes->Write(file, content,
                       "initramfs-tools: MODULES=" + setting + " would leave out " + list +
                           "; listed here so every rebuild carries them");
      }
      break;
    }
    case InitramfsTool::kDracut:
      r.argv = {FirstExecutable(*changes, {"/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"}),
                "-f",
                "--kver",
                kver,
                "--add-drivers",
                list};
      changes->Write("/etc/dracut.conf.d/90-cdp-virtio.conf",
                     "# written by the cdp pe-agent: the target's virtual hardware is virtio\n"
                     "add_drivers+=\" " +
                         list + " \"\n",
                     "dracut: " + list + " added to every rebuild");
      break;
    case InitramfsTool::kNone:
      return Status::FailedPrecondition(
          "the migrated OS has neither update-initramfs (initramfs-tools) nor dracut to rebuild "
          "its initramfs " +
          r.image + " with " + list + ": rebuild it with them on the source before the cutover");
  }
  return r;
}

Result<std::string> RunInitramfsRebuild(ChrootRunner* runner, const std::string& root,
                                        const InitramfsRebuild& rebuild, int timeout_seconds) {
  auto ran = runner->Run(root, rebuild.argv, timeout_seconds);
  if (!ran.ok()) return ran.status().WithContext(text::Join(rebuild.argv, " "));
  const std::string output = *ran;
  // The new image itself, not a .modules list beside it (which the rebuild did not update).
  CDP_ASSIGN_OR_RETURN(const std::string path, ResolveInRoot(root, rebuild.image));
  CDP_ASSIGN_OR_RETURN(const std::string image, ReadWholeFile(path));
  auto listed = ListInitramfs(image);
  if (!listed.ok()) return listed.status().WithContext(rebuild.image);
  const auto& names = *listed;
  const auto builtin = BuiltinModules(root, rebuild.kver);
  std::vector<std::string> still;
  for (const auto& d : rebuild.drivers) {
    const bool in = builtin.count(d) || std::any_of(names.begin(), names.end(), [&](const auto& n) {
                      return ModuleNameOf(n) == d;
                    });
    if (!in) still.push_back(d);
  }
  if (!still.empty()) {
    return Status::FailedPrecondition(text::Join(rebuild.argv, " ") + " ran, but " + rebuild.image +
                                      " still has no " + text::Join(still, ", ") +
                                      " (the migrated OS has no such module for " + rebuild.kver +
                                      "?)");
  }
  const std::string last = LastLine(output);
  return rebuild.image + " rebuilt with " + text::Join(rebuild.drivers, ", ") + " (" +
         text::Join(rebuild.argv, " ") + (last.empty() ? "" : ": " + last) + ")";
}

Result<std::string> LinuxChrootRunner::Run(const std::string& root,
                                           const std::vector<std::string>& argv,
                                           int timeout_seconds) {
  if (argv.empty()) return Status::InvalidArgument("no command to run in " + root);
  std::vector<std::string> mounted, unmount_errors;
  Status status;
  for (const char* d : {"proc", "sys", "dev"}) {
    const std::string target = root + "/" + d;
    std::error_code ec;
    std::filesystem::create_directories(target, ec);
    if (::mount((std::string("/") + d).c_str(), target.c_str(), nullptr, MS_BIND | MS_REC,
                nullptr) != 0) {
      status = Status::FromErrno(errno, "mount --rbind /" + std::string(d) + " " + target);
      break;
    }
    mounted.push_back(target);
  }
  std::string output;
  if (status.ok()) {
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
      status = Status::FromErrno(errno, "pipe");
    } else {
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      char env_path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
      char env_lang[] = "LANG=C";
      char env_home[] = "HOME=/root";
      char* envp[] = {env_path, env_lang, env_home, nullptr};
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::dup2(pipefd[1], 1);
        ::dup2(pipefd[1], 2);
        const int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        if (::chroot(root.c_str()) != 0 || ::chdir("/") != 0) _exit(126);
        ::execve(args[0], args.data(), envp);
        _exit(127);
      }
      ::close(pipefd[1]);
      if (pid < 0) {
        status = Status::FromErrno(errno, "fork");
        ::close(pipefd[0]);
      } else {
        const auto deadline =
            std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
        bool timed_out = false;
        char buf[4096];
        for (;;) {
          const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                                deadline - std::chrono::steady_clock::now())
                                .count();
          if (left <= 0) {
            timed_out = true;
            ::kill(pid, SIGKILL);
            break;
          }
          pollfd p{pipefd[0], POLLIN, 0};
          const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) continue;
          const ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
          if (n <= 0) break;
          output.append(buf, static_cast<size_t>(n));
          if (output.size() > 2 * kOutputTail) output.erase(0, output.size() - kOutputTail);
        }
        ::close(pipefd[0]);
        int wstatus = 0;
        while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
        }
        if (output.size() > kOutputTail) output.erase(0, output.size() - kOutputTail);
        if (timed_out) {
          status = Status::TimedOut("killed after " + std::to_string(timeout_seconds) +
                                    " s in the chroot " + root + "; its output: " + output);
        } else if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
          const std::string how = WIFEXITED(wstatus)
                                      ? "exit status " + std::to_string(WEXITSTATUS(wstatus))
                                      : "signal " + std::to_string(WTERMSIG(wstatus));
          status = Status::IOError("failed in the chroot " + root + " with " + how +
                                   (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 127
                                        ? " (no such command there)"
                                        : "") +
                                   "; its output: " + output);
        }
      }
    }
  }
  for (auto it = mounted.rbegin(); it != mounted.rend(); ++it) {
    if (::umount2(it->c_str(), MNT_DETACH) != 0) {
      unmount_errors.push_back(*it + ": " + std::strerror(errno));
    }
  }
  if (!unmount_errors.empty()) {
    const std::string what = "cannot unmount " + text::Join(unmount_errors, ", ");
    return status.ok() ? Status::IOError(what) : status.WithContext(what);
  }
  if (!status.ok()) return status;
  return output;
}

}  // namespace cdp::pe
