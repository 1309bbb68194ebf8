#include "cdp/agent/disk_filesystems.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include <filesystem>
#include <fstream>

namespace cdp::agent {
namespace {

namespace fs = std::filesystem;

// A sysfs tree as the kernel lays it out for: sda (sda1 vfat /boot/efi, sda2 ext4 /, sda3 swap),
// sdb whole-disk LVM: dm-0 (vgdata-pgdata, xfs at /var/lib/postgresql), dm-1 (vgdata-scratch, not
// mounted); sdc unrelated; loop0 with a partition loop0p1.
class DiskFilesystemsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("cdp-diskfs-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    Device("sda", "8:0");
    Partition("sda", "sda1", "8:1");
    Partition("sda", "sda2", "8:2");
    Partition("sda", "sda3", "8:3");
    Device("sdb", "8:16");
    Device("dm-0", "254:0", {"sdb"});
    Device("dm-1", "254:1", {"sdb"});
    Device("sdc", "8:32");
    Device("loop0", "7:0");
    Partition("loop0", "loop0p1", "259:0");
    Device("dm-2", "254:2", {"loop0p1"});
    Device("dm-3", "254:3", {"dm-2"});  // dm-crypt on LVM
  }
  void TearDown() override { fs::remove_all(root_); }

  void Device(const std::string& name, const std::string& dev,
              std::vector<std::string> slaves = {}) {
    fs::create_directories(root_ / "class/block" / name / "slaves");
    std::ofstream(root_ / "class/block" / name / "dev") << dev << "\n";
    for (const auto& s : slaves) std::ofstream(root_ / "class/block" / name / "slaves" / s);
    fs::create_directories(root_ / "block" / name);
  }
  void Partition(const std::string& disk, const std::string& name, const std::string& dev) {
    Device(name, dev);
    fs::remove_all(root_ / "block" / name);
    fs::create_directories(root_ / "block" / disk / name);
    std::ofstream(root_ / "block" / disk / name / "partition") << "1\n";
  }
  fs::path root_;
};

const char kMountinfo[] =
    "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro\n"
    "23 22 0:21 / /proc rw,nosuid - proc proc rw\n"
    "24 22 0:5 / /dev rw - devtmpfs udev rw\n"
    "25 22 0:25 / /run rw,nosuid - tmpfs tmpfs rw\n"
    "26 22 8:1 / /boot/efi rw,relatime shared:2 - vfat /dev/sda1 rw,fmask=0077\n"
    "27 22 254:0 / /var/lib/postgresql rw,relatime shared:3 - xfs "
    "/dev/mapper/vgdata-pgdata rw,attr2\n"
    "28 22 8:2 /srv/www /var/www rw,relatime shared:1 - ext4 /dev/sda2 rw\n"
    "29 22 8:32 / /mnt/other rw - ext4 /dev/sdc rw\n"
    "30 22 254:3 / /mnt/with\\040space rw - ext4 /dev/mapper/secret rw\n"
    "31 22 7:0 / /mnt/ro ro,relatime - ext4 /dev/loop0 ro\n";

TEST_F(DiskFilesystemsTest, RootDiskThroughPartitions) {
  std::vector<std::string> skipped;
  auto found = FilesystemsOnDisk(root_, kMountinfo, "sda", &skipped);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].mount_point, "/") << "the bind mount of a subdirectory is not listed";
  EXPECT_EQ((*found)[0].fs_type, "ext4");
  EXPECT_EQ((*found)[0].device, "sda2");
  EXPECT_EQ((*found)[0].dev, makedev(8, 2));
  EXPECT_EQ(skipped, std::vector<std::string>{"/boot/efi (vfat, cannot be frozen)"});
}

TEST_F(DiskFilesystemsTest, DataDiskThroughLvm) {
  auto found = FilesystemsOnDisk(root_, kMountinfo, "sdb", nullptr);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].mount_point, "/var/lib/postgresql");
  EXPECT_EQ((*found)[0].fs_type, "xfs");
  EXPECT_EQ((*found)[0].device, "dm-0");
}

TEST_F(DiskFilesystemsTest, StackedTwiceAndEscapedAndReadOnly) {
  auto devices = DevicesOnDisk(root_, "loop0");
  ASSERT_TRUE(devices.ok());
  EXPECT_EQ(*devices, (std::vector<std::string>{"loop0", "loop0p1", "dm-2", "dm-3"}));
  std::vector<std::string> skipped;
  auto found = FilesystemsOnDisk(root_, kMountinfo, "loop0", &skipped);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].mount_point, "/mnt/with space");
  EXPECT_EQ(skipped, std::vector<std::string>{"/mnt/ro (ext4, read-only)"});
}

TEST_F(DiskFilesystemsTest, PartitionAloneAndNothingMounted) {
  auto found = FilesystemsOnDisk(root_, kMountinfo, "sda2", nullptr);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].mount_point, "/");
  found = FilesystemsOnDisk(root_, kMountinfo, "sda3", nullptr);
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(found->empty()) << "swap is not in mountinfo";
}

TEST_F(DiskFilesystemsTest, UnknownDevice) {
  auto found = FilesystemsOnDisk(root_, kMountinfo, "sdz", nullptr);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().message(),
            "block device sdz is not in " + root_.string() + "/class/block");
}

}  // namespace
}  // namespace cdp::agent
