#include "cdp/agent/agent.h"

#include <unistd.h>

#include <filesystem>

#include "cdp/core/logging.h"
#include "cdp/core/transport.h"
#include "cdp/core/wire.h"

namespace cdp::agent {

namespace {
std::string BitmapPath(const std::string& dir) { return dir + "/dirty.bitmap"; }
}  // namespace

Result<std::unique_ptr<Agent>> Agent::Start(const AgentOptions& options) {
  CDP_RETURN_IF_ERROR(wire::ValidateVolumeName(options.volume));
  CDP_RETURN_IF_ERROR(ValidateEndpoint(options.server).WithContext("--server"));
  CDP_RETURN_IF_ERROR(ParseNbdListenAddress(options.nbd).status().WithContext("--nbd"));
  std::unique_ptr<Agent> agent(new Agent(options));

  std::error_code ec;
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec || access(options.state_dir.c_str(), W_OK | X_OK) != 0) {
    return Status::IOError("state dir " + options.state_dir + " is not a writable directory" +
                           (ec ? " (" + ec.message() + ")" : std::string()) +
                           "; pass a writable --state-dir");
  }

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
    if (s.clean_shutdown) {
      // A clean stop always saves the bitmap; one that is missing or unreadable means the
      // dirty regions are unknown, so everything is dirty.
      Status b = agent->dirty_->Load(BitmapPath(options.state_dir));
      if (!b.ok()) {
        CDP_LOG(warning) << "cdp-agent: volume " << options.volume << ": " << b.message()
                         << "; resyncing the whole device";
        agent->dirty_->MarkAll();
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
      gap_reason = "agent restarted after a crash; full resync";
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
  CDP_RETURN_IF_ERROR(SaveAgentState(options.state_dir, agent->state_));
  ::unlink(BitmapPath(options.state_dir).c_str());

  SenderOptions so;
  so.server = options.server;
  so.volume = options.volume;
  so.volume_size = size;
  so.block_size = device->logical_block_size();
  so.identity = wire::ProcessIdentity("cdp-agent");
  so.buffer_bytes = options.buffer_bytes;
  Agent* self = agent.get();
  agent->sender_ = std::make_unique<Sender>(
      so,
      [self](uint64_t durable) {
        self->sync_->OnHandshake(durable);
        self->capture_->OnHandshake(durable);
      },
      [self](v1::AgentReport* r) { self->FillReport(r); });
  agent->sender_->SetJournalLossCallback(
      [self](uint64_t durable) { self->capture_->RebaseAfterJournalLoss(durable); });
  agent->capture_ =
      std::make_unique<VolumeCapture>(options.volume, std::move(device), std::move(read_device),
                                      agent->sender_.get(), agent->dirty_.get(), options.ack_mode);
  agent->sync_ =
      std::make_unique<SyncEngine>(options.volume, agent->capture_.get(), agent->sender_.get(),
                                   agent->dirty_.get(), std::move(probe), plan);
  if (!gap_reason.empty()) {
    v1::Gap gap;
    gap.set_time_ns(NowNanos());
    gap.set_reason(gap_reason);
    agent->sender_->AddGap(gap);
  }

  NbdServer::Options nbd_opts;
  nbd_opts.listen_address = options.nbd;
  nbd_opts.export_name = options.volume;
  nbd_opts.target = agent->capture_.get();
  auto nbd = NbdServer::Start(nbd_opts);
  if (!nbd.ok()) return nbd.status().WithContext("--nbd");
  agent->nbd_ = std::move(*nbd);

  agent->sender_->Start();
  agent->sync_->Start();
  CDP_LOG(info) << "cdp-agent: protecting " << options.device << " (" << size
                << " bytes) as volume " << options.volume << ", NBD export on "
                << agent->nbd_->bound_address() << ", journal at " << options.server
                << ", ack mode " << (options.ack_mode == AckMode::kSync ? "sync" : "async");
  return agent;
}

Agent::~Agent() { (void)Stop(); }

void Agent::FillReport(v1::AgentReport* r) {
  r->set_captured_lsn(capture_->captured_lsn());
  r->set_captured_bytes(capture_->captured_bytes());
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

}  // namespace cdp::agent
