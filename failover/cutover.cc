#include "cdp/failover/cutover.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cdp/core/block_device.h"
#include "cdp/core/qmp_client.h"
#include "cdp/ctl/control_client.h"
#include "cdp/failover/host_command.h"
#include "cdp/failover/target_vm.h"
#include "cdp/pe/pe_client.h"
#include "service_probe.h"
#include "step_timeline.h"

namespace cdp::failover {

namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kVerifyChunk = 64ull << 20;

std::string Fixed(double v, int digits) { return FixedSeconds(v, digits); }

}  // namespace

class CutoverEngine::Impl {
 public:
  Impl(const CutoverPlan& plan, std::ostream* timeline) : plan_(plan), steps_(timeline) {}

  CutoverReport Run() {
    report_.plan = plan_.file;
    steps_.Line("cutover of " + plan_.name + " (" + std::to_string(plan_.volumes.size()) +
         " volume(s)) to target " + plan_.target.name);
    auto step = [&](const std::string& name, const std::function<Result<std::string>()>& fn) {
      return steps_.Step(name, fn, &report_.error);
    };
    bool ok = step("precheck", [&] { return Precheck(); }) &&
              step("quiesce", [&] { return Quiesce(); }) && step("drain", [&] { return Drain(); }) &&
              step("verify", [&] { return Verify(); });
    if (!ok) {
      Rollback();
      return Finish();
    }
    ok = step("fence", [&] { return Fence(); }) && step("promote", [&] { return Promote(); }) &&
         step("health", [&] { return Health(); });
    if (!ok) AfterFenceFailure();
    report_.ok = ok;
    if (ok) report_.downtime_seconds = steps_.Since() - quiesce_start_;
    return Finish();
  }

 private:
  CutoverReport Finish() {
    report_.steps = steps_.steps();
    steps_.Line(report_.ok ? "cutover done: downtime " + Fixed(report_.downtime_seconds, 2) + " s"
                    : "cutover FAILED: " + report_.error +
                          (report_.rollback.empty() ? "" : "; " + report_.rollback));
    return report_;
  }

  // Errors name the plan key, so an operator knows what to fix.
  Result<std::unique_ptr<QmpClient>> SourceQmp() {
    auto qmp = QmpClient::Connect(plan_.source_qmp_socket, 5000);
    if (!qmp.ok()) {
      return qmp.status().WithContext(plan_.Where("source.qmp_socket") + ": " +
                                      plan_.source_qmp_socket);
    }
    return qmp;
  }

  Result<v1::VolumeStatus> JournalVolume(const std::string& volume) {
    auto client = ctl::ControlClient::Connect(plan_.journal, 5000);
    if (!client.ok()) {
      return client.status().WithContext(plan_.Where("journal") + ": " + plan_.journal);
    }
    CDP_ASSIGN_OR_RETURN(auto reply, (*client)->Status(5000));
    for (const auto& v : reply.volumes()) {
      if (v.name() == volume) return v;
    }
    const auto at = std::find(plan_.volumes.begin(), plan_.volumes.end(), volume);
    return Status::NotFound(
        plan_.Where("volumes[" + std::to_string(at - plan_.volumes.begin()) + "]") +
        ": the journal-server at " + plan_.journal + " has no volume " + volume +
        ": it is not protected; start its cdp-agent (or fix the name); nothing was touched");
  }

  Result<v1::PeStatusReply> TargetStatus() {
    auto client =
        pe::PeClient::Connect(plan_.target.replication_endpoint, v1::ROLE_CONTROL, "", 0, 3000);
    if (!client.ok()) {
      return client.status().WithContext(plan_.Where("target.config") + ": " + plan_.target_config);
    }
    return (*client)->Status(5000);
  }

  Result<std::string> Precheck() {
    if (!plan_.source_qmp_socket.empty()) {
      CDP_ASSIGN_OR_RETURN(auto qmp, SourceQmp());
      CDP_ASSIGN_OR_RETURN(auto st, qmp->Execute("query-status"));
      if (!st.value("running", false)) {
        return Status::FailedPrecondition("the source VM is not running (QMP status " +
                                          st.value("status", "?") + ")");
      }
    }
    CDP_ASSIGN_OR_RETURN(auto pe, TargetStatus());
    if (pe.state() != "pe-ready") {
      return Status::FailedPrecondition("the target is " + pe.state() + ": " + pe.error());
    }
    std::string lags;
    for (const auto& volume : plan_.volumes) {
      CDP_ASSIGN_OR_RETURN(auto v, JournalVolume(volume));
      if (!v.agent_connected()) {
        return Status::FailedPrecondition("volume " + volume + ": its agent is not connected");
      }
      if (v.lag_seconds() > plan_.budgets.lag_seconds) {
        return Status::FailedPrecondition("volume " + volume + " lags " +
                                          Fixed(v.lag_seconds(), 1) + " s, over the budget of " +
                                          Fixed(plan_.budgets.lag_seconds, 1) + " s");
      }
      lags += (lags.empty() ? "" : ", ") + volume + " lag " + Fixed(v.lag_seconds(), 2) + " s";
    }
    return "source running, target pe-ready, " + lags;
  }

  Result<std::string> Quiesce() {
    quiesce_start_ = steps_.Since();
    if (plan_.quiesce.method == "qmp-pause") {
      CDP_ASSIGN_OR_RETURN(auto qmp, SourceQmp());
      CDP_RETURN_IF_ERROR(qmp->Execute("stop", nullptr, 10000).status());
      paused_ = true;
    } else if (plan_.quiesce.method == "command") {
      CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(plan_.quiesce.command, 60000));
      if (r.exit_code != 0) {
        return Status::FailedPrecondition(CommandLine(plan_.quiesce.command) + " exited " +
                                          std::to_string(r.exit_code) + ": " + r.output);
      }
      quiesced_by_command_ = true;
    } else {
      return Status::NotSupported("quiesce method " + plan_.quiesce.method + " is not built");
    }
    // Everything the source wrote is captured; wait until the journal has all of it, as a
    // report newer than the quiesce says.
    const auto deadline =
        Clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(plan_.budgets.drain_seconds * 1000));
    std::string out;
    for (const auto& volume : plan_.volumes) {
      CDP_ASSIGN_OR_RETURN(auto first, JournalVolume(volume));
      while (true) {
        CDP_ASSIGN_OR_RETURN(auto v, JournalVolume(volume));
        if (v.report_sequence() > first.report_sequence() + 1 && v.pending_bytes() == 0 &&
            v.dirty_bytes() == 0 && v.captured_lsn() == v.durable_lsn()) {
          report_.final_lsn.push_back({volume, v.durable_lsn()});
          out +=
              (out.empty() ? "" : ", ") + volume + " final LSN " + std::to_string(v.durable_lsn());
          break;
        }
        if (Clock::now() > deadline) {
          return Status::TimedOut("volume " + volume + ": the journal did not get everything " +
                                  "within the drain budget (captured " +
                                  std::to_string(v.captured_lsn()) + ", durable " +
                                  std::to_string(v.durable_lsn()) + ")");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    return std::string(paused_ ? "source paused (QMP stop); " : "source quiesced; ") + out;
  }

  Result<std::string> Drain() {
    const auto deadline =
        Clock::now() +
        std::chrono::milliseconds(static_cast<int64_t>(plan_.budgets.drain_seconds * 1000));
    while (true) {
      CDP_ASSIGN_OR_RETURN(auto pe, TargetStatus());
      bool all = true;
      std::string out;
      for (const auto& [volume, lsn] : report_.final_lsn) {
        uint64_t applied = 0;
        for (const auto& v : pe.volumes()) {
          if (v.name() == volume) applied = v.applied_lsn();
        }
        if (applied < lsn) all = false;
        out += (out.empty() ? "" : ", ") + volume + " applied " + std::to_string(applied) + "/" +
               std::to_string(lsn);
      }
      if (all) return "target applied every final LSN: " + out;
      if (Clock::now() > deadline) {
        return Status::TimedOut("the target did not apply the final LSN within " +
                                Fixed(plan_.budgets.drain_seconds, 0) + " s: " + out);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  Result<std::string> Verify() {
    if (plan_.source_devices.empty()) return std::string("skipped: the plan names no devices");
    TargetVm target(plan_.target);
    uint64_t regions = 0, bytes = 0;
    for (size_t i = 0; i < plan_.volumes.size(); ++i) {
      const std::string& volume = plan_.volumes[i];
      uint64_t applied = 0;
      CDP_ASSIGN_OR_RETURN(auto sums, target.Checksums(volume, 0, 0, kVerifyChunk, &applied));
      BlockDeviceOptions opts;
      CDP_ASSIGN_OR_RETURN(auto dev, OpenBlockDevice(plan_.source_devices[i], opts));
      AlignedBuffer buf(kVerifyChunk);
      for (const auto& r : sums) {
        CDP_RETURN_IF_ERROR(dev->ReadAt(r.offset, std::span<char>(buf.data(), r.length)));
        const uint64_t h = XXH3_64bits(buf.data(), r.length);
        if (h != r.xxh3) {
          char text[160];
          snprintf(text, sizeof(text),
                   "volume %s: region %llu+%llu differs (source %016llx, target %016llx)",
                   volume.c_str(), static_cast<unsigned long long>(r.offset),
                   static_cast<unsigned long long>(r.length), static_cast<unsigned long long>(h),
                   static_cast<unsigned long long>(r.xxh3));
          return Status::Corruption(text);
        }
        ++regions;
        bytes += r.length;
      }
    }
    report_.verify =
        std::to_string(regions) + " regions (" + std::to_string(bytes >> 20) + " MiB) equal";
    return report_.verify;
  }

  Result<std::string> Fence() {
    fence_started_ = true;
    if (plan_.fence.method == "qmp-poweroff") {
      CDP_ASSIGN_OR_RETURN(auto qmp, SourceQmp());
      CDP_RETURN_IF_ERROR(qmp->Execute("quit", nullptr, 10000).status());
      return std::string("source powered off (QMP quit)");
    }
    if (plan_.fence.method == "qmp-pause") return std::string("source stays paused");
    CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(plan_.fence.command, 60000));
    if (r.exit_code != 0) {
      return Status::FailedPrecondition(CommandLine(plan_.fence.command) + " exited " +
                                        std::to_string(r.exit_code) + ": " + r.output);
    }
    return "fenced by " + CommandLine(plan_.fence.command);
  }

  Result<std::string> Promote() {
    CDP_ASSIGN_OR_RETURN(std::string result,
                         RequestTakeover(plan_.target.replication_endpoint, plan_));
    promoted_ = true;
    return result;
  }

  Result<std::string> Health() { return WaitForService(plan_, plan_.budgets.takeover_seconds); }

  void Rollback() {
    if (plan_.rollback == "none") {
      report_.rollback = "no rollback (plan says none)";
      return;
    }
    if (paused_) {
      auto qmp = SourceQmp();
      Status s = qmp.ok() ? (*qmp)->Execute("cont").status() : qmp.status();
      report_.rollback = s.ok() ? "rolled back: the source VM runs again (QMP cont)"
                                : "ROLLBACK FAILED: QMP cont: " + s.message();
    } else if (quiesced_by_command_ && !plan_.quiesce.resume_command.empty()) {
      auto r = RunHostCommand(plan_.quiesce.resume_command, 60000);
      report_.rollback = r.ok() && r->exit_code == 0
                             ? "rolled back: " + CommandLine(plan_.quiesce.resume_command)
                             : "ROLLBACK FAILED: " + CommandLine(plan_.quiesce.resume_command);
    } else {
      report_.rollback = "nothing to roll back: the source was not touched";
    }
    steps_.Line(report_.rollback);
  }

  // A step from the fence on failed. Before the promotion the target is still in the PE and the
  // source can serve again if the fence left it able to (QMP pause); after it, the migrated OS
  // runs on the target and may hold the service address, so nothing is undone automatically.
  void AfterFenceFailure() {
    const std::string console = plan_.target.console_log();
    if (promoted_) {
      report_.rollback =
          "NO ROLLBACK after the promotion: the migrated OS runs on the target (console " +
          console + ") and may hold the service address; the source is " +
          (plan_.fence.method == "qmp-poweroff" ? "powered off"
           : plan_.fence.method == "qmp-pause"  ? "paused"
                                                : "fenced by " + CommandLine(plan_.fence.command)) +
          ". Fix the target's service, or stop the target (cdpctl target stop) before "
          "bringing the source back";
    } else if (plan_.fence.method == "qmp-pause" || !fence_started_) {
      Rollback();
      if (report_.rollback.rfind("rolled back", 0) == 0) {
        report_.rollback += "; the target stays in the PE";
      }
    } else {
      report_.rollback =
          "ROLLBACK IMPOSSIBLE: the source was " +
          (plan_.fence.method == "qmp-poweroff"
               ? std::string("powered off at the fence (QMP quit)")
               : "fenced by " + CommandLine(plan_.fence.command) + ", which has no undo") +
          "; the target is still in the PE, not promoted: start the source again (its disk is "
          "intact and protected) or run the cutover again";
    }
    steps_.Line(report_.rollback);
  }

  const CutoverPlan& plan_;
  StepTimeline steps_;
  CutoverReport report_;
  double quiesce_start_ = 0;
  bool paused_ = false;
  bool quiesced_by_command_ = false;
  bool fence_started_ = false;
  bool promoted_ = false;  // the takeover was sent and not refused: the target left the PE
};

CutoverEngine::CutoverEngine(CutoverPlan plan, std::ostream* timeline)
    : plan_(std::move(plan)), timeline_(timeline) {}

CutoverReport CutoverEngine::Run() { return Impl(plan_, timeline_).Run(); }

std::string CutoverReportJson(const CutoverReport& r) {
  nlohmann::json steps = nlohmann::json::array();
  for (const auto& s : r.steps) {
    steps.push_back(
        {{"name", s.name}, {"start", s.start}, {"end", s.end}, {"ok", s.ok}, {"result", s.result}});
  }
  nlohmann::json lsn = nlohmann::json::object();
  for (const auto& [v, l] : r.final_lsn) lsn[v] = l;
  return nlohmann::json({{"ok", r.ok},
                         {"plan", r.plan},
                         {"error", r.error},
                         {"rollback", r.rollback},
                         {"downtime_seconds", r.downtime_seconds},
                         {"final_lsn", lsn},
                         {"verify", r.verify},
                         {"steps", steps}})
      .dump();
}

}  // namespace cdp::failover
