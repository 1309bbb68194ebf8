#include "cdp/pe/pe_agent.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/reboot.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/units.h"
#include "cdp/pe/boot_adaptation.h"

namespace cdp::pe {

namespace {

double ProcUptimeSeconds() {
  std::ifstream in("/proc/uptime");
  double up = 0;
  in >> up;
  return up;
}

// Re-reads the partition table of `disk`: the kernel scanned it when the PE booted, before the
// replicator wrote the partition table, so the partitions appear only now. A regular file
// (ENOTTY) or a disk without partition scanning (EINVAL: a loop device without -P) has none to
// re-read. Returns "" or a note on what went wrong.
std::string RereadPartitions(const std::string& disk) {
  const int fd = ::open(disk.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + disk + ": " + std::strerror(errno);
  std::string note;
  if (::ioctl(fd, BLKRRPART) != 0 && errno != ENOTTY && errno != EINVAL) {
    note = "partition table of " + disk + " not re-read: " + std::strerror(errno);
  }
  ::close(fd);
  return note;
}

// The partition devices of `disk` that exist, in order: DISK1.. (DISKp1.. when the disk's name
// ends in a digit, as the kernel names them: nvme0n1p1, loop0p1).
std::vector<std::string> PartitionsOf(const std::string& disk) {
  std::vector<std::string> parts;
  if (disk.empty()) return parts;
  const bool digit = disk.back() >= '0' && disk.back() <= '9';
  for (int n = 1; n <= 128; ++n) {
    const std::string p = disk + (digit ? "p" : "") + std::to_string(n);
    struct stat st;
    if (::stat(p.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) parts.push_back(p);
  }
  return parts;
}

// Drops the page cache of a block device (BLKFLSBUF), so a mount reads what the O_DIRECT writes
// put on the disk. Files have none (ENOTTY).
std::string DropBufferCache(const std::string& disk) {
  const int fd = ::open(disk.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + disk + ": " + std::strerror(errno);
  std::string note;
  if (::ioctl(fd, BLKFLSBUF, 0) != 0 && errno != ENOTTY && errno != EINVAL) {
    note = "cache of " + disk + " not dropped: " + std::strerror(errno);
  }
  ::close(fd);
  return note;
}

// True when `dir` is the root of a mount (its device differs from its parent's, or it is /).
bool IsMountPoint(const std::string& dir) {
  struct stat st, parent;
  if (::stat(dir.c_str(), &st) != 0) return false;
  if (::stat((dir + "/..").c_str(), &parent) != 0) return false;
  return st.st_dev != parent.st_dev || st.st_ino == parent.st_ino;
}

// An apply error that resending the same batch cannot fix.
bool IsPermanentApplyError(const Status& s) {
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kNotFound;
}

}  // namespace

PeAgent::PeAgent(PeAgentOptions options) : options_(std::move(options)) {
  struct utsname u;
  if (uname(&u) == 0) kernel_release_ = u.release;
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
    auto failed = ReadWholeFile(KexecFailedFile());
    if (failed.ok()) {
      prepared = Status::FailedPrecondition(
          "a kexec takeover in this boot failed (" + *failed +
          "); the migrated OS's root was adapted, so replication stays off: reboot the target "
          "VM into the PE, or start it again (cdpctl target stop, start)");
    }
  }
  if (!prepared.ok()) {
    state_ = "pe-error";
    error_ = prepared.message();
    volumes_.clear();
    meta_.reset();
    Announce("pe-agent: FATAL: " + error_);
    Announce("pe-agent: serving status only on " + options_.listen +
             "; replicators are refused until the target's disks are fixed");
    return Status::Ok();
  }
  state_ = "pe-ready";
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
    if (state_ != "pe-ready") {
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
  if (takeover_in_progress_) {
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
  r->set_state(state_);
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
  XXH3_state_t state;
  for (const auto& region : req.regions()) {
    XXH3_64bits_reset(&state);
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
      XXH3_64bits_update(&state, buf.data() + (pos - start), take);
      pos += take;
    }
    r->add_xxh3(XXH3_64bits_digest(&state));
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

void PeAgent::HandleTakeover(const wire::Message& msg) {
  if (!FromControlClient(msg, "a takeover request")) return;
  if (handover_deadline_) {
    return SendError(msg.peer,
                     Status::FailedPrecondition(
                         "pe-agent: the target is already handed over to the migrated OS"),
                     true);
  }
  if (hold_until_) ReleaseHold("a takeover was requested");
  const v1::TakeoverRequest& request = msg.header.takeover_request();
  const std::string init = request.init().empty() ? "/sbin/init" : request.init();
  const std::string what = request.dry_run() ? "takeover dry run" : "takeover";
  Announce("pe-agent: " + what + " of root volume '" + request.root_volume() + "' requested by " +
           PeerName(msg.peer) + " at " + FormatFixed(ProcUptimeSeconds(), 2) + " s of uptime");
  v1::Header h;
  v1::TakeoverReply* reply = h.mutable_takeover_reply();
  reply->set_kernel_release(kernel_release_);
  Status s = Takeover(request, reply);
  if (s.ok() && !request.dry_run() && reply->boot() == "kexec") {
    v1::TakeoverStep* step = reply->add_steps();
    step->set_name("handover");
    step->set_result("after this reply the pe-agent unmounts " + options_.newroot +
                     ", flushes the disks and reboots into kernel " + reply->kernel_release() +
                     " (kexec)");
  } else if (s.ok() && !request.dry_run()) {
    const auto start = std::chrono::steady_clock::now();
    s = WriteTakeoverFile(init);
    v1::TakeoverStep* step = reply->add_steps();
    step->set_name("handover");
    step->set_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    step->set_result(
        s.ok() ? "the pe-agent exits with status " + std::to_string(kTakeoverExitStatus) +
                     "; the PE's /init switch_roots into " + options_.newroot + " (" + init + ")"
               : "failed: " + s.message());
  }
  if (!s.ok() || request.dry_run()) {
    std::string error = s.ok() ? "" : s.message();
    const std::string unmount = UnmountNewroot();
    if (!unmount.empty()) error += (error.empty() ? "" : "; ") + unmount;
    takeover_in_progress_ = false;
    reply->set_ok(error.empty());
    reply->set_error(error);
    Announce("pe-agent: " + what + (error.empty() ? " passed" : " failed: " + error) +
             "; serving again");
    (void)socket_->SendTo(msg.peer, h);
    return;
  }
  reply->set_ok(true);
  Announce("pe-agent: takeover: handing over to " + init + " on " + reply->root_device() + " at " +
           options_.newroot + " at " + FormatFixed(ProcUptimeSeconds(), 2) + " s of uptime");
  Status sent = socket_->SendTo(msg.peer, h);
  if (!sent.ok()) CDP_LOG(warning) << "pe-agent: takeover reply not sent: " << sent.message();
  // Run() keeps serving (batches refused, status answered) for kHandoverGraceMs before
  // FinishHandover closes the socket: libzmq can drop a message sent just before zmq_close even
  // with a linger (zeromq/libzmq#1264, #3774) — here 1 reply in 4 on loopback.
  handover_deadline_ =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kHandoverGraceMs);
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
  if (kexec_loaded_) RebootIntoLoadedKernel();
}

void PeAgent::RebootIntoLoadedKernel() {
  Announce("pe-agent: kexec: unmounting " + options_.newroot + ", flushing, rebooting at " +
           FormatFixed(ProcUptimeSeconds(), 2) + " s of uptime");
  ::sync();
  const std::string unmount = UnmountNewroot();
  if (!unmount.empty()) Announce("pe-agent: kexec: " + unmount + " (synced; rebooting anyway)");
  for (auto& [name, v] : volumes_) (void)v.device->Flush();
  ::sync();
  ::syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, nullptr);
  const std::string why = std::string("kexec reboot failed: ") + std::strerror(errno);
  (void)WriteFileAtomic(KexecFailedFile(), why);  // the next agent of this boot refuses to apply
  Announce("pe-agent: FATAL: " + why +
           " ; the target stays in the PE with the migrated OS unmounted: reboot the target VM");
}

std::string PeAgent::KexecFailedFile() const { return options_.takeover_file + ".kexec-failed"; }

Status PeAgent::Takeover(const v1::TakeoverRequest& request, v1::TakeoverReply* reply) {
  using Clock = std::chrono::steady_clock;
  // Runs one step: times it, records its result (or its failure) in the reply, and announces it.
  auto step = [&](const std::string& name, auto&& fn) -> Status {
    const auto start = Clock::now();
    Result<std::string> result = fn();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    v1::TakeoverStep* s = reply->add_steps();
    s->set_name(name);
    s->set_seconds(seconds);
    s->set_result(result.ok() ? *result : "failed: " + result.status().message());
    Announce("pe-agent: takeover step " + name + " (" + FormatFixed(seconds, 3) +
             " s): " + s->result());
    return result.ok() ? Status::Ok() : result.status();
  };

  Volume* root_volume = nullptr;
  CDP_RETURN_IF_ERROR(step("check", [&]() -> Result<std::string> {
    if (state_ != "pe-ready") {
      return Status::FailedPrecondition("pe-agent: the target is not ready: " + error_ +
                                        "; a takeover needs a pe-ready target");
    }
    if (newroot_mounted_ || IsMountPoint(options_.newroot)) {
      return Status::FailedPrecondition(
          "pe-agent: " + options_.newroot +
          " is already a mount point (a takeover left over?); unmount it first");
    }
    auto it = volumes_.find(request.root_volume());
    if (it == volumes_.end()) {
      std::string known;
      for (const auto& [name, v] : volumes_) known += (known.empty() ? "" : ", ") + name;
      return Status::NotFound("pe-agent: this target has no volume '" + request.root_volume() +
                              "' (it has: " + known +
                              "); name the volume that holds the migrated OS's root filesystem");
    }
    if (!request.boot().empty() && request.boot() != "auto" && request.boot() != "switch-root" &&
        request.boot() != "kexec") {
      return Status::InvalidArgument("pe-agent: boot '" + request.boot() +
                                     "' is not auto, switch-root or kexec");
    }
    root_volume = &it->second;
    return "pe-ready; root volume " + it->first + " on " + root_volume->device_path;
  }));

  CDP_RETURN_IF_ERROR(step("flush", [&]() -> Result<std::string> {
    takeover_in_progress_ = true;  // no batch is applied from here on
    std::string disks, notes;
    for (auto& [name, v] : volumes_) {
      CDP_RETURN_IF_ERROR(v.device->Flush().WithContext("pe-agent: volume " + name + ": flushing " +
                                                        v.device_path));
      const std::string note = DropBufferCache(v.device_path);
      if (!note.empty()) notes += "; " + note;
      disks += (disks.empty() ? "" : ", ") + v.device_path;
    }
    return "flushed " + disks + "; batches are refused from now on" + notes;
  }));

  std::string root_device, root_uuid;
  UuidMap disk_uuids;
  CDP_RETURN_IF_ERROR(step("mount", [&]() -> Result<std::string> {
    std::string notes;
    // Partitions written by the replicator since the PE booted appear only once the kernel
    // re-reads the partition tables; the fstab check needs every disk's, not only the root's.
    for (auto& [name, v] : volumes_) {
      const std::string note = RereadPartitions(v.device_path);
      if (!note.empty()) notes += "; " + note;
      for (const std::string& dev : [&] {
             std::vector<std::string> devs{v.device_path};
             for (auto& p : PartitionsOf(v.device_path)) devs.push_back(std::move(p));
             return devs;
           }()) {
        auto id = ReadFsId(dev);
        if (id.ok()) disk_uuids.emplace(id->uuid, dev);
        if (&v == root_volume && root_device.empty() && id.ok() && id->type == "ext4") {
          root_device = dev;
          root_uuid = id->uuid;
        }
      }
    }
    if (root_device.empty()) {
      std::string found;
      for (const auto& [uuid, dev] : disk_uuids) found += (found.empty() ? "" : ", ") + dev;
      return Status::NotFound("pe-agent: volume " + root_volume->spec.name +
                              ": no ext4 filesystem on " + root_volume->device_path +
                              " nor on its partitions (filesystems found on the target: " +
                              (found.empty() ? std::string("none") : found) +
                              "); the migrated OS's root must be ext4: check root_volume" + notes);
    }
    std::error_code ec;
    std::filesystem::create_directories(options_.newroot, ec);
    if (ec) return Status::IOError("cannot create " + options_.newroot + ": " + ec.message());
    // A dry run must not write to the replica: read-only, and without replaying the journal
    // (a live source's filesystem always needs recovery), which even a read-only mount does.
    const unsigned long flags = request.dry_run() ? MS_RDONLY : 0;
    const char* data = request.dry_run() ? "noload" : "";
    if (::mount(root_device.c_str(), options_.newroot.c_str(), "ext4", flags, data) != 0) {
      const int err = errno;
      return Status::FromErrno(err, "pe-agent: mount -t ext4 " + root_device + " " +
                                        options_.newroot +
                                        (err == ENODEV ? " (is the ext4 module loaded?)" : ""));
    }
    newroot_mounted_ = true;
    reply->set_root_device(root_device);
    std::string all;
    for (const auto& [uuid, dev] : disk_uuids) all += (all.empty() ? "" : ", ") + dev + "=" + uuid;
    return root_device + " (ext4 UUID " + root_uuid + ") at " + options_.newroot +
           (request.dry_run() ? " read-only" : " read-write") +
           "; filesystems on the target: " + all + notes;
  }));

  // How the migrated OS will start: on the PE's kernel (switch_root) when it has modules for it,
  // else (or when asked) on its own newest kernel (kexec, loaded before anything is changed).
  std::string boot = request.boot().empty() ? "auto" : request.boot();
  if (boot == "auto") {
    auto modules = ResolveInRoot(options_.newroot, "/lib/modules/" + kernel_release_);
    std::error_code ec;
    boot = modules.ok() && std::filesystem::is_directory(*modules, ec) ? "switch-root" : "kexec";
  }
  reply->set_boot(boot);
  std::string kver = kernel_release_;
  if (boot == "kexec") {
    CDP_RETURN_IF_ERROR(step("kexec-load", [&]() -> Result<std::string> {
      CDP_ASSIGN_OR_RETURN(kver, ChooseOwnKernel(options_.newroot));
      reply->set_kernel_release(kver);
      return LoadOwnKernel(kver, root_uuid, request);
    }));
  }

  Status adapted = step("adapt", [&]() -> Result<std::string> {
    AdaptRequest adapt;
    adapt.root = options_.newroot;
    adapt.root_device = root_device;
    adapt.root_uuid = root_uuid;
    adapt.kernel_release = kver;
    adapt.init = request.init().empty() ? "/sbin/init" : request.init();
    adapt.disk_uuids = disk_uuids;
    adapt.dry_run = request.dry_run();
    for (const auto& n : request.nics()) adapt.nics.push_back({n.mac(), n.address(), n.gateway()});
    if (!adapt.nics.empty()) {
      CDP_ASSIGN_OR_RETURN(adapt.present_nics, ListNics(options_.sys_root + "/class/net"));
    }
    CDP_ASSIGN_OR_RETURN(auto notes, AdaptRoot(std::move(adapt)));
    std::string out = boot == "kexec" ? "boot: kexec into its own kernel " + kver
                                      : "boot: switch_root on the PE's kernel " + kver;
    for (const auto& n : notes) out += "; " + n;
    return out;
  });
  if (!adapted.ok() && kexec_loaded_) {
    ::syscall(SYS_kexec_file_load, -1, -1, 0UL, nullptr, 0x1UL /* KEXEC_FILE_UNLOAD */);
    kexec_loaded_ = false;
  }
  return adapted;
}

Result<std::string> PeAgent::LoadOwnKernel(const std::string& kver, const std::string& root_uuid,
                                           const v1::TakeoverRequest& request) {
  const std::string kernel = "/boot/vmlinuz-" + kver, initrd = "/boot/initrd.img-" + kver;
  const std::string cmdline =
      "root=UUID=" + root_uuid + " " +
      (request.kernel_args().empty() ? std::string("ro") : request.kernel_args());
  if (request.dry_run()) {
    return "would kexec_file_load " + kernel + " with " + initrd + ", command line '" + cmdline +
           "'";
  }
  if (!options_.allow_kexec) {
    return Status::FailedPrecondition(
        "pe-agent: kexec is not allowed in this run (only the PE's agent, started with "
        "--allow-kexec, may reboot the machine); ask for boot switch-root");
  }
  CDP_ASSIGN_OR_RETURN(const std::string kernel_path, ResolveInRoot(options_.newroot, kernel));
  CDP_ASSIGN_OR_RETURN(const std::string initrd_path, ResolveInRoot(options_.newroot, initrd));
  const int kfd = ::open(kernel_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (kfd < 0) return Status::FromErrno(errno, "pe-agent: opening " + kernel);
  const int ifd = ::open(initrd_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ifd < 0) {
    const int err = errno;
    ::close(kfd);
    return Status::FromErrno(err, "pe-agent: opening " + initrd);
  }
  const long rc =
      ::syscall(SYS_kexec_file_load, kfd, ifd, cmdline.size() + 1, cmdline.c_str(), 0UL);
  const int err = errno;
  ::close(kfd);
  ::close(ifd);
  if (rc != 0) {
    std::string hint =
        "; use boot switch-root (rebuild the PE from the replica: build-pe-image --kernel-from)";
    if (err == EPERM || err == EKEYREJECTED) {
      hint = " (kernel lockdown, or a signature the PE's kernel does not accept)" + hint;
    } else if (err == ENOEXEC) {
      hint = " (" + kernel + " is not a bzImage this kernel can load)" + hint;
    }
    return Status::FromErrno(err, "pe-agent: kexec_file_load of " + kernel + hint);
  }
  kexec_loaded_ = true;
  std::error_code ec;
  const auto mib = [&](const std::string& p) {
    return std::to_string(std::filesystem::file_size(p, ec) >> 20) + " MiB";
  };
  return "loaded " + kernel + " (" + mib(kernel_path) + ") and " + initrd + " (" +
         mib(initrd_path) + "); command line '" + cmdline + "'";
}

Status PeAgent::WriteTakeoverFile(const std::string& init) {
  return WriteFileAtomic(options_.takeover_file,
                         "root " + options_.newroot + "\ninit " + init + "\n")
      .WithContext("pe-agent: writing the takeover file");
}

std::string PeAgent::UnmountNewroot() {
  if (!newroot_mounted_) return "";
  if (::umount2(options_.newroot.c_str(), 0) != 0) {
    const int err = errno;
    // Something still uses it: detach it, so it goes once unused and the disk is free again.
    if (::umount2(options_.newroot.c_str(), MNT_DETACH) != 0) {
      return "cannot unmount " + options_.newroot + ": " + std::strerror(errno);
    }
    CDP_LOG(warning) << "pe-agent: " << options_.newroot << " was busy (" << std::strerror(err)
                     << "); detached";
  }
  newroot_mounted_ = false;
  return "";
}

}  // namespace cdp::pe
