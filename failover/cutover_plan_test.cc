// CutoverPlan loading: every field of a full plan, the defaults, ${VAR} expansion, one exact
// error per rule (file, line, key), and the lab's two plans.
#include "cdp/failover/cutover_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>

#include "cdp/core/testing/temp_dir.h"

namespace cdp::failover {
namespace {

using ::testing::ElementsAre;

// Sets an environment variable for the test's lifetime and restores the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const std::string& name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name.c_str())) old_ = old;
    if (value) {
      setenv(name.c_str(), value, 1);
    } else {
      unsetenv(name.c_str());
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

constexpr char kTargetUuid[] = "11111111-2222-4333-8444-555555555555";

class CutoverPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(tmp_.ok());
    dir_ = tmp_.path();
    WriteFile("target.yaml",
              "name: tgt\n"
              "uuid: 11111111-2222-4333-8444-555555555555\n"  // kTargetUuid
              "pe: {kernel: pe/vmlinuz, initrd: pe/initrd.img}\n"
              "qmp_socket: run/tgt.qmp\n"
              "replication_endpoint: tcp://127.0.0.1:7811\n"
              "replication_nic: {mac: '52:54:00:00:00:21'}\n"
              "service_nic: {mode: tap, tap: tap-tgt, mac: '52:54:00:00:00:20'}\n"
              "disks:\n"
              "  - {volume: vol0, path: vol0.qcow2, size: 1M}\n"
              "  - {volume: vol1, path: vol1.qcow2, size: 1M}\n");
  }

  std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::string Write(const std::string& text) { return WriteFile("plan.yaml", text); }
  // Writes target.yaml as deploy/lab/lab target_config() does with LAB = the temp dir, with
  // `disks` (its YAML list items, @LAB@ for the directory) as its disks.
  void WriteLabTargetConfig(const std::string& disks) {
    std::string text = R"(# The lab's target VM (written by deploy/lab/lab up).
name: cdp-lab-target
uuid: 7a76e700-0000-4000-8000-000000000020
memory_mib: 512
pe: {kernel: /nonexistent/pe-image/vmlinuz, initrd: /nonexistent/pe-image/initrd.img}
qmp_socket: @LAB@/target.qmp
replication_endpoint: tcp://127.0.0.1:7800
service_nic: {mode: tap, tap: tap-tgt, mac: "52:54:00:00:00:20"}
ready_timeout_seconds: 300
disks:
)";
    text += disks;
    for (size_t at; (at = text.find("@LAB@")) != std::string::npos;) text.replace(at, 5, dir_);
    WriteFile("target.yaml", text);
  }

  // A valid plan, one line per top-level key (lines 1..7); `lines` replaces a key's line ("" drops
  // it), `extra` is appended (from line 8 when nothing is dropped).
  static std::string Plan(const std::map<std::string, std::string>& lines = {},
                          const std::string& extra = "") {
    static const std::vector<std::pair<std::string, std::string>> kBase = {
        {"name", "name: pg1"},
        {"journal", "journal: tcp://127.0.0.1:7700"},
        {"volumes", "volumes: [vol0, vol1]"},
        {"source",
         "source: {qmp_socket: run/src.qmp, quiesce: {method: qmp-pause}, "
         "fence: {method: qmp-poweroff}}"},
        {"target", "target: {config: target.yaml}"},
        {"network",
         "network: [{source_mac: '52:54:00:00:00:10', target_mac: '52:54:00:00:00:20', "
         "address: 192.0.2.10/24}]"},
        {"health_check", "health_check: {host: 192.0.2.10, port: 7000}"},
    };
    std::string out;
    for (const auto& [key, line] : kBase) {
      const auto it = lines.find(key);
      const std::string& text = it == lines.end() ? line : it->second;
      if (!text.empty()) out += text + "\n";
    }
    return out + extra;
  }

  // Loads `text` and expects InvalidArgument "PLAN<expected>" (expected starts at ":LINE: ").
  void ExpectError(const std::string& text, const std::string& expected) {
    auto p = LoadCutoverPlan(Write(text));
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument) << p.status();
    EXPECT_EQ(p.status().message(), dir_ + "/plan.yaml" + expected);
  }

  cdp::testing::TempDir tmp_{"cutover-plan-test"};
  std::string dir_;
};

TEST_F(CutoverPlanTest, AFullPlanSetsEveryField) {
  auto p = LoadCutoverPlan(Write(
      "name: db01\n"
      "journal: tcp://10.0.0.5:7700\n"
      "volumes: [vol0, vol1]\n"
      "root_volume: vol1\n"
      "source:\n"
      "  qmp_socket: run/src.qmp\n"
      "  devices: [/dev/sda, images/vol1.img]\n"
      "  quiesce:\n"
      "    method: command\n"
      "    command: [ssh, db01, fsfreeze, -f, /]\n"
      "    resume_command: [ssh, db01, fsfreeze, -u, /]\n"
      "  fence: {method: command, command: [ssh, db01, ip, addr, del, 192.0.2.10/24, dev, eth0]}\n"
      "target:\n"
      "  config: target.yaml\n"
      "network:\n"
      "  - source_mac: '52:54:00:00:00:10'\n"
      "    target_mac: '52:54:00:00:00:20'\n"
      "    address: 192.0.2.10/24\n"
      "    gateway: 192.0.2.1\n"
      "  - {source_mac: '52:54:00:00:00:11', source_name: ens224, target_mac: "
      "'52:54:00:00:00:21', address: 10.0.0.9/8}\n"
      "health_check:\n"
      "  host: 192.0.2.10\n"
      "  port: 7000\n"
      "  request: WHO\n"
      "  expect: 'uuid ${TARGET_UUID}'\n"
      "  interval_seconds: 0.5\n"
      "budgets: {lag_seconds: 5, drain_seconds: 10.5, verify_seconds: 20, takeover_seconds: 30, "
      "total_seconds: 90}\n"
      "rollback: none\n"
      "drill: {namespace: db01-drill}\n"
      "takeover: {boot: kexec, kernel_args: 'console=ttyS0 rw'}\n"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->file, dir_ + "/plan.yaml");
  EXPECT_EQ(p->name, "db01");
  EXPECT_EQ(p->journal, "tcp://10.0.0.5:7700");
  EXPECT_THAT(p->volumes, ElementsAre("vol0", "vol1"));
  EXPECT_EQ(p->root_volume, "vol1");
  EXPECT_EQ(p->source_qmp_socket, dir_ + "/run/src.qmp");
  EXPECT_THAT(p->source_devices, ElementsAre("/dev/sda", dir_ + "/images/vol1.img"));
  EXPECT_EQ(p->quiesce.method, "command");
  EXPECT_THAT(p->quiesce.command, ElementsAre("ssh", "db01", "fsfreeze", "-f", "/"));
  EXPECT_THAT(p->quiesce.resume_command, ElementsAre("ssh", "db01", "fsfreeze", "-u", "/"));
  EXPECT_EQ(p->fence.method, "command");
  EXPECT_THAT(p->fence.command,
              ElementsAre("ssh", "db01", "ip", "addr", "del", "192.0.2.10/24", "dev", "eth0"));
  EXPECT_EQ(p->target_config, dir_ + "/target.yaml");
  EXPECT_EQ(p->target.name, "tgt");
  EXPECT_EQ(p->target.uuid, kTargetUuid);
  ASSERT_EQ(p->network.size(), 2u);
  EXPECT_EQ(p->network[0].source_mac, "52:54:00:00:00:10");
  EXPECT_EQ(p->network[0].target_mac, "52:54:00:00:00:20");
  EXPECT_EQ(p->network[0].address, "192.0.2.10/24");
  EXPECT_EQ(p->network[0].gateway, "192.0.2.1");
  EXPECT_EQ(p->network[0].source_name, "");
  EXPECT_EQ(p->network[1].source_name, "ens224");
  EXPECT_EQ(p->network[1].source_mac, "52:54:00:00:00:11");
  EXPECT_EQ(p->network[1].target_mac, "52:54:00:00:00:21");  // the replication NIC
  EXPECT_EQ(p->network[1].address, "10.0.0.9/8");
  EXPECT_EQ(p->network[1].gateway, "");
  EXPECT_EQ(p->health.host, "192.0.2.10");
  EXPECT_EQ(p->health.port, 7000);
  EXPECT_EQ(p->health.request, "WHO");
  EXPECT_EQ(p->health.expect, "uuid ${TARGET_UUID}");
  EXPECT_EQ(p->ExpectedReply(), "uuid " + std::string(kTargetUuid));
  EXPECT_DOUBLE_EQ(p->health.interval_seconds, 0.5);
  EXPECT_DOUBLE_EQ(p->budgets.lag_seconds, 5);
  EXPECT_DOUBLE_EQ(p->budgets.drain_seconds, 10.5);
  EXPECT_DOUBLE_EQ(p->budgets.verify_seconds, 20);
  EXPECT_DOUBLE_EQ(p->budgets.takeover_seconds, 30);
  EXPECT_DOUBLE_EQ(p->budgets.total_seconds, 90);
  EXPECT_EQ(p->rollback, "none");
  EXPECT_EQ(p->drill_namespace, "db01-drill");
  EXPECT_EQ(p->drill_address, "192.0.2.1/24");  // the first free host of network[0]'s subnet
  EXPECT_EQ(p->takeover_boot, wire::v1::BOOT_MODE_KEXEC);
  EXPECT_EQ(p->takeover_kernel_args, "console=ttyS0 rw");
  // Where the engines' errors point.
  EXPECT_EQ(p->Where("journal"), dir_ + "/plan.yaml:2: 'journal'");
  EXPECT_EQ(p->Where("volumes[1]"), dir_ + "/plan.yaml:3: 'volumes[1]'");
  EXPECT_EQ(p->Where("source.qmp_socket"), dir_ + "/plan.yaml:6: 'source.qmp_socket'");
  EXPECT_EQ(p->Where("source.devices[0]"), dir_ + "/plan.yaml:7: 'source.devices[0]'");
  EXPECT_EQ(p->Where("target.config"), dir_ + "/plan.yaml:14: 'target.config'");
  EXPECT_EQ(p->Where("drill.namespace"), dir_ + "/plan.yaml:29: 'drill.namespace'");
  EXPECT_EQ(p->Where("drill.address"), dir_ + "/plan.yaml: 'drill.address'");  // not in the file
}

TEST_F(CutoverPlanTest, DrillAddressIsTheFirstFreeHostUnlessThePlanSaysOtherwise) {
  auto p = LoadCutoverPlan(Write(
      Plan({{"network",
             "network: [{source_mac: '52:54:00:00:00:10', target_mac: '52:54:00:00:00:20', "
             "address: 198.51.100.1/25}]"},
            {"health_check", "health_check: {host: 198.51.100.2, port: 7000}"}})));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->drill_address, "198.51.100.3/25");
  auto q = LoadCutoverPlan(Write(Plan({}, "drill: {address: 192.0.2.254/24}\n")));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->drill_address, "192.0.2.254/24");
  EXPECT_EQ(q->drill_namespace, "cdp-drill");
}

TEST_F(CutoverPlanTest, OptionalKeysTakeTheirDefaults) {
  auto p = LoadCutoverPlan(Write(Plan()));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->root_volume, "vol0");  // the first volume
  EXPECT_TRUE(p->source_devices.empty());
  EXPECT_EQ(p->quiesce.method, "qmp-pause");
  EXPECT_TRUE(p->quiesce.command.empty());
  EXPECT_EQ(p->fence.method, "qmp-poweroff");
  EXPECT_EQ(p->network[0].gateway, "");
  EXPECT_EQ(p->health.request, "");
  EXPECT_EQ(p->health.expect, "");
  EXPECT_EQ(p->ExpectedReply(), "");
  EXPECT_DOUBLE_EQ(p->health.interval_seconds, 0.2);
  EXPECT_DOUBLE_EQ(p->budgets.lag_seconds, 30);
  EXPECT_DOUBLE_EQ(p->budgets.drain_seconds, 60);
  EXPECT_DOUBLE_EQ(p->budgets.verify_seconds, 120);
  EXPECT_DOUBLE_EQ(p->budgets.takeover_seconds, 60);
  EXPECT_DOUBLE_EQ(p->budgets.total_seconds, 300);
  EXPECT_EQ(p->rollback, "resume-source");
  EXPECT_EQ(p->drill_namespace, "cdp-drill");
  EXPECT_EQ(p->takeover_boot, wire::v1::BOOT_MODE_AUTO);
  EXPECT_EQ(p->takeover_kernel_args, "");
  // Without a QMP socket, command methods still load; a command quiesce with rollback none needs
  // no resume command.
  auto q = LoadCutoverPlan(Write(Plan({{"source",
                                        "source: {quiesce: {method: command, command: [stop-db]}, "
                                        "fence: {method: command, command: [ifdown, eth0]}}"}},
                                      "rollback: none\n")));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->source_qmp_socket, "");
  EXPECT_THAT(q->quiesce.command, ElementsAre("stop-db"));
  EXPECT_TRUE(q->quiesce.resume_command.empty());
}

TEST_F(CutoverPlanTest, VariablesAreExpandedFromTheEnvironment) {
  const ScopedEnv dir("CDP_PLAN_TEST_DIR", dir_.c_str());
  const ScopedEnv word("CDP_PLAN_TEST_WORD", "WHO");
  auto p = LoadCutoverPlan(Write(Plan(
      {{"source",
        "source: {qmp_socket: '${CDP_PLAN_TEST_DIR}/run/src.qmp', "
        "devices: ['${CDP_PLAN_TEST_DIR}/a.img', 'b-${CDP_PLAN_TEST_WORD}-${CDP_PLAN_TEST_WORD}'], "
        "quiesce: {method: qmp-pause}, fence: {method: qmp-poweroff}}"},
       {"target", "target: {config: '${CDP_PLAN_TEST_DIR}/target.yaml'}"},
       {"health_check",
        "health_check: {host: 192.0.2.10, port: 7000, request: '${CDP_PLAN_TEST_WORD}', "
        "expect: '${TARGET_UUID}', interval_seconds: 1}"}})));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->source_qmp_socket, dir_ + "/run/src.qmp");
  // Expanded first, then taken from the plan's directory when still relative.
  EXPECT_THAT(p->source_devices, ElementsAre(dir_ + "/a.img", dir_ + "/b-WHO-WHO"));
  EXPECT_EQ(p->target_config, dir_ + "/target.yaml");
  EXPECT_EQ(p->health.request, "WHO");
  // ${TARGET_UUID} is no environment variable: it stays, for the engine to fill in.
  EXPECT_EQ(p->health.expect, "${TARGET_UUID}");
  EXPECT_EQ(p->ExpectedReply(), kTargetUuid);
  // A bare $NAME is not special.
  auto bare = LoadCutoverPlan(Write(
      Plan({{"health_check", "health_check: {host: 192.0.2.10, port: 7000, request: $HOME}"}})));
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->health.request, "$HOME");
}

TEST_F(CutoverPlanTest, VariableErrorsNameTheKeyAndComeBeforeOtherChecks) {
  const ScopedEnv unset("CDP_LAB_DIR", nullptr);
  const ScopedEnv empty("CDP_PLAN_TEST_EMPTY", "");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: '${CDP_LAB_DIR}/source.qmp', quiesce: {method: "
                     "qmp-pause}, fence: {method: qmp-poweroff}}"}}),
              ":4: 'source.qmp_socket': ${CDP_LAB_DIR} is not set in the environment");
  // Before the unknown key on line 8 and before the address is judged.
  ExpectError(Plan({{"network",
                     "network: [{source_mac: '52:54:00:00:00:10', target_mac: "
                     "'52:54:00:00:00:20', address: '${CDP_LAB_DIR}/24'}]"}},
                   "colour: blue\n"),
              ":6: 'network[0].address': ${CDP_LAB_DIR} is not set in the environment");
  ExpectError(Plan({{"source",
                     "source: {devices: [a, '${CDP_LAB_DIR}/b'], quiesce: {method: command, "
                     "command: [a]}, fence: {method: command, command: [b]}}"}}),
              ":4: 'source.devices[1]': ${CDP_LAB_DIR} is not set in the environment");
  ExpectError(Plan({{"name", "name: 'pg-${CDP_PLAN_TEST_EMPTY}'"}}),
              ":1: 'name': ${CDP_PLAN_TEST_EMPTY} is empty in the environment");
  ExpectError(Plan({{"name", "name: '${TARGET_UUID}'"}}),
              ":1: 'name': ${TARGET_UUID} is no environment variable: it may stand only in "
              "health_check.expect");
  ExpectError(Plan({{"target", "target: {config: '${CDP_LAB_DIR/target.yaml'}"}}),
              ":5: 'target.config': '${CDP_LAB_DIR/target.yaml' has a '${' that is not ${NAME} "
              "(NAME: a letter or _, then letters, digits or _)");
}

TEST_F(CutoverPlanTest, KeysAreCheckedWithTheirLines) {
  ExpectError(Plan({}, "colour: blue\n"),
              ":8: 'colour': unknown key (known here: budgets, drill, health_check, journal, "
              "name, network, rollback, root_volume, source, takeover, target, volumes)");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: q, quiesce: {method: qmp-pause}, fence: {method: "
                     "qmp-poweroff}, host: db01}"}}),
              ":4: 'source.host': unknown key (known here: devices, fence, qmp_socket, quiesce)");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: q, quiesce: {method: qmp-pause}, fence: {method: "
                     "qmp-poweroff, resume_command: [x]}}"}}),
              ":4: 'source.fence.resume_command': unknown key (known here: action, addresses, "
              "command, method)");
  ExpectError(Plan({}, "budgets: {lag: 3}\n"),
              ":8: 'budgets.lag': unknown key (known here: drain_seconds, lag_seconds, "
              "takeover_seconds, total_seconds, verify_seconds)");
  ExpectError(Plan({{"health_check", "health_check: [192.0.2.10, 7000]"}}),
              ":7: 'health_check': expected a mapping of keys");
  ExpectError(Plan({{"name", ""}}), ":1: 'name': missing (required)");
  ExpectError(Plan({{"journal", ""}}), ":1: 'journal': missing (required)");
  ExpectError(Plan({{"volumes", ""}}),
              ":1: 'volumes': missing or empty: a list of the protected volumes' names");
  ExpectError(Plan({{"volumes", "volumes: []"}}),
              ":3: 'volumes': missing or empty: a list of the protected volumes' names");
  ExpectError(Plan({{"volumes", "volumes: vol0"}}),
              ":3: 'volumes': expected a list ([A, B] or one '- A' per line)");
  ExpectError(Plan({{"source", ""}}),
              ":1: 'source': missing (required): {qmp_socket, devices, quiesce, fence}");
  ExpectError(Plan({{"source", "source: {qmp_socket: q, fence: {method: qmp-poweroff}}"}}),
              ":4: 'source.quiesce': missing (required): {method: M} with M one of qmp-pause, "
              "command, agent, fsfreeze");
  ExpectError(Plan({{"source", "source: {qmp_socket: q, quiesce: {method: qmp-pause}}"}}),
              ":4: 'source.fence': missing (required): {method: M} with M one of qmp-poweroff, "
              "qmp-pause, command, agent");
  ExpectError(Plan({{"target", ""}}),
              ":1: 'target': missing (required): {config: FILE} (a `cdpctl target` config)");
  ExpectError(Plan({{"target", "target: {}"}}), ":5: 'target.config': missing (required)");
  ExpectError(Plan({{"network", ""}}),
              ":1: 'network': missing or empty: a list of {source_mac, target_mac, address, "
              "gateway}");
  ExpectError(
      Plan({{"network", "network: [{source_mac: '52:54:00:00:00:10', address: 1.2.3.4/8}]"}}),
      ":6: 'network[0].target_mac': missing (required)");
  ExpectError(Plan({{"health_check", ""}}),
              ":1: 'health_check': missing (required): {host, port, request, expect, "
              "interval_seconds}");
  ExpectError(Plan({{"health_check", "health_check: {port: 7000}"}}),
              ":7: 'health_check.host': missing (required)");
  ExpectError(Plan({{"health_check", "health_check: {host: 192.0.2.10}"}}),
              ":7: 'health_check.port': missing (required)");
}

TEST_F(CutoverPlanTest, ValuesAreCheckedWithTheirLines) {
  ExpectError(Plan({{"name", "name: 'pg 1'"}}),
              ":1: 'name': 'pg 1' is not a valid protection group name: 1..64 of [A-Za-z0-9._-]");
  ExpectError(Plan({{"journal", "journal: 127.0.0.1:7700"}}),
              ":2: 'journal': bad endpoint '127.0.0.1:7700': expected tcp://HOST:PORT (for example "
              "tcp://127.0.0.1:7700)");
  ExpectError(Plan({{"volumes", "volumes: [vol0, 'bad name']"}}),
              ":3: 'volumes[1]': bad volume name 'bad name': use 1-64 characters of A-Z a-z 0-9 . "
              "_ - (for example db01-sda)");
  ExpectError(Plan({{"volumes", "volumes: [vol0, vol0]"}}),
              ":3: 'volumes[1]': volume vol0 is listed twice");
  ExpectError(Plan({{"volumes", "volumes:\n  - vol0\n  - db09"}}),
              ":5: 'volumes[1]': volume db09 is not a disk of target tgt (it has: vol0, vol1)");
  ExpectError(Plan({}, "root_volume: vol9\n"),
              ":8: 'root_volume': vol9 is not one of the volumes (vol0, vol1)");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: q, devices: [a.img], quiesce: {method: qmp-pause}, "
                     "fence: {method: qmp-poweroff}}"}}),
              ":4: 'source.devices': 1 device(s) for 2 volume(s): give one device or image per "
              "volume, in the order of volumes");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: q, devices: [a.img, ''], quiesce: {method: qmp-pause}, "
                     "fence: {method: qmp-poweroff}}"}}),
              ":4: 'source.devices[1]': empty (expected the source's device or image path of "
              "volume vol1)");
  ExpectError(Plan({{"source",
                     "source: {qmp_socket: q, quiesce: {method: command, command: [stop-db], "
                     "resume_command: [start-db]}, fence: {method: qmp-pause}}"}}),
              ":4: 'source.fence': qmp-pause only keeps the source paused, and quiesce method "
              "command never paused it: both would serve; use fence qmp-poweroff or command (or "
              "quiesce qmp-pause)");
  ExpectError(Plan({}, "takeover: {boot: pxe}\n"),
              ":8: 'takeover.boot': 'pxe' is not auto, switch-root or kexec");
  ExpectError(Plan({}, "rollback: later\n"),
              ":8: 'rollback': 'later' is not resume-source or none");
  ExpectError(Plan({}, "drill: {address: 192.0.2.300/24}\n"),
              ":8: 'drill.address': '192.0.2.300/24' is not IPV4/PREFIX with a prefix of 0..32 "
              "(e.g. 192.0.2.1/24)");
  ExpectError(Plan({}, "drill: {namespace: 'a b'}\n"),
              ":8: 'drill.namespace': 'a b' is not a valid network namespace name: 1..64 of "
              "[A-Za-z0-9._-]");
}

TEST_F(CutoverPlanTest, QuiesceAndFenceMethodsAreChecked) {
  const auto source = [](const std::string& inner) {
    return Plan({{"source", "source: {" + inner + "}"}});
  };
  ExpectError(source("qmp_socket: q, quiesce: {method: fsfreeze}, fence: {method: qmp-pause}"),
              ":4: 'source.quiesce.method': fsfreeze is not built (use agent: the source's "
              "cdp-agent freezes its filesystems; or qmp-pause, or command with the freeze "
              "command)");
  ExpectError(source("qmp_socket: q, quiesce: {method: snapshot}, fence: {method: qmp-pause}"),
              ":4: 'source.quiesce.method': 'snapshot' is not one of qmp-pause, command, agent, "
              "fsfreeze");
  ExpectError(source("qmp_socket: q, quiesce: {method: qmp-pause}, fence: {method: fsfreeze}"),
              ":4: 'source.fence.method': 'fsfreeze' is not one of qmp-poweroff, qmp-pause, "
              "command, agent");
  ExpectError(source("quiesce: {method: qmp-pause}, fence: {method: command, command: [x]}"),
              ":4: 'source.quiesce.method': qmp-pause needs source.qmp_socket (the source VM's "
              "QMP socket)");
  ExpectError(source("quiesce: {method: command, command: [a], resume_command: [b]}, "
                     "fence: {method: qmp-poweroff}"),
              ":4: 'source.fence.method': qmp-poweroff needs source.qmp_socket (the source VM's "
              "QMP socket)");
  ExpectError(source("quiesce: {method: command}, fence: {method: command, command: [x]}"),
              ":4: 'source.quiesce.command': missing or empty: method command needs the command "
              "to run, as a list ([ARGV0, ARG...])");
  ExpectError(source("qmp_socket: q, quiesce: {method: qmp-pause}, fence: {method: command, "
                     "command: []}"),
              ":4: 'source.fence.command': missing or empty: method command needs the command to "
              "run, as a list ([ARGV0, ARG...])");
  ExpectError(source("qmp_socket: q, quiesce: {method: command, command: [a, '']}, "
                     "fence: {method: qmp-pause}"),
              ":4: 'source.quiesce.command[1]': an empty argument");
  ExpectError(source("qmp_socket: q, quiesce: {method: qmp-pause, command: [a]}, "
                     "fence: {method: qmp-pause}"),
              ":4: 'source.quiesce.command': only for method command (the method is qmp-pause)");
  ExpectError(source("qmp_socket: q, quiesce: {method: command, command: [a]}, "
                     "fence: {method: qmp-poweroff}"),
              ":4: 'source.quiesce.resume_command': missing: rollback resume-source needs the "
              "command that undoes the quiesce command (or rollback: none)");
}

TEST_F(CutoverPlanTest, NetworkAndHealthCheckAreChecked) {
  const auto nic = [](const std::string& inner) {
    return Plan({{"network", "network: [{" + inner + "}]"}});
  };
  const std::string macs = "source_mac: '52:54:00:00:00:10', target_mac: '52:54:00:00:00:20'";
  ExpectError(nic("source_mac: '52:54:00:00:00:1A', target_mac: '52:54:00:00:00:20', "
                  "address: 192.0.2.10/24"),
              ":6: 'network[0].source_mac': '52:54:00:00:00:1A' is not a unicast MAC in lower "
              "case (52:54:00:12:34:56)");
  ExpectError(nic("source_mac: '52:54:00:00:00:10', target_mac: '01:00:5e:00:00:01', "
                  "address: 192.0.2.10/24"),
              ":6: 'network[0].target_mac': '01:00:5e:00:00:01' is not a unicast MAC in lower "
              "case (52:54:00:12:34:56)");
  ExpectError(nic("source_mac: '52:54:00:00:00:10', target_mac: '52:54:00:00:00:99', "
                  "address: 192.0.2.10/24"),
              ":6: 'network[0].target_mac': 52:54:00:00:00:99 is no NIC of target tgt (service "
              "52:54:00:00:00:20, replication 52:54:00:00:00:21)");
  for (const char* bad :
       {"192.0.2.10", "192.0.2.10/33", "300.0.2.10/24", "192.0.2/24", "192.0.2.10/", "host/24"}) {
    ExpectError(nic(macs + ", address: '" + bad + "'"),
                ":6: 'network[0].address': '" + std::string(bad) +
                    "' is not IPV4/PREFIX with a prefix of 0..32 (e.g. 192.0.2.10/24)");
  }
  ExpectError(nic(macs + ", address: 192.0.2.10/24, gateway: 192.0.2"),
              ":6: 'network[0].gateway': '192.0.2' is not an IPv4 address (e.g. 192.0.2.1)");
  ExpectError(nic(macs + ", address: 192.0.2.10/24, vlan: 5"),
              ":6: 'network[0].vlan': unknown key (known here: address, gateway, source_mac, "
              "source_name, target_mac)");
  {
    auto p = LoadCutoverPlan(Write(nic(macs + ", address: 0.0.0.0/0")));
    ASSERT_TRUE(p.ok()) << p.status();
  }

  const auto hc = [](const std::string& inner) {
    return Plan({{"health_check", "health_check: {" + inner + "}"}});
  };
  ExpectError(hc("host: db01.example, port: 7000"),
              ":7: 'health_check.host': 'db01.example' is not an IPv4 address (e.g. 192.0.2.10)");
  ExpectError(hc("host: 192.0.2.10, port: 0"),
              ":7: 'health_check.port': '0' is not a whole number in 1..65535");
  ExpectError(hc("host: 192.0.2.10, port: 65536"),
              ":7: 'health_check.port': '65536' is not a whole number in 1..65535");
  ExpectError(hc("host: 192.0.2.10, port: 7000, interval_seconds: 0"),
              ":7: 'health_check.interval_seconds': '0' is not a positive number of seconds "
              "(e.g. 30 or 0.5)");
  ExpectError(hc("host: 192.0.2.10, port: 7000, command: []"),
              ":7: 'health_check.command': empty: a command to run once the service answers, "
              "as a list ([psql, -h, 192.0.2.10, -c, SELECT 1]); leave the key out for none");
  ExpectError(hc("host: 192.0.2.10, port: 7000, command: [psql, '']"),
              ":7: 'health_check.command[1]': an empty argument");
  ExpectError(hc("host: 192.0.2.10, port: 7000, command: [psql], command_timeout_seconds: -1"),
              ":7: 'health_check.command_timeout_seconds': '-1' is not a positive number of "
              "seconds (e.g. 30 or 0.5)");
  {
    auto p =
        LoadCutoverPlan(Write(hc("host: 192.0.2.10, port: 5432, command: [psql, -c, "
                                 "'SELECT 1'], command_timeout_seconds: 5")));
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_THAT(p->health.command, ElementsAre("psql", "-c", "SELECT 1"));
    EXPECT_EQ(p->health.command_timeout_seconds, 5);
  }
}

TEST_F(CutoverPlanTest, BudgetsArePositiveSeconds) {
  for (const char* bad : {"0", "-1", "soon", "1e3", "inf", "0x10", "0.0"}) {
    ExpectError(
        Plan({}, "budgets:\n  lag_seconds: 1\n  drain_seconds: '" + std::string(bad) + "'\n"),
        ":10: 'budgets.drain_seconds': '" + std::string(bad) +
            "' is not a positive number of seconds (e.g. 30 or 0.5)");
  }
  auto p = LoadCutoverPlan(Write(Plan({}, "budgets: {verify_seconds: .5, total_seconds: 7.}\n")));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->budgets.verify_seconds, 0.5);
  EXPECT_DOUBLE_EQ(p->budgets.total_seconds, 7);
  EXPECT_DOUBLE_EQ(p->budgets.lag_seconds, 30);
}

TEST_F(CutoverPlanTest, TheTargetConfigsErrorsAreWrapped) {
  auto missing = LoadCutoverPlan(Write(Plan({{"target", "target: {config: nope.yaml}"}})));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), dir_ + "/plan.yaml:5: 'target.config': target config " +
                                            dir_ +
                                            "/nope.yaml cannot be read (missing or no "
                                            "access)");
  WriteFile("bad-target.yaml", "name: tgt\ncolour: blue\n");
  ExpectError(Plan({{"target", "target: {config: bad-target.yaml}"}}),
              ":5: 'target.config': " + dir_ +
                  "/bad-target.yaml:2: 'colour': unknown key (known here: accel, cpus, disks, "
                  "kernel_args, memory_mib, metadata_disk, name, pe, qemu, qmp_socket, "
                  "ready_timeout_seconds, replication_endpoint, replication_nic, service_nic, "
                  "state_dir, uuid)");
  // A service NIC of mode none cannot take an address.
  WriteFile("headless.yaml",
            "name: tgt\n"
            "pe: {kernel: k, initrd: i}\n"
            "qmp_socket: q\n"
            "replication_endpoint: tcp://127.0.0.1:7811\n"
            "service_nic: {mode: none, mac: '52:54:00:00:00:20'}\n"
            "disks: [{volume: vol0, path: v0.qcow2, size: 1M}, "
            "{volume: vol1, path: v1.qcow2, size: 1M}]\n");
  ExpectError(Plan({{"target", "target: {config: headless.yaml}"}}),
              ":6: 'network[0].target_mac': 52:54:00:00:00:20 is the service NIC of target tgt, "
              "which has service_nic.mode none in " +
                  dir_ + "/headless.yaml (give it mode tap or user)");
}

TEST_F(CutoverPlanTest, AMissingOrBrokenPlanFile) {
  auto p = LoadCutoverPlan(dir_ + "/nope.yaml");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(p.status().message(),
            "cutover plan " + dir_ + "/nope.yaml cannot be read (missing or no access)");
  ExpectError("name: pg1\n  bad: indent\n", ":2: not valid YAML: illegal map value");
  ExpectError("", ": expected a mapping of keys");
  // The brief form `[${VAR}/x]` is no YAML: the error says so.
  ExpectError("name: pg1  # it's\nsource:\n  devices: ['a', ${CDP_LAB_DIR}/source.img]\n",
              ":3: not valid YAML: end of sequence flow not found (line 3: inside [ ] or { } a "
              "value with ${VAR} must be quoted, \"${VAR}/...\")");
}

// The lab's plans load against the target config `deploy/lab/lab up` writes (same content; the
// PE image need not exist to load it).
TEST_F(CutoverPlanTest, TheLabPlansLoad) {
  const ScopedEnv lab("CDP_LAB_DIR", dir_.c_str());
  // deploy/lab/lab target_config() with LAB = the temp dir.
  WriteLabTargetConfig(
      "  - {volume: src-root, path: @LAB@/target-src-root.qcow2, size: 1073741824}\n");
  for (const char* name : {"cutover", "drill"}) {
    SCOPED_TRACE(name);
    const std::string file = std::string(CDP_SOURCE_DIR) + "/deploy/lab/plans/" + name + ".yaml";
    auto p = LoadCutoverPlan(file);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->name, "lab");
    EXPECT_EQ(p->journal, "tcp://127.0.0.1:7700");
    EXPECT_THAT(p->volumes, ElementsAre("src-root"));
    EXPECT_EQ(p->root_volume, "src-root");
    EXPECT_EQ(p->source_qmp_socket, dir_ + "/source.qmp");
    EXPECT_THAT(p->source_devices, ElementsAre(dir_ + "/source.img"));
    EXPECT_EQ(p->quiesce.method, "qmp-pause");
    EXPECT_EQ(p->fence.method, "qmp-poweroff");
    EXPECT_EQ(p->target_config, dir_ + "/target.yaml");
    EXPECT_EQ(p->target.name, "cdp-lab-target");
    ASSERT_EQ(p->network.size(), 1u);
    EXPECT_EQ(p->network[0].source_mac, "52:54:00:00:00:10");
    EXPECT_EQ(p->network[0].target_mac, "52:54:00:00:00:20");
    EXPECT_EQ(p->network[0].address, "192.0.2.10/24");
    EXPECT_EQ(p->health.host, "192.0.2.10");
    EXPECT_EQ(p->health.port, 7000);
    EXPECT_EQ(p->health.request, "WHO");
    EXPECT_EQ(p->health.expect, "${TARGET_UUID}");
    EXPECT_EQ(p->ExpectedReply(), "7a76e700-0000-4000-8000-000000000020");
    EXPECT_EQ(p->drill_namespace, "cdp-drill");
    EXPECT_EQ(p->rollback, std::string(name) == "cutover" ? "resume-source" : "none");
  }
}

// The real source's plans (`deploy/lab/lab up --source real`) load against its two-disk
// target config: both volumes, quiesce and fence through the agent with PostgreSQL's CHECKPOINT
// as the pre-freeze hook, the NIC named by its source name.
TEST_F(CutoverPlanTest, TheRealLabPlansLoad) {
  const ScopedEnv lab("CDP_LAB_DIR", dir_.c_str());
  WriteLabTargetConfig(
      "  - {volume: src-root, path: @LAB@/target-src-root.qcow2, size: 4294967296}\n"
      "  - {volume: src-data, path: @LAB@/target-src-data.qcow2, size: 2147483648}\n");
  for (const char* name : {"cutover-real", "drill-real"}) {
    SCOPED_TRACE(name);
    const std::string file = std::string(CDP_SOURCE_DIR) + "/deploy/lab/plans/" + name + ".yaml";
    auto p = LoadCutoverPlan(file);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->name, "lab");
    EXPECT_THAT(p->volumes, ElementsAre("src-root", "src-data"));
    EXPECT_EQ(p->root_volume, "src-root");
    EXPECT_TRUE(p->source_qmp_socket.empty());
    EXPECT_TRUE(p->source_devices.empty());
    EXPECT_EQ(p->quiesce.method, "agent");
    ASSERT_EQ(p->quiesce.hooks.size(), 1u);
    EXPECT_THAT(p->quiesce.hooks[0].run,
                ElementsAre("runuser", "-u", "postgres", "--", "psql", "-c", "CHECKPOINT"));
    EXPECT_EQ(p->quiesce.hooks[0].timeout_seconds, 30);
    EXPECT_EQ(p->fence.method, "agent");
    EXPECT_EQ(p->target.disks.size(), 2u);
    ASSERT_EQ(p->network.size(), 1u);
    EXPECT_EQ(p->network[0].source_mac, "52:54:00:00:00:10");
    EXPECT_EQ(p->network[0].source_name, "ens192");
    EXPECT_EQ(p->network[0].target_mac, "52:54:00:00:00:20");
    EXPECT_EQ(p->network[0].address, "192.0.2.10/24");
    EXPECT_EQ(p->ExpectedReply(), "7a76e700-0000-4000-8000-000000000020");
    EXPECT_EQ(p->rollback, std::string(name) == "cutover-real" ? "resume-source" : "none");
    // The drill also asks PostgreSQL (issue 17: its health check is a SQL query).
    if (std::string(name) == "drill-real") {
      EXPECT_THAT(p->health.command,
                  ElementsAre("env", "PGPASSWORD=cdp", "PGCONNECT_TIMEOUT=5", "psql", "-h",
                              "192.0.2.10", "-U", "cdp", "-d", "cdp", "-tAc", "SELECT 1"));
    }
  }
}

TEST_F(CutoverPlanTest, AgentQuiesceAndFenceTakeTheirKeys) {
  auto p =
      LoadCutoverPlan(Write(Plan({{"source",
                                   "source:\n"
                                   "  quiesce:\n"
                                   "    method: agent\n"
                                   "    hooks:\n"
                                   "      - {run: [psql, -c, CHECKPOINT], timeout_seconds: 10}\n"
                                   "      - {run: [sync]}\n"
                                   "    freeze_budget_seconds: 3\n"
                                   "    hold_seconds: 20\n"
                                   "  fence: {method: agent}"}})));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->quiesce.method, "agent");
  ASSERT_EQ(p->quiesce.hooks.size(), 2u);
  EXPECT_THAT(p->quiesce.hooks[0].run, ElementsAre("psql", "-c", "CHECKPOINT"));
  EXPECT_EQ(p->quiesce.hooks[0].timeout_seconds, 10);
  EXPECT_EQ(p->quiesce.hooks[1].timeout_seconds, 10);  // the default
  EXPECT_EQ(p->quiesce.freeze_budget_seconds, 3);
  EXPECT_EQ(p->quiesce.hold_seconds, 20);
  EXPECT_EQ(p->fence.method, "agent");
  EXPECT_EQ(p->fence.action, "remove-addresses");
  EXPECT_THAT(p->fence.addresses, ElementsAre("192.0.2.10/24"));  // the plan's network

  p = LoadCutoverPlan(Write(Plan({{"source",
                                   "source: {quiesce: {method: agent}, fence: {method: agent, "
                                   "action: poweroff}}"}})));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->fence.action, "poweroff");
  EXPECT_TRUE(p->fence.addresses.empty());
  EXPECT_EQ(p->quiesce.hold_seconds, 30);
}

TEST_F(CutoverPlanTest, AgentKeysAreChecked) {
  const auto source = [](const std::string& inner) {
    return Plan({{"source", "source: {" + inner + "}"}});
  };
  ExpectError(source("quiesce: {method: agent, hooks: [{run: []}]}, fence: {method: agent}"),
              ":4: 'source.quiesce.hooks[0].run': empty: the command to run on the source, as a "
              "list ([psql, -c, CHECKPOINT])");
  ExpectError(source("quiesce: {method: agent, hooks: [{run: [a], timeout_seconds: 0}]}, "
                     "fence: {method: agent}"),
              ":4: 'source.quiesce.hooks[0].timeout_seconds': '0' is not a positive number of "
              "seconds (e.g. 30 or 0.5)");
  ExpectError(source("quiesce: {method: agent, hooks: [{run: [a], timeout: 3}]}, "
                     "fence: {method: agent}"),
              ":4: 'source.quiesce.hooks[0].timeout': unknown key (known here: run, "
              "timeout_seconds)");
  ExpectError(source("quiesce: {method: agent, hold_seconds: 1}, fence: {method: agent}"),
              ":4: 'source.quiesce.hold_seconds': 1.0 s is too short for a lease the engine "
              "renews over the network (at least 2; 30 is the default)");
  ExpectError(source("qmp_socket: q, quiesce: {method: qmp-pause, hooks: [{run: [a]}]}, "
                     "fence: {method: qmp-poweroff}"),
              ":4: 'source.quiesce.hooks': only for method agent (the method is qmp-pause)");
  ExpectError(source("quiesce: {method: agent}, fence: {method: agent, action: halt}"),
              ":4: 'source.fence.action': 'halt' is not remove-addresses or poweroff");
  ExpectError(source("quiesce: {method: agent}, fence: {method: agent, addresses: [db01]}"),
              ":4: 'source.fence.addresses[0]': 'db01' is not an IPv4 address (192.0.2.10 or "
              "192.0.2.10/24)");
  ExpectError(source("quiesce: {method: agent}, fence: {method: agent, action: poweroff, "
                     "addresses: [192.0.2.10]}"),
              ":4: 'source.fence.addresses': only for action remove-addresses");
  ExpectError(source("qmp_socket: q, quiesce: {method: qmp-pause}, fence: {method: agent}"),
              ":4: 'source.fence.method': agent needs quiesce method agent too (a source stopped "
              "by qmp-pause cannot run its agent's fence)");
}

}  // namespace
}  // namespace cdp::failover
