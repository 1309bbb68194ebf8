// Tests of the boot adaptation at takeover over fake root trees in temporary directories: fake
// superblocks, fstab, net.conf, /lib/modules and initramfs images (newc cpio archives built
// here, gzip'd with zlib or compressed with zstd).
#include "cdp/pe/boot_adaptation.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/pe/initramfs_rebuild.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "initramfs_test_util.h"

namespace cdp::pe {
namespace {

namespace fs = std::filesystem;
using testdata::NewcArchive;
using testdata::NewcEntry;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kKver = "6.1.0-56-amd64";
const std::string kRootUuid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
const std::string kDataUuid = "11111111-2222-3333-4444-555555555555";
const std::string kMac = "52:54:00:12:34:56";
const std::string kOtherMac = "52:54:00:ab:cd:ef";

void WriteFile(const std::string& path, const std::string& bytes, mode_t mode = 0644) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  ASSERT_TRUE(out.good()) << path;
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

std::string ReadFile(const std::string& path) { return testing::TempDir::Read(path); }

// 16 bytes of a UUID in its textual form.
std::string UuidBytes(const std::string& text) {
  std::string hex;
  for (char c : text) {
    if (c != '-') hex += c;
  }
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

// The first 4 KiB of an ext4 filesystem with `uuid`: magic 0xEF53 at 1024 + 0x38, the UUID at
// 1024 + 0x68.
std::string FakeExt4(const std::string& uuid) {
  std::string b(4096, '\0');
  b[1024 + 0x38] = '\x53';
  b[1024 + 0x39] = '\xef';
  b.replace(1024 + 0x68, 16, UuidBytes(uuid));
  return b;
}

std::string Gzip(const std::string& data) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, data.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string Zstd(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

std::string ModulePath(const std::string& name) {
  return "usr/lib/modules/" + kKver + "/kernel/drivers/" + name + ".ko";
}

std::string Joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : " | ") + s;
  return out;
}

// A fake root tree of a migrated OS that passes every check.
class BootAdaptationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    root_ = dir_.File("root");
    WriteFile(Path("/etc/fstab"),
              "# <file system> <mount point> <type> <options> <dump> <pass>\n"
              "UUID=" +
                  kRootUuid +
                  " / ext4 errors=remount-ro 0 1\n"
                  "\n"
                  "proc /proc proc defaults 0 0\n");
    WriteFile(Path("/etc/cdp/net.conf"),
              "# the source's network\niface 02:00:00:00:00:01 "
              "192.168.1.10/24 192.168.1.1\n",
              0640);
    WriteFile(Path("/lib/modules/" + kKver + "/modules.dep"), "");
    WriteFile(Path("/boot/initrd.img-" + kKver + ".modules"),
              "virtio_blk.ko\nvirtio_pci.ko\nvirtio_net.ko\next4.ko\n");
    WriteFile(Path("/sbin/init"), "#!/bin/sh\n", 0755);
    uuids_ = {{kRootUuid, "/dev/vda1"}};
    present_ = {{kMac, "eth0"}, {kOtherMac, "eth1"}};
  }

  std::string Path(const std::string& in_root) const { return root_ + in_root; }

  AdaptRequest Request() const {
    AdaptRequest r;
    r.root = root_;
    r.root_device = "/dev/vda1";
    r.root_uuid = kRootUuid;
    r.kernel_release = kKver;
    r.nics = {{kMac, "10.0.0.5/24", "10.0.0.1"}};
    r.present_nics = present_;
    r.disk_uuids = uuids_;
    return r;
  }

  testing::TempDir dir_{"boot_adaptation_test"};
  std::string root_;
  UuidMap uuids_;
  std::map<std::string, std::string> present_;
};

// ---- filesystems ----

TEST(IdentifyFilesystem, Ext4UuidFromTheSuperblock) {
  auto id = IdentifyFilesystem(FakeExt4(kRootUuid));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->type, "ext4");
  EXPECT_EQ(id->uuid, kRootUuid);
}

TEST(IdentifyFilesystem, XfsSwapAndFatUuids) {
  std::string xfs(4096, '\0');
  xfs.replace(0, 4, "XFSB");
  xfs.replace(32, 16, UuidBytes(kDataUuid));
  auto id = IdentifyFilesystem(xfs);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->type, "xfs");
  EXPECT_EQ(id->uuid, kDataUuid);

  std::string swap(4096, '\0');
  swap.replace(4086, 10, "SWAPSPACE2");
  swap.replace(1024 + 12, 16, UuidBytes(kDataUuid));
  id = IdentifyFilesystem(swap);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->type, "swap");
  EXPECT_EQ(id->uuid, kDataUuid);

  // FAT32 (16-bit FAT size 0): serial 0xABCD1234 after the extended boot signature at 66.
  std::string fat(4096, '\0');
  fat[11] = 0x00;  // 512 bytes per sector
  fat[12] = 0x02;
  fat[66] = 0x29;
  fat[67] = 0x34;
  fat[68] = 0x12;
  fat[69] = static_cast<char>(0xcd);
  fat[70] = static_cast<char>(0xab);
  fat[510] = 0x55;
  fat[511] = static_cast<char>(0xaa);
  id = IdentifyFilesystem(fat);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->type, "vfat");
  EXPECT_EQ(id->uuid, "abcd-1234");
}

TEST(IdentifyFilesystem, ZeroesAndShortDataAreNotFound) {
  EXPECT_TRUE(IdentifyFilesystem(std::string(4096, '\0')).status().IsNotFound());
  EXPECT_TRUE(IdentifyFilesystem(FakeExt4(kRootUuid).substr(0, 1100)).status().IsNotFound());
}

TEST(ReadFsId, ReadsAnImageFileAndNamesItOnError) {
  testing::TempDir dir("boot_adaptation_test");
  WriteFile(dir.File("disk.img"), FakeExt4(kRootUuid) + std::string(8192, '\0'));
  auto id = ReadFsId(dir.File("disk.img"));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uuid, kRootUuid);
  WriteFile(dir.File("zero.img"), std::string(8192, '\0'));
  auto none = ReadFsId(dir.File("zero.img"));
  EXPECT_TRUE(none.status().IsNotFound());
  EXPECT_THAT(none.status().message(), HasSubstr(dir.File("zero.img")));
  EXPECT_EQ(ReadFsId(dir.File("absent.img")).status().code(), StatusCode::kIOError);
}

// ---- paths ----

TEST_F(BootAdaptationTest, ResolveInRootKeepsAbsoluteSymlinksInsideTheRoot) {
  WriteFile(Path("/lib/systemd/systemd"), "elf", 0755);
  fs::remove(Path("/sbin/init"));
  fs::create_symlink("/lib/systemd/systemd", Path("/sbin/init"));
  fs::create_symlink("../../etc", Path("/boot/etc-link"));  // relative, through ..
  auto init = ResolveInRoot(root_, "/sbin/init");
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(*init, root_ + "/lib/systemd/systemd");
  auto fstab = ResolveInRoot(root_, "/boot/etc-link/fstab");
  ASSERT_TRUE(fstab.ok()) << fstab.status();
  EXPECT_EQ(*fstab, root_ + "/etc/fstab");
  // ".." at the root stays at the root; missing components are kept as they are.
  auto missing = ResolveInRoot(root_, "/../../etc/none/x");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(*missing, root_ + "/etc/none/x");
  fs::create_symlink("/loop-b", Path("/loop-a"));
  fs::create_symlink("/loop-a", Path("/loop-b"));
  EXPECT_EQ(ResolveInRoot(root_, "/loop-a/x").status().code(), StatusCode::kInvalidArgument);
}

TEST_F(BootAdaptationTest, InitMustBeAnExecutableInTheMigratedOs) {
  std::vector<std::string> errors;
  CheckInit(root_, "/sbin/init", &errors);
  EXPECT_THAT(errors, IsEmpty());
  CheckInit(root_, "/sbin/nothing", &errors);
  CheckInit(root_, "sbin/init", &errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0],
            "the migrated OS has no executable /sbin/nothing; switch_root would fail: check "
            "root_volume and the takeover's init");
  EXPECT_EQ(errors[1], "init 'sbin/init' is not an absolute path without spaces");
}

// ---- fstab ----

TEST(ParseFstab, SkipsCommentsAndBlankLinesAndRemovesQuotes) {
  const auto entries = ParseFstab(
      "# c\n\nUUID=\"AbC\" /data ext4 defaults 0 2\n  short line\n"
      "/dev/vdb1\t/srv  xfs defaults\n");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].line, 3);
  EXPECT_EQ(entries[0].spec, "UUID=AbC");
  EXPECT_EQ(entries[0].mount_point, "/data");
  EXPECT_EQ(entries[0].type, "ext4");
  EXPECT_EQ(entries[1].line, 5);
  EXPECT_EQ(entries[1].spec, "/dev/vdb1");
  EXPECT_EQ(entries[1].mount_point, "/srv");
}

TEST_F(BootAdaptationTest, FstabUuidsOnTheTargetsDisksPass) {
  WriteFile(Path("/etc/fstab"), "UUID=" + kRootUuid +
                                    " / ext4 defaults 0 1\n"
                                    "UUID=" +
                                    kDataUuid +
                                    " /data ext4 defaults 0 2\n"
                                    "LABEL=backup /backup ext4 noauto 0 0\n"
                                    "tmpfs /tmp tmpfs defaults 0 0\n");
  uuids_[kDataUuid] = "/dev/vdb";
  std::vector<std::string> errors, notes;
  CheckFstab(root_, uuids_, kRootUuid, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(notes, ElementsAre("fstab line 3: LABEL=backup (/backup) is not by UUID; not checked",
                                 "fstab: / on /dev/vda1, /data on /dev/vdb"));
}

TEST_F(BootAdaptationTest, FstabUuidOnNoDiskIsAnErrorNamingTheLine) {
  // Upper case in the file; UUIDs compare without case.
  std::string upper = kDataUuid;
  upper[0] = 'A';
  WriteFile(Path("/etc/fstab"), "UUID=" + kRootUuid +
                                    " / ext4 defaults 0 1\n"
                                    "# data\n"
                                    "UUID=" +
                                    upper +
                                    " /data ext4 defaults 0 2\n"
                                    "UUID=" +
                                    kDataUuid + " none swap sw 0 0\n");
  std::vector<std::string> errors, notes;
  CheckFstab(root_, uuids_, kRootUuid, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("fstab line 3: UUID=" + upper +
                                      " (/data) is on no disk of this target; the migrated OS "
                                      "would not mount it",
                                  "fstab line 4: UUID=" + kDataUuid +
                                      " (swap) is on no disk of this target; the migrated OS "
                                      "would not mount it"));
}

TEST_F(BootAdaptationTest, FstabRootOfAnotherFilesystemAndMissingFstab) {
  uuids_[kDataUuid] = "/dev/vdb";
  std::vector<std::string> errors, notes;
  CheckFstab(root_, uuids_, kDataUuid, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("fstab line 2: UUID=" + kRootUuid +
                                  " (/) is not the root filesystem the takeover mounted (UUID " +
                                  kDataUuid +
                                  "); the migrated OS would mount another root: check "
                                  "root_volume"));
  errors.clear();
  fs::remove(Path("/etc/fstab"));
  CheckFstab(root_, uuids_, kRootUuid, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("the migrated OS has no /etc/fstab; is root_volume the volume "
                                  "of its root filesystem?"));
}

// ---- network ----

TEST_F(BootAdaptationTest, NetConfIsRewrittenAtomicallyWithABackup) {
  const std::string before = ReadFile(Path("/etc/cdp/net.conf"));
  std::vector<NicConfig> nics = {{"52:54:00:12:34:56", "10.0.0.5/24", "10.0.0.1"},
                                 {"52:54:00:AB:CD:EF", "fd00::5/64", ""}};
  std::vector<std::string> errors;
  ValidateNics(&nics, present_, &errors);
  ASSERT_THAT(errors, IsEmpty());
  EXPECT_EQ(nics[1].mac, kOtherMac);  // normalized
  auto note = RewriteNetConf(root_, nics);
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(*note,
            "net.conf: rewritten with 2 line(s) (the previous one kept as "
            "/etc/cdp/net.conf.pre-cutover)");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf")),
            "# written by the cdp pe-agent at takeover; the previous file is "
            "net.conf.pre-cutover\n"
            "iface 52:54:00:12:34:56 10.0.0.5/24 10.0.0.1\n"
            "iface 52:54:00:ab:cd:ef fd00::5/64\n");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf.pre-cutover")), before);
  struct stat st;
  ASSERT_EQ(::stat(Path("/etc/cdp/net.conf").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);  // the previous file's mode
  // Nothing else is left in the directory (no temporary file).
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(Path("/etc/cdp"))) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_THAT(names, ElementsAre("net.conf", "net.conf.pre-cutover"));

  // The same request again changes nothing (and keeps the first backup).
  note = RewriteNetConf(root_, nics);
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(*note, "net.conf: already as requested (2 line(s)); unchanged");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf.pre-cutover")), before);
}

TEST_F(BootAdaptationTest, NetConfIsCreatedWhenThereWasNone) {
  fs::remove_all(Path("/etc/cdp"));
  auto note = RewriteNetConf(root_, {{kMac, "10.0.0.5/24", ""}});
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(*note, "net.conf: created with 1 line(s) (there was none)");
  EXPECT_THAT(ReadFile(Path("/etc/cdp/net.conf")),
              HasSubstr("\niface 52:54:00:12:34:56 10.0.0.5/24\n"));
  EXPECT_FALSE(fs::exists(Path("/etc/cdp/net.conf.pre-cutover")));
}

TEST_F(BootAdaptationTest, UnknownMacAndBadAddressesAreRefused) {
  std::vector<NicConfig> nics = {{"52:54:00:99:99:99", "10.0.0.5/24", ""},
                                 {kMac, "10.0.0.5", ""},
                                 {kOtherMac, "10.0.0.6/24", "fd00::1"},
                                 {kMac, "10.0.0.7/33", ""},
                                 {"52-54-00-12-34-56", "10.0.0.8/24", ""}};
  std::vector<std::string> errors;
  ValidateNics(&nics, present_, &errors);
  EXPECT_THAT(errors,
              ElementsAre("NIC mapping 1: MAC 52:54:00:99:99:99 is not a NIC of this target (it "
                          "has: eth0 52:54:00:12:34:56, eth1 52:54:00:ab:cd:ef); fix the NIC "
                          "mapping or give the target VM that NIC",
                          "NIC mapping 2 (MAC 52:54:00:12:34:56): address '10.0.0.5' is not "
                          "ADDR/PREFIX, e.g. 10.0.0.5/24",
                          "NIC mapping 3 (MAC 52:54:00:ab:cd:ef): gateway 'fd00::1' is not an "
                          "address of the same family as 10.0.0.6/24",
                          "NIC mapping 4: MAC 52:54:00:12:34:56 is mapped twice",
                          "NIC mapping 5: MAC '52-54-00-12-34-56' is not of the form "
                          "aa:bb:cc:dd:ee:ff"));
}

TEST(ListNics, ReadsAddressesAndSkipsLoopback) {
  testing::TempDir dir("boot_adaptation_test");
  WriteFile(dir.File("lo/address"), "00:00:00:00:00:00\n");
  WriteFile(dir.File("eth0/address"), "52:54:00:12:34:56\n");
  WriteFile(dir.File("ens4/address"), "52:54:00:AB:CD:EF\n");
  auto nics = ListNics(dir.path());
  ASSERT_TRUE(nics.ok()) << nics.status();
  EXPECT_EQ(*nics, (std::map<std::string, std::string>{{kMac, "eth0"}, {kOtherMac, "ens4"}}));
  EXPECT_EQ(ListNics(dir.File("absent")).status().code(), StatusCode::kIOError);
}

// ---- drivers and kernel ----

TEST(ModuleNameOf, StripsDirectoriesAndSuffixes) {
  EXPECT_EQ(ModuleNameOf("kernel/drivers/block/virtio_blk.ko"), "virtio_blk");
  EXPECT_EQ(ModuleNameOf("virtio-pci.ko.xz"), "virtio_pci");
  EXPECT_EQ(ModuleNameOf("/x/virtio_net.ko.zst"), "virtio_net");
  EXPECT_EQ(ModuleNameOf("a.ko.gz"), "a");
  EXPECT_EQ(ModuleNameOf("modules.dep"), "");
  EXPECT_EQ(ModuleNameOf(".ko"), "");
}

TEST_F(BootAdaptationTest, ModulesListWithTheVirtioDriversPasses) {
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(
      notes,
      ElementsAre("drivers: virtio_blk, virtio_pci, virtio_net in /boot/initrd.img-" + kKver));
}

TEST_F(BootAdaptationTest, ModulesListWithoutVirtioBlkIsAClearFailure) {
  WriteFile(Path("/boot/initrd.img-" + kKver + ".modules"),
            "# lsinitramfs | grep ko\nkernel/drivers/virtio/virtio_pci.ko\nvirtio_net\n");
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("the migrated OS's initramfs /boot/initrd.img-" + kKver +
                                  " has no virtio_blk; it would not find its disk on the target: "
                                  "run `cdpctl target prepare-boot` (it rebuilds the image in the "
                                  "PE, the source untouched) or rebuild it with virtio drivers on "
                                  "the source before the cutover"));
}

TEST_F(BootAdaptationTest, GzippedCpioWithTheVirtioDriversPasses) {
  fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
  WriteFile(Path("/boot/initrd.img-" + kKver),
            Gzip(NewcArchive({"init", ModulePath("block/virtio_blk"),
                              ModulePath("virtio/virtio_pci"), ModulePath("net/virtio_net")})));
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(
      notes,
      ElementsAre("drivers: virtio_blk, virtio_pci, virtio_net in /boot/initrd.img-" + kKver));
}

TEST_F(BootAdaptationTest, GzippedCpioWithoutVirtioBlkIsAClearFailure) {
  fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
  WriteFile(Path("/boot/initrd.img-" + kKver),
            Gzip(NewcArchive({"init", ModulePath("scsi/sd_mod"), ModulePath("virtio/virtio_pci"),
                              ModulePath("net/virtio_net")})));
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("the migrated OS's initramfs /boot/initrd.img-" + kKver +
                                  " has no virtio_blk; it would not find its disk on the target: "
                                  "run `cdpctl target prepare-boot` (it rebuilds the image in the "
                                  "PE, the source untouched) or rebuild it with virtio drivers on "
                                  "the source before the cutover"));
}

TEST_F(BootAdaptationTest, OnlyVirtioNetMissingSaysNetwork) {
  WriteFile(Path("/boot/initrd.img-" + kKver + ".modules"), "virtio_blk.ko\nvirtio_pci.ko\n");
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("the migrated OS's initramfs /boot/initrd.img-" + kKver +
                                  " has no virtio_net; it would have no network on the target: "
                                  "run `cdpctl target prepare-boot` (it rebuilds the image in the "
                                  "PE, the source untouched) or rebuild it with virtio drivers on "
                                  "the source before the cutover"));
}

TEST_F(BootAdaptationTest, ModulesBuiltIntoTheKernelCount) {
  WriteFile(Path("/boot/initrd.img-" + kKver + ".modules"), "virtio_net.ko\n");
  WriteFile(Path("/lib/modules/" + kKver + "/modules.builtin"),
            "kernel/drivers/block/virtio_blk.ko\nkernel/drivers/virtio/virtio_pci.ko\n");
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(notes, ElementsAre("drivers: virtio_net in /boot/initrd.img-" + kKver +
                                 " (built into " + kKver + ": virtio_blk, virtio_pci)"));
  // All three built in: no initramfs needed at all.
  fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
  WriteFile(Path("/lib/modules/" + kKver + "/modules.builtin"),
            "kernel/drivers/block/virtio_blk.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
            "kernel/drivers/net/virtio_net.ko\n");
  errors.clear();
  notes.clear();
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, IsEmpty());
  EXPECT_THAT(
      notes, ElementsAre("drivers: virtio_blk, virtio_pci, virtio_net built into kernel " + kKver));
}

TEST_F(BootAdaptationTest, NoInitramfsAtAll) {
  fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  EXPECT_THAT(errors, ElementsAre("the migrated OS has no initramfs /boot/initrd.img-" + kKver +
                                  " and its kernel " + kKver +
                                  " does not build in virtio_blk, virtio_pci, virtio_net; it would "
                                  "not find its disk on the target: build one with virtio drivers "
                                  "(update-initramfs -c -k " +
                                  kKver + ") before the cutover"));
}

TEST(ListInitramfs, ConcatenatedPlainGzipAndZstdArchives) {
  // Like Debian's: an uncompressed early archive (microcode), zero padding, then the main one.
  std::string image = NewcArchive({"kernel/x86/microcode/GenuineIntel.bin"});
  image.append(512, '\0');
  image += Gzip(NewcArchive({"init", ModulePath("block/virtio_blk")}));
  image.append(3, '\0');
  image += Zstd(NewcArchive({"etc/zstd-part"}));
  auto names = ListInitramfs(image);
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_EQ(Joined(*names), "usr | kernel/x86/microcode/GenuineIntel.bin | usr | init | " +
                                ModulePath("block/virtio_blk") + " | usr | etc/zstd-part");
}

TEST(ListInitramfs, OneArchiveSplitAcrossGzipMembersAndZstdFrames) {
  // gzip -c a b >c and zstd -T0 write several members/frames; they decompress as one stream.
  const std::string archive = NewcArchive({"init", ModulePath("net/virtio_net")});
  const size_t half = archive.size() / 2 + 1;  // inside an entry
  for (const std::string& image : {Gzip(archive.substr(0, half)) + Gzip(archive.substr(half)),
                                   Zstd(archive.substr(0, half)) + Zstd(archive.substr(half))}) {
    auto names = ListInitramfs(image);
    ASSERT_TRUE(names.ok()) << names.status();
    EXPECT_EQ(Joined(*names), "usr | init | " + ModulePath("net/virtio_net"));
  }
  const std::string zst = Zstd(archive);
  auto cut = ListInitramfs(zst.substr(0, zst.size() - 8));
  EXPECT_TRUE(cut.status().IsCorruption()) << cut.status();
}

TEST(ListInitramfs, TruncatedAndUnknownCompressionAreErrors) {
  const std::string archive = NewcArchive({"init", ModulePath("block/virtio_blk")});
  auto truncated = ListInitramfs(archive.substr(0, archive.size() - 150));
  EXPECT_TRUE(truncated.status().IsCorruption()) << truncated.status();
  const std::string gz = Gzip(archive);
  auto cut = ListInitramfs(gz.substr(0, gz.size() / 2));
  EXPECT_TRUE(cut.status().IsCorruption()) << cut.status();
  auto xz =
      ListInitramfs(std::string("\xfd"
                                "7zXZ\0\0\0",
                                8));
  EXPECT_EQ(xz.status().code(), StatusCode::kNotSupported) << xz.status();
  EXPECT_THAT(xz.status().message(), HasSubstr("compressed with xz"));
  auto junk = ListInitramfs("0707zzzz");
  EXPECT_TRUE(junk.status().IsCorruption()) << junk.status();
}

TEST_F(BootAdaptationTest, UnreadableInitramfsSaysHowToListItsModules) {
  fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
  WriteFile(Path("/boot/initrd.img-" + kKver), std::string("\xfd"
                                                           "7zXZ\0\0\0",
                                                           8));
  std::vector<std::string> errors, notes;
  CheckInitramfsDrivers(root_, kKver, &errors, &notes);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("compressed with xz"));
  EXPECT_THAT(errors[0],
              HasSubstr("write the list of its modules to /boot/initrd.img-" + kKver + ".modules"));
}

TEST_F(BootAdaptationTest, KernelWithoutModulesInTheMigratedOsIsAnExactError) {
  fs::remove_all(Path("/lib/modules/" + kKver));
  fs::create_directories(Path("/lib/modules/6.1.0-9-amd64"));
  fs::create_directories(Path("/lib/modules/5.10.0-28-amd64"));
  std::vector<std::string> errors;
  EXPECT_FALSE(CheckKernelModules(root_, kKver, &errors));
  EXPECT_THAT(errors, ElementsAre("the PE runs kernel " + kKver +
                                  " but the migrated OS has no modules for it (it has: "
                                  "5.10.0-28-amd64, 6.1.0-9-amd64); rebuild the PE from the "
                                  "replica's /boot and /lib/modules (build-pe-image "
                                  "--kernel-from)"));
  errors.clear();
  fs::remove_all(Path("/lib/modules"));
  EXPECT_FALSE(CheckKernelModules(root_, kKver, &errors));
  EXPECT_THAT(errors, ElementsAre(HasSubstr("(it has: none)")));
}

TEST_F(BootAdaptationTest, OwnKernelIsTheNewestWithInitrdAndModules) {
  // 6.1.0-10 sorts after 6.1.0-9 only in version order; 6.5.0-1 has no initrd and kKver (the
  // fixture's) no vmlinuz: neither is bootable.
  for (const std::string kver : {"6.1.0-9-amd64", "6.1.0-10-amd64", "6.5.0-1-amd64"}) {
    WriteFile(Path("/boot/vmlinuz-" + kver), "kernel");
    WriteFile(Path("/lib/modules/" + kver + "/modules.dep"), "");
  }
  WriteFile(Path("/boot/initrd.img-6.1.0-10-amd64"), "initrd");
  WriteFile(Path("/boot/initrd.img-6.1.0-9-amd64"), "initrd");
  auto kver = ChooseOwnKernel(root_);
  ASSERT_TRUE(kver.ok()) << kver.status();
  EXPECT_EQ(*kver, "6.1.0-10-amd64");
}

TEST_F(BootAdaptationTest, NoKernelToKexecIntoIsAnExactError) {
  WriteFile(Path("/boot/vmlinuz-6.1.0-9-amd64"), "kernel");  // no initrd, no modules
  auto kver = ChooseOwnKernel(root_);
  ASSERT_FALSE(kver.ok());
  EXPECT_EQ(kver.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(kver.status().message(),
            "the migrated OS has no kernel to kexec into: no /boot/vmlinuz-KVER with its "
            "/boot/initrd.img-KVER and /lib/modules/KVER (it has: vmlinuz-6.1.0-9-amd64)");
}

TEST_F(BootAdaptationTest, MergedUsrModulesAreFound) {
  // /lib -> usr/lib, as on Debian 12.
  fs::rename(Path("/lib"), Path("/usr-lib-tmp"));
  fs::create_directories(Path("/usr"));
  fs::rename(Path("/usr-lib-tmp"), Path("/usr/lib"));
  fs::create_symlink("usr/lib", Path("/lib"));
  std::vector<std::string> errors;
  EXPECT_TRUE(CheckKernelModules(root_, kKver, &errors));
  EXPECT_THAT(errors, IsEmpty());
}

// ---- the whole step ----

TEST_F(BootAdaptationTest, AdaptRootRewritesNetConfWhenEverythingPasses) {
  auto notes = AdaptRoot(Request());
  ASSERT_TRUE(notes.ok()) << notes.status();
  EXPECT_EQ(Joined(*notes),
            "fstab: / on /dev/vda1 | drivers: virtio_blk, virtio_pci, virtio_net in "
            "/boot/initrd.img-" +
                kKver + " | kernel " + kKver +
                ": modules present | net.conf: rewritten with 1 line(s) (the previous one kept "
                "as /etc/cdp/net.conf.pre-cutover)");
  EXPECT_THAT(ReadFile(Path("/etc/cdp/net.conf")),
              HasSubstr("\niface 52:54:00:12:34:56 10.0.0.5/24 10.0.0.1\n"));
}

TEST_F(BootAdaptationTest, DryRunChangesNothing) {
  const std::string before = ReadFile(Path("/etc/cdp/net.conf"));
  AdaptRequest r = Request();
  r.dry_run = true;
  auto notes = AdaptRoot(r);
  ASSERT_TRUE(notes.ok()) << notes.status();
  EXPECT_EQ(notes->back(),
            "net.conf: would be rewritten with: iface 52:54:00:12:34:56 10.0.0.5/24 10.0.0.1");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf")), before);
  EXPECT_FALSE(fs::exists(Path("/etc/cdp/net.conf.pre-cutover")));
}

TEST_F(BootAdaptationTest, AnyFailureReportsEveryProblemAndChangesNothing) {
  const std::string before = ReadFile(Path("/etc/cdp/net.conf"));
  WriteFile(Path("/etc/fstab"), "UUID=" + kRootUuid +
                                    " / ext4 defaults 0 1\n"
                                    "UUID=" +
                                    kDataUuid + " /data ext4 defaults 0 2\n");
  AdaptRequest r = Request();
  r.nics.push_back({"52:54:00:99:99:99", "10.0.1.5/24", ""});
  auto notes = AdaptRoot(r);
  ASSERT_FALSE(notes.ok());
  EXPECT_EQ(notes.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(notes.status().message(),
            "fstab line 2: UUID=" + kDataUuid +
                " (/data) is on no disk of this target; the migrated OS would not mount it; NIC "
                "mapping 2: MAC 52:54:00:99:99:99 is not a NIC of this target (it has: eth0 "
                "52:54:00:12:34:56, eth1 52:54:00:ab:cd:ef); fix the NIC mapping or give the "
                "target VM that NIC");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf")), before);
  EXPECT_FALSE(fs::exists(Path("/etc/cdp/net.conf.pre-cutover")));
}

TEST_F(BootAdaptationTest, NoNicMappingsLeavesNetConfAlone) {
  const std::string before = ReadFile(Path("/etc/cdp/net.conf"));
  AdaptRequest r = Request();
  r.nics.clear();
  auto notes = AdaptRoot(r);
  ASSERT_TRUE(notes.ok()) << notes.status();
  EXPECT_EQ(notes->back(), "net.conf: no NIC mappings in the request; left as it is");
  EXPECT_EQ(ReadFile(Path("/etc/cdp/net.conf")), before);
}

// ---- an unmodified distribution ----

// The fixture root turned into a Debian without our contract: its network in ifupdown
// (testdata/adapt/debian12-ifupdown), fstab by device names, GRUB's root=/dev/sda2 and
// open-vm-tools (testdata/adapt/legacy-devnames).
class DistributionAdaptationTest : public BootAdaptationTest {
 protected:
  void SetUp() override {
    BootAdaptationTest::SetUp();
    fs::remove_all(Path("/etc/cdp"));
    fs::remove(Path("/etc/fstab"));
    const auto options = fs::copy_options::recursive | fs::copy_options::copy_symlinks |
                         fs::copy_options::overwrite_existing;
    for (const char* fixture : {"debian12-ifupdown", "legacy-devnames"}) {
      fs::copy(std::string(CDP_ADAPT_TESTDATA) + "/" + fixture + "/root", root_, options);
    }
  }

  AdaptRequest DistributionRequest() const {
    AdaptRequest r = Request();
    r.root_device = "/dev/vda2";
    r.nics = {{kMac, "198.51.100.7/24", "198.51.100.1", "00:50:56:aa:bb:01", "ens192"}};
    r.target.disks = {"/dev/vda", "/dev/vdb"};
    r.target.filesystems = {
        {"/dev/vda1", "/dev/vda", 1, {"vfat", "abcd-1234", ""}, ""},
        {"/dev/vda2", "/dev/vda", 2, {"ext4", kRootUuid, ""}, ""},
        {"/dev/vda3", "/dev/vda", 3, {"swap", "", ""}, "6b1e9f4c-8a2d-4c3e-9f10-5d7a2b3c4d5e"},
        {"/dev/vdb1", "/dev/vdb", 1, {"xfs", kDataUuid, ""}, ""},
        {"/dev/vdb2", "/dev/vdb", 2, {"ext4", "", "scratch"}, ""},
    };
    return r;
  }

  static std::vector<std::string> Listed(const std::vector<RootChange>& changes) {
    std::vector<std::string> out;
    for (const auto& c : changes) out.push_back(c.file + " | " + c.kept_at);
    return out;
  }
};

TEST_F(DistributionAdaptationTest, DryRunListsExactlyTheChangesTheRunMakes) {
  const std::string interfaces = ReadFile(Path("/etc/network/interfaces"));
  AdaptRequest r = DistributionRequest();
  r.dry_run = true;
  std::vector<RootChange> would;
  auto notes = AdaptRoot(r, &would);
  ASSERT_TRUE(notes.ok()) << notes.status();
  const std::vector<std::string> expected = {
      "/etc/fstab | /etc/fstab.cdp-pre-cutover",
      "/etc/default/grub | /etc/default/grub.cdp-pre-cutover",
      "/boot/grub/grub.cfg | /boot/grub/grub.cfg.cdp-pre-cutover",
      "/etc/network/interfaces | /etc/network/interfaces.cdp-pre-cutover",
      "/etc/systemd/network/10-cdp-ens192.link | ",
      "/etc/sysctl.d/90-cdp-arp-notify.conf | ",
      "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service | "
      "/etc/systemd/system/multi-user.target.wants/open-vm-tools.service.cdp-pre-cutover",
      "/etc/systemd/system/open-vm-tools.service | ",
      "/etc/systemd/system/vmtoolsd.service | /etc/systemd/system/vmtoolsd.service.cdp-pre-cutover",
      "/etc/systemd/system/open-vm-tools.service.requires/vgauth.service | "
      "/etc/systemd/system/open-vm-tools.service.requires/vgauth.service.cdp-pre-cutover",
      "/etc/systemd/system/vgauth.service | ",
  };
  EXPECT_THAT(Listed(would), ::testing::ElementsAreArray(expected));
  EXPECT_THAT(Joined(*notes),
              HasSubstr("would change /etc/network/interfaces: ifupdown: ens192: address "
                        "192.0.2.10/24 -> 198.51.100.7/24, ens192: gateway 192.0.2.1 -> "
                        "198.51.100.1 (previous content kept at "
                        "/etc/network/interfaces.cdp-pre-cutover)"));
  // Nothing was touched.
  EXPECT_EQ(ReadFile(Path("/etc/network/interfaces")), interfaces);
  EXPECT_FALSE(fs::exists(Path("/var/log/cdp-takeover.log")));
  EXPECT_FALSE(fs::exists(Path("/etc/fstab.cdp-pre-cutover")));

  r.dry_run = false;
  std::vector<RootChange> made;
  notes = AdaptRoot(r, &made);
  ASSERT_TRUE(notes.ok()) << notes.status();
  EXPECT_THAT(Listed(made), ::testing::ElementsAreArray(expected));
  for (size_t i = 0; i < made.size() && i < would.size(); ++i)
    EXPECT_EQ(made[i].what, would[i].what);
  EXPECT_EQ(ReadFile(Path("/etc/network/interfaces.cdp-pre-cutover")), interfaces);
  EXPECT_THAT(ReadFile(Path("/etc/network/interfaces")), HasSubstr("\taddress 198.51.100.7/24\n"));
  EXPECT_THAT(ReadFile(Path("/etc/fstab")), HasSubstr("/dev/vdb1       /data"));
  // The moved address is announced when the NIC comes up (gratuitous ARP).
  EXPECT_THAT(ReadFile(Path("/etc/sysctl.d/90-cdp-arp-notify.conf")),
              HasSubstr("\nnet.ipv4.conf.all.arp_notify = 1\nnet.ipv4.conf.default.arp_notify = "
                        "1\n"));
  const std::string log = ReadFile(Path("/var/log/cdp-takeover.log"));
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), static_cast<long>(expected.size()));
}

TEST_F(DistributionAdaptationTest, RefusalsComeBeforeAnyChange) {
  const std::string interfaces = ReadFile(Path("/etc/network/interfaces"));
  AdaptRequest r = DistributionRequest();
  r.nics[0].source_name = "ens193";  // no config names it
  auto notes = AdaptRoot(r);
  ASSERT_FALSE(notes.ok());
  EXPECT_EQ(notes.status().message(),
            "NIC mapping 1 (source MAC 00:50:56:aa:bb:01), address 198.51.100.7/24: no network "
            "configuration of the migrated OS in a format the takeover adapts (ifupdown, "
            "systemd-networkd, NetworkManager keyfiles, netplan, RHEL ifcfg) configures this NIC; "
            "no file under /etc mentions 198.51.100.7: configure the NIC in one of those formats "
            "on the source before the cutover, or drop the mapping and configure the target by "
            "hand");
  EXPECT_EQ(ReadFile(Path("/etc/network/interfaces")), interfaces);
  EXPECT_FALSE(fs::exists(Path("/var/log/cdp-takeover.log")));
  EXPECT_TRUE(
      fs::is_symlink(Path("/etc/systemd/system/multi-user.target.wants/open-vm-tools.service")));
}

// ---- the initramfs rebuild ----

// Runs nothing: records the command and writes the image the tool would write.
class FakeChrootRunner : public ChrootRunner {
 public:
  Result<std::string> Run(const std::string& root, const std::vector<std::string>& argv,
                          int timeout_seconds) override {
    std::string call = root + ":";
    for (const auto& a : argv) call += " [" + a + "]";
    calls.push_back(call + " " + std::to_string(timeout_seconds) + " s");
    if (!error.empty()) return Status::IOError(error);
    WriteFile(root + image, Gzip(NewcArchive(modules)));
    return std::string("update-initramfs: Generating " + image + "\n");
  }

  std::string image, error;
  std::vector<std::string> modules;
  std::vector<std::string> calls;
};

class InitramfsRebuildTest : public BootAdaptationTest {
 protected:
  void SetUp() override {
    BootAdaptationTest::SetUp();
    // Built with MODULES=dep on VMware: pvscsi and vmxnet3, no virtio.
    fs::remove(Path("/boot/initrd.img-" + kKver + ".modules"));
    WriteFile(Path("/boot/initrd.img-" + kKver),
              Gzip(NewcArchive(
                  {ModulePath("scsi/vmw_pvscsi"), ModulePath("net/vmxnet3"), ModulePath("ext4")})));
    runner_.image = "/boot/initrd.img-" + kKver;
    runner_.modules = {ModulePath("block/virtio_blk"), ModulePath("scsi/virtio_scsi"),
                       ModulePath("virtio/virtio_pci"), ModulePath("net/virtio_net"),
                       ModulePath("ext4")};
  }

  FakeChrootRunner runner_;
};

TEST_F(InitramfsRebuildTest, OnlyWhatTheTargetsBootNeedsCallsForARebuild) {
  // Without virtio_scsi alone the target boots (virtio-blk disks): nothing to rebuild.
  WriteFile(Path("/boot/initrd.img-" + kKver),
            Gzip(NewcArchive({ModulePath("block/virtio_blk"), ModulePath("virtio/virtio_pci"),
                              ModulePath("net/virtio_net")})));
  auto missing = MissingVirtioDrivers(root_, kKver);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_THAT(*missing, ::testing::IsEmpty());
  // Without virtio_net as well: rebuilt, and then with virtio_scsi too.
  WriteFile(Path("/boot/initrd.img-" + kKver),
            Gzip(NewcArchive({ModulePath("block/virtio_blk"), ModulePath("virtio/virtio_pci")})));
  missing = MissingVirtioDrivers(root_, kKver);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_THAT(*missing, ElementsAre("virtio_scsi", "virtio_net"));
}

TEST_F(InitramfsRebuildTest, DebianWithModulesDepListsTheDriversAndRunsUpdateInitramfs) {
  WriteFile(Path("/usr/sbin/update-initramfs"), "#!/bin/sh\n", 0755);
  WriteFile(Path("/etc/initramfs-tools/initramfs.conf"), "MODULES=most\nBUSYBOX=auto\n");
  WriteFile(Path("/etc/initramfs-tools/conf.d/vmware"), "MODULES=dep\n");
  WriteFile(Path("/etc/initramfs-tools/modules"), "# List of modules that you want to include\n");
  auto missing = MissingVirtioDrivers(root_, kKver);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_THAT(*missing, ElementsAre("virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net"));
  RootChanges changes(root_);
  auto plan = PlanInitramfsRebuild(&changes, kKver, *missing);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->argv, ElementsAre("/usr/sbin/update-initramfs", "-u", "-k", kKver));
  EXPECT_EQ(plan->image, "/boot/initrd.img-" + kKver);
  ASSERT_EQ(changes.Changes().size(), 1u);
  EXPECT_EQ(changes.Changes()[0].what,
            "initramfs-tools: MODULES=dep would leave out virtio_blk virtio_scsi virtio_pci "
            "virtio_net; listed here so every rebuild carries them");
  ASSERT_TRUE(changes.Apply("T0").ok());
  EXPECT_EQ(ReadFile(Path("/etc/initramfs-tools/modules")),
            "# List of modules that you want to include\n"
            "# added by the cdp pe-agent: the target's virtual hardware is virtio\n"
            "virtio_blk\nvirtio_scsi\nvirtio_pci\nvirtio_net\n");
  auto done = RunInitramfsRebuild(&runner_, root_, *plan, 600);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(*done, "/boot/initrd.img-" + kKver +
                       " rebuilt with virtio_blk, virtio_scsi, virtio_pci, virtio_net "
                       "(/usr/sbin/update-initramfs -u -k " +
                       kKver + ": update-initramfs: Generating /boot/initrd.img-" + kKver + ")");
  EXPECT_THAT(runner_.calls, ElementsAre(root_ + ": [/usr/sbin/update-initramfs] [-u] [-k] [" +
                                         kKver + "] 600 s"));
  auto now_missing = MissingVirtioDrivers(root_, kKver);
  ASSERT_TRUE(now_missing.ok());
  EXPECT_THAT(*now_missing, IsEmpty());
}

TEST_F(InitramfsRebuildTest, RhelDracutAddsTheDriversForGood) {
  fs::rename(Path("/boot/initrd.img-" + kKver), Path("/boot/initramfs-" + kKver + ".img"));
  runner_.image = "/boot/initramfs-" + kKver + ".img";
  WriteFile(Path("/usr/bin/dracut"), "#!/bin/sh\n", 0755);
  RootChanges changes(root_);
  auto plan = PlanInitramfsRebuild(&changes, kKver, {"virtio_blk", "virtio_net"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->argv, ElementsAre("/usr/bin/dracut", "-f", "--kver", kKver, "--add-drivers",
                                      "virtio_blk virtio_net"));
  EXPECT_EQ(plan->image, "/boot/initramfs-" + kKver + ".img");
  ASSERT_TRUE(changes.Apply("T0").ok());
  EXPECT_EQ(ReadFile(Path("/etc/dracut.conf.d/90-cdp-virtio.conf")),
            "# written by the cdp pe-agent: the target's virtual hardware is virtio\n"
            "add_drivers+=\" virtio_blk virtio_net \"\n");
  auto done = RunInitramfsRebuild(&runner_, root_, *plan, 60);
  ASSERT_TRUE(done.ok()) << done.status();
}

TEST_F(InitramfsRebuildTest, FailuresAndAMissingToolAreExactErrors) {
  RootChanges changes(root_);
  auto none = PlanInitramfsRebuild(&changes, kKver, {"virtio_blk"});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().message(),
            "the migrated OS has neither update-initramfs (initramfs-tools) nor dracut to rebuild "
            "its initramfs /boot/initrd.img-" +
                kKver + " with virtio_blk: rebuild it with them on the source before the cutover");

  WriteFile(Path("/sbin/update-initramfs"), "#!/bin/sh\n", 0755);
  auto plan = PlanInitramfsRebuild(&changes, kKver, {"virtio_blk"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  runner_.error = "failed in the chroot with exit status 1; its output: E: no space";
  auto failed = RunInitramfsRebuild(&runner_, root_, *plan, 60);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().message(), "/sbin/update-initramfs -u -k " + kKver +
                                           ": failed in the chroot with exit status 1; its "
                                           "output: E: no space");
  runner_.error.clear();
  runner_.modules = {ModulePath("ext4")};  // the tool ran but the module is not there
  failed = RunInitramfsRebuild(&runner_, root_, *plan, 60);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().message(),
            "/sbin/update-initramfs -u -k " + kKver + " ran, but /boot/initrd.img-" + kKver +
                " still has no virtio_blk (the migrated OS has no such module for " + kKver + "?)");
}

TEST_F(InitramfsRebuildTest, TheTakeoverInstallsTheImagePreparedFromTheSameOriginal) {
  WriteFile(Path("/usr/sbin/update-initramfs"), "#!/bin/sh\n", 0755);
  WriteFile(Path("/etc/initramfs-tools/initramfs.conf"), "MODULES=dep\n");
  const std::string image = "/boot/initrd.img-" + kKver;
  const std::string original = ReadFile(Path(image));
  const std::string rebuilt = Gzip(NewcArchive(runner_.modules));
  const std::string prepared = dir_.File("prepared");
  ASSERT_TRUE(KeepPreparedInitramfs(prepared, kKver, image, original, rebuilt, "T1").ok());
  AdaptRequest r = Request();
  r.prepared_dir = prepared;
  r.dry_run = true;
  std::vector<RootChange> changes;
  auto notes = AdaptRoot(r, &changes);
  ASSERT_TRUE(notes.ok()) << notes.status();
  EXPECT_THAT(Joined(*notes), HasSubstr("drivers: virtio_blk, virtio_scsi, virtio_pci, virtio_net "
                                        "in the initramfs prepared for " +
                                        image + " at T1 (installed now)"));
  std::vector<std::string> files;
  for (const auto& c : changes) files.push_back(c.file + " | " + c.what);
  EXPECT_THAT(files, ElementsAre("/etc/initramfs-tools/modules | initramfs-tools: MODULES=dep "
                                 "would leave out virtio_blk virtio_scsi virtio_pci virtio_net; "
                                 "listed here so every rebuild carries them",
                                 image + " | rebuilt with virtio_blk, virtio_scsi, virtio_pci, "
                                         "virtio_net by prepare-boot at T1",
                                 "/etc/cdp/net.conf | net.conf: would be rewritten with: iface "
                                 "52:54:00:12:34:56 10.0.0.5/24 10.0.0.1"));
  EXPECT_EQ(ReadFile(Path(image)), original);
  r.dry_run = false;
  ASSERT_TRUE(AdaptRoot(r).ok());
  EXPECT_EQ(ReadFile(Path(image)), rebuilt);
  EXPECT_EQ(ReadFile(Path(image + ".cdp-pre-cutover")), original);

  // The replica's image changed after the prepare: that one is not installed.
  WriteFile(Path(image), Gzip(NewcArchive({ModulePath("scsi/vmw_pvscsi")})));
  auto stale = AdaptRoot(r);
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().message(),
            "the initramfs prepared for " + kKver + " (T1) was rebuilt from another " + image +
                " than the replica holds now (it changed since): run cdpctl target prepare-boot "
                "again before the cutover");
}

TEST_F(InitramfsRebuildTest, PreparedImagesPackAndUnpackIntoAnotherDirectory) {
  const std::string image = "/boot/initrd.img-" + kKver;
  const std::string rebuilt = Gzip(NewcArchive(runner_.modules));
  const std::string prepared = dir_.File("prepared");
  auto none = PackPreparedInitramfs(prepared);  // no directory yet: nothing prepared
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, "");
  ASSERT_TRUE(KeepPreparedInitramfs(prepared, kKver, image, "old", rebuilt, "T1").ok());
  ASSERT_TRUE(KeepPreparedInitramfs(prepared, "6.1.0-99-cloud-amd64", "/boot/initrd.img-x", "o2",
                                    std::string("\0\1\2", 3), "T2")
                  .ok());
  fs::create_directories(prepared + "/half");  // a directory without its manifest: left out
  auto blob = PackPreparedInitramfs(prepared);
  ASSERT_TRUE(blob.ok()) << blob.status();

  const std::string again = dir_.File("again");
  auto kvers = UnpackPreparedInitramfs(*blob, again);
  ASSERT_TRUE(kvers.ok()) << kvers.status();
  EXPECT_THAT(*kvers, ElementsAre(kKver, "6.1.0-99-cloud-amd64"));  // sorted
  EXPECT_EQ(ReadFile(again + "/" + kKver + "/initrd"), rebuilt);
  EXPECT_EQ(ReadFile(again + "/" + kKver + "/manifest"),
            ReadFile(prepared + "/" + kKver + "/manifest"));
  EXPECT_EQ(ReadFile(again + "/6.1.0-99-cloud-amd64/initrd"), std::string("\0\1\2", 3));
  EXPECT_FALSE(fs::exists(again + "/half"));
  // What the restored directory packs to is the same blob.
  auto repacked = PackPreparedInitramfs(again);
  ASSERT_TRUE(repacked.ok()) << repacked.status();
  EXPECT_TRUE(*repacked == *blob);
  // Restored again over a directory that holds a newer image of one KVER: that one stays.
  WriteFile(again + "/" + kKver + "/initrd", "newer");
  fs::remove_all(again + "/6.1.0-99-cloud-amd64");
  kvers = UnpackPreparedInitramfs(*blob, again);
  ASSERT_TRUE(kvers.ok()) << kvers.status();
  EXPECT_THAT(*kvers, ElementsAre("6.1.0-99-cloud-amd64"));
  EXPECT_EQ(ReadFile(again + "/" + kKver + "/initrd"), "newer");
}

TEST(UnpackPreparedInitramfs, ADamagedBlobIsCorruptionAndWritesNothing) {
  testing::TempDir dir("unpack_prepared_test");
  const std::string to = dir.File("prepared");
  auto entry = [](const std::string& kver, const std::string& manifest, const std::string& initrd) {
    std::string e;
    PutBigEndian32(&e, static_cast<uint32_t>(kver.size()));
    e += kver;
    PutBigEndian32(&e, static_cast<uint32_t>(manifest.size()));
    e += manifest;
    PutBigEndian64(&e, initrd.size());
    return e + initrd;
  };
  auto blob = [](uint32_t count, const std::string& entries) {
    std::string b = "CDPPRIN1";
    PutBigEndian32(&b, count);
    return b + entries;
  };
  const std::string good = entry("6.1.0-28-amd64", "image /boot/x\n", "IMAGE");
  ASSERT_TRUE(UnpackPreparedInitramfs(blob(1, good), dir.File("ok")).ok());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"CDPXXXX1" + blob(1, good).substr(8), "no CDPPRIN1 magic"},
      {blob(1, good.substr(0, good.size() - 1)), "the initrd of 6.1.0-28-amd64 runs past the end"},
      {blob(2, good), "image 1's kernel release runs past the end"},
      {blob(1, good + "x"), "1 bytes after the images"},
      {blob(1, entry("../etc", "m", "i")), "image 0 has a bad kernel release"},
      {blob(1, entry("..", "m", "i")), "image 0 has a bad kernel release"},
      {blob(1, entry("", "m", "i")), "image 0 has a bad kernel release"},
      {blob(1, good.substr(0, 25)), "the manifest of 6.1.0-28-amd64 runs past the end"},
      {"CDPPRIN", "no CDPPRIN1 magic"},
      // A length near 2^64 must not wrap around the bounds check.
      {blob(1, good.substr(0, 4 + 14 + 4 + 14) + std::string(8, '\xff') + "IMAGE"),
       "the initrd of 6.1.0-28-amd64 runs past the end"},
  };
  for (const auto& [bytes, what] : cases) {
    auto r = UnpackPreparedInitramfs(bytes, to);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << what;
    EXPECT_EQ(r.status().message(), "the kept prepared images are damaged: " + what);
    EXPECT_FALSE(fs::exists(to)) << what;
  }
}

// The real runner: a static busybox as the migrated OS's only program.
TEST(LinuxChrootRunner, RunsInTheRootWithProcSysDevAndUnmountsThemEvenOnFailure) {
  const bool ci = std::getenv("CI") != nullptr;
  if (::geteuid() != 0 || !fs::exists("/usr/bin/busybox")) {
    if (ci) FAIL() << "needs root and a static /usr/bin/busybox";
    GTEST_SKIP() << "needs root and a static /usr/bin/busybox";
  }
  testing::TempDir dir("chroot_runner_test");
  const std::string root = dir.File("root");
  // Should a bind mount stay, the temporary directory's removal must not reach the host's
  // /dev or /sys: detach what is still mounted first.
  struct Detach {
    std::string root;
    ~Detach() {
      for (const char* d : {"/proc", "/sys", "/dev"}) {
        struct stat st, top;
        if (::stat((root + d).c_str(), &st) == 0 && ::stat(root.c_str(), &top) == 0 &&
            st.st_dev != top.st_dev) {
          ::umount2((root + d).c_str(), MNT_DETACH);
        }
      }
    }
  } detach{root};
  fs::create_directories(root + "/bin");
  fs::copy_file("/usr/bin/busybox", root + "/bin/busybox");
  LinuxChrootRunner runner;
  auto out = runner.Run(root,
                        {"/bin/busybox", "sh", "-c",
                         "test -e /proc/self/status && test -c /dev/null && "
                         "test -d /sys/class && echo in the root"},
                        30);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "in the root\n");
  auto failed = runner.Run(root, {"/bin/busybox", "sh", "-c", "echo oops; exit 3"}, 30);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().message(),
            "failed in the chroot " + root + " with exit status 3; its output: oops\n");
  auto missing = runner.Run(root, {"/usr/sbin/update-initramfs"}, 30);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(), "failed in the chroot " + root +
                                            " with exit status 127 (no such command there); its "
                                            "output: ");
  auto slow = runner.Run(root, {"/bin/busybox", "sleep", "10"}, 1);
  ASSERT_FALSE(slow.ok());
  EXPECT_EQ(slow.status().code(), StatusCode::kTimedOut);
  // Nothing is left mounted: /proc of the root is an empty directory again.
  for (const char* d : {"/proc", "/sys", "/dev"}) {
    EXPECT_TRUE(fs::is_empty(root + d)) << d;
  }
}

}  // namespace
}  // namespace cdp::pe
