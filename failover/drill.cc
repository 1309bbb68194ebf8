#include "cdp/failover/drill.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cdp/core/host_command.h"
#include "cdp/core/qmp_client.h"
#include "cdp/failover/target_snapshot.h"
#include "cdp/failover/target_vm.h"
#include "failover_timeouts.h"
#include "service_probe.h"
#include "step_timeline.h"

namespace cdp::failover {

namespace fs = std::filesystem;
namespace v1 = wire::v1;

namespace {

constexpr char kTap[] = "tap-drill";
constexpr char kBridge[] = "br-drill";

// Puts the calling thread into another network namespace until destroyed. Sockets it makes and
// processes it starts meanwhile live there (ZeroMQ's I/O threads too: a PeClient makes its
// context, and so its threads, when it connects).
class NetnsGuard {
 public:
  static Result<std::unique_ptr<NetnsGuard>> Enter(const std::string& name) {
    const int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) return Status::FromErrno(errno, "/proc/thread-self/ns/net");
    const std::string path = "/run/netns/" + name;
    const int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (target < 0) {
      Status s = Status::FromErrno(errno, "network namespace " + path);
      close(self);
      return s;
    }
    const int rc = setns(target, CLONE_NEWNET);
    const int err = errno;
    close(target);
    if (rc != 0) {
      close(self);
      return Status::FromErrno(err, "entering network namespace " + name);
    }
    return std::unique_ptr<NetnsGuard>(new NetnsGuard(self));
  }
  ~NetnsGuard() {
    if (setns(self_, CLONE_NEWNET) != 0) {
      // Everything after this would talk to the wrong network: stop here.
      std::fprintf(stderr, "cdpctl: cannot return to the original network namespace: %s\n",
                   std::strerror(errno));
      std::abort();
    }
    close(self_);
  }
  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;

 private:
  explicit NetnsGuard(int self) : self_(self) {}
  int self_;
};

// The drill VM's overlay of a frozen drive: STATE_DIR/NAME-drill.LABEL.qcow2.
std::string OverlayOf(const TargetConfig& t, const FrozenDrive& d) {
  return t.state_dir + "/" + t.name + "-drill." + d.label + ".qcow2";
}

// The drill VM's name: NAME-drill.
std::string DrillVmName(const TargetConfig& t) { return t.name + "-drill"; }

// The drill VM: the target's config on the overlays, in the drill namespace, its service NIC on
// the namespace's tap; same UUID and MACs (nothing else shares that network).
TargetConfig DrillVmConfig(const TargetConfig& t, const std::vector<FrozenDrive>& drives) {
  TargetConfig c = t;
  c.name = DrillVmName(t);
  c.qmp_socket = t.state_dir + "/" + c.name + ".qmp";
  for (size_t i = 0; i < c.disks.size(); ++i) c.disks[i].path = OverlayOf(t, drives[i]);
  c.metadata_disk = OverlayOf(t, drives.back());
  c.replication_host = "127.0.0.1";
  c.replication_endpoint = "tcp://127.0.0.1:" + std::to_string(t.replication_port);
  c.service_nic.mode = "tap";
  c.service_nic.tap = kTap;
  return c;
}

// The drill's sandbox on this host: TargetSnapshot deltas, `ip netns`, the drill VM by
// TargetVm.
class HostDrillSandbox final : public DrillSandbox {
 public:
  explicit HostDrillSandbox(const CutoverPlan& plan)
      : plan_(plan),
        target_(plan_.target),
        snapshot_(target_, "drill-delta"),
        drill_vm_(DrillVmConfig(target_, snapshot_.drives())) {}

  bool LeftoversExist() override {
    for (const auto& d : snapshot_.drives()) {
      if (fs::exists(OverlayOf(target_, d))) return true;
    }
    return snapshot_.DeltasExist() || fs::exists(drill_vm_.pid_file());
  }

  bool NamespaceExists() override { return fs::exists("/run/netns/" + plan_.drill_namespace); }

  Result<std::string> PrepareTarget() override {
    // The snapshot needs the target's QMP socket. (Closed at once: QEMU serves one client.)
    if (auto qmp = QmpClient::Connect(target_.qmp_socket, kQmpConnectMs); !qmp.ok()) {
      return qmp.status().WithContext(plan_.Where("target.config") + ": " + plan_.target_config +
                                      ": qmp_socket " + target_.qmp_socket);
    }
    // Deltas an export-boot left (killed midway) are committed back; every drive must run on
    // the file the config names.
    return PutTargetOnOwnFiles(target_);
  }

  Result<std::string> Freeze(std::map<std::string, uint64_t>* lsn) override {
    return snapshot_.Freeze(lsn);
  }

  Result<std::string> MakeNetwork() override {
    const std::string& ns = plan_.drill_namespace;
    const std::vector<std::vector<std::string>> commands = {
        {"ip", "netns", "add", ns},
        {"ip", "-n", ns, "link", "set", "lo", "up"},
        {"ip", "-n", ns, "link", "add", kBridge, "type", "bridge"},
        {"ip", "-n", ns, "addr", "add", plan_.drill_address, "dev", kBridge},
        {"ip", "-n", ns, "link", "set", kBridge, "up"},
        {"ip", "-n", ns, "tuntap", "add", "dev", kTap, "mode", "tap"},
        {"ip", "-n", ns, "link", "set", kTap, "master", kBridge, "up"}};
    for (const auto& argv : commands) {
      CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kIpCommandMs));
      if (r.exit_code != 0) {
        return Status::FailedPrecondition(CommandLine(argv) + " failed: " + r.output);
      }
    }
    return "namespace " + ns + ": bridge " + kBridge + " with " + plan_.drill_address + ", tap " +
           kTap + " for the drill VM";
  }

  Result<std::string> BootDrillVm() override {
    for (const auto& d : snapshot_.drives()) {
      CDP_ASSIGN_OR_RETURN(ImageInfo info, InspectImage(d.base));
      const std::vector<std::string> argv = {"qemu-img",
                                             "create",
                                             "-q",
                                             "-f",
                                             "qcow2",
                                             "-u",
                                             "-b",
                                             d.base,
                                             "-F",
                                             info.format,
                                             OverlayOf(target_, d),
                                             std::to_string(info.virtual_size)};
      CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kHostCommandMs));
      if (r.exit_code != 0) {
        return Status::IOError(CommandLine(argv) + " failed: " + r.output);
      }
    }
    std::ostringstream progress;
    Status started;
    {
      CDP_ASSIGN_OR_RETURN(auto in_ns, NetnsGuard::Enter(plan_.drill_namespace));
      started = TargetVm(drill_vm_).Start(progress);
    }
    if (!started.ok()) return started.WithContext("drill VM " + drill_vm_.name);
    const double boot = TargetVm(drill_vm_).RecordedPeBootSeconds();
    return "drill VM " + drill_vm_.name + " pe-ready in " + FormatFixed(boot, 1) +
           " s on overlays of the frozen disks (console " + drill_vm_.console_log() + ")";
  }

  Result<std::string> InNamespace(const std::function<Result<std::string>()>& fn) override {
    CDP_ASSIGN_OR_RETURN(auto in_ns, NetnsGuard::Enter(plan_.drill_namespace));
    return fn();
  }

  // In an order that leaves a state it can resume from if it dies midway (deltas go last).
  TeardownResult Teardown() override {
    TeardownResult out;
    std::ostringstream progress;
    TargetVm drill(drill_vm_);
    if (Status s = drill.Stop(progress, kDrillVmStopSeconds); s.ok()) {
      out.done.push_back("drill VM stopped");
    } else {
      out.failed.push_back("stopping the drill VM: " + s.message());
    }
    std::error_code ec;
    fs::remove(drill_vm_.qmp_socket, ec);
    fs::remove(drill_vm_.state_file(), ec);
    if (NamespaceExists()) {
      const std::vector<std::string> argv = {"ip", "netns", "del", plan_.drill_namespace};
      auto r = RunHostCommand(argv, kIpCommandMs);
      if (r.ok() && r->exit_code == 0) {
        out.done.push_back("namespace " + plan_.drill_namespace + " removed");
      } else {
        out.failed.push_back(CommandLine(argv) + ": " +
                             (r.ok() ? r->output : r.status().message()));
      }
    }
    if (out.failed.empty()) {
      for (const auto& d : snapshot_.drives()) fs::remove(OverlayOf(target_, d), ec);
    }
    if (Status s = snapshot_.Thaw(&out.done); !s.ok()) out.failed.push_back(s.message());
    return out;
  }

  const TargetConfig& drill_vm() const { return drill_vm_; }

 private:
  const CutoverPlan plan_;  // a copy: the sandbox outlives the caller's plan
  const TargetConfig& target_;
  TargetSnapshot snapshot_;
  const TargetConfig drill_vm_;
};

}  // namespace

class DrillEngine::Impl {
 public:
  Impl(const CutoverPlan& plan, DrillPorts& ports, std::ostream* timeline,
       const std::atomic<bool>* cancel)
      : plan_(plan),
        target_(plan.target),
        sandbox_(*ports.sandbox),
        journal_(*ports.journal),
        agent_(*ports.target),
        drill_agent_(*ports.drill_vm),
        wait_for_service_(ports.wait_for_service),
        steps_(timeline),
        cancel_(cancel) {}

  DrillReport Run() {
    report_.plan = plan_.file;
    steps_.Line("drill of " + plan_.name + ": target " + target_.name + " booted as " +
                DrillVmName(target_) + " in network namespace " + plan_.drill_namespace +
                "; the source is not touched");
    bool ok = Step("precheck", [&] { return Precheck(); }) &&
              Step("snapshot", [&] { return Snapshot(); }) &&
              Step("network", [&] { return sandbox_.MakeNetwork(); }) &&
              Step("boot", [&] { return sandbox_.BootDrillVm(); }) &&
              Step("prepare", [&] { return PrepareBoot(); }) &&
              Step("promote", [&] { return Promote(); }) &&
              Step("health", [&] { return Health(); }) &&
              Step("replication", [&] { return Replication(); });
    // Teardown always runs (unless precheck found a foreign namespace: nothing was made).
    if (!refused_) {
      const bool torn_down = steps_.Step(
          "teardown", [&] { return Teardown(); }, &report_.error);
      ok = ok && torn_down;
    }
    report_.ok = ok;
    report_.steps = steps_.steps();
    steps_.Line(ok ? "drill passed; the target stays in the PE, replicating"
                   : "drill FAILED: " + report_.error);
    return report_;
  }

 private:
  bool Step(const std::string& name, const std::function<Result<std::string>()>& fn) {
    return steps_.Step(
        name,
        [&]() -> Result<std::string> {
          if (cancel_ != nullptr && *cancel_) {
            return Status::Aborted("stopped by a signal before " + name);
          }
          return fn();
        },
        &report_.error);
  }

  Result<std::string> Precheck() {
    auto lock = TargetLock::Acquire(target_, "a drill");
    if (!lock.ok()) {
      refused_ = true;  // another cutover, drill or export-boot runs: touch nothing of it
      return lock.status();
    }
    lock_ = std::move(*lock);
    if (target_.service_nic.mode == "none") {
      refused_ = true;
      return Status::FailedPrecondition(
          plan_.Where("target.config") + ": " + plan_.target_config + ": target " + target_.name +
          " has service_nic.mode none; a drill boots its copy on a copy of the service network "
          "and needs the service NIC (mode tap or user)");
    }
    if (plan_.drill_address.empty()) {
      refused_ = true;
      return Status::FailedPrecondition(
          plan_.Where("drill.address") +
          ": the plan maps no address (network) to derive one from; set drill.address to "
          "ADDR/PREFIX on the service network");
    }
    std::string cleaned;
    if (sandbox_.LeftoversExist()) {
      steps_.Line("a drill that did not finish left files in " + target_.state_dir +
                  "; cleaning up first");
      auto r = Teardown();
      if (!r.ok()) {
        return Status::FailedPrecondition("cleaning up after a drill that did not finish: " +
                                          r.status().message());
      }
      cleaned = "; cleaned up after a drill that did not finish (" + *r + ")";
    } else if (sandbox_.NamespaceExists()) {
      refused_ = true;
      return Status::FailedPrecondition(
          plan_.Where("drill.namespace") + ": network namespace " + plan_.drill_namespace +
          " exists but no drill of target " + target_.name + " left it (no drill files in " +
          target_.state_dir + "); remove it (ip netns del " + plan_.drill_namespace +
          ") or choose another drill.namespace");
    }
    CDP_ASSIGN_OR_RETURN(std::string own, sandbox_.PrepareTarget());
    if (!own.empty()) cleaned += "; " + own;
    CDP_ASSIGN_OR_RETURN(auto pe, agent_.Status());
    if (!PeReady(pe)) {
      return Status::FailedPrecondition("the target is " + PeStateText(pe) + ": " + pe.error());
    }
    std::string lsns;
    for (const auto& v : pe.volumes()) {
      lsns += (lsns.empty() ? "" : ", ") + v.name() + " " + std::to_string(v.applied_lsn());
    }
    return "target " + target_.name + " pe-ready (applied LSN " + lsns + "); namespace " +
           plan_.drill_namespace + " free" + cleaned;
  }

  Result<std::string> Snapshot() {
    std::map<std::string, uint64_t> lsn;
    CDP_ASSIGN_OR_RETURN(std::string out, sandbox_.Freeze(&lsn));
    for (const auto& v : plan_.volumes) report_.snapshot_lsn.push_back({v, lsn[v]});
    return out;
  }

  // When the takeover's dry run refuses (an initramfs without the virtio drivers), the drill
  // VM's PE rebuilds it, as the target's did before a cutover. The image the target prepared is
  // kept on its metadata disk, whose overlay the drill VM boots with, so this is only needed
  // when the target never prepared it (or its metadata disk has no room to keep it). The
  // promote then installs it.
  Result<std::string> PrepareBoot() {
    return sandbox_.InNamespace([&]() -> Result<std::string> {
      auto dry = DryRunTakeover(drill_agent_, plan_);
      if (dry.ok()) return "not needed: " + *dry;
      CDP_ASSIGN_OR_RETURN(auto reply, drill_agent_.PrepareBoot(plan_.root_volume));
      if (!reply.ok()) {
        return Status::FailedPrecondition("the drill VM's pe-agent could not prepare the boot: " +
                                          reply.error() + " (" + dry.status().message() + ")");
      }
      return PrepareBootSummary(reply);
    });
  }

  Result<std::string> Promote() {
    return sandbox_.InNamespace([&] { return RequestTakeover(drill_agent_, plan_); });
  }

  Result<std::string> Health() {
    return sandbox_.InNamespace([&]() -> Result<std::string> {
      CDP_ASSIGN_OR_RETURN(std::string answer,
                           wait_for_service_(plan_.budgets.takeover_seconds, cancel_));
      return answer + " in namespace " + plan_.drill_namespace;
    });
  }

  Result<std::string> Replication() {
    CDP_ASSIGN_OR_RETURN(auto pe, agent_.Status());
    if (!PeReady(pe)) {
      return Status::FailedPrecondition("the target is " + PeStateText(pe) +
                                        " after the drill: " + pe.error());
    }
    std::string out;
    for (const auto& [volume, snapshot] : report_.snapshot_lsn) {
      uint64_t now = 0;
      for (const auto& v : pe.volumes()) {
        if (v.name() == volume) now = v.applied_lsn();
      }
      report_.applied_lsn_after.push_back({volume, now});
      out += (out.empty() ? "" : ", ") + volume + " " + std::to_string(snapshot) + " -> " +
             std::to_string(now);
    }
    // Only a note: a journal that does not answer does not fail the drill.
    std::string replicators;
    if (auto st = journal_.Status(); st.ok()) {
      for (const auto& v : st->volumes()) {
        for (const auto& name : plan_.volumes) {
          if (v.name() == name) {
            replicators += std::string(replicators.empty() ? "" : ", ") + name + " " +
                           (v.replicator_connected() ? "connected" : "NOT connected");
          }
        }
      }
    }
    return "the target went on applying during the drill: " + out +
           (replicators.empty() ? "" : " (replicator " + replicators + ")");
  }

  Result<std::string> Teardown() {
    const DrillSandbox::TeardownResult r = sandbox_.Teardown();
    std::string out;
    for (const auto& d : r.done) out += (out.empty() ? "" : "; ") + d;
    report_.teardown = out;
    if (!r.failed.empty()) {
      std::string why;
      for (const auto& f : r.failed) why += (why.empty() ? "" : "; ") + f;
      report_.teardown += (out.empty() ? "" : "; ") + std::string("FAILED: ") + why;
      return Status::FailedPrecondition(why + " (done: " + (out.empty() ? "nothing" : out) +
                                        "); run the drill again to finish the cleanup");
    }
    return out.empty() ? std::string("nothing to remove") : out;
  }

  const CutoverPlan& plan_;
  const TargetConfig& target_;
  DrillSandbox& sandbox_;
  JournalView& journal_;
  TargetAgent& agent_;
  TargetAgent& drill_agent_;
  const ServiceWait& wait_for_service_;
  StepTimeline steps_;
  const std::atomic<bool>* cancel_;
  DrillReport report_;
  bool refused_ = false;  // precheck refused before making anything: no teardown
  std::unique_ptr<TargetLock> lock_;
};

DrillPorts MakeDrillPorts(const CutoverPlan& plan) {
  DrillPorts ports;
  auto sandbox = std::make_unique<HostDrillSandbox>(plan);
  ports.drill_vm = MakeTargetAgent(sandbox->drill_vm(), "drill VM " + sandbox->drill_vm().name);
  ports.sandbox = std::move(sandbox);
  ports.journal = MakeJournalView(plan.journal);
  ports.target = PlanTargetAgent(plan);
  ports.wait_for_service = PlanHealthCheck(plan);
  return ports;
}

DrillEngine::DrillEngine(CutoverPlan plan, std::ostream* timeline, const std::atomic<bool>* cancel)
    : DrillEngine(plan, MakeDrillPorts(plan), timeline, cancel) {}

DrillEngine::DrillEngine(CutoverPlan plan, DrillPorts ports, std::ostream* timeline,
                         const std::atomic<bool>* cancel)
    : plan_(std::move(plan)), ports_(std::move(ports)), timeline_(timeline), cancel_(cancel) {}

DrillReport DrillEngine::Run() { return Impl(plan_, ports_, timeline_, cancel_).Run(); }

std::string DrillReportJson(const DrillReport& r) {
  return nlohmann::json({{"ok", r.ok},
                         {"plan", r.plan},
                         {"error", r.error},
                         {"downtime_seconds", 0.0},
                         {"snapshot_lsn", LsnsJson(r.snapshot_lsn)},
                         {"applied_lsn_after", LsnsJson(r.applied_lsn_after)},
                         {"teardown", r.teardown},
                         {"steps", StepsJson(r.steps)}})
      .dump();
}

}  // namespace cdp::failover
