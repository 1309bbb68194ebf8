// kexec: booting the migrated OS's own kernel from the running PE without firmware (docs/pe-
// agent.md §5, "Boot: switch_root or kexec"): kexec_file_load(2) loads a kernel and initramfs,
// reboot(LINUX_REBOOT_CMD_KEXEC) jumps into them. Only the PE's agent may do this (it replaces
// the running system): callers check PeAgentOptions::allow_kexec first.
//
// Thread-safety: reentrant; the loaded image is one per machine.
#pragma once

#include <string>

#include "cdp/core/status.h"

namespace cdp::pe {

// Loads /boot-style files: `kernel` is a path inside the tree at `kernel_root` (a mounted
// migrated OS, e.g. /boot/vmlinuz-6.1.0-13-amd64), `initrd` one inside `initrd_root` (the same
// tree, or / for an image prepared in the PE), each resolved with ResolveInRoot, loaded with
// kexec_file_load(2) and command line `cmdline`. Returns "loaded KERNEL (N MiB) and INITRD
// (M MiB)". IOError naming the file (as a path inside `root`) that cannot be opened; the
// syscall's errno with a hint otherwise (lockdown or signature for EPERM/EKEYREJECTED, not a
// bzImage for ENOEXEC), ending with what to do instead (boot switch-root).
Result<std::string> KexecFileLoad(const std::string& kernel_root, const std::string& kernel,
                                  const std::string& initrd_root, const std::string& initrd,
                                  const std::string& cmdline);

// Unloads what KexecFileLoad loaded (KEXEC_FILE_UNLOAD); errors are ignored (nothing loaded is
// the goal).
void KexecUnload();

// Reboots into the loaded kernel (reboot(LINUX_REBOOT_CMD_KEXEC)). Returns only on failure: the
// errno as IOError "kexec reboot failed: ...". REQUIRES: the caller synced and unmounted.
Status RebootIntoLoadedKernel();

}  // namespace cdp::pe
