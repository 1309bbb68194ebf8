// Test-only: fakes of the interfaces the cutover and drill engines reach the world through
// (source_control.h, journal_view.h, target_agent.h), each recording its calls, in order, into
// one shared log ("source.Quiesce", "journal.Status", "target.Checksums v 4194304+4194304", ...).
// A hook run at the Nth call of a name ("journal.Status#2") lets a test act in the middle of a
// step (set the cancel flag as SIGINT does).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cdp/core/block_device.h"
#include "cdp/failover/cutover.h"
#include "cdp/failover/journal_view.h"
#include "cdp/failover/source_control.h"
#include "cdp/failover/target_agent.h"

namespace cdp::failover::testing {

// The calls of every fake of one run, in order, and what to do at a call. Fakes may record from
// two threads at once (the verify hashes the source while the target sums); read `calls` after
// the run.
struct CallLog {
  std::vector<std::string> calls;                   // GUARDED_BY(mu) while the engine runs
  std::map<std::string, std::function<void()>> at;  // "CALL#N" -> run at the Nth such call
  std::mutex mu;

  void Record(const std::string& call) {
    std::function<void()> hook;
    {
      std::lock_guard<std::mutex> lock(mu);
      calls.push_back(call);
      const auto n = std::count(calls.begin(), calls.end(), call);
      auto it = at.find(call + "#" + std::to_string(n));
      if (it != at.end()) hook = it->second;
    }
    if (hook) hook();
  }
};

// A QEMU source as QmpSourceControl words it.
class FakeSource final : public SourceControl {
 public:
  explicit FakeSource(CallLog* log) : log_(log) {}
  ::cdp::Status check = ::cdp::Status::Ok();
  ::cdp::Status quiesce = ::cdp::Status::Ok();
  ::cdp::Status resume = ::cdp::Status::Ok();
  ::cdp::Status fence = ::cdp::Status::Ok();
  bool fence_keeps_paused = false;
  double hooks_seconds = 0;  // Quiesce sleeps this long, serving (pre-freeze hooks)

  ::cdp::Status CheckServing() override {
    log_->Record("source.CheckServing");
    return check;
  }
  Result<std::string> Quiesce() override {
    log_->Record("source.Quiesce");
    if (!quiesce.ok()) return quiesce;
    if (hooks_seconds > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(hooks_seconds));
    }
    return std::string("source paused (QMP stop)");
  }
  Result<std::string> Resume() override {
    log_->Record("source.Resume");
    if (!resume.ok()) return ::cdp::Status(resume.code(), "QMP cont: " + resume.message());
    return std::string("the source VM runs again (QMP cont)");
  }
  Result<std::string> Fence() override {
    log_->Record("source.Fence");
    if (!fence.ok()) return fence;
    return std::string(fence_keeps_paused ? "source stays paused"
                                          : "source powered off (QMP quit)");
  }
  double ServingSecondsOfQuiesce() const override { return hooks_seconds; }
  FenceEffect DescribeFence() const override {
    if (fence_keeps_paused) return {true, "paused", ""};
    return {false, "powered off", "powered off at the fence (QMP quit)"};
  }

 private:
  CallLog* log_;
};

// A journal-server whose every volume has its agent connected and everything journaled
// (captured = durable = lsn, nothing pending); each Status is a newer agent report.
class FakeJournal final : public JournalView {
 public:
  explicit FakeJournal(CallLog* log) : log_(log) {}
  std::map<std::string, uint64_t> lsn;  // the volumes it knows
  double lag_seconds = 0.5;
  uint64_t pending_bytes = 0;
  ::cdp::Status error = ::cdp::Status::Ok();

  Result<wire::v1::StatusReply> Status() override {
    log_->Record("journal.Status");
    if (!error.ok()) return error;
    wire::v1::StatusReply reply;
    ++report_sequence_;
    for (const auto& [name, l] : lsn) {
      auto* v = reply.add_volumes();
      v->set_name(name);
      v->set_agent_connected(true);
      v->set_replicator_connected(true);
      v->set_lag_seconds(lag_seconds);
      v->set_report_sequence(report_sequence_);
      v->set_pending_bytes(pending_bytes);
      v->set_captured_lsn(l);
      v->set_durable_lsn(l);
    }
    return reply;
  }

 private:
  CallLog* log_;
  uint64_t report_sequence_ = 100;
};

// A pe-agent. Checksums hash `devices[volume]` (a file) like the source side does, except the
// regions in `corrupt`.
class FakeTarget final : public TargetAgent {
 public:
  FakeTarget(CallLog* log, std::string name) : log_(log), name_(std::move(name)) {}
  wire::v1::PeState state = wire::v1::PE_STATE_READY;
  std::string error;
  std::map<std::string, uint64_t> applied;  // per volume
  std::map<std::string, std::string> devices;
  std::map<std::string, uint64_t> sizes;
  std::set<uint64_t> corrupt;     // offsets whose checksum is off by one
  bool keeps_marks = true;        // an older PE keeps no written-region marks
  std::vector<uint64_t> written;  // regions written since the mark
  ::cdp::Status status_error = ::cdp::Status::Ok();
  // The takeover: sent or not, and the reply or the error.
  bool takeover_sent = true;
  Result<wire::v1::TakeoverReply> takeover = ::cdp::Status::Internal("no takeover set");
  // PrepareBoot's reply: ok, nothing rebuilt, unless set.
  Result<wire::v1::PrepareBootReply> prepare_boot = [] {
    wire::v1::PrepareBootReply r;
    r.set_ok(true);
    r.set_initramfs("/boot/initrd.img-6.1.0-pe");
    auto* step = r.add_steps();
    step->set_name("initramfs");
    step->set_result("/boot/initrd.img-6.1.0-pe has the virtio drivers; nothing to rebuild");
    return r;
  }();
  // A dry run's reply (the cutover's precheck): ok with no changes unless set.
  Result<wire::v1::TakeoverReply> dry_run_takeover = [] {
    wire::v1::TakeoverReply r;
    r.set_ok(true);
    return r;
  }();

  Result<wire::v1::PeStatusReply> Status() override {
    log_->Record(name_ + ".Status");
    if (!status_error.ok()) return status_error;
    wire::v1::PeStatusReply reply;
    reply.set_pe_state(state);
    reply.set_error(error);
    for (const auto& [name, lsn] : applied) {
      auto* v = reply.add_volumes();
      v->set_name(name);
      v->set_applied_lsn(lsn);
    }
    return reply;
  }

  Result<wire::v1::WrittenRegionsReply> WrittenRegions(const std::string& volume,
                                                       uint64_t region_bytes, bool reset) override {
    log_->Record(name_ + ".WrittenRegions " + volume + (reset ? " reset" : ""));
    if (!keeps_marks) return ::cdp::Status::FailedPrecondition("unknown request");
    if (reset) region_bytes_ = region_bytes;
    wire::v1::WrittenRegionsReply reply;
    reply.set_mark_lsn(7);
    reply.set_region_bytes(region_bytes_);
    if (!reset) {
      for (uint64_t r : written) reply.add_regions(r);
    }
    return reply;
  }

  Result<std::vector<RegionChecksum>> Checksums(const std::string& volume, uint64_t offset,
                                                uint64_t length, uint64_t chunk,
                                                uint64_t* applied_lsn) override {
    log_->Record(name_ + ".Checksums " + volume + " " + std::to_string(offset) + "+" +
                 std::to_string(length));
    if (length == 0) length = sizes[volume] - offset;
    BlockDeviceOptions opts;
    CDP_ASSIGN_OR_RETURN(auto dev, OpenBlockDevice(devices[volume], opts));
    std::vector<RegionChecksum> out;
    AlignedBuffer buf(chunk);
    for (uint64_t pos = offset; pos < offset + length; pos += chunk) {
      const uint64_t n = std::min(chunk, offset + length - pos);
      CDP_RETURN_IF_ERROR(dev->ReadAt(pos, std::span<char>(buf.data(), n)));
      out.push_back({pos, n, XXH3_64bits(buf.data(), n) + (corrupt.count(pos) ? 1 : 0)});
    }
    if (applied_lsn != nullptr) *applied_lsn = applied[volume];
    return out;
  }

  Result<wire::v1::ApplyHoldReply> Hold(bool hold, uint32_t max_ms) override {
    log_->Record(name_ + ".Hold " + (hold ? std::to_string(max_ms) : "release"));
    return wire::v1::ApplyHoldReply();
  }

  Result<wire::v1::PrepareBootReply> PrepareBoot(const std::string& root_volume) override {
    log_->Record(name_ + ".PrepareBoot " + root_volume);
    return prepare_boot;
  }

  // When set: counts the takeover dry runs that asked to preload a kexec kernel (the fake itself
  // goes away with the engine).
  int* dry_runs_preloading_kexec = nullptr;
  Result<wire::v1::TakeoverReply> Takeover(const wire::v1::TakeoverRequest& request,
                                           bool* sent) override {
    if (request.dry_run()) {
      log_->Record(name_ + ".Takeover " + request.root_volume() + " dry-run");
      if (dry_runs_preloading_kexec && request.preload_kexec()) ++*dry_runs_preloading_kexec;
      *sent = true;
      return dry_run_takeover;
    }
    log_->Record(name_ + ".Takeover " + request.root_volume());
    *sent = takeover_sent;
    return takeover;
  }

 private:
  CallLog* log_;
  std::string name_;
  uint64_t region_bytes_ = 0;
};

// The source's agent behind the journal-server's relay, as AgentSourceControl and
// AgentSourceHashes reach it: records "agent.status", "agent.quiesce", "agent.hold",
// "agent.release", "agent.fence ACTION ADDRESSES", "agent.hashes VOLUME N"; answers `errors[KIND]`
// when set (KIND: status, quiesce, hold, release, fence, hashes). Hashes read `devices[volume]`.
// `dead`: every call fails as the relay says when the agent's session is gone.
class FakeAgentChannel final : public SourceAgentChannel {
 public:
  explicit FakeAgentChannel(CallLog* log) : log_(log) {}
  std::map<std::string, ::cdp::Status> errors;
  std::map<std::string, uint64_t> final_lsn;  // per volume
  std::map<std::string, std::string> devices;
  std::atomic<bool> dead{false};
  bool frozen = false;
  double hook_seconds = 0;  // a quiesce runs one pre-freeze hook this long ("psql -c CHECKPOINT")

  Result<wire::v1::SourceReply> Call(const wire::v1::SourceRequest& request, int) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string kind, call;
    switch (request.body_case()) {
      case wire::v1::SourceRequest::kStatus:
        kind = "status";
        break;
      case wire::v1::SourceRequest::kQuiesce:
        kind = "quiesce";
        break;
      case wire::v1::SourceRequest::kHold:
        kind = "hold";
        break;
      case wire::v1::SourceRequest::kRelease:
        kind = "release";
        break;
      case wire::v1::SourceRequest::kFence:
        kind = "fence";
        break;
      case wire::v1::SourceRequest::kHashes:
        kind = "hashes";
        break;
      default:
        break;
    }
    call = "agent." + kind;
    if (kind == "fence") {
      call += request.fence().action() == wire::v1::FENCE_POWEROFF ? " poweroff" : " remove";
      for (const auto& a : request.fence().addresses()) call += " " + a;
    }
    if (kind == "hashes") {
      call +=
          " " + request.hashes().volume() + " " + std::to_string(request.hashes().regions_size());
    }
    // Renewals run on the renewer's thread at their own pace: not in the ordered log.
    if (kind != "hold") log_->Record(call);
    if (dead) {
      return ::cdp::Status::Unavailable("journal-server: volume " + request.volume() +
                                        (kind == "status" || kind == "release"
                                             ? ": no agent connected; is the cdp-agent "
                                               "protecting it running on the source?"
                                             : ": the agent's session dropped before it "
                                               "answered the " +
                                                   kind));
    }
    if (auto e = errors.find(kind); e != errors.end()) return e->second;
    wire::v1::SourceReply reply;
    if (kind == "status") {
      reply.set_can_freeze(true);
      reply.set_frozen(frozen);
      for (const auto& [v, lsn] : final_lsn) reply.add_volumes()->set_volume(v);
    } else if (kind == "quiesce") {
      if (hook_seconds > 0) {
        std::this_thread::sleep_for(std::chrono::duration<double>(hook_seconds));
        auto* hook = reply.add_hooks();
        hook->set_command("psql -c CHECKPOINT");
        hook->set_seconds(hook_seconds);
      }
      frozen = true;
      reply.set_freeze_seconds(0.012);
      for (const auto& [v, lsn] : final_lsn) {
        auto* out = reply.add_volumes();
        out->set_volume(v);
        out->set_final_lsn(lsn);
      }
    } else if (kind == "release") {
      reply.set_done(frozen ? "thawed after 1.0 s frozen" : "nothing was frozen");
      frozen = false;
    } else if (kind == "fence") {
      reply.set_done(request.fence().action() == wire::v1::FENCE_POWEROFF
                         ? "powering off in 1.0 s (forced, the filesystems still frozen)"
                         : "removed 192.0.2.10/24 from ens192");
      if (request.fence().action() == wire::v1::FENCE_POWEROFF) dead = true;
    } else if (kind == "hashes") {
      BlockDeviceOptions opts;
      CDP_ASSIGN_OR_RETURN(auto dev, OpenBlockDevice(devices[request.hashes().volume()], opts));
      for (const auto& r : request.hashes().regions()) {
        AlignedBuffer buf(std::max<uint64_t>(r.length(), 4096));
        CDP_RETURN_IF_ERROR(dev->ReadAt(r.offset(), std::span<char>(buf.data(), r.length())));
        reply.add_xxh3(XXH3_64bits(buf.data(), r.length()));
      }
    }
    return reply;
  }

 private:
  CallLog* log_;
  std::mutex mu_;
};

// A health check that records "health" and answers *health, or Aborted once *cancel is set
// (as WaitForService words it).
inline ServiceWait FakeHealthCheck(CallLog* log, const Result<std::string>* health) {
  return [log, health](double, const std::atomic<bool>* cancel) -> Result<std::string> {
    log->Record("health");
    if (cancel != nullptr && *cancel) {
      return ::cdp::Status::Aborted(
          "stopped by a signal while waiting for 192.0.2.10:7000 (no answer yet)");
    }
    return *health;
  };
}

// A takeover reply: ok with switch_root on /dev/vda, or refused with `error`.
inline wire::v1::TakeoverReply TakeoverReply(bool ok, const std::string& error = "") {
  wire::v1::TakeoverReply reply;
  reply.set_ok(ok);
  reply.set_error(error);
  reply.set_boot_mode(wire::v1::BOOT_MODE_SWITCH_ROOT);
  reply.set_root_device("/dev/vda");
  auto* step = reply.add_steps();
  step->set_name("check");
  step->set_seconds(0.01);
  return reply;
}

}  // namespace cdp::failover::testing
