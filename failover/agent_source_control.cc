// AgentSourceControl and the source hashes (source_control.h): the cutover reaching the source
// server through the cdp-agent inside it, relayed by the journal-server.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>


#include "cdp/core/block_device.h"
#include "cdp/core/region_hash.h"
#include "cdp/core/units.h"
#include "cdp/failover/source_control.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

namespace {

// What one SourceHashes request may cover (the agent refuses more: source_control_service.h).
constexpr uint64_t kAgentHashBytes = 256ull << 20;
constexpr size_t kAgentHashRegions = 4096;

class DeviceSourceHashes final : public SourceHashes {
 public:
  explicit DeviceSourceHashes(const CutoverPlan& plan)
      : volumes_(plan.volumes), devices_(plan.source_devices) {}

  Status Hash(const std::string& volume, std::vector<RegionChecksum>* regions) override {
    const auto at = std::find(volumes_.begin(), volumes_.end(), volume);
    if (at == volumes_.end() || static_cast<size_t>(at - volumes_.begin()) >= devices_.size()) {
      return Status::NotFound("volume " + volume + ": the plan names no source device for it");
    }
    BlockDeviceOptions opts;
    CDP_ASSIGN_OR_RETURN(auto dev, OpenBlockDevice(devices_[at - volumes_.begin()], opts));
    uint64_t largest = 0;
    for (const auto& r : *regions) largest = std::max(largest, r.length);
    AlignedBuffer buf(std::max<uint64_t>(largest, 4096));
    for (auto& r : *regions) {
      CDP_RETURN_IF_ERROR(dev->ReadAt(r.offset, std::span<char>(buf.data(), r.length)));
      r.xxh3 = ZeroAwareXxh3(std::span<const char>(buf.data(), r.length));
    }
    return Status::Ok();
  }

 private:
  std::vector<std::string> volumes_, devices_;
};

class AgentSourceHashes final : public SourceHashes {
 public:
  explicit AgentSourceHashes(std::shared_ptr<SourceAgentChannel> channel)
      : channel_(std::move(channel)) {}

  Status Hash(const std::string& volume, std::vector<RegionChecksum>* regions) override {
    for (size_t first = 0; first < regions->size();) {
      v1::SourceRequest request;
      request.set_volume(volume);
      auto* h = request.mutable_hashes();
      h->set_volume(volume);
      uint64_t bytes = 0;
      size_t end = first;
      while (end < regions->size() && static_cast<size_t>(h->regions_size()) < kAgentHashRegions &&
             (end == first || bytes + (*regions)[end].length <= kAgentHashBytes)) {
        auto* r = h->add_regions();
        r->set_offset((*regions)[end].offset);
        r->set_length((*regions)[end].length);
        bytes += (*regions)[end].length;
        ++end;
      }
      auto reply = channel_->Call(request, kPeChecksumsMs);
      if (!reply.ok()) {
        return reply.status().WithContext("volume " + volume + ": the source's agent hashing");
      }
      if (static_cast<size_t>(reply->xxh3_size()) != end - first) {
        return Status::ProtocolMismatch("volume " + volume + ": the source's agent sent " +
                                        std::to_string(reply->xxh3_size()) + " hashes for " +
                                        std::to_string(end - first) + " regions");
      }
      for (size_t i = first; i < end; ++i) (*regions)[i].xxh3 = reply->xxh3(i - first);
      first = end;
    }
    return Status::Ok();
  }

 private:
  std::shared_ptr<SourceAgentChannel> channel_;
};

int Ms(double seconds) { return static_cast<int>(SecondsToMs(seconds).count()); }

class AgentSourceControl final : public SourceControl {
 public:
  AgentSourceControl(const CutoverPlan& plan, std::shared_ptr<SourceAgentChannel> channel)
      : channel_(std::move(channel)),
        group_(plan.name),
        journal_(plan.journal),
        volumes_(plan.volumes),
        quiesce_(plan.quiesce),
        fence_(plan.fence) {}

  ~AgentSourceControl() override { StopRenewing(); }

  Status CheckServing() override {
    v1::SourceRequest request = Request();
    request.mutable_status();
    auto reply = channel_->Call(request, kJournalCallMs);
    if (!reply.ok()) return Reworded(reply.status());
    std::string have;
    for (const auto& v : reply->volumes()) have += (have.empty() ? "" : ", ") + v.volume();
    for (const auto& volume : volumes_) {
      const bool found = std::any_of(reply->volumes().begin(), reply->volumes().end(),
                                     [&](const auto& v) { return v.volume() == volume; });
      if (!found) {
        return Status::FailedPrecondition(
            "volume " + volume + " is not protected by the agent of volume " + volumes_[0] +
            " (it protects: " + have +
            "): one agent process must protect every volume of the group to freeze them "
            "together");
      }
    }
    if (!reply->can_freeze()) {
      return Status::FailedPrecondition("the source's agent cannot freeze: " + reply->done());
    }
    if (reply->frozen()) {
      return Status::FailedPrecondition(
          "the source's agent holds a freeze already (for " +
          FormatFixed(reply->held_seconds(), 1) +
          " s: another cutover runs, or one stopped hard; it thaws when its lease passes)");
    }
    return Status::Ok();
  }

  Result<std::string> Quiesce() override {
    v1::SourceRequest request = Request();
    auto* q = request.mutable_quiesce();
    for (const auto& v : volumes_) q->add_volumes(v);
    double hooks_seconds = 0;
    for (const auto& h : quiesce_.hooks) {
      auto* hook = q->add_hooks();
      for (const auto& a : h.run) hook->add_argv(a);
      hook->set_timeout_ms(static_cast<uint32_t>(Ms(h.timeout_seconds)));
      hooks_seconds += h.timeout_seconds;
    }
    q->set_freeze_budget_ms(static_cast<uint32_t>(Ms(quiesce_.freeze_budget_seconds)));
    q->set_hold_ms(static_cast<uint32_t>(Ms(quiesce_.hold_seconds)));
    q->set_label("cutover");
    auto reply = channel_->Call(
        request, Ms(hooks_seconds + quiesce_.freeze_budget_seconds) + kJournalCallMs * 2);
    if (!reply.ok()) {
      // A reply lost on the way (timeout, session drop) may hide a freeze: let go of it. The
      // agent's own errors leave nothing frozen; a release then says so.
      (void)Release();
      return Reworded(reply.status());
    }
    final_lsns_.clear();
    std::string out = "source frozen by its agent in " + FormatFixed(reply->freeze_seconds(), 3) +
                      " s (lease " + FormatFixed(quiesce_.hold_seconds, 0) + " s)";
    for (const auto& v : reply->volumes()) final_lsns_.emplace_back(v.volume(), v.final_lsn());
    hooks_seconds_ = 0;
    for (const auto& h : reply->hooks()) {
      out += "; hook " + h.command() + " " + FormatFixed(h.seconds(), 2) + " s";
      hooks_seconds_ += h.seconds();
    }
    StartRenewing();
    return out;
  }

  double ServingSecondsOfQuiesce() const override { return hooks_seconds_; }

  Result<std::string> Resume() override {
    StopRenewing();
    auto reply = Release();
    if (!reply.ok() && reply.status().IsUnavailable()) {
      // Its thaw watchdog thaws at once when the agent dies, at the lease's end otherwise.
      return "the source's agent is gone (" + reply.status().message() +
             "): its thaw watchdog thaws the source when the agent ends, at the latest when the "
             "freeze's lease passes (" +
             FormatFixed(quiesce_.hold_seconds, 0) + " s after the last renewal)";
    }
    if (!reply.ok()) {
      return Status(reply.status().code(),
                    "release: " + reply.status().message() + "; the source thaws by itself when " +
                        "its freeze's lease passes (" + FormatFixed(quiesce_.hold_seconds, 0) +
                        " s after the last renewal)");
    }
    return "the source's agent thawed it (" + reply->done() + ")";
  }

  Result<std::string> Fence() override {
    v1::SourceRequest request = Request();
    auto* f = request.mutable_fence();
    const bool poweroff = fence_.action == "poweroff";
    f->set_action(poweroff ? v1::FENCE_POWEROFF : v1::FENCE_REMOVE_ADDRESSES);
    for (const auto& a : fence_.addresses) f->add_addresses(a);
    auto reply = channel_->Call(request, kJournalCallMs * 2);
    if (!reply.ok()) return Status(reply.status().code(), "fence: " + reply.status().message());
    if (!poweroff) return "the source's agent " + reply->done();
    StopRenewing();
    // Confirmed once its agent is gone: the journal-server no longer hears it.
    const auto deadline = Clock::now() + std::chrono::milliseconds(kPowerOffConfirmMs);
    while (Clock::now() < deadline) {
      v1::SourceRequest status = Request();
      status.mutable_status();
      auto s = channel_->Call(status, kJournalCallMs);
      if (s.status().IsUnavailable())
        return "source powered off by its agent (" + reply->done() + ")";
      std::this_thread::sleep_for(kBootPollInterval);
    }
    return Status::TimedOut("fence: the source's agent still answers " +
                            std::to_string(kPowerOffConfirmMs / 1000) + " s after its power-off (" +
                            reply->done() + ")");
  }

  FenceEffect DescribeFence() const override {
    if (fence_.action == "poweroff") {
      return {false, "powered off", "powered off at the fence (by its agent)"};
    }
    std::string list;
    for (const auto& a : fence_.addresses) list += (list.empty() ? "" : ", ") + a;
    return {false, "frozen without its service addresses (" + list + ")",
            "fenced: its agent removed the service addresses " + list +
                "; put them back by hand (ip addr add) once the target no longer holds them; the "
                "source thaws when its freeze's lease passes"};
  }

  std::vector<std::pair<std::string, uint64_t>> FinalLsns() const override { return final_lsns_; }

  Status CheckQuiesced() override {
    std::lock_guard<std::mutex> lock(mu_);
    return lost_;
  }

 private:
  static constexpr int kPowerOffConfirmMs = 30000;

  v1::SourceRequest Request() const {
    v1::SourceRequest r;
    r.set_volume(volumes_[0]);
    return r;
  }

  Result<v1::SourceReply> Release() {
    v1::SourceRequest request = Request();
    request.mutable_release();
    return channel_->Call(request, kJournalCallMs * 2);
  }

  // The relay's "no agent connected" says which unit to look at.
  Status Reworded(const Status& s) const {
    if (s.IsUnavailable() && s.message().find("no agent connected") != std::string::npos) {
      return Status::Unavailable("volume " + volumes_[0] + ": no agent connected; is cdp-agent@" +
                                 group_ + " running on the source? (journal-server " + journal_ +
                                 ")");
    }
    return s;
  }

  // The lease: renewed every third of it. A renewal the agent refuses (no freeze held: the
  // watchdog thawed) or none that got through for a whole lease marks the quiesce lost.
  void StartRenewing() {
    StopRenewing();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = false;
      lost_ = Status::Ok();
    }
    renewer_ = std::thread([this] {
      const auto period = SecondsToMs(quiesce_.hold_seconds / 3);
      auto last_ok = Clock::now();
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        if (cv_.wait_for(lock, period, [this] { return stop_; })) break;
        lock.unlock();
        v1::SourceRequest request = Request();
        request.mutable_hold()->set_hold_ms(static_cast<uint32_t>(Ms(quiesce_.hold_seconds)));
        auto reply = channel_->Call(request, static_cast<int>(period.count()));
        lock.lock();
        if (reply.ok()) {
          last_ok = Clock::now();
        } else if (lost_.ok() && (reply.status().code() == StatusCode::kFailedPrecondition ||
                                  Clock::now() - last_ok >= SecondsToMs(quiesce_.hold_seconds))) {
          lost_ = Status::Aborted(
              "the source's freeze is no longer held (its lease could not be "
              "renewed: " +
              reply.status().message() + ")");
        }
      }
    });
  }

  void StopRenewing() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (renewer_.joinable()) renewer_.join();
  }

  std::shared_ptr<SourceAgentChannel> channel_;
  const std::string group_, journal_;
  const std::vector<std::string> volumes_;
  const QuiesceMethod quiesce_;
  const FenceMethod fence_;
  std::vector<std::pair<std::string, uint64_t>> final_lsns_;
  double hooks_seconds_ = 0;  // of the last Quiesce: the source served meanwhile
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = true;     // GUARDED_BY(mu_)
  Status lost_;          // GUARDED_BY(mu_)
  std::thread renewer_;  // running from a successful Quiesce until Resume, a power-off or the end
};

}  // namespace

std::unique_ptr<SourceHashes> MakeDeviceSourceHashes(const CutoverPlan& plan) {
  return std::make_unique<DeviceSourceHashes>(plan);
}

std::unique_ptr<SourceHashes> MakeAgentSourceHashes(std::shared_ptr<SourceAgentChannel> channel) {
  return std::make_unique<AgentSourceHashes>(std::move(channel));
}

std::unique_ptr<SourceControl> MakeAgentSourceControl(const CutoverPlan& plan,
                                                      std::shared_ptr<SourceAgentChannel> channel) {
  return std::make_unique<AgentSourceControl>(plan, std::move(channel));
}

}  // namespace cdp::failover
