#include "cdp/failover/boot_follow.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "cdp/core/atomic_file.h"
#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::failover {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The world as follow-boot sees it: a PE running `pe_kernel`, a replica whose OS boots
// `os_kernel`; each call is logged, and a restart runs the kernel of the config's PE.
class FakeFollowSystem : public BootFollowSystem {
 public:
  std::string pe_kernel = "6.1.0-57-amd64";
  std::string os_kernel = "6.1.0-57-cloud-amd64";
  std::string exported_kernel;  // "" = os_kernel
  Status export_status, build_status, restart_status;
  int fail_restarts = 0;  // the first N restarts fail
  Status refuse_restart;  // as Restart says when the target is no longer pe-ready on its kernel
  std::string restarted_kernel;  // "": the override's (or the config's PE's) kernel
  std::vector<std::string> calls;

  Result<std::string> PeKernel(const TargetConfig&) override {
    calls.push_back("status");
    return pe_kernel;
  }
  Result<std::string> OsKernel(const TargetConfig&, const std::string& volume) override {
    calls.push_back("os-kernel " + volume);
    return os_kernel;
  }
  Result<std::string> ExportKernel(const TargetConfig&, const std::string& volume,
                                   const std::string& out_dir) override {
    calls.push_back("export " + volume + " " + fs::path(out_dir).filename().string());
    if (!export_status.ok()) return export_status;
    fs::create_directories(out_dir + "/boot");
    return exported_kernel.empty() ? os_kernel : exported_kernel;
  }
  Status BuildPe(const std::string& kernel_dir, const std::string& pe_dir) override {
    calls.push_back("build " + fs::path(pe_dir).filename().string().substr(0, os_kernel.size()));
    built_dirs.push_back(pe_dir);
    EXPECT_TRUE(fs::is_directory(kernel_dir + "/boot")) << kernel_dir;
    if (!build_status.ok()) return build_status;
    fs::create_directories(pe_dir);
    for (const char* f : {"/vmlinuz", "/initrd.img"}) std::ofstream(pe_dir + f) << "image";
    return Status::Ok();
  }
  Status Restart(const TargetConfig& target, const std::string& expect_kernel) override {
    calls.push_back("restart " + target.kernel +
                    (expect_kernel.empty() ? "" : " if on " + expect_kernel));
    if (!expect_kernel.empty() && !refuse_restart.ok()) return refuse_restart;
    if (fail_restarts > 0) {
      --fail_restarts;
      return Status::TimedOut("no pe-ready within 120 s");
    }
    // The restarted PE runs the kernel its image was built on.
    pe_kernel = target.pe_override_kernel.empty() ? "6.1.0-57-amd64" : target.pe_override_kernel;
    if (!restarted_kernel.empty()) pe_kernel = restarted_kernel;
    return Status::Ok();
  }
  std::vector<std::string> built_dirs;
  Result<std::string> PrepareBoot(const TargetConfig&, const std::string& volume) override {
    calls.push_back("prepare " + volume);
    return std::string("initramfs rebuilt with virtio_blk");
  }
};

class FollowBootTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_.name = "tgt";
    target_.state_dir = dir_.path();
    target_.kernel = dir_.path() + "/pe/vmlinuz";
    target_.initrd = dir_.path() + "/pe/initrd.img";
    options_.volume = "src-root";
  }
  Result<FollowBootResult> Run() { return FollowBoot(target_, options_, system_, progress_); }

  testing::TempDir dir_;
  TargetConfig target_;
  FollowBootOptions options_;
  FakeFollowSystem system_;
  std::ostringstream progress_;
};

TEST_F(FollowBootTest, APeOnTheMigratedOSsKernelIsLeftAlone) {
  system_.os_kernel = system_.pe_kernel;
  auto r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->rebuilt);
  EXPECT_EQ(r->prepared, "");
  EXPECT_THAT(system_.calls, ElementsAre("status", "os-kernel src-root"));
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));
  EXPECT_THAT(progress_.str(), HasSubstr("a takeover is a switch_root; nothing to rebuild"));

  options_.prepare_always = true;
  r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prepared, "initramfs rebuilt with virtio_blk");
}

TEST_F(FollowBootTest, AnotherKernelIsExportedBuiltRecordedBootedAndPrepared) {
  auto r = Run();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->rebuilt);
  EXPECT_EQ(r->pe_kernel_before, "6.1.0-57-amd64");
  EXPECT_EQ(r->os_kernel, "6.1.0-57-cloud-amd64");
  ASSERT_EQ(system_.built_dirs.size(), 1u);
  const std::string pe_dir = system_.built_dirs[0];
  EXPECT_EQ(r->pe_dir, pe_dir);
  EXPECT_THAT(pe_dir,
              ::testing::MatchesRegex(dir_.path() + "/tgt\\.pe/6\\.1\\.0-57-cloud-amd64\\.[0-9]+"));
  EXPECT_THAT(system_.calls,
              ElementsAre("status", "os-kernel src-root", "export src-root 6.1.0-57-cloud-amd64",
                          "build 6.1.0-57-cloud-amd64",
                          "restart " + pe_dir + "/vmlinuz if on 6.1.0-57-amd64", "status",
                          "prepare src-root"));
  // The override names the new PE, and a config loaded after it boots that PE.
  TargetConfig loaded = target_;
  ASSERT_TRUE(ApplyPeOverride(target_.pe_override_file(), &loaded).ok());
  EXPECT_EQ(loaded.kernel, pe_dir + "/vmlinuz");
  EXPECT_EQ(loaded.initrd, pe_dir + "/initrd.img");
  EXPECT_EQ(loaded.pe_override_kernel, "6.1.0-57-cloud-amd64");
  EXPECT_EQ(loaded.pe_override, target_.pe_override_file());
  // The exported kernel tree is gone (it is inside the PE image now).
  EXPECT_FALSE(fs::exists(dir_.path() + "/tgt.boot/6.1.0-57-cloud-amd64"));

  // The next pass finds the PE on the OS's kernel and does nothing.
  system_.calls.clear();
  r = FollowBoot(loaded, options_, system_, progress_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->rebuilt);
  EXPECT_THAT(system_.calls, ElementsAre("status", "os-kernel src-root"));

  // The source installs a newer kernel: a new PE, and the old one is removed once it runs.
  system_.os_kernel = "6.1.0-58-amd64";
  r = FollowBoot(loaded, options_, system_, progress_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->rebuilt);
  EXPECT_TRUE(fs::exists(r->pe_dir + "/vmlinuz"));
  EXPECT_FALSE(fs::exists(pe_dir));
  EXPECT_EQ(
      std::distance(fs::directory_iterator(dir_.path() + "/tgt.pe"), fs::directory_iterator()), 1);
}

TEST_F(FollowBootTest, AFailedExportOrBuildLeavesThePeAsItWas) {
  system_.export_status = Status::NotFound("volume src-root holds no ext4 filesystem");
  auto r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "export: volume src-root holds no ext4 filesystem");
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));

  system_.export_status = Status::Ok();
  system_.build_status = Status::IOError("build-pe-image exited 1: no virtio_blk module");
  system_.calls.clear();
  r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "build: build-pe-image exited 1: no virtio_blk module");
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));
  EXPECT_FALSE(fs::exists(dir_.path() + "/tgt.pe") && !fs::is_empty(dir_.path() + "/tgt.pe"));
  EXPECT_FALSE(fs::exists(dir_.path() + "/tgt.boot/6.1.0-57-cloud-amd64"));
  EXPECT_THAT(system_.calls, ::testing::Not(::testing::Contains(HasSubstr("restart"))));
}

TEST_F(FollowBootTest, AFailedRestartGoesBackToThePeItRanBefore) {
  system_.fail_restarts = 1;
  auto r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "restart: no pe-ready within 120 s");
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));
  EXPECT_EQ(system_.calls.back(), "restart " + target_.kernel);
  EXPECT_EQ(system_.pe_kernel, "6.1.0-57-amd64");
  EXPECT_FALSE(fs::exists(system_.built_dirs.back()));

  // Both restarts failing: the message says so.
  system_.fail_restarts = 2;
  r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("; and starting it again on its PE of 6.1.0-57-amd64 failed: "));
}

TEST_F(FollowBootTest, AFailedRestartPutsThePreviousOverrideBackAndKeepsItsPe) {
  // A first pass put the target on a PE of its kernel; the source then gets another kernel.
  ASSERT_TRUE(Run().ok());
  TargetConfig loaded = target_;
  ASSERT_TRUE(ApplyPeOverride(target_.pe_override_file(), &loaded).ok());
  const std::string previous = *ReadWholeFile(target_.pe_override_file());
  system_.os_kernel = "6.1.0-58-amd64";
  // The new PE comes up on another kernel than it was built on.
  system_.restarted_kernel = "6.1.0-99-amd64";
  auto r = FollowBoot(loaded, options_, system_, progress_);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("restart: the restarted PE runs 6.1.0-99-amd64, "
                                              "not 6.1.0-58-amd64"));
  EXPECT_EQ(*ReadWholeFile(target_.pe_override_file()), previous);
  EXPECT_TRUE(fs::exists(loaded.kernel)) << "the PE the override names was removed";
  EXPECT_EQ(system_.calls.back(), "restart " + loaded.kernel);
  EXPECT_FALSE(fs::exists(system_.built_dirs.back()));
}

TEST_F(FollowBootTest, ATargetNoLongerInItsPeIsNotRestarted) {
  // A cutover promoted the target while the PE was being built: Restart refuses, untouched.
  system_.refuse_restart = Status::Aborted(
      "target tgt is no longer pe-ready on 6.1.0-57-amd64 (it is booting; a cutover?): not "
      "restarted");
  auto r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("restart: target tgt is no longer pe-ready"));
  EXPECT_EQ(std::count_if(system_.calls.begin(), system_.calls.end(),
                          [](const std::string& c) { return c.rfind("restart ", 0) == 0; }),
            1);
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));
}

TEST_F(FollowBootTest, AKernelThatChangesDuringTheExportIsNotBooted) {
  system_.exported_kernel = "6.1.0-58-amd64";
  auto r = Run();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("changed from 6.1.0-57-cloud-amd64 to "
                                              "6.1.0-58-amd64 meanwhile; run follow-boot again"));
  EXPECT_FALSE(fs::exists(target_.pe_override_file()));
}

TEST(PeOverrideTest, ADamagedOverrideOrOneWhoseFilesAreGoneIsAnErrorNamingIt) {
  testing::TempDir dir;
  TargetConfig c;
  c.kernel = "/pe/vmlinuz";
  const std::string file = dir.path() + "/t.pe.json";
  ASSERT_TRUE(ApplyPeOverride(file, &c).ok());  // none: nothing changes
  EXPECT_EQ(c.kernel, "/pe/vmlinuz");
  ASSERT_TRUE(WriteFileAtomic(file, "{\"kernel\": 1}").ok());
  Status s = ApplyPeOverride(file, &c);
  EXPECT_TRUE(s.IsCorruption()) << s;
  EXPECT_THAT(s.message(), HasSubstr(file + " (written by cdpctl target follow-boot) is not"));
  ASSERT_TRUE(WriteFileAtomic(file, "{\"kernel\": \"" + dir.path() + "/gone\", \"initrd\": \"" +
                                        dir.path() + "/gone\", \"kernel_release\": \"6.1\"}")
                  .ok());
  s = ApplyPeOverride(file, &c);
  EXPECT_TRUE(s.IsNotFound()) << s;
  EXPECT_THAT(s.message(), HasSubstr("names " + dir.path() + "/gone, which is gone: remove it"));
  EXPECT_EQ(c.kernel, "/pe/vmlinuz");
}

}  // namespace
}  // namespace cdp::failover
