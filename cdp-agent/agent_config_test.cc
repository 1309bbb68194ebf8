#include "cdp/agent/agent_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace cdp::agent {
namespace {

namespace fs = std::filesystem;

class AgentConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("cdp-agent-config-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  fs::path dir_;
};

TEST_F(AgentConfigTest, EveryKeyBecomesItsFlag) {
  const std::string path = Write("sda.conf",
                                 "volume: db01-sda\n"
                                 "group: db01\n"
                                 "server: tcp://198.51.100.1:7700\n"
                                 "device: /dev/sda\n"
                                 "trace: true\n"
                                 "freeze: auto\n"
                                 "checkpoint_interval: 0.5\n"
                                 "freeze_limit_ms: 300\n"
                                 "buffer_mib: 64\n"
                                 "state_dir: /var/lib/cdp-agent/db01-sda\n"
                                 "bandwidth_limit: 12.5\n"
                                 "trace_buffer_kb: 8192\n"
                                 "tracefs: /sys/kernel/tracing\n"
                                 "io_engine: io_uring\n"
                                 "drain_seconds: 5\n"
                                 "log_level: debug\n"
                                 "take_over: false\n");
  auto c = LoadVolumeConfig(path);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->volume, "db01-sda");
  EXPECT_EQ(c->group, "db01");
  EXPECT_EQ(c->args,
            (std::vector<std::string>{
                "--volume=db01-sda", "--server=tcp://198.51.100.1:7700", "--device=/dev/sda",
                "--trace", "--freeze=auto", "--checkpoint-interval=0.5", "--freeze-limit-ms=300",
                "--buffer-mib=64", "--state-dir=/var/lib/cdp-agent/db01-sda",
                "--bandwidth-limit=12.5", "--trace-buffer-kb=8192", "--tracefs=/sys/kernel/tracing",
                "--io-engine=io_uring", "--drain-seconds=5", "--log-level=debug"}));
  EXPECT_EQ(c->flags.size(), 16u) << "group is not a flag of the volume";
}

// The example the Debian package installs (deploy/examples/agent/VOLUME.conf) reads as is.
TEST_F(AgentConfigTest, ThePackagesExampleReads) {
  auto c = LoadVolumeConfig(std::string(CDP_SOURCE_DIR) + "/deploy/examples/agent/VOLUME.conf");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->volume, "db01-sda");
  EXPECT_EQ(c->group, "db01");
  EXPECT_NE(std::find(c->args.begin(), c->args.end(), "--freeze=auto"), c->args.end());
  EXPECT_NE(std::find(c->args.begin(), c->args.end(), "--trace"), c->args.end());
  EXPECT_NE(std::find(c->args.begin(), c->args.end(), "--log-level=info"), c->args.end());
}

TEST_F(AgentConfigTest, FreezeListAndDefaultGroup) {
  auto c = LoadVolumeConfig(Write("sdb.conf",
                                  "volume: db01-sdb\n"
                                  "freeze:\n"
                                  "  - /var/lib/postgresql\n"
                                  "  - /srv\n"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->group, "db01-sdb") << "a volume alone is a group of its own";
  EXPECT_EQ(c->args, (std::vector<std::string>{"--volume=db01-sdb", "--freeze=/var/lib/postgresql",
                                               "--freeze=/srv"}));
}

TEST_F(AgentConfigTest, ErrorsNameFileLineAndKey) {
  const std::string unknown = Write("a.conf", "volume: v\n\nchekpoint_interval: 1\n");
  EXPECT_EQ(LoadVolumeConfig(unknown).status().message(),
            unknown +
                ":3: unknown key 'chekpoint_interval' (known: volume, group, server, device, "
                "trace, freeze, checkpoint_interval, freeze_limit_ms, buffer_mib, state_dir, "
                "nbd, ack, bandwidth_limit, trace_buffer_kb, tracefs, io_engine, drain_seconds, "
                "log_level, take_over)");
  const std::string whole = Write("b.conf", "volume: v\nbuffer_mib: lots\n");
  EXPECT_EQ(LoadVolumeConfig(whole).status().message(),
            whole + ":2: key 'buffer_mib': expected a whole number, got 'lots'");
  const std::string number = Write("c.conf", "checkpoint_interval: soon\n");
  EXPECT_EQ(LoadVolumeConfig(number).status().message(),
            number + ":1: key 'checkpoint_interval': expected a number, got 'soon'");
  const std::string flag = Write("d.conf", "trace: maybe\n");
  EXPECT_EQ(LoadVolumeConfig(flag).status().message(),
            flag + ":1: key 'trace': expected true or false, got 'maybe'");
  const std::string list = Write("e.conf", "volume: v\ndevice: [a, b]\n");
  EXPECT_EQ(LoadVolumeConfig(list).status().message(),
            list + ":2: key 'device': expected a string, got '[list]'");
  const std::string freeze = Write("f.conf", "freeze:\n");
  EXPECT_EQ(LoadVolumeConfig(freeze).status().message(),
            freeze + ":1: key 'freeze': expected a mount point, a list of them or auto, got ''");
  const std::string twice = Write("g.conf", "volume: v\nvolume: w\n");
  EXPECT_EQ(LoadVolumeConfig(twice).status().message(), twice + ":2: key 'volume' appears twice");
  const std::string bad = Write("h.conf", "volume: [v\n");
  EXPECT_EQ(LoadVolumeConfig(bad).status().message().rfind(bad + ":2: not YAML: ", 0), 0u)
      << LoadVolumeConfig(bad).status().message();
  const std::string scalar = Write("i.conf", "just text\n");
  EXPECT_EQ(LoadVolumeConfig(scalar).status().message(),
            scalar + ": expected a mapping of keys (volume: NAME, ...)");
  auto missing = LoadVolumeConfig((dir_ / "none.conf").string());
  EXPECT_TRUE(missing.status().IsNotFound());
  EXPECT_EQ(missing.status().message(),
            (dir_ / "none.conf").string() + ": cannot read it (no such file)");
}

TEST_F(AgentConfigTest, GroupSelectsFiles) {
  Write("a-root.conf", "volume: db01-sda\ngroup: db01\n");
  Write("b-data.conf", "volume: db01-sdb\ngroup: db01\n");
  Write("c-other.conf", "volume: web01-sda\n");
  Write("notes.txt", "not a config\n");
  auto db01 = LoadGroupConfigs(dir_.string(), "db01");
  ASSERT_TRUE(db01.ok()) << db01.status().ToString();
  ASSERT_EQ(db01->size(), 2u);
  EXPECT_EQ((*db01)[0].volume, "db01-sda");
  EXPECT_EQ((*db01)[1].volume, "db01-sdb");
  auto web = LoadGroupConfigs(dir_.string(), "web01-sda");
  ASSERT_TRUE(web.ok());
  ASSERT_EQ(web->size(), 1u);
  auto none = LoadGroupConfigs(dir_.string(), "db02");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().message(),
            "no config file in " + dir_.string() + " is in group 'db02' (" + dir_.string() +
                "/*.conf: 3 files; a file's group is its `group` key, else its `volume`)");
  Write("d-dup.conf", "volume: db01-sdb\ngroup: db01\n");
  auto dup = LoadGroupConfigs(dir_.string(), "db01");
  EXPECT_EQ(dup.status().message(), (dir_ / "d-dup.conf").string() + " and " +
                                        (dir_ / "b-data.conf").string() +
                                        " both protect volume 'db01-sdb'; one file per volume");
  auto gone = LoadGroupConfigs((dir_ / "nope").string(), "db01");
  EXPECT_EQ(gone.status().message(), "config dir " + (dir_ / "nope").string() +
                                         " is not a directory (No such file or directory)");
}

}  // namespace
}  // namespace cdp::agent
