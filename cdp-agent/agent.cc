#include "cdp/agent/agent.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>

#include "cdp/agent/disk_filesystems.h"
#include "cdp/core/atomic_file.h"
#include "cdp/core/crc32c.h"
#include "cdp/core/logging.h"
#include "cdp/core/region_hash.h"
#include "cdp/core/transport.h"
#include "cdp/core/wire.h"

namespace cdp::agent {

namespace {
std::string BitmapPath(const std::string& dir) { return dir + "/dirty.bitmap"; }

// Trace mode's output: the volume's VolumeCapture over its Sender.
class CaptureOutput : public TraceOutput {
 public:
  CaptureOutput(VolumeCapture* capture, Sender* sender) : capture_(capture), sender_(sender) {}

  uint64_t size() const override { return capture_->size(); }
  bool lsn_known() const override { return capture_->lsn_known(); }
  size_t QueueRecords(std::span<ChangeRecord> records) override {
    return capture_->QueueRecords(records);
  }
  void RecordGap(const std::string& reason) override { capture_->RecordGap(reason); }
  uint64_t AddPoint(v1::PointOrigin origin, const std::string& label,
                    const v1::ConsistencyPoint* group) override {
    return capture_->AddPoint(origin, label, group);
  }
  uint64_t last_lsn() const override { return capture_->captured_lsn(); }
  uint64_t last_point_lsn() const override { return capture_->last_point_lsn(); }
  void OnResyncDone() override { capture_->OnResyncDone(); }
  bool WaitForSpace(uint64_t bytes, int timeout_ms) override {
    return sender_->WaitForSpace(bytes, timeout_ms);
  }
  uint64_t durable_lsn() const override { return sender_->durable_lsn(); }
  uint64_t buffer_bytes() const override { return sender_->buffer_bytes(); }

 private:
  VolumeCapture* const capture_;
  Sender* const sender_;
};

// The watchdog's limit for a periodic freeze of freeze_limit_ms.
int HardLimitMs(int freeze_limit_ms) {
  return std::max(2 * freeze_limit_ms, freeze_limit_ms + 200);
}

std::string JoinPaths(const std::vector<std::string>& paths) {
  std::string out;
  for (const std::string& p : paths) out += (out.empty() ? "" : ", ") + p;
  return out;
}

// --freeze's mount points, checked to be on the device (or on a device stacked on it: a
// partition of the disk, LVM); "auto" resolved from /proc/self/mountinfo.
Result<std::vector<std::string>> ResolveFreezePaths(const AgentOptions& o,
                                                    const TracedDevice& dev) {
  std::vector<std::string> paths = o.freeze_paths;
  const bool automatic = std::find(paths.begin(), paths.end(), "auto") != paths.end();
  if (automatic && paths.size() > 1) {
    return Status::InvalidArgument("--freeze auto finds every filesystem on " + o.device +
                                   "; pass either auto or mount points, not both");
  }
  auto mountinfo = ReadWholeFile("/proc/self/mountinfo");
  if (!mountinfo.ok()) return mountinfo.status();
  if (automatic) {
    std::vector<std::string> skipped;
    CDP_ASSIGN_OR_RETURN(auto found, FilesystemsOnDisk("/sys", *mountinfo, dev.name, &skipped));
    paths.clear();
    std::string described;
    for (const DiskFilesystem& f : found) {
      paths.push_back(f.mount_point);
      described += (described.empty() ? "" : ", ") + f.mount_point + " (" + f.fs_type + " on " +
                   f.device + ")";
    }
    std::string left_out;
    for (const std::string& s : skipped) left_out += (left_out.empty() ? "" : ", ") + s;
    CDP_LOG(info) << "cdp-agent: volume " << o.volume << ": --freeze auto on " << o.device << ": "
                  << (paths.empty() ? std::string("no freezable filesystem is mounted from it, "
                                                  "so no consistency points")
                                    : "freezing " + described)
                  << (left_out.empty() ? std::string() : "; left out: " + left_out);
    return paths;
  }
  CDP_ASSIGN_OR_RETURN(auto devices, DevicesOnDisk("/sys", dev.name));
  std::vector<dev_t> numbers;
  for (const std::string& name : devices) {
    auto text = ReadWholeFile("/sys/class/block/" + name + "/dev");
    unsigned maj = 0, min = 0;
    if (text.ok() && std::sscanf(text->c_str(), "%u:%u", &maj, &min) == 2) {
      numbers.push_back(makedev(maj, min));
    }
  }
  for (const std::string& path : paths) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0 &&
        std::find(numbers.begin(), numbers.end(), st.st_dev) != numbers.end()) {
      continue;  // on the device or on a device stacked on it
    }
    CDP_RETURN_IF_ERROR(CheckFreezePath(path, dev.major, dev.minor, o.device));
  }
  return paths;
}

}  // namespace

Status ValidateBufferBytes(uint64_t buffer_bytes, bool trace) {
  const uint64_t min_buffer = trace ? kMinBufferBytesTrace : kMinBufferBytesNbd;
  const std::string mib = std::to_string(buffer_bytes >> 20);
  if (buffer_bytes > (uint64_t{1} << 40)) {
    return Status::InvalidArgument("--buffer-mib " + mib + " is more than 1048576 (1 TiB)");
  }
  if (buffer_bytes >= min_buffer) return Status::Ok();
  return Status::InvalidArgument(
      "--buffer-mib " + mib + " is too small for " +
      (trace ? "trace mode: a read-back batch of 4 MiB and its record headers"
             : "NBD mode: a sync chunk of 1 MiB and its record header") +
      " must fit in it; use at least " + std::to_string(min_buffer >> 20) + " (default 32)");
}

uint32_t NbdMaxRequestBytes(uint64_t buffer_bytes) {
  uint64_t limit = std::min<uint64_t>(kMaxNbdRequestBytes, buffer_bytes / 2);
  uint32_t size = 4096;
  while (uint64_t{size} * 2 <= limit) size *= 2;
  return size;
}

Result<std::unique_ptr<Agent>> Agent::Start(const AgentOptions& options) {
  CDP_RETURN_IF_ERROR(wire::ValidateVolumeName(options.volume));
  CDP_RETURN_IF_ERROR(ValidateEndpoint(options.server).WithContext("--server"));
  CDP_RETURN_IF_ERROR(ValidateBufferBytes(options.buffer_bytes, options.trace));
  std::unique_ptr<Agent> agent(new Agent(options));
  if (options.trace) {
    CDP_RETURN_IF_ERROR(agent->StartTrace());
  } else {
    CDP_RETURN_IF_ERROR(agent->StartNbd());
  }
  return agent;
}

Status Agent::PrepareStateDir() {
  const std::string& dir = options_.state_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status::IOError("state dir " + dir + " is not a writable directory" +
                           (ec ? " (" + ec.message() + ")" : std::string()) +
                           "; pass a writable --state-dir");
  }
  const std::string lock_path = dir + "/lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return Status::FromErrno(errno, "open " + lock_path);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Status::FailedPrecondition("state dir " + dir +
                                      " is in use by another cdp-agent; one agent per volume");
  }
  return Status::Ok();
}

Status Agent::LockVolume() {
  // The tracefs instance is named after the volume, machine-wide: one tracing agent per volume,
  // whatever its state dir.
  const std::string dir = "/run/lock";
  const std::string path = dir + "/cdp-agent." + options_.volume + ".lock";
  volume_lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (volume_lock_fd_ < 0) return Status::FromErrno(errno, "open " + path);
  if (::flock(volume_lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {0};
    const ssize_t n = ::pread(volume_lock_fd_, pid, sizeof(pid) - 1, 0);
    std::string owner = n > 0 ? std::string(pid, static_cast<size_t>(n)) : std::string("?");
    while (!owner.empty() && owner.back() == '\n') owner.pop_back();
    return Status::FailedPrecondition("volume " + options_.volume +
                                      " is already protected by a running cdp-agent (pid " +
                                      owner + "); one agent per volume");
  }
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(volume_lock_fd_, 0) != 0 ||
      ::pwrite(volume_lock_fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    return Status::FromErrno(errno, "write " + path);
  }
  return Status::Ok();
}

void Agent::MakeSender(uint64_t size, uint32_t block_size) {
  SenderOptions so;
  so.server = options_.server;
  so.volume = options_.volume;
  so.volume_size = size;
  so.block_size = block_size;
  so.identity = wire::ProcessIdentity("cdp-agent");
  so.buffer_bytes = options_.buffer_bytes;
  so.bandwidth_bytes_per_sec = options_.bandwidth_bytes_per_sec;
  so.writer_epoch = state_.writer_epoch;
  so.take_over = options_.take_over;
  sender_ = std::make_unique<Sender>(
      so,
      [this](uint64_t durable) {
        if (sync_) sync_->OnHandshake(durable);
        if (trace_) trace_->OnHandshake(durable);
        capture_->OnHandshake(durable);
      },
      [this](v1::AgentReport* r) { FillReport(r); });
  sender_->SetWriterEpochCallback([this](uint64_t epoch) {
    state_.writer_epoch = epoch;
    return SaveAgentState(options_.state_dir, state_);
  });
  sender_->SetJournalLossCallback([this](uint64_t durable) {
    capture_->RebaseAfterJournalLoss(durable);
    if (trace_) trace_->OnJournalLoss();
  });
}

void Agent::ServeSourceControl() {
  // The cutover's source control (source_control_service.h): the process's service once
  // AgentProcess made it (every volume, the group freeze); until then — and for an Agent started
  // alone — this volume's own, which cannot freeze (quiesce is refused with this reason).
  SourceControlDeps deps;
  deps.volumes = {{options_.volume, options_.device, options_.freeze_paths}};
  deps.no_freeze_reason =
      options_.trace ? "volume " + options_.volume + ": the agent is still starting; try again"
                     : "an NBD-mode agent does not see the source's filesystems (quiesce a QEMU "
                       "source with qmp-pause)";
  addresses_ = MakeIpAddressTable();
  deps.addresses = addresses_.get();
  deps.power_off = PowerOffNow;
  source_control_ = std::make_unique<SourceControlService>(std::move(deps));
  sender_->SetSourceCallback([this](const v1::SourceRequest& request) {
    if (SourceControlService* process = process_source_control_.load()) {
      return process->Handle(request);
    }
    return source_control_->Handle(request);
  });
}

std::vector<std::string> Agent::freeze_mount_points() {
  std::vector<std::string> paths;
  if (trace_) {
    for (Freezable* f : trace_->Filesystems()) paths.push_back(f->mount_path());
  }
  return paths;
}

Status Agent::StartNbd() {
  const AgentOptions& options = options_;
  Agent* agent = this;
  CDP_RETURN_IF_ERROR(nbd::ParseNbdListenAddress(options.nbd).status().WithContext("--nbd"));
  CDP_RETURN_IF_ERROR(PrepareStateDir());

  BlockDeviceOptions dev_opts;
  dev_opts.writable = true;
  dev_opts.engine = options.io_engine;
  auto open_dev = [&]() -> Result<std::unique_ptr<BlockDevice>> {
    auto d = OpenBlockDevice(options.device, dev_opts);
    if (!d.ok()) return d.status().WithContext("--device");
    return d;
  };
  CDP_ASSIGN_OR_RETURN(auto device, open_dev());
  CDP_ASSIGN_OR_RETURN(auto read_device, open_dev());
  CDP_ASSIGN_OR_RETURN(auto probe, open_dev());
  const uint64_t size = device->size();
  if (size == 0) return Status::InvalidArgument("--device " + options.device + " is empty");

  // Decide the sync plan from what the last run left.
  SyncPlan plan;
  std::string gap_reason;
  std::string gap_ends_at = "full sync";
  auto loaded = LoadAgentState(options.state_dir);
  agent->dirty_ = std::make_unique<DirtyBitmap>(size);
  if (!loaded.ok() && !loaded.status().IsNotFound()) return loaded.status();
  if (loaded.ok()) {
    const AgentState& s = *loaded;
    if (s.volume != options.volume || s.size_bytes != size) {
      return Status::FailedPrecondition(
          "state dir " + options.state_dir + " belongs to volume '" + s.volume + "' of " +
          std::to_string(s.size_bytes) + " bytes, not '" + options.volume + "' of " +
          std::to_string(size) + " bytes; use a state dir per volume");
    }
    if (s.clean_shutdown && s.capture_mode == "nbd") {
      // A clean stop always saves the bitmap; one that is missing or unreadable means the
      // dirty regions are unknown, so everything is dirty.
      Status b = agent->dirty_->Load(BitmapPath(options.state_dir));
      if (!b.ok()) {
        CDP_LOG(warning) << "cdp-agent: volume " << options.volume << ": " << b.message()
                         << "; resyncing the whole device";
        agent->dirty_->MarkAll();
      }
      if (agent->dirty_->dirty_bytes() > 0) {
        // What the bitmap holds was never journaled: the journal's history is incomplete from
        // its durable LSN until the resync of those regions (docs/journal-format.md, section 9).
        gap_reason = "agent restarted with " + std::to_string(agent->dirty_->dirty_bytes()) +
                     " bytes its last run did not journal; resync";
        gap_ends_at = "resync";
      }
      plan.full_sync = !s.initial_sync_done;
      plan.cursor = s.sync_cursor;
      plan.skip_zero = s.skip_zero;
      CDP_LOG(info) << "cdp-agent: volume " << options.volume << ": clean restart, "
                    << agent->dirty_->dirty_bytes() << " dirty bytes to resync"
                    << (plan.full_sync ? ", full sync resumes at " + std::to_string(plan.cursor)
                                       : std::string());
    } else {
      plan.full_sync = true;
      plan.cursor = 0;
      plan.skip_zero = false;
      gap_reason = s.clean_shutdown ? "agent switched from trace mode to NBD mode; full resync"
                                    : "agent restarted after a crash; full resync";
      CDP_LOG(warning) << "cdp-agent: volume " << options.volume << ": the last run did not "
                       << "stop cleanly; recording a history gap and resyncing the whole device";
    }
  } else {
    plan.full_sync = true;
    plan.decide_skip_zero_at_handshake = true;
  }
  agent->state_.volume = options.volume;
  agent->state_.size_bytes = size;
  agent->state_.clean_shutdown = false;
  agent->state_.initial_sync_done = !plan.full_sync;
  agent->state_.sync_cursor = plan.cursor;
  agent->state_.skip_zero = plan.skip_zero;
  agent->state_.capture_mode = "nbd";
  agent->state_.boot_id = CurrentBootId();
  agent->state_.writer_epoch = loaded.ok() ? loaded->writer_epoch : 0;
  CDP_RETURN_IF_ERROR(SaveAgentState(options.state_dir, agent->state_));
  ::unlink(BitmapPath(options.state_dir).c_str());

  MakeSender(size, device->logical_block_size());
  ServeSourceControl();
  agent->capture_ =
      std::make_unique<VolumeCapture>(options.volume, std::move(device), std::move(read_device),
                                      agent->sender_.get(), agent->dirty_.get(), options.ack_mode);
  agent->sync_ =
      std::make_unique<SyncEngine>(options.volume, agent->capture_.get(), agent->sender_.get(),
                                   agent->dirty_.get(), std::move(probe), plan);
  VolumeCapture* capture = agent->capture_.get();
  agent->sender_->SetCheckpointCallback(
      [capture](const std::string& label) { return capture->AddOperatorPoint(label); });
  if (!gap_reason.empty()) {
    v1::Gap gap;
    gap.set_time_ns(NowNanos());
    gap.set_reason(gap_reason);
    gap.set_ends_at(gap_ends_at);
    agent->sender_->AddGap(gap);
  }

  nbd::NbdServer::Options nbd_opts;
  nbd_opts.listen_address = options.nbd;
  nbd_opts.export_name = options.volume;
  nbd_opts.target = agent->capture_.get();
  nbd_opts.max_block_size = NbdMaxRequestBytes(options.buffer_bytes);
  auto nbd = nbd::NbdServer::Start(nbd_opts);
  if (!nbd.ok()) return nbd.status().WithContext("--nbd");
  agent->nbd_ = std::move(*nbd);

  agent->sender_->Start();
  agent->sync_->Start();
  CDP_LOG(info) << "cdp-agent: protecting " << options.device << " (" << size
                << " bytes) as volume " << options.volume << ", NBD export on "
                << agent->nbd_->bound_address() << ", journal at " << options.server
                << ", ack mode " << (options.ack_mode == AckMode::kSync ? "sync" : "async")
                << "; checksums: CRC32C " << crc32c::Implementation() << ", XXH3 "
                << Xxh3Implementation();
  return Status::Ok();
}

Status Agent::StartTrace() {
  const AgentOptions& o = options_;
  if (!o.nbd.empty()) {
    return Status::InvalidArgument(
        "--nbd and --trace exclude each other: --trace protects a device in use where it is, "
        "--nbd serves it to clients");
  }
  CDP_ASSIGN_OR_RETURN(TracedDevice dev, ResolveTracedDevice(o.device));
  CDP_ASSIGN_OR_RETURN(std::vector<std::string> freeze_paths, ResolveFreezePaths(o, dev));
  CDP_RETURN_IF_ERROR(PrepareStateDir());
  CDP_RETURN_IF_ERROR(LockVolume());

  BlockDeviceOptions ro;
  ro.engine = o.io_engine;
  auto open_dev = [&](bool direct) -> Result<std::unique_ptr<BlockDevice>> {
    BlockDeviceOptions opts = ro;
    opts.direct = direct;
    auto d = OpenBlockDevice(o.device, opts);
    if (!d.ok()) return d.status().WithContext("--device");
    return d;
  };
  CDP_ASSIGN_OR_RETURN(auto reader, open_dev(true));
  CDP_ASSIGN_OR_RETURN(auto capture_dev, open_dev(false));
  CDP_ASSIGN_OR_RETURN(auto capture_read_dev, open_dev(false));
  const uint64_t size = reader->size();
  if (size == 0) return Status::InvalidArgument("--device " + o.device + " is empty");

  // The plan, from what the last run left.
  ScanPlan plan;
  std::string gap_reason;
  bool resume = false;
  uint64_t lost_baseline = 0;
  bool trust_hashes = true;
  DirtyBitmap saved_dirty(size);
  auto loaded = LoadAgentState(o.state_dir);
  if (!loaded.ok() && !loaded.status().IsNotFound()) return loaded.status();
  if (loaded.ok()) {
    const AgentState& st = *loaded;
    if (st.volume != o.volume || st.size_bytes != size) {
      return Status::FailedPrecondition(
          "state dir " + o.state_dir + " belongs to volume '" + st.volume + "' of " +
          std::to_string(st.size_bytes) + " bytes, not '" + o.volume + "' of " +
          std::to_string(size) + " bytes; use a state dir per volume");
    }
    plan.initial = !st.initial_sync_done;
    if (st.clean_shutdown && st.capture_mode == "trace") {
      resume = true;
      lost_baseline = st.trace_lost_events;
      plan.active = plan.initial || st.resync_pending;
      plan.cursor = plan.active ? st.sync_cursor : size;
      plan.skip_zero = st.skip_zero;
      Status b = saved_dirty.Load(BitmapPath(o.state_dir));
      if (!b.ok()) {
        gap_reason = b.message() + "; the regions left dirty at the last stop are unknown";
      }
    } else {
      // A crash (or a switch from NBD mode): changes since the last durable record are
      // unknown. Zero blocks must be sent too: a hash the crash did not get to write may hide a
      // durable record.
      gap_reason = st.clean_shutdown ? "agent switched from NBD mode to trace mode"
                                     : "agent restarted after a crash";
      plan.skip_zero = false;
      trust_hashes = st.boot_id == CurrentBootId() && st.capture_mode == "trace";
    }
  } else {
    plan.initial = true;
    plan.active = true;
    plan.decide_skip_zero_at_handshake = true;
  }

  bool reset = false;
  auto hashes = BlockHashStore::Open(o.state_dir + "/block-hashes", size, &reset);
  if (!hashes.ok()) return hashes.status();
  hashes_ = std::move(*hashes);
  if (reset) {
    CDP_LOG(warning) << "cdp-agent: volume " << o.volume << ": block hash file was for another "
                     << "device or damaged; starting it afresh (a resync sends every block)";
  }
  if (!trust_hashes) {
    CDP_LOG(warning) << "cdp-agent: volume " << o.volume << ": the last run ended with the "
                     << "machine (another boot) or in another mode; block hashes are not trusted";
    CDP_RETURN_IF_ERROR(hashes_->InvalidateAll());
  }

  std::vector<std::unique_ptr<FsFreezer>> freezers;
  for (const std::string& path : freeze_paths) {
    FsFreezer::Options fo;
    fo.mount_path = path;
    fo.hard_limit_ms = HardLimitMs(o.freeze_limit_ms);
    CDP_ASSIGN_OR_RETURN(auto freezer, FsFreezer::Start(fo));
    freezers.push_back(std::move(freezer));
  }

  // Tracing starts last: an error above leaves nothing enabled in tracefs.
  BlockTracer::Options to;
  to.tracefs_root = o.tracefs_root;
  to.instance_name = "cdp-agent." + o.volume;
  to.buffer_kb = o.trace_buffer_kb;
  std::unique_ptr<BlockTracer> tracer;
  if (resume) {
    auto resumed = BlockTracer::Resume(dev, to);
    if (resumed.ok()) {
      tracer = std::move(*resumed);
      auto lost = tracer->LostEvents();
      if (!lost.ok() || *lost > lost_baseline) {
        gap_reason = "the kernel dropped block events while the agent was stopped";
      }
      if (lost.ok()) lost_baseline = *lost;
    } else {
      gap_reason = "the trace instance of the last run is gone (" + resumed.status().message() +
                   ")";
    }
  }
  if (!tracer) {
    CDP_ASSIGN_OR_RETURN(tracer, BlockTracer::Create(dev, to));
    auto lost = tracer->LostEvents();
    lost_baseline = lost.ok() ? *lost : 0;
  }
  if (!gap_reason.empty()) {
    // Something changed untracked: compare the whole device with the block hashes.
    plan.active = true;
    plan.cursor = 0;
  }

  state_.volume = o.volume;
  state_.size_bytes = size;
  state_.clean_shutdown = false;
  state_.initial_sync_done = !plan.initial;
  state_.sync_cursor = plan.active ? plan.cursor : size;
  state_.skip_zero = plan.skip_zero;
  state_.capture_mode = "trace";
  state_.resync_pending = plan.active && !plan.initial;
  state_.trace_lost_events = lost_baseline;
  state_.boot_id = CurrentBootId();
  state_.writer_epoch = loaded.ok() ? loaded->writer_epoch : 0;
  CDP_RETURN_IF_ERROR(SaveAgentState(o.state_dir, state_));
  ::unlink(BitmapPath(o.state_dir).c_str());

  dirty_ = std::make_unique<DirtyBitmap>(size);
  MakeSender(size, reader->logical_block_size());
  ServeSourceControl();
  sender_->SetCheckpointCallback([this](const std::string& label) -> Result<uint64_t> {
    GroupFreezeCycle* cycle = cycle_.load();
    if (!trace_ || (cycle == nullptr && !trace_->Filesystems().empty())) {
      return Status::Unavailable("volume " + state_.volume + ": tracing not started");
    }
    if (cycle == nullptr) CDP_RETURN_IF_ERROR(trace_->CanCheckpoint());  // says why not
    CDP_ASSIGN_OR_RETURN(auto points, cycle->Checkpoint(label, 8000));
    for (const FrozenVolume& p : points) {
      if (p.volume == state_.volume) {
        if (p.lsn == 0) {
          return Status::Aborted("volume " + state_.volume +
                                 ": the freeze made no point (nothing written yet)");
        }
        return p.lsn;
      }
    }
    return Status::Internal("volume " + state_.volume + ": not a member of its freeze cycle");
  });
  capture_ = std::make_unique<VolumeCapture>(o.volume, std::move(capture_dev),
                                             std::move(capture_read_dev), sender_.get(),
                                             dirty_.get(), AckMode::kAsync);
  TraceCaptureOptions tco;
  tco.volume = o.volume;
  tco.checkpoint_interval_ms = o.checkpoint_interval_ms;
  tco.freeze_limit_ms = o.freeze_limit_ms;
  tco.freeze_hold_ms = o.freeze_hold_ms;
  trace_output_ = std::make_unique<CaptureOutput>(capture_.get(), sender_.get());
  trace_ =
      std::make_unique<TraceCapture>(tco, trace_output_.get(), hashes_.get(), std::move(reader),
                                     std::move(tracer), std::move(freezers), plan, lost_baseline);
  trace_->SetWakeCycle([this] {
    if (GroupFreezeCycle* cycle = cycle_.load()) cycle->RunSoon();
  });
  uint64_t offset = 0, length = 0;
  uint64_t carried = 0;
  while (saved_dirty.TakeRun(64ull << 20, &offset, &length)) {
    trace_->AddDirty(offset, length);
    carried += length;
  }
  if (!gap_reason.empty()) capture_->RecordGap(gap_reason + "; checksum resync of the device");
  sender_->Start();
  trace_->Start();
  CDP_LOG(info) << "cdp-agent: tracing " << o.device << " (" << size << " bytes, "
                << (dev.start_sector ? "partition of " + dev.disk_name : std::string("disk"))
                << ") as volume " << o.volume << ", journal at " << o.server
                << (freeze_paths.empty() ? std::string(", no freezes (no consistency points)")
                                         : ", freezing " + JoinPaths(freeze_paths) + " every " +
                                               std::to_string(o.checkpoint_interval_ms) + " ms")
                << (resume ? ", resumed the trace of the last run" : "")
                << (carried ? ", " + std::to_string(carried) + " dirty bytes carried over" : "")
                << "; checksums: CRC32C " << crc32c::Implementation() << ", XXH3 "
                << Xxh3Implementation();
  return Status::Ok();
}

FreezeMember* Agent::freeze_member() {
  if (!trace_ || trace_->Filesystems().empty()) return nullptr;
  return trace_.get();
}

Agent::~Agent() {
  (void)Stop();
  if (lock_fd_ >= 0) ::close(lock_fd_);
  if (volume_lock_fd_ >= 0) ::close(volume_lock_fd_);
}

void Agent::FillReport(v1::AgentReport* r) {
  r->set_captured_lsn(capture_->captured_lsn());
  r->set_captured_bytes(capture_->captured_bytes());
  if (trace_) {
    trace_->FillReport(r);
    r->set_ack_mode("async");
    return;
  }
  r->set_capture_mode("nbd");
  r->set_dirty_bytes(dirty_->dirty_bytes() + sync_->in_progress_bytes());
  r->set_dirty_since_ns(dirty_->dirty_since_ns());
  r->set_resync_active(sync_->resync_active() || !dirty_->empty());
  r->set_initial_sync_done(sync_->full_sync_done());
  r->set_initial_sync_total(sync_->total_bytes());
  r->set_initial_sync_done_bytes(sync_->cursor());
  r->set_ack_mode(capture_->mode() == AckMode::kSync ? "sync" : "async");
}

Status Agent::Stop() {
  if (stopped_) return Status::Ok();
  stopped_ = true;
  CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": stopping";
  if (trace_) return StopTrace();
  // Writes waiting for durability get drain_ms, then fail, so the NBD threads can finish.
  if (capture_) capture_->BeginShutdown(options_.drain_ms);
  if (nbd_) nbd_->Stop();
  if (sync_) sync_->Stop();
  if (!sender_) return Status::Ok();
  auto left = sender_->Stop(options_.drain_ms);
  for (const auto& rec : left) dirty_->Mark(rec.offset, rec.length);
  if (!left.empty()) {
    CDP_LOG(warning) << "cdp-agent: volume " << options_.volume << ": " << left.size()
                     << " records not durable at stop; saved as dirty regions for the next run";
  }
  CDP_RETURN_IF_ERROR(dirty_->Save(BitmapPath(options_.state_dir)));
  state_.clean_shutdown = true;
  state_.initial_sync_done = sync_->full_sync_done();
  state_.sync_cursor = sync_->cursor();
  state_.skip_zero = sync_->skip_zero();
  CDP_RETURN_IF_ERROR(SaveAgentState(options_.state_dir, state_));
  CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": stopped cleanly (captured LSN "
                << capture_->captured_lsn() << ", durable LSN " << sender_->durable_lsn() << ", "
                << dirty_->dirty_bytes() << " dirty bytes saved)";
  return Status::Ok();
}

#if CDP_TEST_HOOKS
void Agent::SaveStateInBackground() {
  std::lock_guard<std::mutex> lock(test_savers_mu_);
  AgentState copy = state_;
  test_savers_.emplace_back([this, copy] {
    Status s = SaveAgentState(options_.state_dir, copy);
    if (s.ok()) test_saves_done_++;
  });
}
#endif

Status Agent::StopTrace() {
#if CDP_TEST_HOOKS
  {
    std::lock_guard<std::mutex> lock(test_savers_mu_);
    for (std::thread& t : test_savers_) t.join();
    if (!test_savers_.empty()) {
      CDP_LOG(info) << "cdp-agent: volume " << options_.volume
                    << ": test hook: " << test_saves_done_.load() << " state saves during freezes";
    }
    test_savers_.clear();
  }
#endif
  capture_->BeginShutdown(options_.drain_ms);
  // The tracefs instance stays enabled: events keep accumulating for the next run.
  std::vector<Extent> unshipped = trace_->Stop();
  DirtyBitmap dirty(capture_->size());
  for (const Extent& e : unshipped) dirty.Mark(e.offset, e.length);
  auto left = sender_->Stop(options_.drain_ms);
  for (const auto& rec : left) dirty.Mark(rec.offset, rec.length);
  trace_->ApplyDurableHashes();
  CDP_RETURN_IF_ERROR(hashes_->Sync());
  CDP_RETURN_IF_ERROR(dirty.Save(BitmapPath(options_.state_dir)));
  state_.clean_shutdown = true;
  state_.initial_sync_done = trace_->initial_sync_done();
  state_.sync_cursor = trace_->scan_resume_offset();
  state_.skip_zero = trace_->scan_skip_zero();
  state_.resync_pending = trace_->scan_pending() && trace_->initial_sync_done();
  state_.trace_lost_events = trace_->lost_events_seen();
  CDP_RETURN_IF_ERROR(SaveAgentState(options_.state_dir, state_));
  CDP_LOG(info) << "cdp-agent: volume " << options_.volume << ": stopped cleanly (captured LSN "
                << capture_->captured_lsn() << ", durable LSN " << sender_->durable_lsn() << ", "
                << dirty.dirty_bytes() << " dirty bytes saved; tracing continues in "
                << "tracefs until the next start)";
  return Status::Ok();
}

}  // namespace cdp::agent

namespace cdp::agent {

Result<std::unique_ptr<AgentProcess>> AgentProcess::Start(
    const std::vector<AgentOptions>& volumes) {
  std::unique_ptr<AgentProcess> process(new AgentProcess());
  if (volumes.empty()) return Status::InvalidArgument("no volume to protect");
  const auto group_of = [](const AgentOptions& o) { return o.group.empty() ? o.volume : o.group; };
  const std::string group = group_of(volumes[0]);
  for (const AgentOptions& o : volumes) {
    if (group_of(o) != group) {
      return Status::InvalidArgument(
          "the volumes of one cdp-agent process are one consistency group: volume " +
          volumes[0].volume + " is in group '" + group + "', volume " + o.volume + " in '" +
          group_of(o) + "'; run one process per group");
    }
  }
  GroupFreezeCycleOptions co;
  co.group = volumes.size() > 1 ? group : std::string();
  co.checkpoint_interval_ms = 0;
  std::vector<FreezeMember*> members;
  for (const AgentOptions& o : volumes) {
    auto agent = Agent::Start(o);
    if (!agent.ok()) {
      (void)process->Stop();
      if (volumes.size() == 1) return agent.status();
      return agent.status().WithContext("volume " + o.volume);
    }
    if (FreezeMember* m = (*agent)->freeze_member()) {
      members.push_back(m);
      co.checkpoint_interval_ms =
          co.checkpoint_interval_ms == 0
              ? o.checkpoint_interval_ms
              : std::min(co.checkpoint_interval_ms, o.checkpoint_interval_ms);
      co.freeze_limit_ms =
          members.size() == 1 ? o.freeze_limit_ms : std::max(co.freeze_limit_ms, o.freeze_limit_ms);
      co.freeze_hold_ms = std::max(co.freeze_hold_ms, o.freeze_hold_ms);
    }
    process->agents_.push_back(std::move(*agent));
  }
  co.hard_limit_ms = HardLimitMs(co.freeze_limit_ms);
  SourceControlDeps deps;
  for (auto& agent : process->agents_) {
    const AgentOptions& o = agent->options();
    deps.volumes.push_back({o.volume, o.device, agent->freeze_mount_points()});
  }
  if (!members.empty()) {
    process->cycle_ = std::make_unique<GroupFreezeCycle>(co, members);
    for (auto& agent : process->agents_) agent->SetFreezeCycle(process->cycle_.get());
    process->cycle_->Start();
    if (members.size() > 1) {
      std::string names;
      for (FreezeMember* m : members) names += (names.empty() ? "" : ", ") + m->volume();
      CDP_LOG(info) << "cdp-agent: group " << group << ": one freeze of " << names << " every "
                    << co.checkpoint_interval_ms << " ms (limit " << co.freeze_limit_ms
                    << " ms): one group point per freeze";
    }
  }
  // One source control for the process (the cutover's quiesce freezes every volume's
  // filesystems together), whichever volume's session a request comes on.
  deps.freeze = process->cycle_.get();
  deps.no_freeze_reason =
      volumes[0].trace ? "no volume of this cdp-agent freezes a filesystem (--freeze)"
                       : "an NBD-mode agent does not see the source's filesystems (quiesce a "
                         "QEMU source with qmp-pause)";
  process->addresses_ = MakeIpAddressTable();
  deps.addresses = process->addresses_.get();
  deps.power_off = PowerOffNow;
  process->source_control_ = std::make_unique<SourceControlService>(std::move(deps));
  for (auto& agent : process->agents_) agent->SetSourceControl(process->source_control_.get());
  return process;
}

AgentProcess::~AgentProcess() { (void)Stop(); }

Status AgentProcess::Stop() {
  if (stopped_) return Status::Ok();
  stopped_ = true;
  if (cycle_) cycle_->Stop();
  Status first = Status::Ok();
  for (auto& agent : agents_) {
    agent->SetFreezeCycle(nullptr);
    agent->SetSourceControl(nullptr);
    Status s = agent->Stop();
    if (!s.ok() && first.ok()) first = s.WithContext("volume " + agent->options().volume);
  }
  return first;
}

}  // namespace cdp::agent
