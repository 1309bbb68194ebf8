// Services that only make sense on VMware, turned off in the migrated OS (docs/pe-agent.md §5):
// open-vm-tools (vmtoolsd), VGAuth and the vmblock FUSE mount. On the target they would fail at
// every boot, or wait for a hypervisor channel that is not there.
//
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

#include "cdp/pe/root_changes.h"

namespace cdp::pe {

// The units turned off, when the migrated OS has them.
inline constexpr const char* kVmwareUnits[] = {
    "open-vm-tools.service", "vmtoolsd.service",     "vgauth.service",
    "vgauthd.service",       "vmware-tools.service", "run-vmblock\\x2dfuse.mount",
};

// For every unit of kVmwareUnits that the migrated OS has (a unit file in /etc/systemd/system,
// /lib/systemd/system or /usr/lib/systemd/system): plans removing its symlinks in
// /etc/systemd/system/*.wants/ and masking it (/etc/systemd/system/UNIT -> /dev/null, as
// `systemctl mask` does). Appends a note naming the units turned off; none when it has none.
void DisableVmwareServices(RootChanges* changes, std::vector<std::string>* notes);

}  // namespace cdp::pe
