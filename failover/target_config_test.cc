// TargetConfig loading (every error names the file, the line and the key) and the QEMU command
// line built from it.
#include "cdp/failover/target_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cdp/failover/kvm_probe.h"
#include "cdp/failover/target_vm.h"

namespace cdp::failover {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TargetConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/target-config-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& text) {
    const std::string path = dir_ + "/target.yaml";
    std::ofstream(path) << text;
    return path;
  }

  static std::string Base() {
    return "name: t1\n"
           "pe: {kernel: pe/vmlinuz, initrd: pe/initrd.img}\n"
           "qmp_socket: run/t1.qmp\n"
           "replication_endpoint: tcp://127.0.0.1:7811\n";
  }

  void ExpectError(const std::string& text, const std::string& expected) {
    auto c = LoadTargetConfig(Write(text));
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(c.status().message(), dir_ + "/target.yaml" + expected);
  }

  std::string dir_;
};

TEST_F(TargetConfigTest, LoadsAMinimalConfigWithDefaults) {
  auto c = LoadTargetConfig(
      Write(Base() + "disks:\n  - {volume: vol0, path: d/vol0.qcow2, size: 64M}\n"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->name, "t1");
  EXPECT_EQ(c->memory_mib, 512u);
  EXPECT_EQ(c->cpus, 1u);
  EXPECT_EQ(c->kernel, dir_ + "/pe/vmlinuz");
  EXPECT_EQ(c->qmp_socket, dir_ + "/run/t1.qmp");
  EXPECT_EQ(c->state_dir, dir_ + "/run");
  EXPECT_EQ(c->replication_host, "127.0.0.1");
  EXPECT_EQ(c->replication_port, 7811);
  EXPECT_EQ(c->guest_port, 7811);
  ASSERT_EQ(c->disks.size(), 1u);
  EXPECT_EQ(c->disks[0].path, dir_ + "/d/vol0.qcow2");
  EXPECT_EQ(c->disks[0].size, 64ull << 20);
  EXPECT_EQ(c->metadata_disk, dir_ + "/d/t1-pe-meta.qcow2");
  EXPECT_EQ(c->VolumeSpecs(), "vol0:67108864");
  EXPECT_EQ(c->accel, "auto");
  EXPECT_EQ(c->service_nic.mode, "user");
  EXPECT_NE(c->replication_nic.mac, c->service_nic.mac);
  EXPECT_EQ(c->replication_nic.mac.rfind("52:54:00:", 0), 0u);
  EXPECT_EQ(c->uuid.size(), 36u) << c->uuid;
  // The MACs are stable: the same name gives the same MACs.
  auto again =
      LoadTargetConfig(Write(Base() + "disks:\n  - {volume: vol0, path: x.qcow2, size: 1M}\n"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->replication_nic.mac, c->replication_nic.mac);
}

TEST_F(TargetConfigTest, TheDocumentedExampleLoads) {
  const std::string example = std::string(CDP_SOURCE_DIR) + "/deploy/examples/target.yaml";
  auto c = LoadTargetConfig(example);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->name, "db01-target");
  ASSERT_EQ(c->disks.size(), 2u);
  EXPECT_EQ(c->disks[1].volume, "db01-sdb");
  EXPECT_EQ(c->disks[1].size, 50ull << 30);
  EXPECT_EQ(c->replication_endpoint, "tcp://127.0.0.1:7800");
}

TEST_F(TargetConfigTest, ErrorsNameTheLineAndTheKey) {
  const std::string disk = "disks:\n  - {volume: v, path: v.qcow2, size: 1M}\n";
  ExpectError(Base() + "colour: blue\n" + disk,
              ":5: 'colour': unknown key (known here: accel, cpus, disks, kernel_args, "
              "memory_mib, metadata_disk, name, pe, qemu, qmp_socket, ready_timeout_seconds, "
              "replication_endpoint, replication_nic, service_nic, state_dir, uuid)");
  ExpectError(Base() + "uuid: not-a-uuid\n" + disk,
              ":5: 'uuid': 'not-a-uuid' is not a UUID in lower case "
              "(11111111-2222-3333-4444-555555555555)");
  ExpectError(Base(), ":1: 'disks': missing or empty: a list of {volume, path, size}");
  ExpectError(Base() + "disks:\n  - {volume: v, path: v.qcow2}\n",
              ":6: 'disks[0].size': missing (required)");
  ExpectError(Base() + "disks:\n  - {volume: v, path: v.qcow2, size: 1M, fmt: raw}\n",
              ":6: 'disks[0].fmt': unknown key (known here: path, size, volume)");
  ExpectError(Base() + "disks:\n  - {volume: 'bad name', path: v.qcow2, size: 1M}\n",
              ":6: 'disks[0].volume': bad volume name 'bad name': use 1-64 characters of A-Z "
              "a-z 0-9 . _ - (for example db01-sda)");
  ExpectError(Base() + "disks:\n  - {volume: cdp-pe-meta, path: v.qcow2, size: 1M}\n",
              ":6: 'disks[0].volume': reserved for the metadata disk");
  ExpectError(Base() +
                  "disks:\n  - {volume: v, path: a.qcow2, size: 1M}\n"
                  "  - {volume: v, path: b.qcow2, size: 1M}\n",
              ":7: 'disks[1].volume': volume v is listed twice");
  ExpectError(Base() +
                  "disks:\n  - {volume: v, path: a.qcow2, size: 1M}\n"
                  "  - {volume: w, path: a.qcow2, size: 1M}\n",
              ":7: 'disks[1].path': " + dir_ + "/a.qcow2 is used by two disks");
  ExpectError(Base() + "memory_mib: lots\n" + disk,
              ":5: 'memory_mib': 'lots' is not a whole number in 128..1048576");
  ExpectError(Base() + "accel: hvf\n" + disk, ":5: 'accel': 'hvf' is not auto, kvm or tcg");
  ExpectError(Base() + "service_nic: {mode: tap}\n" + disk,
              ":5: 'service_nic.tap': missing: mode tap needs the tap interface name");
  ExpectError(Base() + "replication_nic: {mac: '01:00:5e:00:00:01'}\n" + disk,
              ":5: 'replication_nic.mac': '01:00:5e:00:00:01' is not a unicast MAC in lower "
              "case (52:54:00:12:34:56)");
  ExpectError("name: t1\npe: [a, b]\n", ":2: 'pe': expected a mapping of keys");
  ExpectError("name: t1\n  bad: indent\n", ":2: not valid YAML: illegal map value");
}

TEST_F(TargetConfigTest, AMissingFileIsNotFound) {
  auto c = LoadTargetConfig(dir_ + "/nope.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("nope.yaml cannot be read"));
}

TEST_F(TargetConfigTest, ParseSizeTakesBytesAndBinaryUnits) {
  EXPECT_EQ(*ParseSize("1073741824"), 1ull << 30);
  EXPECT_EQ(*ParseSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("10G"), 10ull << 30);
  EXPECT_EQ(*ParseSize("10GiB"), 10ull << 30);
  EXPECT_EQ(*ParseSize("4k"), 4096u);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("G").ok());
  EXPECT_FALSE(ParseSize("1.5G").ok());
  EXPECT_FALSE(ParseSize("0").ok());
  EXPECT_FALSE(ParseSize("-512").ok()) << "stoull would wrap it";
  EXPECT_FALSE(ParseSize("99999999999T").ok());
}

TEST_F(TargetConfigTest, QemuCommandLineCarriesThePeContract) {
  auto c =
      LoadTargetConfig(Write(Base() + "service_nic: {mode: none}\n"
                                      "disks:\n  - {volume: vol0, path: vol0.qcow2, size: 1M}\n"
                                      "  - {volume: vol1, path: vol1.img, size: 2M}\n"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  TargetVm vm(*c);
  const auto args = vm.QemuArgs("tcg");
  std::string line;
  for (const auto& a : args) line += a + "\n";
  EXPECT_THAT(line, HasSubstr("-accel\ntcg,tb-size=64\n-cpu\nmax\n"));
  EXPECT_THAT(line, HasSubstr("cdp.listen=7811 cdp.repl_mac=" + c->replication_nic.mac +
                              " cdp.volumes=vol0:1048576,vol1:2097152 cdp.meta=cdp-pe-meta"));
  EXPECT_THAT(line, HasSubstr("user,id=repl,restrict=on,hostfwd=tcp:127.0.0.1:7811-:7811\n"));
  EXPECT_THAT(line, HasSubstr("file=" + dir_ + "/vol0.qcow2,if=none,id=disk0,format=qcow2,"));
  EXPECT_THAT(line, HasSubstr("file=" + dir_ + "/vol1.img,if=none,id=disk1,format=raw,"));
  EXPECT_THAT(line, HasSubstr("virtio-blk-pci,drive=disk1,serial=vol1\n"));
  EXPECT_THAT(line, HasSubstr("virtio-blk-pci,drive=meta,serial=cdp-pe-meta\n"));
  EXPECT_THAT(line, ::testing::Not(HasSubstr("id=svc")));
  EXPECT_THAT(line, HasSubstr("-daemonize\n"));
  EXPECT_THAT(line, HasSubstr("-uuid\n" + c->uuid + "\n"));
  const auto kvm = vm.QemuArgs("kvm");
  EXPECT_NE(std::find(kvm.begin(), kvm.end(), "host"), kvm.end());
}

TEST(KvmProbe, AMissingDeviceMeansTcgWithTheReason) {
  const AccelChoice c = ProbeAccelerator("/nonexistent/kvm");
  EXPECT_EQ(c.accel, "tcg");
  EXPECT_EQ(c.reason, "/nonexistent/kvm: No such file or directory");
  const AccelChoice not_kvm = ProbeAccelerator("/dev/null");
  EXPECT_EQ(not_kvm.accel, "tcg");
  EXPECT_EQ(not_kvm.reason, "/dev/null: unexpected KVM API version");
  // On this machine: whatever it says, it says why.
  const AccelChoice here = ProbeAccelerator();
  EXPECT_TRUE(here.accel == "kvm" || here.accel == "tcg");
  EXPECT_FALSE(here.reason.empty());
  if (here.accel == "kvm") {
    EXPECT_THAT(here.reason, HasSubstr("ran in long mode in"));
  }
}

TEST(KvmProbe, AGuestThatDoesNotFinishInTheBudgetMeansTcg) {
  // No budget at all: the probe's child is killed before its guest can report, as on a host
  // whose KVM runs guests a thousand times slower than the CPU.
  const AccelChoice c = ProbeAccelerator("/dev/kvm", std::chrono::milliseconds(0));
  EXPECT_EQ(c.accel, "tcg");
  EXPECT_EQ(c.reason,
            "a KVM test guest did not finish 4 million loop iterations in long mode within 0 ms "
            "(KVM runs guests far slower than the CPU here, e.g. nested without hardware "
            "support)");
}

}  // namespace
}  // namespace cdp::failover
