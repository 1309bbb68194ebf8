#include "cdp/pe/vmware_services.h"

#include <filesystem>

#include "cdp/pe/root_path.h"
#include "config_text.h"

namespace cdp::pe {

void DisableVmwareServices(RootChanges* changes, std::vector<std::string>* notes) {
  namespace fs = std::filesystem;
  std::vector<std::string> off;
  for (const char* unit : kVmwareUnits) {
    bool installed = false;
    for (const char* dir :
         {"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"}) {
      installed = installed || changes->Exists(std::string(dir) + "/" + unit);
    }
    if (!installed) continue;
    const std::string mask = std::string("/etc/systemd/system/") + unit;
    // The link itself, not where it leads.
    auto dir = ResolveInRoot(changes->root(), "/etc/systemd/system");
    const std::string host = dir.ok() ? *dir + "/" + unit : "";
    std::error_code ec;
    if (!host.empty() && fs::is_symlink(host, ec) && fs::read_symlink(host, ec) == "/dev/null") {
      continue;  // masked already
    }
    auto system = ResolveInRoot(changes->root(), "/etc/systemd/system");
    if (system.ok()) {
      for (const auto& dir : text::ListDir(*system)) {
        if (!text::EndsWith(dir, ".wants") && !text::EndsWith(dir, ".requires")) continue;
        const std::string link = "/etc/systemd/system/" + dir + "/" + unit;
        if (changes->Exists(link)) {
          changes->Remove(link, std::string("disabled: ") + unit + " is for VMware only");
        }
      }
    }
    changes->Symlink(mask, "/dev/null", std::string("masked: ") + unit + " is for VMware only");
    off.push_back(unit);
  }
  if (!off.empty()) {
    notes->push_back("services for VMware only, disabled and masked: " + text::Join(off, ", "));
  }
}

}  // namespace cdp::pe
