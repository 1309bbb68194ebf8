#include "cdp/agent/address_fence.h"

#include <arpa/inet.h>

#include <sstream>

#include "cdp/core/host_command.h"

namespace cdp::agent {

namespace {

constexpr int kIpCommandMs = 5000;

// "192.0.2.10/24" -> "192.0.2.10".
std::string Bare(const std::string& address) { return address.substr(0, address.find('/')); }

class IpAddressTable final : public AddressTable {
 public:
  Result<std::vector<HeldAddress>> List() override {
    CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand({"ip", "-o", "-4", "addr", "show"}, kIpCommandMs));
    if (r.exit_code != 0) {
      return Status::IOError("ip -o -4 addr show exited " + std::to_string(r.exit_code) + ": " +
                             r.output);
    }
    // "2: ens192    inet 192.0.2.10/24 brd 192.0.2.255 scope global ens192\   valid_lft ..."
    std::vector<HeldAddress> out;
    std::istringstream lines(r.output);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream words(line);
      std::string index, device, family, address;
      if (!(words >> index >> device >> family >> address) || family != "inet") continue;
      out.push_back({device, address});
    }
    return out;
  }

  Status Remove(const HeldAddress& held) override {
    CDP_ASSIGN_OR_RETURN(
        auto r,
        RunHostCommand({"ip", "addr", "del", held.address, "dev", held.device}, kIpCommandMs));
    if (r.exit_code != 0) {
      return Status::FailedPrecondition("ip addr del " + held.address + " dev " + held.device +
                                        " exited " + std::to_string(r.exit_code) + ": " + r.output);
    }
    return Status::Ok();
  }
};

}  // namespace

std::unique_ptr<AddressTable> MakeIpAddressTable() { return std::make_unique<IpAddressTable>(); }

Result<std::string> RemoveAddresses(AddressTable& table,
                                    const std::vector<std::string>& addresses) {
  for (const auto& a : addresses) {
    in_addr parsed{};
    if (inet_pton(AF_INET, Bare(a).c_str(), &parsed) != 1) {
      return Status::InvalidArgument("fence: '" + a + "' is not an IPv4 address");
    }
  }
  CDP_ASSIGN_OR_RETURN(auto held, table.List());
  std::string done;
  for (const auto& a : addresses) {
    bool found = false;
    for (const auto& h : held) {
      if (Bare(h.address) != Bare(a)) continue;
      found = true;
      Status s = table.Remove(h);
      if (!s.ok()) {
        return Status::FailedPrecondition("fence: " + h.address + " on " + h.device +
                                          " could not be removed: " + s.message());
      }
      done += (done.empty() ? "" : "; ") + ("removed " + h.address) + " from " + h.device;
    }
    if (!found) done += (done.empty() ? "" : "; ") + Bare(a) + " was not held";
  }
  CDP_ASSIGN_OR_RETURN(auto after, table.List());
  for (const auto& a : addresses) {
    for (const auto& h : after) {
      if (Bare(h.address) == Bare(a)) {
        return Status::FailedPrecondition("fence: " + h.address + " is still on " + h.device +
                                          " after its removal");
      }
    }
  }
  return done;
}

}  // namespace cdp::agent
