// Tests of the takeover's state machine (takeover.h) with a fake machine: the order of the
// steps, the reply, what each step's failure rolls back, boot auto, and the kexec path up to a
// reboot that fails. The real mount and adaptation are covered by pe_agent_test (loop devices)
// and boot_adaptation_test.
#include "cdp/pe/takeover.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cdp/core/atomic_file.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/pe/initramfs_rebuild.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "initramfs_test_util.h"

namespace cdp::pe {
namespace {

namespace v1 = wire::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

constexpr char kPeKernel[] = "6.1.0-pe";
constexpr char kRootUuid[] = "0a1b2c3d-0000-4000-8000-000000000001";
constexpr char kDataUuid[] = "0a1b2c3d-0000-4000-8000-000000000002";

// A disk whose only behaviour is its flush (counted; failing when told).
class FakeDisk : public BlockDevice {
 public:
  explicit FakeDisk(std::string path) : path_(std::move(path)) {}
  uint64_t size() const override { return 1 << 20; }
  uint32_t logical_block_size() const override { return 512; }
  bool is_block_device() const override { return true; }
  const std::string& path() const override { return path_; }
  std::string_view engine_name() const override { return "fake"; }
  Status ReadAt(uint64_t, std::span<char>) override { return Unused(); }
  Status WriteAt(uint64_t, std::span<const char>) override { return Unused(); }
  Status WriteBatch(std::span<const WriteOp>) override { return Unused(); }
  Status ReadBatch(std::span<const ReadOp>) override { return Unused(); }
  Status WriteZeroes(uint64_t, uint64_t) override { return Unused(); }
  Status Discard(uint64_t, uint64_t) override { return Unused(); }
  Result<uint64_t> NextDataOffset(uint64_t) override { return Unused(); }
  Status Flush() override {
    ++flushes;
    return flush_error.empty() ? Status::Ok() : Status::IOError(flush_error);
  }

  int flushes = 0;
  std::string flush_error;

 private:
  static Status Unused() { return Status::Internal("not used by a takeover"); }
  std::string path_;
};

// The machine: what is on which device, and a log of what the takeover did to it.
class FakeSystem : public TakeoverSystem {
 public:
  std::string DropBufferCache(const std::string& disk) override {
    calls.push_back("drop-cache " + disk);
    return "";
  }
  std::string RereadPartitions(const std::string& disk) override {
    calls.push_back("reread " + disk);
    return "";
  }
  std::vector<std::string> PartitionsOf(const std::string& disk) override {
    return partitions[disk];
  }
  Result<FsId> ReadFsId(const std::string& device) override {
    auto it = filesystems.find(device);
    if (it == filesystems.end()) return Status::NotFound(device + ": no filesystem");
    return it->second;
  }
  bool IsMountPoint(const std::string&) override { return !mounted.empty(); }
  Status MountExt4(const std::string& device, const std::string& dir, bool read_only) override {
    calls.push_back("mount " + device + " " + dir + (read_only ? " ro" : " rw"));
    if (!mount_error.empty()) return Status::IOError(mount_error);
    if (!read_only && !mount_rw_error.empty()) return Status::IOError(mount_rw_error);
    mounted = device;
    return Status::Ok();
  }
  std::string Unmount(const std::string& dir) override {
    calls.push_back("unmount " + dir);
    mounted.clear();
    return "";
  }
  void Sync() override { calls.push_back("sync"); }
  Result<std::string> KexecLoad(const std::string& kernel_root, const std::string& kernel,
                                const std::string& initrd_root, const std::string& initrd,
                                const std::string& cmdline) override {
    // The initrd as a path of the PE when it is not in the migrated root.
    calls.push_back("kexec-load " + kernel + " " +
                    (initrd_root == kernel_root ? "" : initrd_root + ":") + initrd + " '" +
                    cmdline + "'");
    return "loaded " + kernel + " (7 MiB) and " + initrd + " (1 MiB)";
  }
  void KexecUnload() override { calls.push_back("kexec-unload"); }
  Status RebootIntoLoadedKernel() override {
    calls.push_back("reboot");
    return Status::IOError("kexec reboot failed: Invalid argument");
  }
  Result<std::vector<std::string>> AdaptRoot(AdaptRequest request,
                                             std::vector<RootChange>* changes) override {
    adapted = request;
    if (changes != nullptr) *changes = adapt_changes;
    calls.push_back(std::string("adapt") + (request.dry_run ? " dry-run" : ""));
    if (!adapt_error.empty()) return Status::FailedPrecondition(adapt_error);
    if (!request.dry_run && !apply_error.empty()) return Status::IOError(apply_error);
    return std::vector<std::string>{"fstab: / on " + request.root_device};
  }

  std::map<std::string, FsId> filesystems;
  std::map<std::string, std::vector<std::string>> partitions;
  std::string mount_error, adapt_error;
  std::string mount_rw_error, apply_error;  // only the read-write mount, only a real adaptation
  std::string mounted;  // the device mounted at the new root, "" when none
  AdaptRequest adapted;
  std::vector<RootChange> adapt_changes;
  std::map<std::string, std::map<int, std::string>> partuuids;
  std::vector<std::string> calls;

  std::map<int, std::string> ReadPartitionUuids(const std::string& disk) override {
    return partuuids[disk];
  }
  // The overlay is a copy of the lower tree (what the real overlay shows).
  Status MountOverlay(const std::string& lower, const std::string& scratch,
                      const std::string& dir) override {
    calls.push_back("overlay " + lower + " " + scratch + " " + dir);
    std::filesystem::copy(
        lower, dir,
        std::filesystem::copy_options::recursive | std::filesystem::copy_options::copy_symlinks);
    return Status::Ok();
  }
  std::string UnmountOverlay(const std::string& scratch, const std::string& dir) override {
    calls.push_back("unmount-overlay " + scratch + " " + dir);
    std::filesystem::remove_all(dir);
    return "";
  }
  ChrootRunner* Chroot() override { return chroot; }
  ChrootRunner* chroot = nullptr;
};

class TakeoverTest : public ::testing::Test {
 public:
  TakeoverTest() : dir_("takeover_test"), vda_("/dev/vda"), vdb_("/dev/vdb") {
    system_.filesystems["/dev/vda1"] = FsId{"ext4", kRootUuid};
    system_.filesystems["/dev/vdb"] = FsId{"xfs", kDataUuid};
    system_.partitions["/dev/vda"] = {"/dev/vda1"};
    newroot_ = dir_.File("newroot");
    // The migrated OS has modules for the PE's kernel: boot auto is switch-root.
    std::filesystem::create_directories(newroot_ + "/lib/modules/" + kPeKernel);
  }

  Takeover MakeTakeover(bool allow_kexec = false) {
    TakeoverConfig config;
    config.newroot = newroot_;
    config.takeover_file = dir_.File("cdp-takeover");
    config.sys_class_net = dir_.File("no-sys-class-net");
    config.kernel_release = kPeKernel;
    config.allow_kexec = allow_kexec;
    config.prepare_dir = dir_.File("prepared");
    config.prepare_scratch = dir_.File("scratch");
    return Takeover(config, &system_, [this](const std::string& line) { lines_.push_back(line); });
  }

  std::vector<TakeoverDisk> Disks() {
    return {{"sda", "/dev/vda", &vda_}, {"sdb", "/dev/vdb", &vdb_}};
  }

  static v1::TakeoverRequest Request(bool dry_run = false) {
    v1::TakeoverRequest request;
    request.set_root_volume("sda");
    request.set_dry_run(dry_run);
    return request;
  }

  static std::vector<std::string> StepNames(const v1::TakeoverReply& reply) {
    std::vector<std::string> names;
    for (const auto& s : reply.steps()) names.push_back(s.name());
    return names;
  }

  testing::TempDir dir_;
  FakeDisk vda_, vdb_;
  FakeSystem system_;
  std::string newroot_;
  std::vector<std::string> lines_;
};

TEST(FilesystemTypeListedTest, FindsATypeByItsWholeNameOnly) {
  const std::string proc_filesystems =
      "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text4\nnodev\toverlay\n";
  EXPECT_TRUE(FilesystemTypeListed(proc_filesystems, "ext4"));
  EXPECT_TRUE(FilesystemTypeListed(proc_filesystems, "overlay"));
  EXPECT_TRUE(FilesystemTypeListed(proc_filesystems, "tmpfs"));
  EXPECT_FALSE(FilesystemTypeListed(proc_filesystems, "ext"));
  EXPECT_FALSE(FilesystemTypeListed(proc_filesystems, "xfs"));
  EXPECT_FALSE(FilesystemTypeListed(proc_filesystems, "nodev"));
  EXPECT_FALSE(FilesystemTypeListed("", "ext4"));
  // The last line without its newline still counts.
  EXPECT_TRUE(FilesystemTypeListed("nodev\tproc\n\txfs", "xfs"));
}

TEST_F(TakeoverTest, SwitchRootRunsEveryStepInOrderAndWritesTheTakeoverFile) {
  Takeover takeover = MakeTakeover();
  v1::TakeoverReply reply;
  ASSERT_TRUE(takeover.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply)) << reply.error();
  EXPECT_TRUE(reply.ok());
  EXPECT_EQ(reply.error(), "");
  EXPECT_THAT(StepNames(reply),
              ElementsAre("check", "flush", "mount", "plan", "remount", "adapt", "handover"));
  EXPECT_EQ(reply.steps(0).result(), "pe-ready; root volume sda on /dev/vda");
  EXPECT_EQ(reply.steps(1).result(), "flushed /dev/vda, /dev/vdb; batches are refused from now on");
  EXPECT_EQ(reply.steps(2).result(),
            "/dev/vda1 (ext4 UUID " + std::string(kRootUuid) + ") at " + newroot_ +
                " read-only; filesystems on the target: /dev/vda1=" + kRootUuid +
                ", /dev/vdb=" + kDataUuid);
  EXPECT_EQ(reply.steps(3).result(),
            "boot: switch_root on the PE's kernel 6.1.0-pe; fstab: / on /dev/vda1");
  EXPECT_EQ(reply.steps(4).result(), "/dev/vda1 at " + newroot_ + " read-write");
  EXPECT_EQ(reply.steps(5).result(),
            "boot: switch_root on the PE's kernel 6.1.0-pe; fstab: / on /dev/vda1");
  EXPECT_EQ(reply.steps(6).result(),
            "the pe-agent exits with status 100; the PE's /init "
            "switch_roots into " +
                newroot_ + " (/sbin/init)");
  EXPECT_EQ(reply.root_device(), "/dev/vda1");
  EXPECT_EQ(reply.kernel_release(), kPeKernel);
  EXPECT_EQ(reply.boot_mode(), v1::BOOT_MODE_SWITCH_ROOT);
  EXPECT_EQ(*ReadWholeFile(dir_.File("cdp-takeover")), "root " + newroot_ + "\ninit /sbin/init\n");
  EXPECT_THAT(system_.calls,
              ElementsAre("drop-cache /dev/vda", "drop-cache /dev/vdb", "reread /dev/vda",
                          "reread /dev/vdb", "mount /dev/vda1 " + newroot_ + " ro", "adapt dry-run",
                          "unmount " + newroot_, "mount /dev/vda1 " + newroot_ + " rw", "adapt"));
  EXPECT_EQ(vda_.flushes, 1);
  EXPECT_EQ(vdb_.flushes, 1);
  EXPECT_EQ(system_.adapted.root_uuid, kRootUuid);
  EXPECT_EQ(system_.adapted.kernel_release, kPeKernel);
  EXPECT_EQ(system_.adapted.disk_uuids.size(), 2u);
  EXPECT_TRUE(takeover.refusing_batches());
  EXPECT_TRUE(takeover.handed_over());
  EXPECT_EQ(system_.mounted, "/dev/vda1");  // stays mounted for the PE's /init
  // Each step on the console, timed by the StepTimeline: "takeover step NAME (S.SSS s): ...".
  ASSERT_EQ(lines_.size(), 8u);
  EXPECT_THAT(lines_[0],
              MatchesRegex("pe-agent: takeover step check \\([0-9]+\\.[0-9]{3} s\\): pe-ready; "
                           "root volume sda on /dev/vda"));
  EXPECT_THAT(lines_[7],
              HasSubstr("pe-agent: takeover: handing over to /sbin/init on /dev/vda1 at " +
                        newroot_ + " at "));

  // Switch-root: Finish leaves everything to the PE's /init.
  takeover.Finish();
  EXPECT_EQ(system_.calls.size(), 9u);
}

// Each step's failure: the reply, the steps run (the failed one last), and the roll back.
struct FailureCase {
  std::string name;
  std::function<void(TakeoverTest*, FakeSystem*, FakeDisk*)> arrange;
  v1::PeState state = v1::PE_STATE_READY;
  std::vector<std::string> steps;
  std::string error;
  bool was_mounted = false;
  // Failed after the read-write mount: the replica was written, batches stay refused.
  bool root_written = false;
};

TEST_F(TakeoverTest, EachStepThatFailsRollsBackAndRepliesWhy) {
  const std::vector<FailureCase> cases = {
      {"not ready",
       [](TakeoverTest*, FakeSystem*, FakeDisk*) {},
       v1::PE_STATE_ERROR,
       {"check"},
       "pe-agent: the target is not ready: disk too small; a takeover needs a pe-ready target"},
      {"flush",
       [](TakeoverTest*, FakeSystem*, FakeDisk* d) { d->flush_error = "EIO"; },
       v1::PE_STATE_READY,
       {"check", "flush"},
       "pe-agent: volume sda: flushing /dev/vda: EIO"},
      {"no ext4",
       [](TakeoverTest*, FakeSystem* s, FakeDisk*) { s->filesystems.erase("/dev/vda1"); },
       v1::PE_STATE_READY,
       {"check", "flush", "mount"},
       "pe-agent: volume sda: no ext4 filesystem on /dev/vda nor on its partitions (filesystems "
       "found on the target: /dev/vdb); the migrated OS's root must be ext4: check root_volume"},
      {"mount",
       [](TakeoverTest*, FakeSystem* s, FakeDisk*) { s->mount_error = "mount: EBUSY"; },
       v1::PE_STATE_READY,
       {"check", "flush", "mount"},
       "mount: EBUSY"},
      {"plan",
       [](TakeoverTest*, FakeSystem* s, FakeDisk*) { s->adapt_error = "no fstab"; },
       v1::PE_STATE_READY,
       {"check", "flush", "mount", "plan"},
       "no fstab",
       true},
      {"remount",
       [](TakeoverTest*, FakeSystem* s, FakeDisk*) { s->mount_rw_error = "mount: EROFS"; },
       v1::PE_STATE_READY,
       {"check", "flush", "mount", "plan", "remount"},
       "mount: EROFS",
       false,
       true},
      {"adapt",
       [](TakeoverTest*, FakeSystem* s, FakeDisk*) { s->apply_error = "adapting: ENOSPC"; },
       v1::PE_STATE_READY,
       {"check", "flush", "mount", "plan", "remount", "adapt"},
       "adapting: ENOSPC",
       true,
       true},
      {"handover",
       [](TakeoverTest* t, FakeSystem*, FakeDisk*) {
         // The takeover file's directory does not exist.
         std::filesystem::create_directories(t->dir_.File("cdp-takeover.tmp") + "/x");
       },
       v1::PE_STATE_READY,
       {"check", "flush", "mount", "plan", "remount", "adapt", "handover"},
       "pe-agent: writing the takeover file: cannot create ",
       true,
       true},
  };
  const FakeSystem baseline = system_;
  for (const FailureCase& c : cases) {
    SCOPED_TRACE(c.name);
    system_ = baseline;
    vda_.flush_error.clear();
    std::filesystem::remove_all(dir_.File("cdp-takeover.tmp"));
    std::filesystem::remove(dir_.File("cdp-takeover.root-written"));
    c.arrange(this, &system_, &vda_);
    Takeover takeover = MakeTakeover();
    v1::TakeoverReply reply;
    EXPECT_FALSE(takeover.Run(Request(), c.state, "disk too small", Disks(), &reply));
    EXPECT_FALSE(reply.ok());
    EXPECT_THAT(reply.error(), HasSubstr(c.error));
    EXPECT_EQ(reply.error().rfind(c.error, 0), 0u) << reply.error();
    EXPECT_EQ(StepNames(reply), c.steps);
    const std::string suffix = c.root_written ? "; the migrated OS's root was mounted" : "\n";
    EXPECT_EQ("failed: " + reply.error().substr(0, reply.error().find(suffix)),
              reply.steps(reply.steps_size() - 1).result());
    EXPECT_FALSE(takeover.handed_over());
    EXPECT_EQ(system_.mounted, "");
    EXPECT_EQ(!system_.calls.empty() && system_.calls.back() == "unmount " + newroot_,
              c.was_mounted);
    // Until the read-write mount nothing was written: batches are applied again.
    const bool wrote = std::any_of(system_.calls.begin(), system_.calls.end(), [](auto& call) {
      return call.size() > 3 && call.compare(call.size() - 3, 3, " rw") == 0;
    });
    EXPECT_EQ(wrote, c.root_written);
    EXPECT_EQ(takeover.root_written(), c.root_written);
    EXPECT_EQ(takeover.refusing_batches(), c.root_written);
    EXPECT_EQ(std::filesystem::exists(dir_.File("cdp-takeover.root-written")), c.root_written);
    if (c.root_written) {
      EXPECT_THAT(reply.error(),
                  HasSubstr("; the migrated OS's root was mounted read-write before this failure, "
                            "so the target's disks are no longer a plain replica: replication "
                            "stays off (pe-error) until the target VM is started again (cdpctl "
                            "target stop, start)"));
      EXPECT_EQ(lines_.back(), "pe-agent: takeover failed: " + reply.error());
    } else {
      EXPECT_EQ(lines_.back(), "pe-agent: takeover failed: " + reply.error() + "; serving again");
    }
  }
}

TEST_F(TakeoverTest, CheckRefusesAnUnknownVolumeAnUnknownBootModeAndAMountedNewroot) {
  Takeover takeover = MakeTakeover();
  v1::TakeoverRequest request = Request();
  request.set_root_volume("sdz");
  v1::TakeoverReply reply;
  EXPECT_FALSE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply));
  EXPECT_EQ(reply.error(),
            "pe-agent: this target has no volume 'sdz' (it has: sda, sdb); name the volume "
            "that holds the migrated OS's root filesystem");

  request = Request();
  request.set_boot_mode(static_cast<v1::BootMode>(7));
  reply.Clear();
  EXPECT_FALSE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply));
  EXPECT_EQ(reply.error(), "pe-agent: boot mode 7 is not auto, switch-root or kexec");

  system_.mounted = "/dev/other";
  reply.Clear();
  EXPECT_FALSE(takeover.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply));
  EXPECT_EQ(reply.error(), "pe-agent: " + newroot_ +
                               " is already a mount point (a takeover left over?); unmount it "
                               "first");
  EXPECT_THAT(StepNames(reply), ElementsAre("check"));
  EXPECT_EQ(vda_.flushes, 0);
}

TEST_F(TakeoverTest, TheAdaptationSeesTheSourceAndTheTargetAndItsChangesAreReplied) {
  system_.partuuids["/dev/vda"] = {{1, "aaaaaaaa-0000-4000-8000-000000000001"}};
  system_.adapt_changes = {{"/etc/network/interfaces", "ifupdown: ens192: address ...",
                            "/etc/network/interfaces.cdp-pre-cutover"},
                           {"/etc/systemd/network/10-cdp-ens192.link", "pins the name ens192", ""}};
  Takeover takeover = MakeTakeover();
  v1::TakeoverRequest request = Request(/*dry_run=*/true);
  (*request.mutable_source_disks())["sdb"] = "/dev/sdb";
  (*request.mutable_source_disks())["sda"] = "/dev/sda";
  v1::TakeoverReply reply;
  EXPECT_FALSE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply));
  ASSERT_TRUE(reply.ok()) << reply.error();
  ASSERT_EQ(reply.changes_size(), 2);
  EXPECT_EQ(reply.changes(0).file(), "/etc/network/interfaces");
  EXPECT_EQ(reply.changes(0).what(), "ifupdown: ens192: address ...");
  EXPECT_EQ(reply.changes(0).kept_at(), "/etc/network/interfaces.cdp-pre-cutover");
  EXPECT_EQ(reply.changes(1).kept_at(), "");
  const TargetDisks& t = system_.adapted.target;
  EXPECT_THAT(t.disks, ElementsAre("/dev/vda", "/dev/vdb"));
  EXPECT_THAT(t.source_disks, ElementsAre("/dev/sda", "/dev/sdb"));
  EXPECT_EQ(t.root_device, "/dev/vda1");
  EXPECT_EQ(t.root_uuid, kRootUuid);
  std::vector<std::string> found;
  for (const TargetFs& f : t.filesystems) {
    found.push_back(f.device + " " + f.disk + " " + std::to_string(f.partition) + " " + f.id.type +
                    " " + f.partuuid);
  }
  EXPECT_THAT(found, ElementsAre("/dev/vda /dev/vda 0  ",
                                 "/dev/vda1 /dev/vda 1 ext4 aaaaaaaa-0000-4000-8000-000000000001",
                                 "/dev/vdb /dev/vdb 0 xfs "));
}

// The migrated OS's tool, faked: writes an image with the virtio drivers in the root it runs in.
class FakeUpdateInitramfs : public ChrootRunner {
 public:
  Result<std::string> Run(const std::string& root, const std::vector<std::string>& argv,
                          int) override {
    std::string call;
    for (const auto& a : argv) call += (call.empty() ? "" : " ") + a;
    calls.push_back(call);
    const std::string ko = "usr/lib/modules/6.1.0-pe/kernel/drivers/";
    return WriteFileAtomic(root + "/boot/initrd.img-6.1.0-pe",
                           testdata::NewcArchive({ko + "virtio_blk.ko", ko + "virtio_scsi.ko",
                                                  ko + "virtio_pci.ko", ko + "virtio_net.ko"}))
                   .ok()
               ? Result<std::string>(
                     std::string("update-initramfs: Generating /boot/initrd.img-6.1.0-pe"))
               : Status::IOError("cannot write the image");
  }
  std::vector<std::string> calls;
};

class PrepareBootTest : public TakeoverTest {
 protected:
  void SetUp() override {
    // A Debian root built on VMware: MODULES=dep, pvscsi and vmxnet3 in its initramfs.
    const std::string ko = "usr/lib/modules/6.1.0-pe/kernel/drivers/";
    std::filesystem::create_directories(newroot_ + "/boot");
    ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/initrd.img-6.1.0-pe",
                                testdata::NewcArchive({ko + "vmw_pvscsi.ko", ko + "vmxnet3.ko"}))
                    .ok());
    std::filesystem::create_directories(newroot_ + "/usr/sbin");
    std::filesystem::create_directories(newroot_ + "/etc/initramfs-tools");
    ASSERT_TRUE(
        WriteFileAtomicWithMode(newroot_ + "/usr/sbin/update-initramfs", "#!/bin/sh\n", 0755).ok());
    ASSERT_TRUE(
        WriteFileAtomic(newroot_ + "/etc/initramfs-tools/initramfs.conf", "MODULES=dep\n").ok());
    system_.chroot = &tool_;
  }

  v1::PrepareBootRequest PrepareRequest(bool dry_run) {
    v1::PrepareBootRequest r;
    r.set_root_volume("sda");
    r.set_dry_run(dry_run);
    return r;
  }

  FakeUpdateInitramfs tool_;
};

TEST_F(PrepareBootTest, DryRunSaysWhatTheRebuildWouldDoAndWritesNothing) {
  Takeover takeover = MakeTakeover();
  v1::PrepareBootReply reply;
  takeover.Prepare(PrepareRequest(true), v1::PE_STATE_READY, "", Disks(), &reply);
  ASSERT_TRUE(reply.ok()) << reply.error();
  EXPECT_FALSE(reply.rebuilt());
  EXPECT_EQ(reply.kernel_release(), kPeKernel);
  EXPECT_EQ(reply.initramfs(), "/boot/initrd.img-6.1.0-pe");
  ASSERT_EQ(reply.steps_size(), 3);
  EXPECT_EQ(reply.steps(2).name(), "initramfs");
  EXPECT_EQ(reply.steps(2).result(),
            "/boot/initrd.img-6.1.0-pe has no virtio_blk, virtio_scsi, virtio_pci, virtio_net: "
            "would run /usr/sbin/update-initramfs -u -k 6.1.0-pe in a chroot over a copy-on-write "
            "layer and keep the image for the takeover");
  ASSERT_EQ(reply.changes_size(), 2);
  EXPECT_EQ(reply.changes(0).file(), "/etc/initramfs-tools/modules");
  EXPECT_EQ(reply.changes(1).file(), "/boot/initrd.img-6.1.0-pe");
  EXPECT_EQ(reply.changes(1).kept_at(), "/boot/initrd.img-6.1.0-pe.cdp-pre-cutover");
  EXPECT_THAT(
      system_.calls,
      ElementsAre("drop-cache /dev/vda", "drop-cache /dev/vdb", "reread /dev/vda",
                  "reread /dev/vdb", "mount /dev/vda1 " + newroot_ + " ro", "unmount " + newroot_));
  EXPECT_FALSE(std::filesystem::exists(dir_.File("prepared")));
  EXPECT_FALSE(takeover.refusing_batches());
}

TEST_F(PrepareBootTest, RebuildsOverAnOverlayAndKeepsTheImageNotTheReplica) {
  const std::string before = *ReadWholeFile(newroot_ + "/boot/initrd.img-6.1.0-pe");
  Takeover takeover = MakeTakeover();
  v1::PrepareBootReply reply;
  takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
  ASSERT_TRUE(reply.ok()) << reply.error();
  EXPECT_TRUE(reply.rebuilt());
  EXPECT_THAT(reply.steps(2).result(),
              HasSubstr("/boot/initrd.img-6.1.0-pe rebuilt with virtio_blk, virtio_scsi, "
                        "virtio_pci, virtio_net (/usr/sbin/update-initramfs -u -k 6.1.0-pe: "
                        "update-initramfs: Generating /boot/initrd.img-6.1.0-pe); kept in " +
                        dir_.File("prepared") + "/6.1.0-pe ("));
  EXPECT_THAT(tool_.calls, ElementsAre("/usr/sbin/update-initramfs -u -k 6.1.0-pe"));
  const std::string overlay = dir_.File("scratch") + "-root";
  EXPECT_THAT(system_.calls,
              ElementsAre("drop-cache /dev/vda", "drop-cache /dev/vdb", "reread /dev/vda",
                          "reread /dev/vdb", "mount /dev/vda1 " + newroot_ + " ro",
                          "overlay " + newroot_ + " " + dir_.File("scratch") + " " + overlay,
                          "unmount-overlay " + dir_.File("scratch") + " " + overlay,
                          "unmount " + newroot_));
  // The replica is as it was; the image waits in the PE for the takeover.
  EXPECT_EQ(*ReadWholeFile(newroot_ + "/boot/initrd.img-6.1.0-pe"), before);
  EXPECT_FALSE(std::filesystem::exists(newroot_ + "/etc/initramfs-tools/modules"));
  EXPECT_THAT(*ReadWholeFile(dir_.File("prepared") + "/6.1.0-pe/initrd"), HasSubstr("virtio_blk"));
  EXPECT_THAT(*ReadWholeFile(dir_.File("prepared") + "/6.1.0-pe/manifest"),
              MatchesRegex("image /boot/initrd.img-6.1.0-pe\noriginal-xxh3 [0-9a-f]{16}\n"
                           "original-bytes [0-9]+\nprepared [0-9TZ:-]+\n"));
}

TEST_F(PrepareBootTest, AnImagePreparedFromTheCurrentOneIsNotRebuiltAgain) {
  {
    Takeover takeover = MakeTakeover();
    v1::PrepareBootReply reply;
    takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
  }
  Takeover takeover = MakeTakeover();
  v1::PrepareBootReply reply;
  takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
  ASSERT_TRUE(reply.ok()) << reply.error();
  EXPECT_TRUE(reply.rebuilt());
  EXPECT_EQ(reply.steps(2).result(),
            "/boot/initrd.img-6.1.0-pe has no virtio_blk, virtio_scsi, virtio_pci, virtio_net; the "
            "image prepared for it (" +
                dir_.File("prepared") +
                "/6.1.0-pe/initrd) was rebuilt from its current content: nothing to rebuild");
  EXPECT_EQ(reply.changes_size(), 2);
  EXPECT_EQ(tool_.calls.size(), 1u);  // the first prepare only
}

TEST_F(PrepareBootTest, AnImagePreparedFromAnOlderOneIsReplaced) {
  // Prepared, then a package upgrade on the source rewrote the image (still without virtio), and
  // the kept image came back from the metadata disk: the dry run says so, the prepare rebuilds.
  {
    Takeover takeover = MakeTakeover();
    v1::PrepareBootReply reply;
    takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
  }
  const std::string ko = "usr/lib/modules/6.1.0-pe/kernel/drivers/";
  ASSERT_TRUE(WriteFileAtomic(
                  newroot_ + "/boot/initrd.img-6.1.0-pe",
                  testdata::NewcArchive({ko + "vmw_pvscsi.ko", ko + "vmxnet3.ko", ko + "e1000.ko"}))
                  .ok());
  const std::string old_manifest = *ReadWholeFile(dir_.File("prepared") + "/6.1.0-pe/manifest");
  Takeover takeover = MakeTakeover();
  v1::PrepareBootReply dry;
  takeover.Prepare(PrepareRequest(true), v1::PE_STATE_READY, "", Disks(), &dry);
  ASSERT_TRUE(dry.ok()) << dry.error();
  EXPECT_THAT(dry.steps(2).result(),
              HasSubstr("keep the image for the takeover; the image prepared before was rebuilt "
                        "from another /boot/initrd.img-6.1.0-pe than the replica holds now"));
  EXPECT_EQ(*ReadWholeFile(dir_.File("prepared") + "/6.1.0-pe/manifest"), old_manifest);
  v1::PrepareBootReply reply;
  takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
  ASSERT_TRUE(reply.ok()) << reply.error();
  EXPECT_THAT(reply.steps(2).result(),
              HasSubstr("for the takeover (it replaces one prepared from an older image)"));
  EXPECT_EQ(tool_.calls.size(), 2u);
  EXPECT_NE(*ReadWholeFile(dir_.File("prepared") + "/6.1.0-pe/manifest"), old_manifest);
  auto prepared = PreparedInitramfsFor(dir_.File("prepared"), newroot_, "6.1.0-pe");
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(*prepared, dir_.File("prepared") + "/6.1.0-pe/initrd");
}

TEST_F(PrepareBootTest, AFailedRebuildUnmountsAndSaysWhy) {
  std::filesystem::remove(newroot_ + "/usr/sbin/update-initramfs");
  Takeover takeover = MakeTakeover();
  v1::PrepareBootReply reply;
  takeover.Prepare(PrepareRequest(false), v1::PE_STATE_READY, "", Disks(), &reply);
  EXPECT_FALSE(reply.ok());
  EXPECT_EQ(reply.error(),
            "the migrated OS has neither update-initramfs (initramfs-tools) nor dracut to rebuild "
            "its initramfs /boot/initrd.img-6.1.0-pe with virtio_blk virtio_scsi virtio_pci "
            "virtio_net: rebuild it with them on the source before the cutover");
  EXPECT_EQ(system_.calls.back(), "unmount " + newroot_);
  EXPECT_EQ(system_.mounted, "");
}

TEST_F(PrepareBootTest, AKexecTakeoverBootsTheImagePreparedForItsKernel) {
  // The migrated OS boots its own kernel (kexec): the image prepared for it, not the one on its
  // disk, which lacks virtio and is replaced only by adapt, after the load.
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/vmlinuz-6.1.0-pe", "kernel").ok());
  v1::PrepareBootRequest prepare = PrepareRequest(false);
  prepare.set_boot_mode(v1::BOOT_MODE_KEXEC);
  {
    Takeover takeover = MakeTakeover(true);
    v1::PrepareBootReply reply;
    takeover.Prepare(prepare, v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
    EXPECT_EQ(reply.kernel_release(), "6.1.0-pe");
  }
  const std::string prepared = dir_.File("prepared") + "/6.1.0-pe/initrd";
  v1::TakeoverRequest request = Request(true);
  request.set_boot_mode(v1::BOOT_MODE_KEXEC);
  {
    Takeover takeover = MakeTakeover(true);
    v1::TakeoverReply reply;
    takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
    EXPECT_EQ(reply.steps(3).name(), "kexec-load");
    EXPECT_EQ(reply.steps(3).result(),
              "would kexec_file_load /boot/vmlinuz-6.1.0-pe with " + prepared +
                  " (prepared), command line 'root=UUID=" + std::string(kRootUuid) + " ro'");
  }
  system_.calls.clear();
  request.set_dry_run(false);
  {
    Takeover takeover = MakeTakeover(true);
    v1::TakeoverReply reply;
    ASSERT_TRUE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply)) << reply.error();
    EXPECT_THAT(system_.calls,
                ::testing::Contains("kexec-load /boot/vmlinuz-6.1.0-pe /:" + prepared +
                                    " 'root=UUID=" + std::string(kRootUuid) + " ro'"));
  }

  // The replica's image changed after the prepare: refused at kexec-load, nothing loaded.
  system_.mounted.clear();  // the takeover above handed the mount over
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/initrd.img-6.1.0-pe",
                              testdata::NewcArchive({"usr/lib/modules/6.1.0-pe/kernel/drivers/"
                                                     "vmxnet3.ko"}))
                  .ok());
  system_.calls.clear();
  Takeover takeover = MakeTakeover(true);
  v1::TakeoverReply reply;
  EXPECT_FALSE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply));
  EXPECT_THAT(StepNames(reply), ElementsAre("check", "flush", "mount", "kexec-load"));
  EXPECT_THAT(reply.error(), HasSubstr("was rebuilt from another /boot/initrd.img-6.1.0-pe than "
                                       "the replica holds now"));
  EXPECT_THAT(system_.calls, ::testing::Not(::testing::Contains(HasSubstr("kexec-load"))));
}

TEST_F(PrepareBootTest, PreparingForKexecWithoutAKernelOfItsOwnIsRefused) {
  // No /boot/vmlinuz-*: nothing to kexec into, so nothing to prepare for (follow-boot learns
  // the migrated OS's kernel this way).
  v1::PrepareBootRequest prepare = PrepareRequest(true);
  prepare.set_boot_mode(v1::BOOT_MODE_KEXEC);
  Takeover takeover = MakeTakeover(true);
  v1::PrepareBootReply reply;
  takeover.Prepare(prepare, v1::PE_STATE_READY, "", Disks(), &reply);
  EXPECT_FALSE(reply.ok());
  EXPECT_THAT(reply.error(), HasSubstr("the migrated OS has no kernel to kexec into"));
  EXPECT_EQ(reply.kernel_release(), "");
  EXPECT_EQ(system_.calls.back(), "unmount " + newroot_);
}

TEST_F(TakeoverTest, DryRunMountsReadOnlyChecksAndUnmounts) {
  Takeover takeover = MakeTakeover();
  v1::TakeoverReply reply;
  EXPECT_FALSE(takeover.Run(Request(true), v1::PE_STATE_READY, "", Disks(), &reply));
  EXPECT_TRUE(reply.ok()) << reply.error();
  EXPECT_THAT(StepNames(reply), ElementsAre("check", "flush", "mount", "plan"));
  EXPECT_THAT(system_.calls, ::testing::Contains("mount /dev/vda1 " + newroot_ + " ro"));
  EXPECT_THAT(system_.calls,
              ::testing::Not(::testing::Contains("mount /dev/vda1 " + newroot_ + " rw")));
  EXPECT_THAT(system_.calls, ::testing::Contains("adapt dry-run"));
  EXPECT_EQ(system_.calls.back(), "unmount " + newroot_);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));
  EXPECT_FALSE(takeover.refusing_batches());
  EXPECT_EQ(lines_.back(), "pe-agent: takeover dry run passed; serving again");
}

TEST_F(TakeoverTest, APreloadAtPrecheckIsReusedByTheTakeoverWhileItsFilesAreTheSame) {
  std::filesystem::remove_all(newroot_ + "/lib/modules/" + kPeKernel);
  std::filesystem::create_directories(newroot_ + "/lib/modules/9.9.9-own");
  std::filesystem::create_directories(newroot_ + "/boot");
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/vmlinuz-9.9.9-own", "kernel").ok());
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/initrd.img-9.9.9-own", "initrd").ok());
  const auto loads = [&] {
    return std::count_if(system_.calls.begin(), system_.calls.end(),
                         [](const std::string& c) { return c.rfind("kexec-load ", 0) == 0; });
  };
  v1::TakeoverRequest preload = Request(true);
  preload.set_preload_kexec(true);

  // Not allowed to kexec: the preload is refused like the takeover would be.
  {
    Takeover takeover = MakeTakeover(false);
    v1::TakeoverReply reply;
    takeover.Run(preload, v1::PE_STATE_READY, "", Disks(), &reply);
    EXPECT_FALSE(reply.ok());
    EXPECT_THAT(reply.error(), HasSubstr("kexec is not allowed in this run"));
  }

  Takeover takeover = MakeTakeover(true);
  {
    v1::TakeoverReply reply;
    takeover.Run(preload, v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
    EXPECT_THAT(reply.steps(3).result(), HasSubstr("; kept loaded for the takeover"));
    EXPECT_EQ(loads(), 1);
  }
  // The takeover: nothing changed, so nothing is loaded again.
  {
    v1::TakeoverReply reply;
    ASSERT_TRUE(takeover.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply)) << reply.error();
    EXPECT_EQ(reply.steps(3).name(), "kexec-load");
    EXPECT_THAT(reply.steps(3).result(),
                MatchesRegex("kernel 9.9.9-own and /boot/initrd.img-9.9.9-own loaded at [0-9.]+ s "
                             "of uptime \\(the precheck's preload\\), unchanged since: not loaded "
                             "again; command line 'root=UUID=.* ro'"));
    EXPECT_EQ(loads(), 1);
    system_.calls.clear();
    takeover.Finish();
    EXPECT_EQ(system_.calls.back(), "reboot");
  }

  // A kernel package rewrote the initramfs between the preload and the takeover: loaded again.
  system_.calls.clear();
  system_.mounted.clear();
  Takeover second = MakeTakeover(true);
  {
    v1::TakeoverReply reply;
    second.Run(preload, v1::PE_STATE_READY, "", Disks(), &reply);
    ASSERT_TRUE(reply.ok()) << reply.error();
  }
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/initrd.img-9.9.9-own", "initrd 2").ok());
  {
    v1::TakeoverReply reply;
    ASSERT_TRUE(second.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply)) << reply.error();
    EXPECT_EQ(loads(), 2);
    EXPECT_THAT(system_.calls, ::testing::Contains("kexec-unload"));
    EXPECT_THAT(reply.steps(3).result(), HasSubstr("loaded /boot/vmlinuz-9.9.9-own"));
  }

  // A preload whose dry run fails later (the plan) is unloaded: nothing stays loaded.
  system_.calls.clear();
  system_.mounted.clear();
  system_.adapt_error = "no virtio_blk";
  Takeover third = MakeTakeover(true);
  v1::TakeoverReply reply;
  third.Run(preload, v1::PE_STATE_READY, "", Disks(), &reply);
  EXPECT_FALSE(reply.ok());
  EXPECT_EQ(loads(), 1);
  EXPECT_EQ(std::count(system_.calls.begin(), system_.calls.end(), "kexec-unload"), 1);
}

TEST_F(TakeoverTest, WithoutModulesForThePeKernelItLoadsItsOwnKernelAndRebootsOnFinish) {
  std::filesystem::remove_all(newroot_ + "/lib/modules/" + kPeKernel);
  std::filesystem::create_directories(newroot_ + "/lib/modules/9.9.9-own");
  std::filesystem::create_directories(newroot_ + "/boot");
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/vmlinuz-9.9.9-own", "kernel").ok());
  ASSERT_TRUE(WriteFileAtomic(newroot_ + "/boot/initrd.img-9.9.9-own", "initrd").ok());

  // Not allowed: refused at kexec-load, before anything is adapted.
  {
    Takeover takeover = MakeTakeover(false);
    v1::TakeoverReply reply;
    EXPECT_FALSE(takeover.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply));
    EXPECT_THAT(StepNames(reply), ElementsAre("check", "flush", "mount", "kexec-load"));
    EXPECT_THAT(reply.error(), HasSubstr("kexec is not allowed in this run"));
    EXPECT_EQ(reply.boot_mode(), v1::BOOT_MODE_KEXEC);
  }

  // An adaptation that fails unloads the loaded kernel.
  system_.calls.clear();
  system_.adapt_error = "no virtio_blk";
  {
    Takeover takeover = MakeTakeover(true);
    v1::TakeoverReply reply;
    EXPECT_FALSE(takeover.Run(Request(), v1::PE_STATE_READY, "", Disks(), &reply));
    EXPECT_THAT(StepNames(reply), ElementsAre("check", "flush", "mount", "kexec-load", "plan"));
    EXPECT_THAT(system_.calls, ::testing::Contains("kexec-unload"));
    EXPECT_FALSE(takeover.root_written());
  }

  system_.calls.clear();
  system_.adapt_error.clear();
  Takeover takeover = MakeTakeover(true);
  v1::TakeoverRequest request = Request();
  request.set_kernel_args("console=ttyS0 rw");
  v1::TakeoverReply reply;
  ASSERT_TRUE(takeover.Run(request, v1::PE_STATE_READY, "", Disks(), &reply)) << reply.error();
  EXPECT_THAT(StepNames(reply), ElementsAre("check", "flush", "mount", "kexec-load", "plan",
                                            "remount", "adapt", "handover"));
  const std::string cmdline = "root=UUID=" + std::string(kRootUuid) + " console=ttyS0 rw";
  EXPECT_EQ(reply.steps(3).result(),
            "loaded /boot/vmlinuz-9.9.9-own (7 MiB) and /boot/initrd.img-9.9.9-own (1 MiB); "
            "command line '" +
                cmdline + "'");
  EXPECT_EQ(reply.steps(4).result(),
            "boot: kexec into its own kernel 9.9.9-own; fstab: / on /dev/vda1");
  EXPECT_EQ(reply.steps(6).result(),
            "boot: kexec into its own kernel 9.9.9-own; fstab: / on /dev/vda1");
  EXPECT_EQ(reply.steps(7).result(), "after this reply the pe-agent unmounts " + newroot_ +
                                         ", flushes the disks and reboots into kernel 9.9.9-own "
                                         "(kexec)");
  EXPECT_EQ(reply.boot_mode(), v1::BOOT_MODE_KEXEC);
  EXPECT_EQ(reply.kernel_release(), "9.9.9-own");
  EXPECT_EQ(system_.adapted.kernel_release, "9.9.9-own");
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));  // no switch_root

  system_.calls.clear();
  const int flushes = vda_.flushes;
  takeover.Finish();
  EXPECT_THAT(system_.calls, ElementsAre("sync", "unmount " + newroot_, "sync", "reboot"));
  EXPECT_EQ(vda_.flushes, flushes + 1);
  EXPECT_EQ(*ReadWholeFile(takeover.KexecFailedFile()), "kexec reboot failed: Invalid argument");
  EXPECT_EQ(lines_.back(),
            "pe-agent: FATAL: kexec reboot failed: Invalid argument ; the target stays in the PE "
            "with the migrated OS unmounted: reboot the target VM");
}

}  // namespace
}  // namespace cdp::pe
