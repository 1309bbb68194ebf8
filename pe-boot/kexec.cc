#include "kexec.h"

#include <fcntl.h>
#include <linux/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "cdp/pe/root_path.h"

namespace cdp::pe {

namespace {

constexpr unsigned long kKexecFileUnload = 0x1;  // KEXEC_FILE_UNLOAD (linux/kexec.h)

}  // namespace

Result<std::string> KexecFileLoad(const std::string& kernel_root, const std::string& kernel,
                                  const std::string& initrd_root, const std::string& initrd,
                                  const std::string& cmdline) {
  CDP_ASSIGN_OR_RETURN(const std::string kernel_path, ResolveInRoot(kernel_root, kernel));
  CDP_ASSIGN_OR_RETURN(const std::string initrd_path, ResolveInRoot(initrd_root, initrd));
  const int kfd = ::open(kernel_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (kfd < 0) return Status::FromErrno(errno, "pe-agent: opening " + kernel);
  const int ifd = ::open(initrd_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ifd < 0) {
    const int err = errno;
    ::close(kfd);
    return Status::FromErrno(err, "pe-agent: opening " + initrd);
  }
  const long rc =
      ::syscall(SYS_kexec_file_load, kfd, ifd, cmdline.size() + 1, cmdline.c_str(), 0UL);
  const int err = errno;
  ::close(kfd);
  ::close(ifd);
  if (rc != 0) {
    std::string hint =
        "; use boot switch-root (rebuild the PE from the replica: build-pe-image --kernel-from)";
    if (err == EPERM || err == EKEYREJECTED) {
      hint = " (kernel lockdown, or a signature the PE's kernel does not accept)" + hint;
    } else if (err == ENOEXEC) {
      hint = " (" + kernel + " is not a bzImage this kernel can load)" + hint;
    }
    return Status::FromErrno(err, "pe-agent: kexec_file_load of " + kernel + hint);
  }
  std::error_code ec;
  const auto mib = [&](const std::string& p) {
    return std::to_string(std::filesystem::file_size(p, ec) >> 20) + " MiB";
  };
  return "loaded " + kernel + " (" + mib(kernel_path) + ") and " + initrd + " (" +
         mib(initrd_path) + ")";
}

void KexecUnload() { ::syscall(SYS_kexec_file_load, -1, -1, 0UL, nullptr, kKexecFileUnload); }

Status RebootIntoLoadedKernel() {
  ::syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, nullptr);
  return Status::FromErrno(errno, "kexec reboot failed");
}

}  // namespace cdp::pe
