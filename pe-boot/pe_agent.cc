#include "cdp/pe/pe_agent.h"

#include <sys/utsname.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "cdp/core/atomic_file.h"
#include "cdp/core/crc32c.h"
#include "cdp/core/logging.h"
#include "cdp/core/region_hash.h"
#include "cdp/core/units.h"
#include "cdp/pe/initramfs_rebuild.h"
#include "config_text.h"

namespace cdp::pe {

namespace {

// An apply error that resending the same batch cannot fix.
bool IsPermanentApplyError(const Status& s) {
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound;
}

}  // namespace

PeAgent::PeAgent(PeAgentOptions options) : options_(std::move(options)) {
  struct utsname u;
  if (uname(&u) == 0) kernel_release_ = u.release;
  TakeoverConfig config;
  config.newroot = options_.newroot;
  config.takeover_file = options_.takeover_file;
  config.sys_class_net = options_.sys_root + "/class/net";
  config.kernel_release = kernel_release_;
  config.allow_kexec = options_.allow_kexec;
  if (!options_.prepare_dir.empty()) config.prepare_dir = options_.prepare_dir;
  if (!options_.prepare_scratch.empty()) config.prepare_scratch = options_.prepare_scratch;
  takeover_ = std::make_unique<Takeover>(std::move(config), &takeover_system_,
                                         [this](const std::string& line) { Announce(line); });
}

PeAgent::~PeAgent() = default;

void PeAgent::Announce(const std::string& line) {
  CDP_LOG(info) << line;
  if (options_.console.empty()) return;
  std::ofstream out(options_.console, std::ios::app);
  out << "cdp-pe: " << line << "\n";
}

Status PeAgent::Start() {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(options_.listen).WithContext("--listen"));
  CDP_ASSIGN_OR_RETURN(socket_, Socket::Bind(ctx_, options_.listen));
  Status prepared = PrepareDisks();
  if (prepared.ok()) {
    // An earlier agent of this boot adapted the migrated OS's root for a kexec that then failed:
    // the disks are no longer a plain replica, so nothing more is applied to them.
    auto failed = ReadWholeFile(takeover_->KexecFailedFile());
    auto written = ReadWholeFile(takeover_->RootWrittenFile());
    if (failed.ok()) {
      prepared = Status::FailedPrecondition(
          "a kexec takeover in this boot failed (" + *failed +
          "); the migrated OS's root was adapted, so replication stays off: reboot the target "
          "VM into the PE, or start it again (cdpctl target stop, start)");
    } else if (written.ok()) {
      prepared = Status::FailedPrecondition(
          "a takeover in this boot failed after " + *written +
          ", so the target's disks are no longer a plain replica and replication stays off: "
          "start the target VM again (cdpctl target stop, start)");
    }
  }
  if (!prepared.ok()) {
    state_ = v1::PE_STATE_ERROR;
    error_ = prepared.message();
    volumes_.clear();
    meta_.reset();
    Announce("pe-agent: FATAL: " + error_);
    Announce("pe-agent: serving status only on " + options_.listen +
             "; replicators are refused until the target's disks are fixed");
    return Status::Ok();
  }
  RestorePreparedImages();
  state_ = v1::PE_STATE_READY;
  error_.clear();
  ready_seconds_ = ProcUptimeSeconds();
  std::ostringstream line;
  line << "pe-agent ready on " << options_.listen << " after " << ready_seconds_
       << " s of uptime; volumes:";
  for (const auto& [name, v] : volumes_) {
    line << " " << name << "=" << v.device_path << "@" << v.applied_lsn;
  }
  line << "; metadata " << meta_device_;
  Announce(line.str());
  return Status::Ok();
}

Result<std::unique_ptr<BlockDevice>> PeAgent::OpenDisk(const std::string& path, bool* direct) {
  BlockDeviceOptions opts;
  opts.writable = true;
  opts.direct = true;
  opts.engine = options_.io_engine;
  auto dev = OpenBlockDevice(path, opts);
  *direct = dev.ok();
  if (!dev.ok() && dev.status().code() == StatusCode::kInvalidArgument) {
    // A file system without O_DIRECT (tmpfs, in host-side tests): buffered writes, which the
    // flush after every batch still makes durable.
    CDP_LOG(warning) << "pe-agent: " << path << " cannot be opened with O_DIRECT ("
                     << dev.status().message() << "); using buffered writes";
    opts.direct = false;
    dev = OpenBlockDevice(path, opts);
  }
  return dev;
}

Status PeAgent::PrepareDisks() {
  DiskAssignment assignment;
  if (!options_.disk_paths.empty() || !options_.meta_path.empty()) {
    for (const auto& v : options_.volumes) {
      auto it = options_.disk_paths.find(v.name);
      if (it == options_.disk_paths.end()) {
        return Status::FailedPrecondition("volume " + v.name + " has no --disk " + v.name +
                                          "=PATH");
      }
      assignment.volumes[v.name].device = it->second;
    }
    for (const auto& [name, path] : options_.disk_paths) {
      if (!assignment.volumes.count(name)) {
        return Status::FailedPrecondition("--disk " + name + "=" + path +
                                          " names no volume of this target");
      }
    }
    if (options_.meta_path.empty()) {
      return Status::FailedPrecondition("--disk needs --meta PATH for the metadata area");
    }
    assignment.meta.device = options_.meta_path;
  } else {
    CDP_ASSIGN_OR_RETURN(auto disks, ListSerialDisks(options_.sys_root, options_.dev_root));
    CDP_ASSIGN_OR_RETURN(assignment, AssignDisks(options_.volumes, disks, options_.meta_serial));
  }

  // Open everything first (read-only checks), then nothing is written until a batch arrives.
  std::map<std::string, Volume> volumes;
  for (const auto& spec : options_.volumes) {
    Volume v;
    v.spec = spec;
    v.device_path = assignment.volumes[spec.name].device;
    CDP_ASSIGN_OR_RETURN(v.device, OpenDisk(v.device_path, &v.direct));
    if (v.device->size() < spec.size) {
      return Status::FailedPrecondition("disk " + v.device_path + " (volume " + spec.name +
                                        ") has " + std::to_string(v.device->size()) +
                                        " bytes but the volume has " + std::to_string(spec.size) +
                                        "; nothing was written: give the target a larger disk");
    }
    v.applier = std::make_unique<RecordApplier>(v.device.get(), v.direct);
    volumes.emplace(spec.name, std::move(v));
  }
  bool meta_direct = false;
  CDP_ASSIGN_OR_RETURN(auto meta_dev, OpenDisk(assignment.meta.device, &meta_direct));
  CDP_ASSIGN_OR_RETURN(meta_, PeMetadata::Open(std::move(meta_dev)));
  meta_device_ = assignment.meta.device;
  for (auto& [name, v] : volumes) {
    const VolumeCursor c = meta_->Get(name);
    if (c.applied_lsn != 0 && c.volume_size != v.spec.size) {
      return Status::FailedPrecondition(
          "metadata disk " + meta_device_ + " holds a cursor for volume " + name + " of " +
          std::to_string(c.volume_size) + " bytes, but the volume now has " +
          std::to_string(v.spec.size) + "; this is another volume's replica: start from new disks");
    }
    v.applied_lsn = v.boot_applied_lsn = c.applied_lsn;
  }
  volumes_ = std::move(volumes);
  return Status::Ok();
}

Status PeAgent::Run(const std::atomic<bool>* stop) {
  while (!stop->load() && !handed_over_) {
    int wait_ms = 200;
    if (hold_until_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            *hold_until_ - std::chrono::steady_clock::now())
                            .count();
      if (left <= 0) {
        ReleaseHold("its max_ms ran out");
        continue;
      }
      wait_ms = static_cast<int>(std::min<int64_t>(left, wait_ms));
    }
    if (handover_deadline_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            *handover_deadline_ - std::chrono::steady_clock::now())
                            .count();
      if (left <= 0) {
        FinishHandover();
        break;
      }
      wait_ms = static_cast<int>(std::min<int64_t>(left, wait_ms));
    }
    auto msg = socket_->Recv(wait_ms);
    if (!msg.ok()) {
      if (msg.status().IsTimedOut()) continue;
      CDP_LOG(warning) << "pe-agent: dropped a message: " << msg.status().ToString();
      continue;
    }
    Handle(*msg);
  }
  // Stopped during the grace period: the migrated OS's root is mounted and adapted; hand over.
  if (handover_deadline_ && !handed_over_) FinishHandover();
  CDP_LOG(info) << (handed_over_ ? "pe-agent: handed over to the migrated OS"
                                 : "pe-agent: stopping");
  return Status::Ok();
}

std::string PeAgent::PeerName(const std::string& peer) const {
  auto it = sessions_.find(peer);
  if (it != sessions_.end() && !it->second.identity.empty()) return it->second.identity;
  return "a peer";
}

void PeAgent::SendError(const std::string& peer, const Status& status, bool permanent) {
  (void)socket_->SendTo(peer, wire::MakeErrorHeader(status, permanent));
}

void PeAgent::Handle(wire::Message& msg) {
  switch (msg.header.body_case()) {
    case v1::Header::kHello:
      return HandleHello(msg);
    case v1::Header::kApplyBatch:
      if (hold_until_) return HoldBatch(msg);
      return HandleApply(msg);
    case v1::Header::kApplyHoldRequest:
      return HandleHold(msg);
    case v1::Header::kWrittenRegionsRequest:
      return HandleWrittenRegions(msg);
    case v1::Header::kPeStatusRequest:
      return HandleStatus(msg);
    case v1::Header::kChecksumRequest:
      return HandleChecksum(msg);
    case v1::Header::kTakeoverRequest:
      return HandleTakeover(msg);
    case v1::Header::kPrepareBootRequest:
      return HandlePrepareBoot(msg);
    default: {
      Status s = Status::InvalidArgument("pe-agent: unexpected message (header case " +
                                         std::to_string(msg.header.body_case()) + ") from " +
                                         PeerName(msg.peer));
      CDP_LOG(warning) << s.message();
      SendError(msg.peer, s, true);
    }
  }
}

void PeAgent::HandleHello(const wire::Message& msg) {
  const v1::Hello& hello = msg.header.hello();
  const std::string who = hello.identity().empty() ? "a peer" : hello.identity();
  auto version = wire::NegotiateVersion(hello, who);
  auto refuse = [&](const Status& s, bool permanent) {
    CDP_LOG(warning) << "pe-agent: refused " << who << " (volume '" << hello.volume()
                     << "'): " << s.message();
    SendError(msg.peer, s, permanent);
  };
  if (!version.ok()) return refuse(version.status(), true);
  v1::Header reply;
  auto* r = reply.mutable_hello_reply();
  r->set_version(*version);
  r->set_features(1u << v1::FEATURE_CHECKSUM);
  r->set_server_id("pe-agent@" + wire::ProcessIdentity("pe-agent"));
  if (hello.role() == v1::ROLE_REPLICATOR) {
    if (state_ != v1::PE_STATE_READY) {
      return refuse(Status::FailedPrecondition("pe-agent: the target is not ready: " + error_),
                    true);
    }
    auto it = volumes_.find(hello.volume());
    if (it == volumes_.end()) {
      std::string known;
      for (const auto& [name, v] : volumes_) known += (known.empty() ? "" : ", ") + name;
      return refuse(
          Status::NotFound("pe-agent: this target has no volume '" + hello.volume() +
                           "' (it has: " + known + "); point the replicator at the right target"),
          true);
    }
    Volume& v = it->second;
    if (hello.volume_size() != v.spec.size) {
      return refuse(
          Status::FailedPrecondition("pe-agent: volume " + v.spec.name + " has " +
                                     std::to_string(hello.volume_size()) +
                                     " bytes in the journal but this target was started for " +
                                     std::to_string(v.spec.size) + " (disk " + v.device_path +
                                     "); nothing was written: fix the size in the target's config"),
          true);
    }
    r->set_volume_size(v.spec.size);
    r->set_applied_lsn(v.applied_lsn);
    CDP_LOG(info) << "pe-agent: replicator " << who << " attached to volume " << v.spec.name
                  << " (applied LSN " << v.applied_lsn << ")";
  } else if (hello.role() != v1::ROLE_CONTROL) {
    return refuse(
        Status::InvalidArgument("pe-agent: Hello with role " + std::to_string(hello.role()) +
                                "; only replicators and control clients connect here"),
        true);
  }
  sessions_[msg.peer] = Session{hello.role(), hello.volume(), who};
  (void)socket_->SendTo(msg.peer, reply);
}

Status PeAgent::CheckApplySession(const wire::Message& msg, bool* permanent) const {
  const v1::ApplyBatch& batch = msg.header.apply_batch();
  auto session = sessions_.find(msg.peer);
  if (session == sessions_.end() || session->second.role != v1::ROLE_REPLICATOR ||
      session->second.volume != batch.volume()) {
    *permanent = false;
    return Status::FailedPrecondition("pe-agent: a batch for volume '" + batch.volume() +
                                      "' from a peer that did not send Hello for it; "
                                      "send Hello first");
  }
  if (volumes_.find(batch.volume()) == volumes_.end()) {
    *permanent = true;
    return Status::NotFound("pe-agent: this target has no volume '" + batch.volume() +
                            "'; nothing was written");
  }
  return Status::Ok();
}

void PeAgent::HoldBatch(wire::Message& msg) {
  bool permanent = false;
  Status refused = CheckApplySession(msg, &permanent);
  if (!refused.ok()) return SendError(msg.peer, refused, permanent);
  uint64_t bytes = msg.header.ByteSizeLong();
  for (const auto& p : msg.payloads) bytes += p.size();
  const size_t mine = held_by_peer_.count(msg.peer) ? held_by_peer_[msg.peer] : 0;
  const bool full = mine >= kMaxHeldBatchesPerPeer ||
                    (!held_batches_.empty() && (held_batches_.size() >= kMaxHeldBatches ||
                                                held_bytes_ + bytes > kMaxHeldBytes));
  if (full) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          *hold_until_ - std::chrono::steady_clock::now())
                          .count();
    Status s = Status::ResourceExhausted(
        "pe-agent: apply is held (for at most " + std::to_string(std::max<int64_t>(left, 0)) +
        " ms more) and " + std::to_string(held_batches_.size()) + " batch(es) of " +
        std::to_string(held_bytes_) + " bytes wait already, " + std::to_string(mine) +
        " of this connection (bounds: " + std::to_string(kMaxHeldBatches) + " batches, " +
        std::to_string(kMaxHeldBytes >> 20) + " MiB, " + std::to_string(kMaxHeldBatchesPerPeer) +
        " per connection); volume " + msg.header.apply_batch().volume() +
        ": nothing was written, send the batch again after the hold");
    if (held_refused_++ == 0) CDP_LOG(warning) << s.message();
    return SendError(msg.peer, s, false);
  }
  held_bytes_ += bytes;
  ++held_by_peer_[msg.peer];
  held_batches_.push_back(std::move(msg));
}

void PeAgent::HandleApply(const wire::Message& msg) {
  const v1::ApplyBatch& batch = msg.header.apply_batch();
  bool permanent = false;
  Status checked = CheckApplySession(msg, &permanent);
  if (!checked.ok()) return SendError(msg.peer, checked, permanent);
  auto it = volumes_.find(batch.volume());
  if (takeover_->refusing_batches()) {
    return SendError(msg.peer,
                     Status::FailedPrecondition("pe-agent: takeover in progress; volume " +
                                                batch.volume() + ": nothing was written"),
                     false);
  }
  Volume& v = it->second;
  Status s = ApplyBatch(msg, &v);
  if (!s.ok()) {
    Status ctx = s.WithContext("pe-agent: volume " + v.spec.name);
    CDP_LOG(error) << ctx.ToString();
    return SendError(msg.peer, ctx, IsPermanentApplyError(s));
  }
  v1::Header h;
  auto* ack = h.mutable_apply_ack();
  ack->set_volume(v.spec.name);
  ack->set_applied_lsn(v.applied_lsn);
  ack->set_sequence(batch.sequence());
  (void)socket_->SendTo(msg.peer, h);
}

Status PeAgent::ApplyBatch(const wire::Message& msg, Volume* v) {
  const v1::ApplyBatch& batch = msg.header.apply_batch();
  if (batch.records_size() == 0) return Status::Ok();
  if (batch.first_lsn() > v->applied_lsn + 1) {
    return Status::OutOfRange("batch starts at LSN " + std::to_string(batch.first_lsn()) +
                              " but the applied LSN is " + std::to_string(v->applied_lsn) +
                              "; resend from " + std::to_string(v->applied_lsn + 1));
  }
  // Check the whole batch before writing anything.
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  auto t = Clock::now();
  std::vector<ApplyItem> items;
  items.reserve(batch.records_size());
  size_t frame = 0;
  for (int i = 0; i < batch.records_size(); ++i) {
    ApplyItem item;
    item.rec = wire::RecordFromProto(batch.records(i));
    if (item.rec.lsn != batch.first_lsn() + static_cast<uint64_t>(i)) {
      return Status::InvalidArgument("batch is not contiguous: record " + std::to_string(i) +
                                     " has LSN " + std::to_string(item.rec.lsn) + ", expected " +
                                     std::to_string(batch.first_lsn() + i));
    }
    if (item.rec.has_payload()) {
      if (frame >= msg.payloads.size()) {
        return Status::InvalidArgument("record LSN " + std::to_string(item.rec.lsn) +
                                       " has no payload frame");
      }
      item.payload = std::string_view(static_cast<const char*>(msg.payloads[frame].data()),
                                      msg.payloads[frame].size());
      ++frame;
    }
    CDP_RETURN_IF_ERROR(ValidateRecordRange(item.rec, v->spec.size));
    CDP_RETURN_IF_ERROR(VerifyRecordPayload(item.rec, item.payload));
    if (item.rec.lsn > v->applied_lsn) items.push_back(std::move(item));
  }
  if (frame != msg.payloads.size()) {
    return Status::InvalidArgument("batch has " + std::to_string(msg.payloads.size()) +
                                   " payload frames for " + std::to_string(frame) + " writes");
  }
  v->verify_seconds += seconds_since(t);
  if (items.empty()) return Status::Ok();  // a replay of what is already applied
  const uint64_t last = items.back().rec.lsn;
  // Marked before writing: a batch that fails halfway has still changed these regions.
  if (v->mark_region_bytes > 0) {
    for (const auto& item : items) {
      if (item.rec.length == 0) continue;
      const uint64_t first = item.rec.offset / v->mark_region_bytes;
      const uint64_t end = (item.rec.offset + item.rec.length - 1) / v->mark_region_bytes;
      for (uint64_t r = first; r <= end; ++r) v->written_regions.insert(r);
    }
  }
  t = Clock::now();
  CDP_RETURN_IF_ERROR(v->applier->Apply(items).WithContext("writing " + v->device_path));
  v->write_seconds += seconds_since(t);
  t = Clock::now();
  CDP_RETURN_IF_ERROR(v->device->Flush().WithContext("flushing " + v->device_path));
  v->flush_seconds += seconds_since(t);
  t = Clock::now();
  CDP_RETURN_IF_ERROR(meta_->Save(v->spec.name, v->spec.size, last));
  v->cursor_seconds += seconds_since(t);
  v->applied_lsn = last;
  v->applied_records += items.size();
  ++v->batches;
  return Status::Ok();
}

void PeAgent::HandleStatus(const wire::Message& msg) {
  v1::Header h;
  auto* r = h.mutable_pe_status_reply();
  r->set_pe_state(state_);
  r->set_error(error_);
  r->set_ready_seconds(ready_seconds_);
  r->set_kernel_release(kernel_release_);
  r->set_uptime_seconds(ProcUptimeSeconds());
  r->set_listen(options_.listen);
  r->set_meta_device(meta_device_);
  for (const auto& [name, v] : volumes_) {
    auto* s = r->add_volumes();
    s->set_name(name);
    s->set_device(v.device_path);
    s->set_size_bytes(v.spec.size);
    s->set_disk_bytes(v.device->size());
    s->set_applied_lsn(v.applied_lsn);
    s->set_applied_bytes(v.applier->applied_bytes());
    s->set_applied_records(v.applied_records);
    s->set_boot_applied_lsn(v.boot_applied_lsn);
    s->set_verify_seconds(v.verify_seconds);
    s->set_write_seconds(v.write_seconds);
    s->set_flush_seconds(v.flush_seconds);
    s->set_cursor_seconds(v.cursor_seconds);
    s->set_batches(v.batches);
  }
  (void)socket_->SendTo(msg.peer, h);
}

void PeAgent::HandleChecksum(const wire::Message& msg) {
  const v1::ChecksumRequest& req = msg.header.checksum_request();
  auto it = volumes_.find(req.volume());
  if (it == volumes_.end()) {
    return SendError(msg.peer,
                     Status::NotFound("pe-agent: this target has no volume '" + req.volume() + "'"),
                     true);
  }
  Volume& v = it->second;
  uint64_t total = 0;
  for (const auto& region : req.regions()) {
    if (region.length() == 0 || region.offset() > v.spec.size ||
        region.length() > v.spec.size - region.offset()) {
      return SendError(msg.peer,
                       Status::InvalidArgument("pe-agent: volume " + v.spec.name + ": region " +
                                               std::to_string(region.offset()) + "+" +
                                               std::to_string(region.length()) +
                                               " is empty or outside the volume's " +
                                               std::to_string(v.spec.size) + " bytes"),
                       true);
    }
    total += region.length();
  }
  if (total > options_.max_checksum_bytes) {
    return SendError(
        msg.peer,
        Status::InvalidArgument("pe-agent: a checksum request covers " + std::to_string(total) +
                                " bytes; at most " + std::to_string(options_.max_checksum_bytes) +
                                " per request: split it"),
        true);
  }
  v1::Header h;
  auto* r = h.mutable_checksum_reply();
  r->set_volume(v.spec.name);
  r->set_applied_lsn(v.applied_lsn);
  const uint64_t block = std::max<uint64_t>(v.device->logical_block_size(), 4096);
  constexpr uint64_t kChunk = 1 << 20;
  AlignedBuffer buf(kChunk);
  RegionHasher hasher;  // zeros are scanned, not hashed
  for (const auto& region : req.regions()) {
    hasher.Reset();
    uint64_t pos = region.offset();
    const uint64_t end = region.offset() + region.length();
    while (pos < end) {
      const uint64_t start = pos / block * block;
      // Whole 512-byte sectors only (O_DIRECT); the volume itself is a multiple of 512.
      const uint64_t read_end =
          std::min<uint64_t>(std::min(start + kChunk, (end + block - 1) / block * block),
                             v.device->size() / 512 * 512);
      Status s = v.device->ReadAt(start, std::span<char>(buf.data(), read_end - start));
      if (!s.ok()) {
        return SendError(msg.peer, s.WithContext("pe-agent: reading " + v.device_path), false);
      }
      const uint64_t take = std::min(end, read_end) - pos;
      hasher.Update(std::span<const char>(buf.data() + (pos - start), take));
      pos += take;
    }
    r->add_xxh3(hasher.Digest());
  }
  (void)socket_->SendTo(msg.peer, h);
}

// ---- takeover ----

bool PeAgent::FromControlClient(const wire::Message& msg, const std::string& what) {
  auto session = sessions_.find(msg.peer);
  if (session != sessions_.end() && session->second.role == v1::ROLE_CONTROL) return true;
  SendError(msg.peer,
            Status::FailedPrecondition("pe-agent: " + what + " from " + PeerName(msg.peer) +
                                       ", which is not a control client; only a session "
                                       "that said Hello with role CONTROL may ask"),
            true);
  return false;
}

bool PeAgent::MayWorkOnTheRoot(const wire::Message& msg, const std::string& what) {
  if (!FromControlClient(msg, "a " + what + " request")) return false;
  if (handover_deadline_) {
    SendError(msg.peer,
              Status::FailedPrecondition(
                  "pe-agent: the target is already handed over to the migrated OS"),
              true);
    return false;
  }
  // Held batches would wait for all of it: apply them first.
  if (hold_until_) ReleaseHold("a " + what + " was requested");
  return true;
}

std::vector<TakeoverDisk> PeAgent::TakeoverDisks() {
  std::vector<TakeoverDisk> disks;
  for (auto& [name, v] : volumes_) disks.push_back({name, v.device_path, v.device.get()});
  return disks;
}

void PeAgent::HandleTakeover(const wire::Message& msg) {
  if (!MayWorkOnTheRoot(msg, "takeover")) return;
  const v1::TakeoverRequest& request = msg.header.takeover_request();
  Announce("pe-agent: " + std::string(request.dry_run() ? "takeover dry run" : "takeover") +
           " of root volume '" + request.root_volume() + "' requested by " + PeerName(msg.peer) +
           " at " + FormatFixed(ProcUptimeSeconds(), 2) + " s of uptime");
  v1::Header h;
  if (!takeover_->Run(request, state_, error_, TakeoverDisks(), h.mutable_takeover_reply())) {
    if (takeover_->root_written()) {
      // Batches stay refused (refusing_batches()); replicators are told why.
      state_ = v1::PE_STATE_ERROR;
      error_ = h.takeover_reply().error();
    }
    (void)socket_->SendTo(msg.peer, h);  // failed, or a dry run: serving again
    return;
  }
  Status sent = socket_->SendTo(msg.peer, h);
  if (!sent.ok()) CDP_LOG(warning) << "pe-agent: takeover reply not sent: " << sent.message();
  // Run() keeps serving (batches refused, status answered) for kHandoverGraceMs before
  // FinishHandover closes the socket: libzmq can drop a message sent just before zmq_close even
  // with a linger (zeromq/libzmq#1264, #3774) — here 1 reply in 4 on loopback.
  handover_deadline_ =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kHandoverGraceMs);
}

void PeAgent::HandlePrepareBoot(const wire::Message& msg) {
  if (!MayWorkOnTheRoot(msg, "prepare-boot")) return;
  const v1::PrepareBootRequest& request = msg.header.prepare_boot_request();
  Announce("pe-agent: prepare-boot" + std::string(request.dry_run() ? " dry run" : "") +
           " of root volume '" + request.root_volume() + "' requested by " + PeerName(msg.peer) +
           "; no batch is applied until it is done");
  v1::Header h;
  v1::PrepareBootReply* reply = h.mutable_prepare_boot_reply();
  takeover_->Prepare(request, state_, error_, TakeoverDisks(), reply);
  if (!request.dry_run() && meta_ != nullptr) {
    const auto start = std::chrono::steady_clock::now();
    const std::string kept = KeepPreparedImages();
    if (!kept.empty()) {
      v1::TakeoverStep* step = reply->add_steps();
      step->set_name("keep");
      step->set_seconds(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      step->set_result(kept);
      Announce("pe-agent: prepare-boot: " + kept);
    }
  }
  (void)socket_->SendTo(msg.peer, h);
}

void PeAgent::RestorePreparedImages() {
  if (meta_->kept_capacity() == 0) {
    Announce("pe-agent: metadata disk " + meta_device_ +
             " has no room past its cursors, so prepared initramfs images live only until the "
             "PE stops; cdpctl target start grows it (stop the target, start it again)");
    kept_crc_ = crc32c::Value(std::string_view());  // it keeps nothing
    return;
  }
  auto blob = meta_->LoadKept();
  if (!blob.ok()) {
    if (blob.status().code() == StatusCode::kNotFound) {
      kept_crc_ = crc32c::Value(std::string_view());
    } else {
      Announce("pe-agent: " + blob.status().message() +
               "; no prepared initramfs image is restored (prepare-boot makes them again)");
    }
    return;
  }
  auto kvers = UnpackPreparedInitramfs(*blob, takeover_->prepare_dir());
  if (!kvers.ok()) {
    Announce("pe-agent: metadata disk " + meta_device_ + ": " + kvers.status().message() +
             "; no prepared initramfs image is restored (prepare-boot makes them again)");
    return;
  }
  kept_crc_ = crc32c::Value(*blob);
  if (kvers->empty()) return;  // the prepare directory holds them already (a restart)
  Announce("pe-agent: the initramfs prepared for " + text::Join(*kvers, ", ") +
           " restored from metadata disk " + meta_device_ + " into " + takeover_->prepare_dir());
}

std::string PeAgent::KeepPreparedImages() {
  auto blob = PackPreparedInitramfs(takeover_->prepare_dir());
  if (!blob.ok()) {
    return "the prepared images were not kept on the metadata disk (" + blob.status().message() +
           "); they serve this PE boot only";
  }
  const uint32_t crc = crc32c::Value(*blob);
  if (kept_crc_ == crc) return "";
  kept_crc_.reset();  // a save that fails midway leaves the area holding nothing
  Status saved = meta_->SaveKept(*blob);
  if (!saved.ok()) {
    return "the prepared images were not kept on the metadata disk (" + saved.message() +
           "); they serve this PE boot only";
  }
  kept_crc_ = crc;
  const size_t bytes = blob->size();
  if (bytes == 0) return "no prepared image is kept on metadata disk " + meta_device_ + " any more";
  return "the prepared images (" + std::to_string(bytes) + " bytes) kept on metadata disk " +
         meta_device_ + " for the PE's next boots and drills";
}

void PeAgent::HandleHold(const wire::Message& msg) {
  if (!FromControlClient(msg, "an apply hold request")) return;
  const v1::ApplyHoldRequest& request = msg.header.apply_hold_request();
  size_t released = 0;
  if (request.hold()) {
    const uint32_t max_ms = request.max_ms() == 0 ? 10000 : request.max_ms();
    hold_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(max_ms);
    Announce("pe-agent: apply held for at most " + std::to_string(max_ms) + " ms by " +
             PeerName(msg.peer));
  } else if (hold_until_) {
    released = ReleaseHold("released by " + PeerName(msg.peer));
  }
  v1::Header h;
  auto* reply = h.mutable_apply_hold_reply();
  reply->set_held(hold_until_.has_value());
  reply->set_queued_batches(
      static_cast<uint32_t>(request.hold() ? held_batches_.size() : released));
  for (const auto& [name, v] : volumes_) (*reply->mutable_applied_lsn())[name] = v.applied_lsn;
  (void)socket_->SendTo(msg.peer, h);
}

void PeAgent::HandleWrittenRegions(const wire::Message& msg) {
  if (!FromControlClient(msg, "a written-regions request")) return;
  const v1::WrittenRegionsRequest& request = msg.header.written_regions_request();
  auto it = volumes_.find(request.volume());
  if (it == volumes_.end()) {
    return SendError(msg.peer,
                     Status::NotFound("pe-agent: this target has no volume '" + request.volume() +
                                      "'"),
                     true);
  }
  Volume& v = it->second;
  if (request.reset()) {
    if (request.region_bytes() == 0 || request.region_bytes() % 512 != 0) {
      return SendError(msg.peer,
                       Status::InvalidArgument("pe-agent: region_bytes " +
                                               std::to_string(request.region_bytes()) +
                                               " is not a positive multiple of 512"),
                       true);
    }
    v.mark_lsn = v.applied_lsn;
    v.mark_region_bytes = request.region_bytes();
    v.written_regions.clear();
  } else if (v.mark_region_bytes == 0) {
    return SendError(msg.peer,
                     Status::FailedPrecondition("pe-agent: volume " + v.spec.name +
                                                " has no written-regions mark (set one with "
                                                "reset; a restarted pe-agent has none)"),
                     false);
  }
  v1::Header h;
  auto* reply = h.mutable_written_regions_reply();
  reply->set_volume(v.spec.name);
  reply->set_mark_lsn(v.mark_lsn);
  reply->set_applied_lsn(v.applied_lsn);
  reply->set_region_bytes(v.mark_region_bytes);
  for (uint64_t r : v.written_regions) reply->add_regions(r);
  (void)socket_->SendTo(msg.peer, h);
}

size_t PeAgent::ReleaseHold(const std::string& why) {
  hold_until_.reset();
  std::deque<wire::Message> queued;
  queued.swap(held_batches_);
  held_bytes_ = 0;
  held_by_peer_.clear();
  Announce("pe-agent: apply hold ended (" + why + "); applying " + std::to_string(queued.size()) +
           " queued batch(es)" +
           (held_refused_ ? "; " + std::to_string(held_refused_) +
                                " more were refused over the hold's bounds and are sent again"
                          : std::string()));
  held_refused_ = 0;
  for (auto& m : queued) HandleApply(m);
  return queued.size();
}

void PeAgent::FinishHandover() {
  // Give ZeroMQ up to a second more to put the reply on the wire: closing the context waits for
  // what is queued.
  socket_->raw().set(zmq::sockopt::linger, 1000);
  socket_.reset();
  ctx_.close();
  handed_over_ = true;
  takeover_->Finish();
}

}  // namespace cdp::pe
