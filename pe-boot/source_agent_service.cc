#include "cdp/pe/source_agent_service.h"

#include <set>

#include "cdp/pe/root_path.h"
#include "config_text.h"

namespace cdp::pe {

void DisableSourceAgent(RootChanges* changes, std::vector<std::string>* notes) {
  auto system = ResolveInRoot(changes->root(), "/etc/systemd/system");
  if (!system.ok()) return;
  std::set<std::string> off;
  for (const auto& dir : text::ListDir(*system)) {
    if (!text::EndsWith(dir, ".wants") && !text::EndsWith(dir, ".requires")) continue;
    auto wants = ResolveInRoot(changes->root(), "/etc/systemd/system/" + dir);
    if (!wants.ok()) continue;
    for (const auto& unit : text::ListDir(*wants)) {
      if (unit.rfind("cdp-agent@", 0) != 0 || !text::EndsWith(unit, ".service")) continue;
      changes->Remove("/etc/systemd/system/" + dir + "/" + unit,
                      "disabled: " + unit +
                          " protected the source; on the target it would journal the target's "
                          "writes as the source's");
      off.insert(unit);
    }
  }
  if (!off.empty()) {
    notes->push_back(
        "cdp-agent disabled (the migrated server is not the source its group "
        "protects; protect it with a new group): " +
        text::Join(std::vector<std::string>(off.begin(), off.end()), ", "));
  }
}

}  // namespace cdp::pe
