// The cdp-agent in the migrated OS, turned off (docs/pe-agent.md §5). The migrated root is a
// copy of the source, so it has the source's `cdp-agent@GROUP` instances enabled, with the
// source's volume configs. Started on the target they would fail at every boot (the source's
// /dev/sdX is not there) and restart every second, or worse, find a device of that name and
// journal the target's writes as the source's into a group the cutover has ended.
//
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

#include "cdp/pe/root_changes.h"

namespace cdp::pe {

// Plans removing every /etc/systemd/system/*.wants/cdp-agent@*.service link of the migrated OS
// (as `systemctl disable` does; the unit and /etc/cdp/agent stay, so the operator can protect
// the migrated server with a new group). Appends a note naming the instances disabled; none
// when it has none.
void DisableSourceAgent(RootChanges* changes, std::vector<std::string>* notes);

}  // namespace cdp::pe
