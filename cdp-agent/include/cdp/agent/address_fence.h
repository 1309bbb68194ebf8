// The fence by address: the source's service addresses taken off its NICs, so that clients can
// no longer reach it there (the target comes up with them: IP drift), and read back to confirm
// before the cutover promotes the target. The NICs are reached through AddressTable (`ip` in
// production; a fake in unit tests).
//
// Thread-safety: none; one fence at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

// One IPv4 address a NIC holds.
struct HeldAddress {
  std::string device;   // ens192
  std::string address;  // 192.0.2.10/24
};

class AddressTable {
 public:
  virtual ~AddressTable() = default;
  // Every IPv4 address every NIC holds now.
  virtual Result<std::vector<HeldAddress>> List() = 0;
  // Removes `held` from its NIC.
  virtual Status Remove(const HeldAddress& held) = 0;
};

// The host's NICs through `ip -o -4 addr show` and `ip addr del ADDR dev DEV` (iproute2).
std::unique_ptr<AddressTable> MakeIpAddressTable();

// Removes each of `addresses` (IPv4, or IPv4/PREFIX: the prefix is ignored) from whichever NICs
// hold it, then lists the table again to confirm none is held. Returns what was done ("removed
// 192.0.2.10/24 from ens192; 192.0.2.11 was not held"). InvalidArgument for an address that is
// not IPv4; FailedPrecondition naming the address and NIC when the removal failed or the
// address is still there afterwards; the table's error when it cannot be read.
Result<std::string> RemoveAddresses(AddressTable& table, const std::vector<std::string>& addresses);

}  // namespace cdp::agent
