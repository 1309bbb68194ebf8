// Tests of the changes a boot adaptation plans and makes besides the network: RootChanges
// (backups, the takeover log), fstab and GRUB's root device (fstab_adaptation.h) over the
// fixture testdata/adapt/legacy-devnames, VMware-only services (vmware_services.h), and the
// partition and label ids they rely on (filesystem_id.h).
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "cdp/pe/filesystem_id.h"
#include "cdp/pe/fstab_adaptation.h"
#include "cdp/pe/root_changes.h"
#include "cdp/pe/source_agent_service.h"
#include "cdp/pe/vmware_services.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::pe {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

const std::string kRootUuid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
const std::string kDataUuid = "11111111-2222-3333-4444-555555555555";
const std::string kScratchUuid = "22222222-3333-4444-5555-666666666666";
const std::string kSwapPartUuid = "6b1e9f4c-8a2d-4c3e-9f10-5d7a2b3c4d5e";

std::string Read(const std::string& path) { return testing::TempDir::Read(path); }

class BootChangesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    case_ = std::string(CDP_ADAPT_TESTDATA) + "/legacy-devnames";
    root_ = dir_.File("root");
    fs::copy(case_ + "/root", root_, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    // The target: the source's sda is vda (EFI, root, swap), its sdb is vdb (data, scratch).
    target_.disks = {"/dev/vda", "/dev/vdb"};
    target_.filesystems = {
        {"/dev/vda", "/dev/vda", 0, {}, ""},
        {"/dev/vda1",
         "/dev/vda",
         1,
         {"vfat", "abcd-1234", "EFI"},
         "aaaaaaaa-0000-4000-8000-000000000001"},
        {"/dev/vda2",
         "/dev/vda",
         2,
         {"ext4", kRootUuid, ""},
         "aaaaaaaa-0000-4000-8000-000000000002"},
        {"/dev/vda3",
         "/dev/vda",
         3,
         {"swap", "33333333-0000-4000-8000-000000000003", ""},
         kSwapPartUuid},
        {"/dev/vdb", "/dev/vdb", 0, {}, ""},
        {"/dev/vdb1",
         "/dev/vdb",
         1,
         {"xfs", kDataUuid, ""},
         "bbbbbbbb-0000-4000-8000-000000000001"},
        {"/dev/vdb2",
         "/dev/vdb",
         2,
         {"ext4", kScratchUuid, "scratch"},
         "bbbbbbbb-0000-4000-8000-000000000002"},
    };
    target_.root_device = "/dev/vda2";
    target_.root_uuid = kRootUuid;
  }

  void ExpectFile(const std::string& in_root) {
    EXPECT_EQ(Read(root_ + in_root), Read(case_ + "/expected" + in_root)) << in_root;
  }

  testing::TempDir dir_{"boot_changes_test"};
  std::string case_, root_;
  TargetDisks target_;
};

// ---- RootChanges ----

TEST_F(BootChangesTest, ChangesKeepThePreviousContentAndAreLogged) {
  RootChanges changes(root_);
  changes.Write("/etc/fstab", "new\n", "first");
  changes.Write("/etc/fstab", "newer\n", "second");
  changes.Write("/etc/new.conf", "x\n", "created");
  changes.Write("/etc/default/grub", Read(root_ + "/etc/default/grub"), "the same: nothing");
  changes.Remove("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service", "off");
  changes.Symlink("/etc/systemd/system/vgauth.service", "/dev/null", "masked");
  EXPECT_EQ(*changes.Read("/etc/fstab"), "newer\n");
  EXPECT_FALSE(changes.Exists("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service"));
  std::vector<std::string> listed;
  for (const auto& c : changes.Changes())
    listed.push_back(c.file + " | " + c.what + " | " + c.kept_at);
  EXPECT_THAT(listed,
              ElementsAre("/etc/fstab | first; second | /etc/fstab.cdp-pre-cutover",
                          "/etc/new.conf | created | ",
                          "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service | off "
                          "| /etc/systemd/system/multi-user.target.wants/open-vm-tools.service"
                          ".cdp-pre-cutover",
                          "/etc/systemd/system/vgauth.service | masked | "));
  const std::string before = Read(root_ + "/etc/fstab");
  ASSERT_TRUE(changes.Apply("T0").ok());
  EXPECT_EQ(Read(root_ + "/etc/fstab"), "newer\n");
  EXPECT_EQ(Read(root_ + "/etc/fstab.cdp-pre-cutover"), before);
  EXPECT_EQ(Read(root_ + "/etc/new.conf"), "x\n");
  const std::string wants =
      root_ + "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service";
  EXPECT_FALSE(fs::exists(fs::symlink_status(wants)));
  EXPECT_EQ(fs::read_symlink(wants + ".cdp-pre-cutover"),
            "/lib/systemd/system/open-vm-tools.service");
  EXPECT_EQ(fs::read_symlink(root_ + "/etc/systemd/system/vgauth.service"), "/dev/null");
  EXPECT_EQ(Read(root_ + "/var/log/cdp-takeover.log"),
            "T0 /etc/fstab: first; second; previous content kept at /etc/fstab.cdp-pre-cutover\n"
            "T0 /etc/new.conf: created; there was none\n"
            "T0 /etc/systemd/system/multi-user.target.wants/open-vm-tools.service: off; previous "
            "content kept at /etc/systemd/system/multi-user.target.wants/open-vm-tools.service"
            ".cdp-pre-cutover\n"
            "T0 /etc/systemd/system/vgauth.service: masked; there was none\n");
}

// ---- fstab and GRUB ----

TEST_F(BootChangesTest, DeviceNamesOfTheSourcesDisksAreRewrittenAndIdsChecked) {
  RootChanges changes(root_);
  std::vector<std::string> errors, notes;
  AdaptFstab(target_, &changes, &errors, &notes);
  AdaptGrub(target_, &changes, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(
      notes,
      ElementsAre(
          "fstab line 4: /dev/sda2 (/) -> /dev/vda2",
          "fstab line 5: /dev/sda1 (/boot/efi) -> /dev/vda1",
          "fstab line 6: /dev/sdb1 (/data) -> /dev/vdb1",
          "fstab line 7: /dev/mapper/vg0-srv (/srv) is not a disk name (LVM or "
          "other); not checked",
          "fstab: / on /dev/vda2, /boot/efi on /dev/vda1, /data on /dev/vdb1, "
          "/scratch on /dev/vdb2, swap on /dev/vda3",
          "/etc/default/grub: line 8 root=/dev/sda2 -> root=UUID=" + kRootUuid + " (/dev/vda2)",
          "/boot/grub/grub.cfg: line 9 root=/dev/sda2 -> root=UUID=" + kRootUuid + " (/dev/vda2)"));
  ASSERT_TRUE(changes.Apply("T0").ok());
  ExpectFile("/etc/fstab");
  ExpectFile("/etc/default/grub");
  ExpectFile("/boot/grub/grub.cfg");
}

TEST_F(BootChangesTest, ExplicitSourceDisksWinOverTheOrder) {
  // The source's sdb is the first volume here, its sda the second: the root is not the one
  // mounted, the types do not fit.
  target_.source_disks = {"/dev/sdb", "/dev/sda"};
  EXPECT_EQ(*MapSourceDevice(target_, "/dev/sdb1"), "/dev/vda1");
  EXPECT_EQ(*MapSourceDevice(target_, "/dev/sda"), "/dev/vdb");
  EXPECT_EQ(MapSourceDevice(target_, "/dev/sdc1").status().message(),
            "no volume of this target was the source's disk /dev/sdc (source disks: /dev/sdb, "
            "/dev/sda); add it to the protection group or fix the source_disks");
  RootChanges changes(root_);
  std::vector<std::string> errors, notes;
  AdaptFstab(target_, &changes, &errors, &notes);
  EXPECT_THAT(errors,
              ElementsAre("fstab line 4: /dev/sda2 (/) is not the root filesystem the takeover "
                          "mounted (UUID " +
                              kRootUuid +
                              "); the migrated OS would mount another root: check "
                              "root_volume",
                          "fstab line 5: /dev/sda1 (/boot/efi) is /dev/vdb1 on this target, which "
                          "holds xfs, not vfat; check the order of the volumes or give the "
                          "takeover the source disk of each volume (source_disks)",
                          "fstab line 6: /dev/sdb1 (/data) is /dev/vda1 on this target, which "
                          "holds vfat, not xfs; check the order of the volumes or give the "
                          "takeover the source disk of each volume (source_disks)"));
}

TEST_F(BootChangesTest, SourceDeviceNamesOfEveryKind) {
  target_.disks = {"/dev/vda", "/dev/vdb", "/dev/nvme0n1"};
  EXPECT_EQ(*MapSourceDevice(target_, "/dev/xvdb"), "/dev/vdb");
  EXPECT_EQ(*MapSourceDevice(target_, "/dev/nvme1n1p2"), "/dev/vdb2");
  EXPECT_EQ(*MapSourceDevice(target_, "/dev/hdc3"), "/dev/nvme0n1p3");
  EXPECT_EQ(MapSourceDevice(target_, "/dev/sdaa1").status().message(),
            "the source's disk /dev/sdaa would be volume 27 by order, but the target has 3; give "
            "the takeover the source disk of each volume (source_disks)");
  EXPECT_FALSE(IsDiskDeviceName("/dev/mapper/vg0-root"));
  EXPECT_FALSE(IsDiskDeviceName("/dev/vg0/root"));
  EXPECT_FALSE(IsDiskDeviceName("/dev/sda1x"));
}

TEST_F(BootChangesTest, FstabEntriesOnNoDiskAndHardwareNamesAreRefused) {
  fs::remove(root_ + "/etc/fstab");
  std::ofstream(root_ + "/etc/fstab")
      << "UUID=" << kRootUuid << " / ext4 defaults 0 1\n"
      << "LABEL=backup /backup ext4 defaults 0 2\n"
      << "PARTUUID=00000000-0000-0000-0000-000000000000 /old ext4 defaults 0 2\n"
      << "/dev/disk/by-id/scsi-36000c29a1b2c3d4e5f-part1 /data xfs defaults 0 2\n"
      << "/dev/sdc1 /srv ext4 defaults 0 2\n"
      << "/dev/disk/by-uuid/" << kDataUuid << " /data2 xfs defaults 0 2\n";
  RootChanges changes(root_);
  std::vector<std::string> errors, notes;
  AdaptFstab(target_, &changes, &errors, &notes);
  EXPECT_THAT(errors,
              ElementsAre("fstab line 2: LABEL=backup (/backup) is on no disk of this target; the "
                          "migrated OS would not mount it",
                          "fstab line 3: PARTUUID=00000000-0000-0000-0000-000000000000 (/old) is "
                          "on no disk of this target; the migrated OS would not mount it",
                          "fstab line 4: /dev/disk/by-id/scsi-36000c29a1b2c3d4e5f-part1 (/data) "
                          "names the source's hardware, which the target does not have: name it "
                          "by UUID= in the source's /etc/fstab before the cutover",
                          "fstab line 5: /dev/sdc1 (/srv): the source's disk /dev/sdc would be "
                          "volume 3 by order, but the target has 2; give the takeover the source "
                          "disk of each volume (source_disks)"));
  EXPECT_THAT(notes, ElementsAre("fstab: / on /dev/vda2, /data2 on /dev/vdb1"));
  EXPECT_TRUE(changes.empty());
}

TEST_F(BootChangesTest, IdsOnLogicalVolumesAreNotedNotRefused) {
  // The lab's real source: its data disk is an LVM physical volume, /var/lib/postgresql an xfs
  // logical volume on it.
  target_.filesystems.push_back({"/dev/vdc", "/dev/vdc", 0, {"LVM2_member", "x", ""}, ""});
  fs::remove(root_ + "/etc/fstab");
  std::ofstream(root_ + "/etc/fstab") << "UUID=" << kRootUuid << " / ext4 defaults 0 1\n"
                                      << "UUID=ace7f8ad-5e8f-4704-9317-7d89e46e6da5 "
                                         "/var/lib/postgresql xfs defaults 0 2\n";
  RootChanges changes(root_);
  std::vector<std::string> errors, notes;
  AdaptFstab(target_, &changes, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(notes, ElementsAre("fstab line 2: UUID=ace7f8ad-5e8f-4704-9317-7d89e46e6da5 "
                                 "(/var/lib/postgresql) is on no plain disk or partition of this "
                                 "target; not checked (it may be on a logical volume of the LVM "
                                 "physical volumes /dev/vdc)",
                                 "fstab: / on /dev/vda2"));
}

TEST_F(BootChangesTest, GrubRootOnNoDiskIsRefusedWithFileAndLine) {
  std::ofstream(root_ + "/etc/default/grub", std::ios::app)
      << "GRUB_CMDLINE_LINUX_DEFAULT=\"root=UUID=99999999-0000-0000-0000-000000000000\"\n";
  RootChanges changes(root_);
  std::vector<std::string> errors, notes;
  AdaptGrub(target_, &changes, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("/etc/default/grub:9: root=UUID=99999999-0000-0000-0000-"
                                  "000000000000 is on no disk of this target; the migrated OS "
                                  "would not find its root: fix it on the source before the "
                                  "cutover"));
}

// ---- VMware-only services ----

TEST_F(BootChangesTest, VmwareServicesAreDisabledAndMasked) {
  RootChanges changes(root_);
  std::vector<std::string> notes;
  DisableVmwareServices(&changes, &notes);
  EXPECT_THAT(notes, ElementsAre("services for VMware only, disabled and masked: "
                                 "open-vm-tools.service, vmtoolsd.service, vgauth.service"));
  std::vector<std::string> listed;
  for (const auto& c : changes.Changes()) listed.push_back(c.file + " | " + c.what);
  EXPECT_THAT(listed,
              ElementsAre("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service | "
                          "disabled: open-vm-tools.service is for VMware only",
                          "/etc/systemd/system/open-vm-tools.service | masked: "
                          "open-vm-tools.service is for VMware only",
                          "/etc/systemd/system/vmtoolsd.service | masked: vmtoolsd.service is for "
                          "VMware only",
                          "/etc/systemd/system/open-vm-tools.service.requires/vgauth.service | "
                          "disabled: vgauth.service is for VMware only",
                          "/etc/systemd/system/vgauth.service | masked: vgauth.service is for "
                          "VMware only"));
  ASSERT_TRUE(changes.Apply("T0").ok());
  for (const char* unit : {"open-vm-tools.service", "vmtoolsd.service", "vgauth.service"}) {
    EXPECT_EQ(fs::read_symlink(root_ + "/etc/systemd/system/" + unit), "/dev/null") << unit;
  }
  EXPECT_EQ(fs::read_symlink(root_ + "/etc/systemd/system/vmtoolsd.service.cdp-pre-cutover"),
            "/lib/systemd/system/open-vm-tools.service");
  // Masked already: nothing more to do.
  RootChanges again(root_);
  notes.clear();
  DisableVmwareServices(&again, &notes);
  EXPECT_TRUE(again.empty());
  EXPECT_THAT(notes, IsEmpty());
}

// ---- the source's cdp-agent ----

TEST_F(BootChangesTest, SourceAgentInstancesAreDisabledNotMasked) {
  const std::string wants = root_ + "/etc/systemd/system/multi-user.target.wants";
  fs::create_directories(wants);
  fs::create_directories(root_ + "/lib/systemd/system");
  std::ofstream(root_ + "/lib/systemd/system/cdp-agent@.service") << "[Unit]\n";
  fs::create_symlink("/lib/systemd/system/cdp-agent@.service", wants + "/cdp-agent@lab.service");
  fs::create_symlink("/lib/systemd/system/cdp-agent@.service", wants + "/cdp-agent@db.service");
  RootChanges changes(root_);
  std::vector<std::string> notes;
  DisableSourceAgent(&changes, &notes);
  EXPECT_THAT(notes, ElementsAre("cdp-agent disabled (the migrated server is not the source its "
                                 "group protects; protect it with a new group): "
                                 "cdp-agent@db.service, cdp-agent@lab.service"));
  std::vector<std::string> listed;
  for (const auto& c : changes.Changes()) listed.push_back(c.file);
  EXPECT_THAT(listed, ElementsAre(wants.substr(root_.size()) + "/cdp-agent@db.service",
                                  wants.substr(root_.size()) + "/cdp-agent@lab.service"));
  ASSERT_TRUE(changes.Apply("T0").ok());
  EXPECT_FALSE(fs::exists(fs::symlink_status(wants + "/cdp-agent@lab.service")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(wants + "/cdp-agent@db.service")));
  // The template stays (not masked): `systemctl enable cdp-agent@NEWGROUP` works.
  EXPECT_TRUE(fs::is_regular_file(root_ + "/lib/systemd/system/cdp-agent@.service"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(root_ + "/etc/systemd/system/cdp-agent@.service")));
  // Disabled already: nothing more to do.
  RootChanges again(root_);
  notes.clear();
  DisableSourceAgent(&again, &notes);
  EXPECT_TRUE(again.empty());
  EXPECT_THAT(notes, IsEmpty());
}

// ---- ids ----

TEST(PartitionUuids, GptEntriesAndMbrSignature) {
  std::string disk(1 << 20, '\0');
  disk.replace(512, 8, "EFI PART");
  disk[512 + 72] = 2;  // entries at LBA 2
  disk[512 + 80] = 4;  // 4 entries
  disk[512 + 85] = 0;
  disk[512 + 84] = '\x80';  // of 128 bytes
  const std::string type(16, '\x11');
  // GUID 6b1e9f4c-8a2d-4c3e-9f10-5d7a2b3c4d5e, mixed-endian on disk.
  const unsigned char guid[16] = {0x4c, 0x9f, 0x1e, 0x6b, 0x2d, 0x8a, 0x3e, 0x4c,
                                  0x9f, 0x10, 0x5d, 0x7a, 0x2b, 0x3c, 0x4d, 0x5e};
  disk.replace(1024 + 128 * 2, 16, type);  // entry 3
  disk.replace(1024 + 128 * 2 + 16, 16, std::string(reinterpret_cast<const char*>(guid), 16));
  auto ids = PartitionUuids(disk);
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[3], kSwapPartUuid);

  std::string mbr(512, '\0');
  mbr[510] = '\x55';
  mbr[511] = '\xaa';
  mbr[440] = '\x78';
  mbr[441] = '\x56';
  mbr[442] = '\x34';
  mbr[443] = '\x12';
  mbr[446 + 4] = '\x83';         // partition 1: Linux
  mbr[446 + 16 * 2 + 4] = 0x05;  // partition 3: extended
  ids = PartitionUuids(mbr);
  EXPECT_THAT(ids, ElementsAre(std::pair<const int, std::string>(1, "12345678-01"),
                               std::pair<const int, std::string>(3, "12345678-03")));
  EXPECT_THAT(PartitionUuids(std::string(4096, '\0')), IsEmpty());
}

TEST(IdentifyFilesystem, Labels) {
  std::string ext4(4096, '\0');
  ext4[1024 + 0x38] = '\x53';
  ext4[1024 + 0x39] = '\xef';
  ext4.replace(1024 + 0x78, 7, "scratch");
  EXPECT_EQ(IdentifyFilesystem(ext4)->label, "scratch");
  std::string xfs(4096, '\0');
  xfs.replace(0, 4, "XFSB");
  xfs.replace(108, 4, "data");
  EXPECT_EQ(IdentifyFilesystem(xfs)->label, "data");
  std::string fat(4096, '\0');
  fat[510] = '\x55';
  fat[511] = '\xaa';
  fat[11] = 0;
  fat[12] = 2;  // 512 bytes per sector
  fat[22] = 1;  // FAT16
  fat[38] = '\x29';
  fat.replace(43, 11, "EFI        ");
  EXPECT_EQ(IdentifyFilesystem(fat)->label, "EFI");
  fat.replace(43, 11, "NO NAME    ");
  EXPECT_EQ(IdentifyFilesystem(fat)->label, "");
  std::string pv(4096, '\0');
  pv.replace(512, 8, "LABELONE");
  pv.replace(512 + 24, 8, "LVM2 001");
  pv.replace(512 + 32, 32, "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0UvWx");
  auto id = IdentifyFilesystem(pv);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->type, "LVM2_member");
  EXPECT_EQ(id->uuid, "Ab1Cd2-Ef3G-h4Ij-5Kl6-Mn7O-p8Qr-9St0Uv");
}

}  // namespace
}  // namespace cdp::pe
