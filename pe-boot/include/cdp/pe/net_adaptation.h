// Network adaptation of an unmodified migrated Linux (docs/pe-agent.md §5, "Network"): its own
// network configuration, in whatever format its distribution uses, made to work on the target's
// NICs, whose names and MACs change with the hardware (VMware vmxnet3 `ens192` -> virtio
// `ens3`/`enp0s3`/`eth0`).
//
// Formats: ifupdown (/etc/network/interfaces, its `source`/`source-directory` files),
// systemd-networkd (/etc/systemd/network/*.network, *.link), NetworkManager keyfiles
// (/etc/NetworkManager/system-connections/*.nmconnection), netplan (/etc/netplan/*.yaml) and
// RHEL ifcfg (/etc/sysconfig/network-scripts/ifcfg-*).
//
// Rules, per mapped NIC (NicMap):
//   - a config that matches it by MAC (networkd MACAddress=, NM mac-address=, netplan match:
//     macaddress:, ifcfg HWADDR=, a .link's MACAddress=) gets the target's MAC;
//   - its name: when the migrated OS runs systemd-udevd, the old name is pinned to the new MAC
//     by /etc/systemd/network/10-cdp-OLDNAME.link, so every config naming it keeps working;
//     otherwise the name is rewritten, in every config that names it, to the name the target's
//     kernel gives the NIC (its name in the PE);
//   - the address: the first address of the mapping's family on the interface becomes the
//     mapping's (IP drift), and the default gateway the mapping's (when it has one); an
//     interface on DHCP is left so (a note says so);
//   - refused, before anything is changed, with FILE:LINE and what to do: a bond, bridge or VLAN
//     over the mapped NIC, a mapped address configured in none of the formats above (the file
//     and line that carry it when one of /etc does), and a mapping whose source interface
//     cannot be told.
//
// Everything is planned into a RootChanges (root_changes.h); nothing is written here.
// Thread-safety: reentrant; no state.
#pragma once

#include <string>
#include <vector>

#include "cdp/pe/root_changes.h"

namespace cdp::pe {

// One NIC mapping of the takeover request, as the adaptation uses it.
struct NicMap {
  std::string source_mac;   // lowercase; "" when the plan does not say
  std::string source_name;  // the interface's name on the source; "" = found from the configs
  std::string target_mac;   // lowercase
  std::string target_name;  // the name the target's kernel gives it (its name in the PE)
  std::string address;      // ADDR/PREFIX the target must carry
  std::string gateway;      // "" = leave the gateway as it is
};

// One interface configuration found in the migrated OS.
struct IfaceConfig {
  std::string format;  // "ifupdown", "systemd-networkd", "NetworkManager", "netplan", "ifcfg"
  std::string file;    // the migrated OS's path
  int line = 0;        // 1-based: where the interface is named or matched
  std::string name;    // the interface name it configures ("" when matched by MAC only)
  std::string mac;     // the MAC it matches (lowercase; "" when matched by name)
  std::vector<std::string> ips;  // its static addresses (without prefix)
  bool virtual_iface = false;    // a bond, bridge or VLAN (not a NIC a mapping can name)
};

// True when the migrated OS has systemd-udevd (/lib/systemd/systemd-udevd or
// /usr/lib/systemd/systemd-udevd), which applies .link files.
bool RunsSystemdUdevd(const RootChanges& root);

// Every interface configuration of the migrated OS, in every format. Files that cannot be read
// add an error naming them.
std::vector<IfaceConfig> ScanNetworkConfig(const RootChanges& root,
                                           std::vector<std::string>* errors);

// Fills each mapping's source_name when empty, from `found`: the name a MAC-matched config
// gives the source MAC; else the one interface configured by name with the mapping's address;
// else, with one mapping, the one interface configured by name. Appends an error for a mapping
// that MAC-matched configs do not cover and whose name cannot be told among several.
void ResolveSourceNames(const std::vector<IfaceConfig>& found, std::vector<NicMap>* nics,
                        std::vector<std::string>* errors);

// Plans the whole network adaptation (rules above) into *changes. Appends every refusal to
// *errors and a note per interface adapted to *notes.
// REQUIRES: ResolveSourceNames ran on `nics`.
void AdaptNetwork(const std::vector<NicMap>& nics, bool udevd, RootChanges* changes,
                  std::vector<std::string>* errors, std::vector<std::string>* notes);

}  // namespace cdp::pe
