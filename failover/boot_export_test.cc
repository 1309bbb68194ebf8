// Where ExportBoot looks for the migrated OS's ext4 root on a raw disk image: the whole disk,
// MBR partitions, GPT partitions (tables written by sfdisk, as an installer would).
#include "cdp/failover/boot_export.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cdp/core/testing/temp_dir.h"

namespace cdp::failover {
namespace {

using ::testing::ElementsAre;

class BootExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    image_ = dir_.File("disk.raw");
    std::ofstream(image_).close();
    std::filesystem::resize_file(image_, 64 << 20);
  }
  // Writes a partition table with sfdisk (util-linux, installed by deploy/install-deps.sh).
  void Partition(const std::string& script) {
    const std::string cmd = "printf '" + script + "' | sfdisk -q " + image_ + " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  testing::TempDir dir_{"boot-export-test"};
  std::string image_;
};

TEST_F(BootExportTest, AWholeDiskFilesystemIsLookedForAtZeroOnly) {
  auto offsets = CandidateFilesystemOffsets(image_);
  ASSERT_TRUE(offsets.ok()) << offsets.status();
  EXPECT_THAT(*offsets, ElementsAre(0u));
}

TEST_F(BootExportTest, MbrPartitionsInTableOrder) {
  Partition("start=2048, size=16384, type=83\\nstart=20480, type=83\\n");
  auto offsets = CandidateFilesystemOffsets(image_);
  ASSERT_TRUE(offsets.ok()) << offsets.status();
  EXPECT_THAT(*offsets, ElementsAre(0u, 2048u * 512, 20480u * 512));
}

TEST_F(BootExportTest, GptPartitionsBehindTheProtectiveMbr) {
  Partition("label: gpt\\nstart=2048, size=8192\\nstart=16384\\n");
  auto offsets = CandidateFilesystemOffsets(image_);
  ASSERT_TRUE(offsets.ok()) << offsets.status();
  EXPECT_THAT(*offsets, ElementsAre(0u, 2048u * 512, 16384u * 512));
}

TEST_F(BootExportTest, AMissingImageIsAnError) {
  auto offsets = CandidateFilesystemOffsets(dir_.File("nope.raw"));
  ASSERT_FALSE(offsets.ok());
  EXPECT_THAT(offsets.status().message(), ::testing::HasSubstr("nope.raw"));
}

}  // namespace
}  // namespace cdp::failover
