#include "cdp/agent/source_control_service.h"

#include <sys/stat.h>

#include <algorithm>

#include "cdp/agent/hook_runner.h"
#include "cdp/core/block_device.h"
#include "cdp/core/host_command.h"
#include "cdp/core/logging.h"
#include "cdp/core/region_hash.h"
#include "cdp/core/units.h"

namespace cdp::agent {

using std::chrono::milliseconds;

namespace {

bool IsBlockDevicePath(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

}  // namespace

Status PowerOffNow() {
  auto r = RunHostCommand({"systemctl", "poweroff", "--force", "--force"}, 10000);
  if (!r.ok() && r.status().IsNotFound()) r = RunHostCommand({"poweroff", "-f"}, 10000);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return Status::IOError("poweroff exited " + std::to_string(r->exit_code) + ": " + r->output);
  }
  return Status::Ok();
}

SourceControlService::~SourceControlService() {
  if (power_off_.joinable()) power_off_.join();
}

v1::SourceReply SourceControlService::Handle(const v1::SourceRequest& request) {
  v1::SourceReply reply;
  reply.set_volume(request.volume());
  reply.set_request_id(request.request_id());
  Status s;
  switch (request.body_case()) {
    case v1::SourceRequest::kQuiesce:
      s = Quiesce(request.quiesce(), &reply);
      break;
    case v1::SourceRequest::kHold:
      s = Hold(request.hold(), &reply);
      break;
    case v1::SourceRequest::kRelease:
      s = Release(&reply);
      break;
    case v1::SourceRequest::kFence:
      s = Fence(request.fence(), &reply);
      break;
    case v1::SourceRequest::kHashes:
      s = Hashes(request.hashes(), &reply);
      break;
    case v1::SourceRequest::kStatus:
      Describe(&reply);
      break;
    case v1::SourceRequest::BODY_NOT_SET:
      s = Status::InvalidArgument("a source request with no body");
      break;
  }
  if (!s.ok()) {
    reply.set_error(s.message());
    reply.set_error_code(static_cast<int32_t>(s.code()));
  }
  return reply;
}

const ControlledVolume* SourceControlService::Find(const std::string& volume) const {
  for (const auto& v : deps_.volumes) {
    if (v.volume == volume) return &v;
  }
  return nullptr;
}

std::string SourceControlService::VolumeNames() const {
  std::string out;
  for (const auto& v : deps_.volumes) out += (out.empty() ? "" : ", ") + v.volume;
  return out;
}

void SourceControlService::Describe(v1::SourceReply* reply) {
  for (const auto& v : deps_.volumes) {
    auto* s = reply->add_volumes();
    s->set_volume(v.volume);
    std::string mounts;
    for (const auto& m : v.mount_points) mounts += (mounts.empty() ? "" : " ") + m;
    s->set_mount_points(mounts);
  }
  reply->set_can_freeze(deps_.freeze != nullptr);
  if (deps_.freeze == nullptr) reply->set_done(deps_.no_freeze_reason);
  const milliseconds held = deps_.freeze ? deps_.freeze->HeldFor() : milliseconds(0);
  reply->set_frozen(held.count() > 0);
  reply->set_held_seconds(held.count() / 1000.0);
}

Status SourceControlService::Quiesce(const v1::SourceQuiesce& q, v1::SourceReply* reply) {
  std::lock_guard<std::mutex> lock(step_mu_);
  if (deps_.freeze == nullptr) {
    return Status::FailedPrecondition("this agent cannot freeze: " + deps_.no_freeze_reason);
  }
  for (const auto& volume : q.volumes()) {
    if (Find(volume) == nullptr) {
      return Status::FailedPrecondition("volume " + volume + " is not protected by this agent (" +
                                        VolumeNames() +
                                        "): one agent process must protect every volume of the "
                                        "group to freeze them together");
    }
  }
  std::vector<Hook> hooks;
  for (const auto& h : q.hooks()) {
    hooks.push_back({{h.argv().begin(), h.argv().end()}, static_cast<int>(h.timeout_ms())});
  }
  std::vector<HookRun> runs;
  Status hooked = RunHooks(hooks, &runs);
  for (const auto& r : runs) {
    auto* out = reply->add_hooks();
    out->set_command(r.command);
    out->set_exit_code(r.exit_code);
    out->set_output(r.output);
    out->set_seconds(r.seconds);
  }
  if (!hooked.ok()) return hooked;  // nothing frozen
  const auto start = std::chrono::steady_clock::now();
  auto frozen =
      deps_.freeze->FreezeAndHold(q.label().empty() ? "cutover" : q.label(),
                                  milliseconds(q.freeze_budget_ms()), milliseconds(q.hold_ms()));
  reply->set_freeze_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (!frozen.ok()) {
    return Status(frozen.status().code(), "freeze: " + frozen.status().message());
  }
  for (const auto& volume : q.volumes()) {
    auto it = std::find_if(frozen->begin(), frozen->end(),
                           [&](const FrozenVolume& f) { return f.volume == volume; });
    if (it == frozen->end()) {
      Status thawed = deps_.freeze->Thaw();
      return Status::FailedPrecondition("freeze: volume " + volume +
                                        " was not in the group freeze; thawed" +
                                        (thawed.ok() ? "" : " (thaw: " + thawed.message() + ")"));
    }
    auto* v = reply->add_volumes();
    v->set_volume(volume);
    v->set_final_lsn(it->lsn);
  }
  reply->set_frozen(true);
  reply->set_done("frozen in " + FormatFixed(reply->freeze_seconds(), 3) + " s, held for " +
                  FormatFixed(q.hold_ms() / 1000.0, 1) + " s unless renewed");
  CDP_LOG(info) << "cdp-agent: source quiesced for a cutover: " << reply->done();
  return Status::Ok();
}

Status SourceControlService::Hold(const v1::SourceHold& h, v1::SourceReply* reply) {
  if (deps_.freeze == nullptr) {
    return Status::FailedPrecondition("this agent cannot freeze: " + deps_.no_freeze_reason);
  }
  Status s = deps_.freeze->RenewHold(milliseconds(h.hold_ms()));
  if (!s.ok()) return Status(s.code(), "the freeze is no longer held: " + s.message());
  reply->set_frozen(true);
  reply->set_held_seconds(deps_.freeze->HeldFor().count() / 1000.0);
  return Status::Ok();
}

Status SourceControlService::Release(v1::SourceReply* reply) {
  std::lock_guard<std::mutex> lock(step_mu_);
  if (deps_.freeze == nullptr) {
    reply->set_done("nothing was frozen");
    return Status::Ok();
  }
  const milliseconds held = deps_.freeze->HeldFor();
  Status s = deps_.freeze->Thaw();
  if (!s.ok()) return Status(s.code(), "thaw: " + s.message());
  reply->set_done(held.count() > 0
                      ? "thawed after " + FormatFixed(held.count() / 1000.0, 1) + " s frozen"
                      : std::string("nothing was frozen (thawed already)"));
  CDP_LOG(info) << "cdp-agent: source released: " << reply->done();
  return Status::Ok();
}

Status SourceControlService::Fence(const v1::SourceFence& f, v1::SourceReply* reply) {
  std::lock_guard<std::mutex> lock(step_mu_);
  switch (f.action()) {
    case v1::FENCE_REMOVE_ADDRESSES: {
      if (f.addresses().empty()) {
        return Status::InvalidArgument("fence remove-addresses lists no address");
      }
      CDP_ASSIGN_OR_RETURN(
          std::string done,
          RemoveAddresses(*deps_.addresses, {f.addresses().begin(), f.addresses().end()}));
      reply->set_done(done);
      CDP_LOG(info) << "cdp-agent: fenced: " << done;
      return Status::Ok();
    }
    case v1::FENCE_POWEROFF: {
      if (power_off_.joinable()) return Status::FailedPrecondition("a power-off is under way");
      power_off_ = std::thread([power_off = deps_.power_off] {
        std::this_thread::sleep_for(kPowerOffDelay);
        Status s = power_off ? power_off() : Status::NotSupported("no power-off configured");
        if (!s.ok()) CDP_LOG(error) << "cdp-agent: fence power-off failed: " << s.ToString();
      });
      reply->set_done("powering off in " + FormatFixed(kPowerOffDelay.count() / 1000.0, 1) +
                      " s (forced, the filesystems still frozen)");
      CDP_LOG(warning) << "cdp-agent: fenced: " << reply->done();
      return Status::Ok();
    }
    default:
      return Status::InvalidArgument("fence action " + std::to_string(f.action()) +
                                     " is not remove-addresses or poweroff");
  }
}

Status SourceControlService::Hashes(const v1::SourceHashes& h, v1::SourceReply* reply) {
  const ControlledVolume* v = Find(h.volume());
  if (v == nullptr) {
    return Status::NotFound("hashes: volume " + h.volume() + " is not protected by this agent (" +
                            VolumeNames() + ")");
  }
  if (h.regions_size() > kMaxHashRegions) {
    return Status::InvalidArgument("hashes: " + std::to_string(h.regions_size()) +
                                   " regions in one request; at most " +
                                   std::to_string(kMaxHashRegions) + ": split the request");
  }
  uint64_t total = 0;
  for (const auto& r : h.regions()) total += r.length();
  if (total > kMaxHashBytes) {
    return Status::InvalidArgument("hashes: " + std::to_string(total) +
                                   " bytes in one request; at most " +
                                   std::to_string(kMaxHashBytes) + " (256 MiB): split the request");
  }
  BlockDeviceOptions opts;
  opts.direct = true;  // past the page cache: what the filesystem wrote, not a stale copy
  auto dev = OpenBlockDevice(v->device, opts);
  if (!dev.ok() && !IsBlockDevicePath(v->device)) {
    // An image file (NBD mode) on a filesystem that refuses O_DIRECT (tmpfs): the page cache is
    // the file's own, so a buffered read is current.
    opts.direct = false;
    dev = OpenBlockDevice(v->device, opts);
  }
  if (!dev.ok()) return dev.status().WithContext("hashes: volume " + h.volume());
  const uint64_t size = (*dev)->size();
  const uint64_t bs = (*dev)->logical_block_size();
  // A verify region (4 MiB) per read: on a busy source each synchronous read waits for the CPU
  // behind the database's processes, so fewer, larger reads finish the pass sooner.
  constexpr uint64_t kChunk = 4ull << 20;
  AlignedBuffer buf(kChunk + bs);
  RegionHasher hasher;  // zeros are scanned, not hashed: the source's CPU is the database's
  for (const auto& r : h.regions()) {
    if (r.offset() > size || r.length() > size - r.offset()) {
      return Status::InvalidArgument("hashes: region " + std::to_string(r.offset()) + "+" +
                                     std::to_string(r.length()) + " is past the end of volume " +
                                     h.volume() + " (" + std::to_string(size) + " bytes)");
    }
    hasher.Reset();
    for (uint64_t pos = r.offset(); pos < r.offset() + r.length();) {
      const uint64_t take = std::min(kChunk, r.offset() + r.length() - pos);
      const uint64_t start = pos / bs * bs;
      const uint64_t end = std::min(size, (pos + take + bs - 1) / bs * bs);
      CDP_RETURN_IF_ERROR((*dev)->ReadAt(start, std::span<char>(buf.data(), end - start)));
      hasher.Update(std::span<const char>(buf.data() + (pos - start), take));
      pos += take;
    }
    reply->add_xxh3(hasher.Digest());
  }
  return Status::Ok();
}

}  // namespace cdp::agent
