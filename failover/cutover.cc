#include "cdp/failover/cutover.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "cdp/core/units.h"
#include "cdp/failover/target_snapshot.h"
#include "failover_timeouts.h"
#include "service_probe.h"
#include "step_timeline.h"

namespace cdp::failover {

namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

namespace {

// Verification compares XXH3-64 of regions this long: small enough that the outage window
// re-reads little beyond what was written since the background pass, large enough that a full
// pass is a handful of requests (the pe-agent takes up to 256 MiB of regions per request).
constexpr uint64_t kVerifyChunk = 4ull << 20;

constexpr char kNoHashes[] =
    "skipped: the plan names no devices and its source has no agent to hash them";

}  // namespace

class CutoverEngine::Impl {
 public:
  Impl(const CutoverPlan& plan, CutoverPorts& ports, std::ostream* timeline,
       const std::atomic<bool>* cancel)
      : plan_(plan),
        source_(*ports.source),
        journal_(*ports.journal),
        target_(*ports.target),
        wait_for_service_(ports.wait_for_service),
        hashes_(ports.source_hashes.get()),
        steps_(timeline),
        cancel_(cancel) {
    // Test ports that name no hashes: the plan's devices, read on this host.
    if (hashes_ == nullptr && !plan_.source_devices.empty()) {
      device_hashes_ = MakeDeviceSourceHashes(plan_);
      hashes_ = device_hashes_.get();
    }
  }

  CutoverReport Run() {
    report_.plan = plan_.file;
    steps_.Line("cutover of " + plan_.name + " (" + std::to_string(plan_.volumes.size()) +
         " volume(s)) to target " + plan_.target.name);
    auto step = [&](const std::string& name, const std::function<Result<std::string>()>& fn) {
      return steps_.Step(
          name,
          [&]() -> Result<std::string> {
            // From the fence on there is no way back: a signal no longer stops a step.
            if (!fence_started_ && name != "fence" && Cancelled()) {
              return Status::Aborted("stopped by a signal before " + name);
            }
            if (name == "fence" && Cancelled()) {
              return Status::Aborted("stopped by a signal before the fence");
            }
            return fn();
          },
          &report_.error);
    };
    bool ok = step("precheck", [&] { return Precheck(); }) &&
              step("pre-verify", [&] { return PreVerify(); }) &&
              step("quiesce", [&] { return Quiesce(); }) &&
              step("drain", [&] { return StillQuiesced(Drain()); }) &&
              step("verify", [&] { return StillQuiesced(Verify()); });
    if (!ok) {
      Rollback();
      return Finish();
    }
    ok = step("fence", [&] { return Fence(); }) && step("promote", [&] { return Promote(); }) &&
         step("health", [&] { return Health(); });
    if (!ok) AfterFenceFailure();
    report_.ok = ok;
    // From the freeze: the source served through its pre-freeze hooks.
    if (ok) {
      report_.downtime_seconds =
          steps_.Since() - quiesce_start_ - source_.ServingSecondsOfQuiesce();
    }
    return Finish();
  }

 private:
  CutoverReport Finish() {
    report_.steps = steps_.steps();
    steps_.Line(report_.ok
                    ? "cutover done: downtime " + FormatFixed(report_.downtime_seconds, 2) + " s"
                    : "cutover FAILED: " + report_.error +
                          (report_.rollback.empty() ? "" : "; " + report_.rollback));
    return report_;
  }

  // The journal's status of `volume`. Errors name the plan key, so an operator knows what to
  // fix.
  Result<v1::VolumeStatus> JournalVolume(const std::string& volume) {
    auto reply = journal_.Status();
    if (!reply.ok()) {
      return reply.status().WithContext(plan_.Where("journal") + ": " + plan_.journal);
    }
    for (const auto& v : reply->volumes()) {
      if (v.name() == volume) return v;
    }
    const auto at = std::find(plan_.volumes.begin(), plan_.volumes.end(), volume);
    return Status::NotFound(
        plan_.Where("volumes[" + std::to_string(at - plan_.volumes.begin()) + "]") +
        ": the journal-server at " + plan_.journal + " has no volume " + volume +
        ": it is not protected; start its cdp-agent (or fix the name); nothing was touched");
  }

  Result<std::string> Precheck() {
    CDP_ASSIGN_OR_RETURN(lock_, TargetLock::Acquire(plan_.target, "a cutover"));
    // A drill or export-boot killed midway leaves the target writing into deltas; promoting
    // that would drop them. Commit them back (and check every drive) first.
    CDP_ASSIGN_OR_RETURN(std::string own, PutTargetOnOwnFiles(plan_.target));
    CDP_RETURN_IF_ERROR(source_.CheckServing());
    CDP_ASSIGN_OR_RETURN(auto pe, target_.Status());
    if (!PeReady(pe)) {
      return Status::FailedPrecondition("the target is " + PeStateText(pe) + ": " + pe.error());
    }
    std::string lags;
    for (const auto& volume : plan_.volumes) {
      CDP_ASSIGN_OR_RETURN(auto v, JournalVolume(volume));
      if (!v.agent_connected()) {
        return Status::FailedPrecondition("volume " + volume + ": its agent is not connected");
      }
      if (v.lag_seconds() > plan_.budgets.lag_seconds) {
        return Status::FailedPrecondition(
            "volume " + volume + " lags " + FormatFixed(v.lag_seconds(), 1) +
            " s, over the budget of " + FormatFixed(plan_.budgets.lag_seconds, 1) + " s");
      }
      lags +=
          (lags.empty() ? "" : ", ") + volume + " lag " + FormatFixed(v.lag_seconds(), 2) + " s";
    }
    // What the promotion would refuse (an initramfs without virtio drivers, a network config
    // that cannot be mapped) is refused now, before the source is touched.
    CDP_ASSIGN_OR_RETURN(const std::string dry_run, DryRunTakeover(target_, plan_));
    return "source running, target pe-ready, " + lags + "; " + dry_run +
           (own.empty() ? "" : "; " + own);
  }

  // A step after the quiesce succeeded only while the source is still quiesced (an agent's
  // freeze can be lost: its lease not renewed).
  Result<std::string> StillQuiesced(Result<std::string> done) {
    if (!done.ok()) return done;
    CDP_RETURN_IF_ERROR(source_.CheckQuiesced());
    return done;
  }

  // The agent named each volume's final LSN at its freeze: wait until the journal holds it.
  Result<std::string> AwaitFinalLsns(const std::string& quiesced,
                                     const std::vector<std::pair<std::string, uint64_t>>& finals) {
    const auto deadline = Clock::now() + SecondsToMs(plan_.budgets.drain_seconds);
    std::string out;
    for (const auto& volume : plan_.volumes) {
      auto it = std::find_if(finals.begin(), finals.end(),
                             [&](const auto& f) { return f.first == volume; });
      if (it == finals.end()) {
        return Status::FailedPrecondition("volume " + volume +
                                          ": the source's quiesce reported no final LSN for it");
      }
      while (true) {
        CDP_ASSIGN_OR_RETURN(auto v, JournalVolume(volume));
        if (v.durable_lsn() >= it->second) break;
        if (Cancelled())
          return Status::Aborted("stopped by a signal while waiting for the journal");
        if (Clock::now() > deadline) {
          return Status::TimedOut("volume " + volume + ": the journal did not get the final LSN " +
                                  std::to_string(it->second) +
                                  " within the drain budget (durable " +
                                  std::to_string(v.durable_lsn()) + ")");
        }
        std::this_thread::sleep_for(kPollInterval);
      }
      report_.final_lsn.push_back({volume, it->second});
      out += (out.empty() ? "" : ", ") + volume + " final LSN " + std::to_string(it->second);
    }
    return quiesced + "; " + out;
  }

  Result<std::string> Quiesce() {
    quiesce_start_ = steps_.Since();
    CDP_ASSIGN_OR_RETURN(const std::string quiesced, source_.Quiesce());
    quiesced_ = true;
    if (auto finals = source_.FinalLsns(); !finals.empty()) return AwaitFinalLsns(quiesced, finals);
    // Everything the source wrote is captured; wait until the journal has all of it, as a
    // report newer than the quiesce says.
    const auto deadline = Clock::now() + SecondsToMs(plan_.budgets.drain_seconds);
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
        if (Cancelled()) return Status::Aborted("stopped by a signal while waiting for the journal");
        if (Clock::now() > deadline) {
          return Status::TimedOut("volume " + volume + ": the journal did not get everything " +
                                  "within the drain budget (captured " +
                                  std::to_string(v.captured_lsn()) + ", durable " +
                                  std::to_string(v.durable_lsn()) + ")");
        }
        std::this_thread::sleep_for(kPollInterval);
      }
    }
    return quiesced + "; " + out;
  }

  Result<std::string> Drain() {
    const auto deadline = Clock::now() + SecondsToMs(plan_.budgets.drain_seconds);
    while (true) {
      CDP_ASSIGN_OR_RETURN(auto pe, target_.Status());
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
      if (Cancelled()) return Status::Aborted("stopped by a signal while the target drained: " + out);
      if (Clock::now() > deadline) {
        return Status::TimedOut("the target did not apply the final LSN within " +
                                FormatFixed(plan_.budgets.drain_seconds, 0) + " s: " + out);
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  // The target's checksums of `regions` (indices of kVerifyChunk regions below `size`), one
  // request per run of consecutive regions, appended to *sums in order.
  Status TargetChecksums(const std::string& volume, const std::set<uint64_t>& regions,
                         uint64_t size, std::vector<RegionChecksum>* sums) {
    for (auto it = regions.begin(); it != regions.end();) {
      const uint64_t first = *it;
      uint64_t last = first;
      for (++it; it != regions.end() && *it == last + 1; ++it) last = *it;
      const uint64_t offset = first * kVerifyChunk;
      if (offset >= size) continue;
      const uint64_t end = std::min(size, (last + 1) * kVerifyChunk);
      CDP_ASSIGN_OR_RETURN(auto run,
                           target_.Checksums(volume, offset, end - offset, kVerifyChunk, nullptr));
      sums->insert(sums->end(), run.begin(), run.end());
    }
    return Status::Ok();
  }

  // One volume of a CompareVolumes call.
  struct VolumeCompare {
    size_t index = 0;                             // in plan_.volumes
    const std::set<uint64_t>* regions = nullptr;  // kVerifyChunk-region indices; null: all
    std::set<uint64_t> differ;                    // out, without must_match: regions that differ
    uint64_t compared = 0;                        // out: regions compared
    uint64_t bytes = 0;                           // out: their bytes
  };

  uint64_t VolumeSize(const std::string& volume) const {
    for (const auto& d : plan_.target.disks) {
      if (d.volume == volume) return d.size;
    }
    return 0;
  }

  // The source regions to hash for `regions` (all of them when null) of a volume of `size`.
  static std::vector<RegionChecksum> RegionsToHash(uint64_t size,
                                                   const std::set<uint64_t>* regions) {
    std::vector<RegionChecksum> out;
    auto add = [&](uint64_t r) {
      const uint64_t offset = r * kVerifyChunk;
      if (offset < size) out.push_back({offset, std::min(kVerifyChunk, size - offset), 0});
    };
    if (regions == nullptr) {
      for (uint64_t r = 0; r * kVerifyChunk < size; ++r) add(r);
    } else {
      for (const uint64_t r : *regions) add(r);  // the window's few, not every region
    }
    return out;
  }

  // Compares the regions of every volume in *jobs, the source's XXH3 against the target's
  // pe-agent's. The regions are known before either side answers, so the source hashes every
  // volume at once (a thread per volume: its agent hashes each device on a thread of its own,
  // and under load each gets its share of the source's CPU) while this thread asks the target
  // for each volume's checksums in plan order: the pass takes about its longest volume, not the
  // sum. A volume of unknown size takes the target's list first, then the source's. Then, in
  // plan order: the first error; with `must_match`, Corruption naming the first region that
  // differs; else the differing regions go to each job's `differ`.
  Status CompareVolumes(std::vector<VolumeCompare>* jobs, bool must_match) {
    const size_t n = jobs->size();
    std::vector<std::vector<RegionChecksum>> source(n), sums(n);
    std::vector<Status> source_status(n, Status::Ok()), target_status(n, Status::Ok());
    std::vector<uint64_t> sizes(n, 0);
    std::vector<std::jthread> hashing;  // joined below, or on the way out whatever happens
    hashing.reserve(n);
    for (size_t k = 0; k < n; ++k) {
      const std::string& volume = plan_.volumes[(*jobs)[k].index];
      sizes[k] = VolumeSize(volume);
      if (sizes[k] == 0) continue;
      source[k] = RegionsToHash(sizes[k], (*jobs)[k].regions);
      hashing.emplace_back([this, &source, &source_status, volume, k] {
        source_status[k] = hashes_->Hash(volume, &source[k]);
      });
    }
    for (size_t k = 0; k < n; ++k) {
      const std::string& volume = plan_.volumes[(*jobs)[k].index];
      const std::set<uint64_t>* regions = (*jobs)[k].regions;
      if (sizes[k] == 0 || regions == nullptr) {  // the whole volume, one request
        auto whole = target_.Checksums(volume, 0, 0, kVerifyChunk, nullptr);
        target_status[k] = whole.status();
        if (whole.ok()) sums[k] = std::move(*whole);
        if (sizes[k] == 0 && whole.ok()) {
          source[k] = sums[k];
          source_status[k] = hashes_->Hash(volume, &source[k]);
        }
      } else {
        target_status[k] = TargetChecksums(volume, *regions, sizes[k], &sums[k]);
      }
      if (!target_status[k].ok()) break;  // the first error is the answer: ask no further
    }
    for (auto& t : hashing) t.join();
    for (size_t k = 0; k < n; ++k) {
      VolumeCompare& job = (*jobs)[k];
      const std::string& volume = plan_.volumes[job.index];
      CDP_RETURN_IF_ERROR(target_status[k]);
      CDP_RETURN_IF_ERROR(source_status[k]);
      if (sums[k].size() != source[k].size()) {
        return Status::ProtocolMismatch("volume " + volume + ": the target's pe-agent sent " +
                                        std::to_string(sums[k].size()) + " checksums for " +
                                        std::to_string(source[k].size()) + " regions");
      }
      for (size_t r = 0; r < sums[k].size(); ++r) {
        const RegionChecksum& t = sums[k][r];
        const RegionChecksum& src = source[k][r];
        if (t.offset != src.offset || t.length != src.length) {
          return Status::ProtocolMismatch(
              "volume " + volume + ": the target's pe-agent sent the checksum of " +
              std::to_string(t.offset) + "+" + std::to_string(t.length) + " where " +
              std::to_string(src.offset) + "+" + std::to_string(src.length) + " was asked");
        }
        if (src.xxh3 != t.xxh3 && must_match) {
          char text[160];
          snprintf(text, sizeof(text),
                   "volume %s: region %llu+%llu differs (source %016llx, target %016llx)",
                   volume.c_str(), static_cast<unsigned long long>(t.offset),
                   static_cast<unsigned long long>(t.length),
                   static_cast<unsigned long long>(src.xxh3),
                   static_cast<unsigned long long>(t.xxh3));
          return Status::Corruption(text);
        }
        if (src.xxh3 != t.xxh3) job.differ.insert(t.offset / kVerifyChunk);
        job.bytes += t.length;
      }
      job.compared = sums[k].size();
    }
    return Status::Ok();
  }

  // Before the quiesce, while the source runs: a mark on the target (its pe-agent notes every
  // region written from now on), then every region compared. In the window, Verify compares
  // only the regions written since the mark and those that differed here: a region neither
  // written after the mark nor differing holds, on both sides, what it held during this pass.
  Result<std::string> PreVerify() {
    if (hashes_ == nullptr) return std::string(kNoHashes);
    auto r = BackgroundPass();
    if (r.ok()) return r;
    // Not worth failing the cutover for: verify compares every region in the window instead.
    background_.clear();
    return "skipped (" + r.status().message() + "); verify compares every region in the window";
  }

  Result<std::string> BackgroundPass() {
    // Every volume's mark first, then every volume compared at once.
    std::vector<VolumeCompare> jobs(plan_.volumes.size());
    for (size_t i = 0; i < plan_.volumes.size(); ++i) {
      auto mark = target_.WrittenRegions(plan_.volumes[i], kVerifyChunk, true);
      // The pe-agent does not answer: PreVerify says so.
      if (mark.status().IsUnavailable() || mark.status().IsTimedOut()) return mark.status();
      if (!mark.ok()) {
        // A PE built before written-region marks: the window verifies every region instead.
        background_.clear();
        return "skipped: the target's pe-agent keeps no written-region mark (" +
               mark.status().message() + "); verify compares every region in the window";
      }
      background_[plan_.volumes[i]].mark_lsn = mark->mark_lsn();
      jobs[i].index = i;
    }
    CDP_RETURN_IF_ERROR(CompareVolumes(&jobs, false));
    std::string out;
    for (size_t i = 0; i < plan_.volumes.size(); ++i) {
      Background& b = background_[plan_.volumes[i]];
      b.regions = jobs[i].compared;
      b.differ = std::move(jobs[i].differ);
      out += (out.empty() ? "" : "; ") + plan_.volumes[i] + ": " + std::to_string(b.regions) +
             " regions at LSN " + std::to_string(b.mark_lsn) + ", " +
             std::to_string(b.differ.size()) + " differed (being written)";
    }
    return out;
  }

  Result<std::string> Verify() {
    if (hashes_ == nullptr) return std::string(kNoHashes);
    // Per volume: the regions written since the background pass's mark and those that differed
    // then, or (no usable mark: no background pass, or the pe-agent restarted) every region.
    const size_t n = plan_.volumes.size();
    std::vector<VolumeCompare> jobs(n);
    std::vector<std::set<uint64_t>> todo(n);
    std::vector<std::string> why_all(n);  // why every region, when so
    for (size_t i = 0; i < n; ++i) {
      const std::string& volume = plan_.volumes[i];
      jobs[i].index = i;
      auto bg = background_.find(volume);
      Result<v1::WrittenRegionsReply> written = Status::NotFound("no background pass");
      if (bg != background_.end()) written = target_.WrittenRegions(volume, 0, false);
      if (written.ok() && written->mark_lsn() == bg->second.mark_lsn &&
          written->region_bytes() == kVerifyChunk) {
        todo[i] = bg->second.differ;
        todo[i].insert(written->regions().begin(), written->regions().end());
        jobs[i].regions = &todo[i];
      } else {
        if (bg == background_.end()) {
          why_all[i] = "";
        } else if (!written.ok()) {
          why_all[i] = " (" + written.status().message() + ")";
        } else {
          why_all[i] = " (the pe-agent's mark is not the background pass's: it restarted)";
        }
      }
    }
    CDP_RETURN_IF_ERROR(CompareVolumes(&jobs, true));
    uint64_t regions = 0;
    std::string notes;
    for (size_t i = 0; i < n; ++i) {
      const std::string& volume = plan_.volumes[i];
      notes += notes.empty() ? "" : "; ";
      if (jobs[i].regions != nullptr) {
        const Background& bg = background_[volume];
        regions += bg.regions;
        notes += volume + ": " + std::to_string(jobs[i].compared) + " of " +
                 std::to_string(bg.regions) + " in the window, the rest in the " +
                 "background pass at LSN " + std::to_string(bg.mark_lsn) + " and not written since";
      } else {
        regions += jobs[i].compared;
        notes +=
            volume + ": all " + std::to_string(jobs[i].compared) + " in the window" + why_all[i];
      }
    }
    uint64_t total = 0;
    for (const auto& d : plan_.target.disks) {
      if (std::find(plan_.volumes.begin(), plan_.volumes.end(), d.volume) != plan_.volumes.end()) {
        total += d.size;
      }
    }
    report_.verify = std::to_string(regions) + " regions (" + std::to_string(total >> 20) +
                     " MiB) equal: " + notes;
    return report_.verify;
  }

  Result<std::string> Fence() {
    fence_started_ = true;
    return source_.Fence();
  }

  Result<std::string> Promote() {
    bool sent = false;
    auto result = RequestTakeover(target_, plan_, &sent);
    // Sent and not plainly refused: the target may be handing over. Treat it as promoted, so
    // the source is never resumed beside it.
    promoted_ = sent && !(result.status().code() == StatusCode::kFailedPrecondition &&
                          result.status().message().rfind("the pe-agent refused", 0) == 0);
    return result;
  }

  Result<std::string> Health() {
    return wait_for_service_(plan_.budgets.takeover_seconds, cancel_);
  }

  bool Cancelled() const { return cancel_ != nullptr && *cancel_; }

  void Rollback() {
    if (plan_.rollback == "none") {
      report_.rollback = "no rollback (plan says none)";
      return;
    }
    if (quiesced_) {
      auto resumed = source_.Resume();
      report_.rollback = resumed.ok() ? "rolled back: " + *resumed
                                      : "ROLLBACK FAILED: " + resumed.status().message();
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
    const FenceEffect fence = source_.DescribeFence();
    if (promoted_) {
      report_.rollback =
          "NO ROLLBACK after the promotion: the migrated OS runs on the target (console " +
          console + ") and may hold the service address; the source is " + fence.state +
          ". Fix the target's service, or stop the target (cdpctl target stop) before "
          "bringing the source back";
    } else if (fence.resumable || !fence_started_) {
      Rollback();
      if (report_.rollback.rfind("rolled back", 0) == 0) {
        report_.rollback += "; the target stays in the PE";
      }
    } else {
      report_.rollback =
          "ROLLBACK IMPOSSIBLE: the source was " + fence.why_final +
          "; the target is still in the PE, not promoted: start the source again (its disk is "
          "intact and protected; the target keeps replicating once its agent reconnects), then "
          "cut over again";
    }
    steps_.Line(report_.rollback);
  }

  const CutoverPlan& plan_;
  SourceControl& source_;
  JournalView& journal_;
  TargetAgent& target_;
  const ServiceWait& wait_for_service_;
  SourceHashes* hashes_;                         // null: nothing to verify with
  std::unique_ptr<SourceHashes> device_hashes_;  // plan.source_devices, when the ports name none
  StepTimeline steps_;
  const std::atomic<bool>* cancel_;
  CutoverReport report_;
  double quiesce_start_ = 0;
  bool quiesced_ = false;  // the source's writes were stopped: a rollback resumes it
  bool fence_started_ = false;
  // The background pass of each volume (PreVerify), used by Verify.
  struct Background {
    uint64_t mark_lsn = 0;
    uint64_t regions = 0;
    std::set<uint64_t> differ;
  };
  std::map<std::string, Background> background_;
  std::unique_ptr<TargetLock> lock_;
  bool promoted_ = false;  // the takeover was sent and not refused: the target left the PE
};

CutoverPorts MakeCutoverPorts(const CutoverPlan& plan) {
  CutoverPorts ports;
  std::shared_ptr<SourceAgentChannel> channel;
  if (plan.quiesce.method == "agent") channel = MakeSourceAgentChannel(plan.journal);
  ports.source = MakeSourceControl(plan, channel);
  if (!plan.source_devices.empty()) {
    ports.source_hashes = MakeDeviceSourceHashes(plan);
  } else if (channel != nullptr) {
    // A connection of its own: a long hashes request must not hold up the lease's renewals.
    ports.source_hashes = MakeAgentSourceHashes(MakeSourceAgentChannel(plan.journal));
  }
  ports.journal = MakeJournalView(plan.journal);
  ports.target = PlanTargetAgent(plan);
  ports.wait_for_service = PlanHealthCheck(plan);
  return ports;
}

CutoverEngine::CutoverEngine(CutoverPlan plan, std::ostream* timeline,
                             const std::atomic<bool>* cancel)
    : CutoverEngine(plan, MakeCutoverPorts(plan), timeline, cancel) {}

CutoverEngine::CutoverEngine(CutoverPlan plan, CutoverPorts ports, std::ostream* timeline,
                             const std::atomic<bool>* cancel)
    : plan_(std::move(plan)), ports_(std::move(ports)), timeline_(timeline), cancel_(cancel) {}

CutoverReport CutoverEngine::Run() { return Impl(plan_, ports_, timeline_, cancel_).Run(); }

std::string CutoverReportJson(const CutoverReport& r) {
  return nlohmann::json({{"ok", r.ok},
                         {"plan", r.plan},
                         {"error", r.error},
                         {"rollback", r.rollback},
                         {"downtime_seconds", r.downtime_seconds},
                         {"final_lsn", LsnsJson(r.final_lsn)},
                         {"verify", r.verify},
                         {"steps", StepsJson(r.steps)}})
      .dump();
}

}  // namespace cdp::failover
