// Tests of the PE's disk discovery: parsing cdp.volumes=, listing virtio disks from a fake sysfs
// tree in a temporary directory, and matching disks to volumes by serial.
#include "cdp/pe/disk_finder.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::pe {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;
const std::string kMeta(kDefaultMetaSerial);

// Under /var/tmp, which takes O_DIRECT (/tmp may be a tmpfs); removed also when a test failed.
class VarTmpDir : public testing::TempDir {
 public:
  VarTmpDir() : TempDir("disk_finder_test", "/var/tmp") {}
};

// Expects `r` to have failed with `code` and a message containing every one of `parts`.
template <typename T>
void ExpectError(const Result<T>& r, StatusCode code, const std::vector<std::string>& parts) {
  ASSERT_FALSE(r.ok()) << "expected " << StatusCodeName(code);
  EXPECT_EQ(r.status().code(), code) << r.status();
  for (const auto& part : parts) EXPECT_THAT(r.status().message(), HasSubstr(part));
}

// ---- ParseVolumeSpecs ----

TEST(ParseVolumeSpecs, ParsesNamesAndSizesInOrder) {
  auto specs = ParseVolumeSpecs("db01-sda:10737418240,db01_sdb.x:512,a:1048576", kMeta);
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 3u);
  EXPECT_EQ((*specs)[0].name, "db01-sda");
  EXPECT_EQ((*specs)[0].size, 10737418240u);
  EXPECT_EQ((*specs)[1].name, "db01_sdb.x");
  EXPECT_EQ((*specs)[1].size, 512u);
  EXPECT_EQ((*specs)[2].name, "a");
  EXPECT_EQ((*specs)[2].size, kMiB);
}

TEST(ParseVolumeSpecs, AcceptsANameOfExactlyTheSerialLength) {
  const std::string name(kMaxSerialBytes, 'v');
  auto specs = ParseVolumeSpecs(name + ":4096", kMeta);
  ASSERT_TRUE(specs.ok()) << specs.status();
  ASSERT_EQ(specs->size(), 1u);
  EXPECT_EQ((*specs)[0].name, name);
}

TEST(ParseVolumeSpecs, EmptyTextIsInvalidArgument) {
  ExpectError(ParseVolumeSpecs("", kMeta), StatusCode::kInvalidArgument,
              {"no volumes given", "NAME:SIZE"});
}

TEST(ParseVolumeSpecs, ItemWithoutSizeIsInvalidArgument) {
  ExpectError(ParseVolumeSpecs("db01-sda:4096,db01-sdb", kMeta), StatusCode::kInvalidArgument,
              {"volume 'db01-sdb'", "expected NAME:SIZE"});
}

TEST(ParseVolumeSpecs, TrailingCommaIsAnEmptyItem) {
  ExpectError(ParseVolumeSpecs("db01-sda:4096,", kMeta), StatusCode::kInvalidArgument,
              {"volume ''", "expected NAME:SIZE"});
}

TEST(ParseVolumeSpecs, BadVolumeNameIsInvalidArgument) {
  for (const std::string name : {".hidden", "-dash", "a b", "sl/ash", ""}) {
    SCOPED_TRACE(name);
    ExpectError(ParseVolumeSpecs(name + ":4096", kMeta), StatusCode::kInvalidArgument,
                {"bad volume name '" + name + "'"});
  }
}

TEST(ParseVolumeSpecs, NameLongerThanAVirtioSerialIsInvalidArgument) {
  const std::string name(kMaxSerialBytes + 1, 'v');
  ExpectError(ParseVolumeSpecs(name + ":4096", kMeta), StatusCode::kInvalidArgument,
              {"volume '" + name + "'", "has 21 characters", "at most 20"});
}

TEST(ParseVolumeSpecs, MetadataSerialAsAVolumeNameIsInvalidArgument) {
  ExpectError(ParseVolumeSpecs("db01-sda:4096," + kMeta + ":4096", kMeta),
              StatusCode::kInvalidArgument, {"volume '" + kMeta + "'", "metadata disk's serial"});
  // The serial in force is the one passed in.
  ExpectError(ParseVolumeSpecs("meta2:4096", "meta2"), StatusCode::kInvalidArgument,
              {"volume 'meta2'", "metadata disk's serial"});
  EXPECT_TRUE(ParseVolumeSpecs(kMeta + ":4096", "meta2").ok());
}

TEST(ParseVolumeSpecs, SizeThatIsNotAPositiveMultipleOf512IsInvalidArgument) {
  for (const std::string size :
       {"", "0", "513", "1000", "abc", "4096x", "4k", "0x1000", "99999999999999999999999"}) {
    SCOPED_TRACE("size '" + size + "'");
    ExpectError(ParseVolumeSpecs("db01-sda:" + size, kMeta), StatusCode::kInvalidArgument,
                {"volume 'db01-sda'", "size '" + size + "'", "divisible by 512"});
  }
}

TEST(ParseVolumeSpecs, NegativeSizeIsInvalidArgument) {
  // std::stoull accepts a leading '-' and wraps: "-512" must not become 2^64 - 512 bytes.
  for (const std::string size : {"-512", "-4096", "  -512"}) {
    SCOPED_TRACE("size '" + size + "'");
    auto specs = ParseVolumeSpecs("db01-sda:" + size, kMeta);
    if (specs.ok() && !specs->empty())
      ADD_FAILURE() << "parsed as " << (*specs)[0].size << " bytes";
    ExpectError(specs, StatusCode::kInvalidArgument,
                {"volume 'db01-sda'", "size '" + size + "'", "divisible by 512"});
  }
}

TEST(ParseVolumeSpecs, DuplicateVolumeIsInvalidArgument) {
  ExpectError(ParseVolumeSpecs("db01-sda:4096,db01-sdb:512,db01-sda:8192", kMeta),
              StatusCode::kInvalidArgument, {"volume 'db01-sda' is listed twice"});
}

// ---- ListSerialDisks ----

class ListSerialDisksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp under /var/tmp: " << std::strerror(errno);
    sys_ = dir_.path() + "/sys";
    std::filesystem::create_directories(sys_ + "/block");
  }

  // Adds SYS/block/NAME with the attributes given (nullptr: the attribute is absent).
  void AddDisk(const std::string& name, const char* serial, const char* sectors) {
    const std::string d = sys_ + "/block/" + name;
    std::filesystem::create_directories(d);
    if (serial != nullptr) std::ofstream(d + "/serial") << serial;
    if (sectors != nullptr) std::ofstream(d + "/size") << sectors;
  }

  VarTmpDir dir_;
  std::string sys_;
};

TEST_F(ListSerialDisksTest, ListsDisksWithASerialSortedByName) {
  AddDisk("vdc", "db01-sdb\n", "4096\n");
  AddDisk("vda", "db01-sda\n", "2048\n");
  AddDisk("sda", nullptr, "1000\n");   // no serial attribute: not virtio-blk, ignored
  AddDisk("loop0", nullptr, nullptr);  // ignored too
  AddDisk("vdb", "cdp-pe-meta\n", "2048\n");
  AddDisk("vdaa", "db01-sdc", "8");  // no newline at all

  auto disks = ListSerialDisks(sys_, "/devroot");
  ASSERT_TRUE(disks.ok()) << disks.status();
  ASSERT_EQ(disks->size(), 4u);
  EXPECT_EQ((*disks)[0].name, "vda");
  EXPECT_EQ((*disks)[0].device, "/devroot/vda");
  EXPECT_EQ((*disks)[0].serial, "db01-sda");
  EXPECT_EQ((*disks)[0].size, 2048u * 512);
  EXPECT_EQ((*disks)[1].name, "vdaa");
  EXPECT_EQ((*disks)[1].serial, "db01-sdc");
  EXPECT_EQ((*disks)[1].size, 8u * 512);
  EXPECT_EQ((*disks)[2].name, "vdb");
  EXPECT_EQ((*disks)[2].serial, "cdp-pe-meta");
  EXPECT_EQ((*disks)[3].name, "vdc");
  EXPECT_EQ((*disks)[3].device, "/devroot/vdc");
  EXPECT_EQ((*disks)[3].serial, "db01-sdb");
  EXPECT_EQ((*disks)[3].size, 4096u * 512);
}

TEST_F(ListSerialDisksTest, EmptySerialAndMissingSizeAreKept) {
  AddDisk("vda", "\n", nullptr);
  auto disks = ListSerialDisks(sys_, "/dev");
  ASSERT_TRUE(disks.ok()) << disks.status();
  ASSERT_EQ(disks->size(), 1u);
  EXPECT_EQ((*disks)[0].device, "/dev/vda");
  EXPECT_EQ((*disks)[0].serial, "");
  EXPECT_EQ((*disks)[0].size, 0u);
}

TEST_F(ListSerialDisksTest, NoDisksIsAnEmptyList) {
  auto disks = ListSerialDisks(sys_, "/dev");
  ASSERT_TRUE(disks.ok()) << disks.status();
  EXPECT_TRUE(disks->empty());
}

TEST_F(ListSerialDisksTest, MissingBlockDirectoryIsIOError) {
  const std::string missing = dir_.path() + "/nosys";
  ExpectError(ListSerialDisks(missing, "/dev"), StatusCode::kIOError,
              {"cannot list " + missing + "/block"});
}

// ---- AssignDisks ----

FoundDisk Disk(const std::string& name, const std::string& serial, uint64_t size) {
  return FoundDisk{name, "/dev/" + name, serial, size};
}

std::vector<VolumeSpec> TwoVolumes() { return {{"db01-sda", 8 * kMiB}, {"db01-sdb", 2 * kMiB}}; }

TEST(AssignDisks, MatchesVolumesAndTheMetadataDiskBySerial) {
  const std::vector<FoundDisk> disks = {Disk("vda", kMeta, kMiB), Disk("vdb", "db01-sdb", 2 * kMiB),
                                        Disk("vdc", "db01-sda", 16 * kMiB)};
  auto a = AssignDisks(TwoVolumes(), disks, kMeta);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->volumes.size(), 2u);
  EXPECT_EQ(a->volumes.at("db01-sda").device, "/dev/vdc");
  EXPECT_EQ(a->volumes.at("db01-sda").size, 16 * kMiB);  // larger than the volume is fine
  EXPECT_EQ(a->volumes.at("db01-sdb").device, "/dev/vdb");
  EXPECT_EQ(a->meta.device, "/dev/vda");
  EXPECT_EQ(a->meta.serial, kMeta);
}

TEST(AssignDisks, DiskWhoseSerialMatchesNoVolumeIsRefused) {
  const std::vector<FoundDisk> disks = {
      Disk("vda", "db01-sda", 8 * kMiB), Disk("vdb", "db01-sdb", 2 * kMiB),
      Disk("vdc", "stray-disk", 2 * kMiB), Disk("vdd", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"disk /dev/vdc", "serial 'stray-disk'", "matches no volume",
               "volumes: db01-sda, db01-sdb", "nothing was written"});
}

TEST(AssignDisks, DiskWithoutSerialTextMatchesNoVolume) {
  const std::vector<FoundDisk> disks = {Disk("vda", "db01-sda", 8 * kMiB),
                                        Disk("vdb", "db01-sdb", 2 * kMiB), Disk("vdc", "", kMiB),
                                        Disk("vdd", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"disk /dev/vdc", "serial ''", "nothing was written"});
}

TEST(AssignDisks, VolumeWithoutADiskIsRefused) {
  const std::vector<FoundDisk> disks = {Disk("vda", "db01-sda", 8 * kMiB),
                                        Disk("vdb", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"volume db01-sdb has no disk", "serial 'db01-sdb'", "serial=db01-sdb"});
}

TEST(AssignDisks, TwoDisksWithOneSerialAreRefused) {
  const std::vector<FoundDisk> disks = {
      Disk("vda", "db01-sda", 8 * kMiB), Disk("vdb", "db01-sdb", 2 * kMiB),
      Disk("vdc", "db01-sda", 8 * kMiB), Disk("vdd", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"disks /dev/vda and /dev/vdc", "serial 'db01-sda'", "detach one"});
}

TEST(AssignDisks, TwoMetadataDisksAreRefused) {
  const std::vector<FoundDisk> disks = {Disk("vda", "db01-sda", 8 * kMiB),
                                        Disk("vdb", "db01-sdb", 2 * kMiB), Disk("vdc", kMeta, kMiB),
                                        Disk("vdd", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"disks /dev/vdc and /dev/vdd", "metadata serial '" + kMeta + "'"});
}

TEST(AssignDisks, DiskSmallerThanItsVolumeIsRefusedWithBothSizes) {
  const std::vector<FoundDisk> disks = {Disk("vda", "db01-sda", 4 * kMiB),
                                        Disk("vdb", "db01-sdb", 2 * kMiB),
                                        Disk("vdc", kMeta, kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"disk /dev/vda (volume db01-sda)", "has 4194304 bytes (4 MiB)",
               "the volume has 8388608 bytes (8 MiB)", "nothing was written"});
}

TEST(AssignDisks, NoMetadataDiskIsRefused) {
  const std::vector<FoundDisk> disks = {Disk("vda", "db01-sda", 8 * kMiB),
                                        Disk("vdb", "db01-sdb", 2 * kMiB)};
  ExpectError(AssignDisks(TwoVolumes(), disks, kMeta), StatusCode::kFailedPrecondition,
              {"no metadata disk", "serial '" + kMeta + "'"});
  // A custom metadata serial is looked for instead of the default.
  const std::vector<FoundDisk> with_custom = {Disk("vda", "db01-sda", 8 * kMiB),
                                              Disk("vdb", "db01-sdb", 2 * kMiB),
                                              Disk("vdc", "my-meta", kMiB)};
  auto a = AssignDisks(TwoVolumes(), with_custom, "my-meta");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->meta.device, "/dev/vdc");
}

TEST(AssignDisks, WorksOnListedDisksFromSysfs) {
  VarTmpDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string sys = dir.path() + "/sys";
  for (const auto& [name, serial, sectors] :
       std::vector<std::tuple<std::string, std::string, uint64_t>>{
           {"vda", "db01-sda", 8 * kMiB / 512},
           {"vdb", "db01-sdb", 4 * kMiB / 512},
           {"vdc", kMeta, kMiB / 512}}) {
    std::filesystem::create_directories(sys + "/block/" + name);
    std::ofstream(sys + "/block/" + name + "/serial") << serial << "\n";
    std::ofstream(sys + "/block/" + name + "/size") << sectors << "\n";
  }
  std::filesystem::create_directories(sys + "/block/sr0");  // no serial: not considered
  auto disks = ListSerialDisks(sys, "/dev");
  ASSERT_TRUE(disks.ok()) << disks.status();
  auto a = AssignDisks(TwoVolumes(), *disks, kMeta);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->volumes.at("db01-sda").device, "/dev/vda");
  EXPECT_EQ(a->volumes.at("db01-sdb").device, "/dev/vdb");
  EXPECT_EQ(a->volumes.at("db01-sdb").size, 4 * kMiB);
  EXPECT_EQ(a->meta.device, "/dev/vdc");
}

}  // namespace
}  // namespace cdp::pe
