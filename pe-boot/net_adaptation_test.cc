// Tests of the network adaptation (net_adaptation.h) over fixture roots in
// pe-boot/testdata/adapt/CASE/root, one per format, each copied to a temporary directory,
// adapted, and compared byte for byte with testdata/adapt/CASE/expected; refusals assert the
// exact error text with FILE:LINE.
#include "cdp/pe/net_adaptation.h"

#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cdp/core/atomic_file.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::pe {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

const std::string kSourceMac = "00:50:56:aa:bb:01";
const std::string kTargetMac = "52:54:00:12:34:56";
// The change that keeps the source's name of a NIC matched by name (udevd present).
const std::string kPinEns192 =
    "/etc/systemd/network/10-cdp-ens192.link | pins the name ens192 to the target's NIC "
    "52:54:00:12:34:56 | ";

// The plan's mapping of the fixtures: the vmxnet3 NIC moves to a virtio NIC, with IP drift.
NicMap Mapping() { return {kSourceMac, "", kTargetMac, "eth0", "198.51.100.7/24", "198.51.100.1"}; }

struct Adapted {
  std::vector<std::string> errors, notes;
  std::vector<RootChange> changes;
};

class NetAdaptationTest : public ::testing::Test {
 protected:
  // Copies testdata/adapt/NAME/root to the temporary directory; returns it.
  std::string Fixture(const std::string& name) {
    EXPECT_TRUE(dir_.ok());
    case_ = std::string(CDP_ADAPT_TESTDATA) + "/" + name;
    root_ = dir_.File("root");
    fs::copy(case_ + "/root", root_, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    return root_;
  }

  // Scans, resolves and adapts root_ for `nics`; applies the changes when all passed.
  Adapted Adapt(std::vector<NicMap> nics, bool udevd_override = true) {
    RootChanges changes(root_);
    Adapted a;
    const auto found = ScanNetworkConfig(changes, &a.errors);
    ResolveSourceNames(found, &nics, &a.errors);
    if (a.errors.empty()) {
      const bool udevd = udevd_override && RunsSystemdUdevd(changes);
      AdaptNetwork(nics, udevd, &changes, &a.errors, &a.notes);
    }
    a.changes = changes.Changes();
    if (a.errors.empty()) {
      const Status applied = changes.Apply("2026-12-07T08:00:00Z");
      EXPECT_TRUE(applied.ok()) << applied;
    }
    return a;
  }

  // Every file under CASE/SUBDIR equals the adapted root's file of the same path.
  void ExpectFiles(const std::string& subdir = "expected") {
    const std::string expected = case_ + "/" + subdir;
    ASSERT_TRUE(fs::is_directory(expected)) << expected;
    for (const auto& entry : fs::recursive_directory_iterator(expected)) {
      if (!entry.is_regular_file()) continue;
      const std::string rel = entry.path().lexically_relative(expected).string();
      EXPECT_EQ(testing::TempDir::Read(root_ + "/" + rel), testing::TempDir::Read(entry.path()))
          << rel;
    }
  }

  std::string Read(const std::string& in_root) { return testing::TempDir::Read(root_ + in_root); }

  static std::vector<std::string> Files(const std::vector<RootChange>& changes) {
    std::vector<std::string> out;
    for (const auto& c : changes) out.push_back(c.file + " | " + c.what + " | " + c.kept_at);
    return out;
  }

  testing::TempDir dir_{"net_adaptation_test"};
  std::string case_, root_;
};

// ---- one test per format ----

// The plan names the source interface: with IP drift and two interfaces configured by name,
// nothing else tells which one had the source MAC.
NicMap MappingOf(const std::string& source_name) {
  NicMap m = Mapping();
  m.source_name = source_name;
  return m;
}

TEST_F(NetAdaptationTest, Debian12IfupdownByNameIsPinnedAndGetsTheNewAddress) {
  Fixture("debian12-ifupdown");
  const Adapted a = Adapt({MappingOf("ens192")});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/network/interfaces | ifupdown: ens192: address 192.0.2.10/24 -> "
                          "198.51.100.7/24, ens192: gateway 192.0.2.1 -> 198.51.100.1 | "
                          "/etc/network/interfaces.cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
  // The previous content is kept; the replication NIC's file is untouched; the log says it all.
  EXPECT_EQ(Read("/etc/network/interfaces.cdp-pre-cutover"),
            testing::TempDir::Read(case_ + "/root/etc/network/interfaces"));
  EXPECT_EQ(Read("/etc/network/interfaces.d/ens224"),
            testing::TempDir::Read(case_ + "/root/etc/network/interfaces.d/ens224"));
  EXPECT_EQ(Read("/var/log/cdp-takeover.log"),
            "2026-12-07T08:00:00Z /etc/network/interfaces: ifupdown: ens192: address "
            "192.0.2.10/24 -> 198.51.100.7/24, ens192: gateway 192.0.2.1 -> 198.51.100.1; "
            "previous content kept at /etc/network/interfaces.cdp-pre-cutover\n"
            "2026-12-07T08:00:00Z /etc/systemd/network/10-cdp-ens192.link: pins the name ens192 "
            "to the target's NIC 52:54:00:12:34:56; there was none\n");
}

// `auto` of a source NIC the plan maps to nothing (here the replication NIC, which stays behind)
// would fail networking.service on the target ("Cannot find device ens224"): allow-hotplug.
TEST_F(NetAdaptationTest, IfupdownAutoOfAnUnmappedNicBecomesAllowHotplug) {
  Fixture("debian12-ifupdown");
  const std::string extra = root_ + "/etc/network/interfaces.d/ens224";
  ASSERT_TRUE(WriteFileAtomic(extra,
                              "auto lo ens224 ens192\n"
                              "iface ens224 inet static\n"
                              "\taddress 198.51.100.10/24\n"
                              "auto bond0\n"
                              "iface bond0 inet manual\n"
                              "\tbond-slaves none\n")
                  .ok());
  const Adapted a = Adapt({MappingOf("ens192")});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ::testing::Contains(
                  "/etc/network/interfaces.d/ens224 | ifupdown: auto ens224 -> allow-hotplug (the "
                  "plan maps no target NIC to it) | /etc/network/interfaces.d/ens224.cdp-pre-cutover"));
  // lo, the mapped NIC and a bond keep `auto`; only the unmapped NIC moves.
  EXPECT_EQ(Read("/etc/network/interfaces.d/ens224"),
            "auto lo ens192\n"
            "allow-hotplug ens224\n"
            "iface ens224 inet static\n"
            "\taddress 198.51.100.10/24\n"
            "auto bond0\n"
            "iface bond0 inet manual\n"
            "\tbond-slaves none\n");
}

TEST_F(NetAdaptationTest, IfupdownWithoutUdevdIsRenamedToTheTargetsKernelName) {
  Fixture("debian12-ifupdown");
  const Adapted a = Adapt({MappingOf("ens192")}, /*udevd_override=*/false);
  EXPECT_THAT(a.errors, IsEmpty());
  ASSERT_EQ(a.changes.size(), 1u);
  EXPECT_EQ(a.changes[0].what,
            "ifupdown: ens192: address 192.0.2.10/24 -> 198.51.100.7/24, ens192: gateway "
            "192.0.2.1 -> 198.51.100.1, iface ens192 renamed eth0, allow-hotplug ens192 renamed "
            "eth0");
  ExpectFiles("expected-no-udevd");
  EXPECT_FALSE(fs::exists(root_ + "/etc/systemd/network/10-cdp-ens192.link"));
}

TEST_F(NetAdaptationTest, UbuntuNetplanByName) {
  Fixture("ubuntu-netplan-name");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/netplan/50-cloud-init.yaml | netplan: ethernets.ens192: address "
                          "192.0.2.10/24 -> 198.51.100.7/24, ethernets.ens192: default route via "
                          "192.0.2.1 -> 198.51.100.1 | /etc/netplan/50-cloud-init.yaml"
                          ".cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
}

TEST_F(NetAdaptationTest, UbuntuNetplanByMacGetsTheTargetsMac) {
  Fixture("ubuntu-netplan-mac");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/netplan/01-netcfg.yaml | netplan: ethernets.uplink: match "
                          "macaddress 00:50:56:aa:bb:01 -> 52:54:00:12:34:56, ethernets.uplink: "
                          "address 192.0.2.10/24 -> 198.51.100.7/24, ethernets.uplink: gateway4 "
                          "192.0.2.1 -> 198.51.100.1 | /etc/netplan/01-netcfg.yaml"
                          ".cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
}

TEST_F(NetAdaptationTest, Rhel9NetworkManagerKeyfileKeepsItsMode) {
  Fixture("rhel9-nm");
  const std::string file = "/etc/NetworkManager/system-connections/ens192.nmconnection";
  ::chmod((root_ + file).c_str(), 0600);  // git does not keep it
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre(file +
                              " | NetworkManager: ens192: mac-address 00:50:56:AA:BB:01 -> "
                              "52:54:00:12:34:56, [ipv4] address1 192.0.2.10/24,192.0.2.1 -> "
                              "198.51.100.7/24,198.51.100.1 | " +
                              file + ".cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
  struct stat st;
  ASSERT_EQ(::stat((root_ + file).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(NetAdaptationTest, Rhel7IfcfgWithHwaddr) {
  Fixture("rhel7-ifcfg");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/sysconfig/network-scripts/ifcfg-ens192 | ifcfg: ens192: HWADDR "
                          "00:50:56:aa:bb:01 -> 52:54:00:12:34:56, address "
                          "192.0.2.10/255.255.255.0 -> 198.51.100.7/24, GATEWAY 192.0.2.1 -> "
                          "198.51.100.1 | /etc/sysconfig/network-scripts/ifcfg-ens192"
                          ".cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
}

TEST_F(NetAdaptationTest, NetworkdMatchedByName) {
  Fixture("networkd-name");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/systemd/network/20-wired.network | systemd-networkd: ens192: "
                          "Address 192.0.2.10/24 -> 198.51.100.7/24, Gateway 192.0.2.1 -> "
                          "198.51.100.1 | /etc/systemd/network/20-wired.network.cdp-pre-cutover",
                          kPinEns192));
  ExpectFiles();
}

TEST_F(NetAdaptationTest, NetworkdMatchedByMacWithItsLinkFile) {
  Fixture("networkd-mac");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, IsEmpty());
  EXPECT_THAT(Files(a.changes),
              ElementsAre("/etc/systemd/network/20-lan0.network | systemd-networkd: lan0: [Match] "
                          "MACAddress 00:50:56:aa:bb:01 -> 52:54:00:12:34:56, Address "
                          "192.0.2.10/24 -> 198.51.100.7/24, Gateway 192.0.2.1 -> 198.51.100.1 | "
                          "/etc/systemd/network/20-lan0.network.cdp-pre-cutover",
                          "/etc/systemd/network/10-lan0.link | systemd-networkd: lan0: [Match] "
                          "MACAddress 00:50:56:aa:bb:01 -> 52:54:00:12:34:56 | "
                          "/etc/systemd/network/10-lan0.link.cdp-pre-cutover",
                          "/etc/systemd/network/10-cdp-lan0.link | pins the name lan0 to the "
                          "target's NIC 52:54:00:12:34:56 | "));
  ExpectFiles();
}

TEST_F(NetAdaptationTest, AnAdaptedRootIsLeftAsItIs) {
  Fixture("networkd-mac");
  ASSERT_THAT(Adapt({Mapping()}).errors, IsEmpty());
  const Adapted again = Adapt({Mapping()});
  EXPECT_THAT(again.errors, IsEmpty());
  EXPECT_THAT(again.changes, IsEmpty());
  ExpectFiles();
}

// ---- refusals ----

std::string Stacked(const std::string& at, const std::string& what) {
  return at + ": " + what +
         ", the NIC of NIC mapping 1 (source MAC 00:50:56:aa:bb:01); a bond, bridge or VLAN over "
         "a mapped NIC cannot be adapted: drop the mapping from the plan and adapt the migrated "
         "OS's network by hand after the cutover";
}

TEST_F(NetAdaptationTest, IfupdownBondIsRefusedWithFileAndLine) {
  Fixture("refuse-ifupdown-bond");
  const Adapted a = Adapt({MappingOf("ens192")});
  EXPECT_THAT(a.errors, ElementsAre(Stacked("/etc/network/interfaces:8",
                                            "bond bond0 is over ens192 (bond-slaves ens192 "
                                            "ens224)"),
                                    "NIC mapping 1 (source MAC 00:50:56:aa:bb:01), address "
                                    "198.51.100.7/24: no network configuration of the migrated OS "
                                    "in a format the takeover adapts (ifupdown, systemd-networkd, "
                                    "NetworkManager keyfiles, netplan, RHEL ifcfg) configures this "
                                    "NIC; no file under /etc mentions 198.51.100.7: configure the "
                                    "NIC in one of those formats on the source before the "
                                    "cutover, or drop the mapping and configure the target by "
                                    "hand"));
  EXPECT_FALSE(fs::exists(root_ + "/etc/network/interfaces.cdp-pre-cutover"));
  EXPECT_FALSE(fs::exists(root_ + "/var/log/cdp-takeover.log"));
}

TEST_F(NetAdaptationTest, IfupdownVlanIsRefusedWithFileAndLine) {
  Fixture("refuse-ifupdown-vlan");
  const Adapted a = Adapt({Mapping()});  // ens192 is the one NIC: VLANs are no candidates
  EXPECT_THAT(a.errors,
              ElementsAre(Stacked("/etc/network/interfaces:8", "VLAN ens192.100 is over ens192")));
}

TEST_F(NetAdaptationTest, NetplanVlanIsRefusedWithFileAndLine) {
  Fixture("refuse-netplan-vlan");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, ElementsAre(Stacked("/etc/netplan/00-installer-config.yaml:8",
                                            "VLAN vlan100 is over ens192")));
}

TEST_F(NetAdaptationTest, NetworkdBondIsRefusedWithFileAndLine) {
  Fixture("refuse-networkd-bond");
  const Adapted a = Adapt({Mapping()});  // bond0 is a .netdev: ens192 is the one NIC
  EXPECT_THAT(a.errors, ElementsAre(Stacked("/etc/systemd/network/10-ens192.network:5",
                                            "bond bond0 is over ens192 (Bond=bond0)")));
}

TEST_F(NetAdaptationTest, NetworkManagerVlanIsRefusedWithFileAndLine) {
  Fixture("refuse-nm-vlan");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors,
              ElementsAre(Stacked("/etc/NetworkManager/system-connections/vlan100.nmconnection:10",
                                  "VLAN vlan100 is over ens192")));
}

TEST_F(NetAdaptationTest, IfcfgBondSlaveIsRefusedWithFileAndLine) {
  Fixture("refuse-ifcfg-bond");
  const Adapted a = Adapt({Mapping()});
  EXPECT_THAT(a.errors, ElementsAre(Stacked("/etc/sysconfig/network-scripts/ifcfg-ens192:6",
                                            "ens192 is in bond bond0 (MASTER=bond0)")));
}

TEST_F(NetAdaptationTest, UnknownFormatIsRefusedNamingTheFileThatHasTheAddress) {
  Fixture("refuse-unknown-format");
  NicMap m = Mapping();
  m.address = "192.0.2.10/24";  // no IP drift: the address the source had
  const Adapted a = Adapt({m});
  EXPECT_THAT(a.errors,
              ElementsAre("NIC mapping 1 (source MAC 00:50:56:aa:bb:01), address 192.0.2.10/24: "
                          "no network configuration of the migrated OS in a format the takeover "
                          "adapts (ifupdown, systemd-networkd, NetworkManager keyfiles, netplan, "
                          "RHEL ifcfg) configures this NIC; /etc/conf.d/net:2 mentions 192.0.2.10 "
                          "(a format the takeover cannot adapt, or an interface it cannot map): "
                          "configure the NIC in one of those formats on the source before the "
                          "cutover, or drop the mapping and configure the target by hand"));
}

TEST_F(NetAdaptationTest, AmbiguousSourceInterfaceAsksForTheSourceName) {
  Fixture("debian12-ifupdown");
  NicMap m = Mapping();
  m.address = "203.0.113.9/24";  // on neither interface: which one is it?
  const Adapted a =
      Adapt({m, {"00:50:56:aa:bb:02", "", "52:54:00:ab:cd:ef", "eth1", "198.51.100.8/24", ""}});
  ASSERT_EQ(a.errors.size(), 2u);
  EXPECT_EQ(a.errors[0],
            "NIC mapping 1 (source MAC 00:50:56:aa:bb:01, address 203.0.113.9/24): cannot tell "
            "which interface of the migrated OS it is (configured by name: ens224 at "
            "/etc/network/interfaces.d/ens224:3, ens192 at /etc/network/interfaces:12); give the "
            "plan's network mapping the source_name of the interface");
}

}  // namespace
}  // namespace cdp::pe
