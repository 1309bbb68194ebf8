#include "cdp/journal/server.h"

#include <algorithm>

#include "cdp/core/block_device.h"
#include "cdp/core/logging.h"
#include "cdp/core/time_text.h"
#include "cdp/journal/point_choice.h"

namespace cdp::journal {

namespace v1 = wire::v1;

namespace {
// An agent not heard for this long is not connected (status, checkpoints), and its writer
// session may be replaced by another process presenting its writer epoch (a restart after a
// crash; docs/wire-protocol.md, "One writer per volume").
constexpr auto kAgentAliveWindow = std::chrono::seconds(3);
constexpr auto kSessionExpiry = std::chrono::seconds(60);
constexpr size_t kMaxDrainMessages = 512;
}  // namespace

class JournalServer::Links : public Outbox, public CheckpointRelay::Agents {
 public:
  explicit Links(JournalServer* server) : server_(server) {}

  Status SendTo(const std::string& peer, const v1::Header& header,
                std::vector<zmq::message_t> frames) override {
    Status s = server_->socket_->SendTo(peer, header, std::move(frames));
    if (!s.ok()) CDP_LOG(debug) << "journal-server: reply to " << PeerName(peer) << ": " << s;
    return s;
  }
  std::string PeerName(const std::string& peer) override { return server_->PeerName(peer); }

  std::string WriterOf(const std::string& volume) override {
    auto rt = server_->runtime_.find(volume);
    return rt == server_->runtime_.end() ? std::string() : rt->second.agent_peer;
  }
  bool WriterAlive(const std::string& volume) override {
    auto rt = server_->runtime_.find(volume);
    return rt != server_->runtime_.end() &&
           Clock::now() - rt->second.report_time <= kAgentAliveWindow;
  }

 private:
  JournalServer* const server_;
};

JournalServer::JournalServer(ServerOptions options)
    : options_(std::move(options)), links_(std::make_unique<Links>(this)) {}

Result<std::unique_ptr<JournalServer>> JournalServer::Start(const ServerOptions& options) {
  std::unique_ptr<JournalServer> server(new JournalServer(options));
  CDP_ASSIGN_OR_RETURN(server->store_, JournalStore::Open(options.data_dir, options.reserve_bytes));
  CDP_ASSIGN_OR_RETURN(server->socket_, Socket::Bind(server->ctx_, options.listen));
  server->retention_ = std::make_unique<RetentionWorker>(server->store_.get(), options.retention);
  server->retention_->Start();
  CDP_ASSIGN_OR_RETURN(server->images_,
                       ImageService::Start(server->store_.get(), server->retention_.get()));
  server->tails_ = std::make_unique<TailService>(server->store_.get(), server->links_.get(),
                                                 options.max_tail_bytes);
  server->checkpoints_ = std::make_unique<CheckpointRelay>(
      server->store_.get(), server->links_.get(), server->links_.get());
  server->sources_ = std::make_unique<SourceRelay>(server->store_.get(), server->links_.get(),
                                                   server->links_.get());
  CDP_LOG(info) << "journal-server: serving " << options.listen << " with journal in "
                << options.data_dir << " (protocol v" << wire::kMinVersion << ".."
                << wire::kMaxVersion << ")";
  return server;
}

JournalServer::~JournalServer() {
  images_.reset();
  if (retention_) retention_->Stop();
  socket_.reset();
  ctx_.close();
}

std::string JournalServer::PeerName(const std::string& peer) {
  auto it = sessions_.find(peer);
  if (it != sessions_.end() && !it->second->identity.empty()) return it->second->identity;
  // Never the routing id: it tells whoever reads it which ids libzmq generates next, and a peer
  // announcing one of those makes libzmq abort (docs/wire-protocol.md, section 1, "Routing ids").
  return "a peer that gave no identity";
}

JournalServer::Session* JournalServer::FindSession(const std::string& peer) {
  auto it = sessions_.find(peer);
  if (it == sessions_.end()) return nullptr;
  it->second->last_seen = Clock::now();
  return it->second.get();
}

void JournalServer::SendError(const std::string& peer, const Status& status, bool permanent) {
  (void)links_->SendError(peer, status, permanent);  // a failure is logged there
}

Status JournalServer::Run(const std::atomic<bool>* stop) {
  auto last_sweep = Clock::now();
  while (!stop->load()) {
    const bool readable = socket_->Readable(50, images_->ready_fd());
    SendImageReplies();
    if (!readable) {
      tails_->ServeParked(/*expire_only=*/true);
      checkpoints_->ServePending();
      sources_->ServePending();
    } else {
      WriteGroup group;
      std::vector<PendingAck> acks;
      size_t drained = 0;
      do {
        auto msg = socket_->Recv(0);
        if (!msg.ok()) {
          if (!msg.status().IsTimedOut()) {
            CDP_LOG(warning) << "journal-server: dropped a message: " << msg.status().ToString();
          }
          break;
        }
        Handle(*msg, &group, &acks);
      } while (++drained < kMaxDrainMessages && group.byte_size() < options_.max_group_bytes &&
               socket_->Readable(0));

      Status committed = store_->Commit(&group);
      for (const auto& ack : acks) {
        if (!committed.ok()) {
          SendError(ack.peer,
                    committed.WithContext("journal-server: volume " + ack.volume +
                                          ": batch not journaled; will be retried"),
                    false);
          continue;
        }
        auto v = store_->GetVolume(ack.volume);
        if (!v.ok()) continue;
        v1::Header h;
        h.mutable_durable_ack()->set_volume(ack.volume);
        h.mutable_durable_ack()->set_durable_lsn(v->durable_lsn);
        h.mutable_durable_ack()->set_sequence(ack.sequence);
        (void)socket_->SendTo(ack.peer, h);
      }
      if (!committed.ok()) {
        CDP_LOG(error) << "journal-server: group commit failed, nothing acked: "
                       << committed.ToString();
      }
      SendAgentHelloReplies();
      tails_->ServeParked(/*expire_only=*/false);
      checkpoints_->ServePending();
      sources_->ServePending();
    }
    if (Clock::now() - last_sweep > std::chrono::seconds(5)) {
      last_sweep = Clock::now();
      for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (Clock::now() - it->second->last_seen > kSessionExpiry) {
          it = sessions_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
  CDP_LOG(info) << "journal-server: stopping";
  return Status::Ok();
}

void JournalServer::Handle(wire::Message& msg, WriteGroup* group, std::vector<PendingAck>* acks) {
  const v1::Header& h = msg.header;
  switch (h.body_case()) {
    case v1::Header::kHello:
      HandleHello(msg);
      return;
    case v1::Header::kChangeBatch:
      HandleBatch(msg, group, acks);
      return;
    case v1::Header::kAgentReport:
      HandleReport(msg);
      return;
    case v1::Header::kTailRequest:
      HandleTail(msg);
      return;
    case v1::Header::kStatusRequest:
      HandleStatus(msg);
      return;
    case v1::Header::kPointsRequest:
      HandlePoints(msg);
      return;
    case v1::Header::kImageOpenRequest:
    case v1::Header::kImageReadRequest:
    case v1::Header::kImageCloseRequest: {
      std::string name = PeerName(msg.peer);
      images_->Submit(std::move(msg), std::move(name));
      return;
    }
    case v1::Header::kCheckpointRequest:
      checkpoints_->HandleRequest(msg.peer, h.checkpoint_request());
      return;
    case v1::Header::kCheckpointReply:
      checkpoints_->HandleReply(msg.peer, h.checkpoint_reply());
      return;
    case v1::Header::kSourceRequest:
      sources_->HandleRequest(msg.peer, h.source_request());
      return;
    case v1::Header::kSourceReply:
      sources_->HandleReply(msg.peer, h.source_reply());
      return;
    case v1::Header::kRetentionRequest:
      HandleRetention(msg);
      return;
    default: {
      Status s =
          Status::InvalidArgument("journal-server: unexpected message (header case " +
                                  std::to_string(h.body_case()) + ") from " + PeerName(msg.peer));
      CDP_LOG(warning) << s.message();
      SendError(msg.peer, s, true);
    }
  }
}

void JournalServer::HandleHello(const wire::Message& msg) {
  const v1::Hello& hello = msg.header.hello();
  const std::string who = hello.identity().empty() ? PeerName(msg.peer) : hello.identity();
  auto version = wire::NegotiateVersion(hello, who);
  if (!version.ok()) {
    CDP_LOG(warning) << "journal-server: refused " << who << " (volume '" << hello.volume()
                     << "'): " << version.status().message();
    SendError(msg.peer, version.status(), true);
    return;
  }
  v1::Header reply;
  auto* r = reply.mutable_hello_reply();
  r->set_version(*version);
  r->set_server_id(options_.server_id);
  r->set_session(std::to_string(next_session_++));

  auto session = std::make_unique<Session>();
  session->role = hello.role();
  session->identity = who;
  session->volume = hello.volume();
  session->version = *version;
  session->last_seen = Clock::now();

  if (hello.role() == v1::ROLE_AGENT || hello.role() == v1::ROLE_REPLICATOR) {
    Status name_ok = wire::ValidateVolumeName(hello.volume());
    if (!name_ok.ok()) {
      CDP_LOG(warning) << "journal-server: refused " << who << ": " << name_ok.message();
      SendError(msg.peer, name_ok, true);
      return;
    }
  }
  if (hello.role() == v1::ROLE_AGENT) {
    if (hello.volume_size() == 0) {
      Status s = Status::InvalidArgument("agent for volume " + hello.volume() +
                                         " reports a size of 0 bytes");
      CDP_LOG(warning) << "journal-server: refused " << who << ": " << s.message();
      SendError(msg.peer, s, true);
      return;
    }
    auto v = store_->RegisterVolume(hello.volume(), hello.volume_size(), hello.block_size());
    if (!v.ok()) {
      CDP_LOG(warning) << "journal-server: refused " << who << ": " << v.status().message();
      SendError(msg.peer, v.status(), true);
      return;
    }
    auto epoch = AdmitWriter(msg.peer, hello, who, *v);
    if (!epoch.ok()) {
      CDP_LOG(warning) << "journal-server: refused " << who << ": " << epoch.status().message();
      // Another live process with the same epoch may go away (a restart after a crash): retry.
      SendError(msg.peer, epoch.status(), epoch.status().IsPermissionDenied());
      return;
    }
    session->instance_id = hello.instance_id();
    r->set_volume_size(v->size_bytes);
    r->set_writer_epoch(*epoch);
    CDP_LOG(info) << "journal-server: agent " << who << " attached to volume " << hello.volume()
                  << " (writer epoch " << *epoch << ")";
    // Its durable LSN is known only once the open group commits: records of the writer this
    // one may have replaced are in it, and the new writer's first LSN must follow them.
    sessions_[msg.peer] = std::move(session);
    hello_replies_.push_back(DeferredHelloReply{msg.peer, hello.volume(), std::move(reply)});
    return;
  } else if (hello.role() == v1::ROLE_REPLICATOR) {
    auto v = store_->GetVolume(hello.volume());
    if (!v.ok()) {
      CDP_LOG(warning) << "journal-server: replicator " << who << ": " << v.status().message();
      SendError(msg.peer, v.status(), false);
      return;
    }
    r->set_durable_lsn(v->durable_lsn);
    r->set_volume_size(v->size_bytes);
    CDP_LOG(info) << "journal-server: replicator " << who << " attached to volume "
                  << hello.volume() << " (applied LSN " << v->applied_lsn << ")";
  } else if (hello.role() != v1::ROLE_CONTROL) {
    Status s = Status::InvalidArgument("Hello from " + who + " has no known role");
    SendError(msg.peer, s, true);
    return;
  }
  sessions_[msg.peer] = std::move(session);
  (void)socket_->SendTo(msg.peer, reply);
}

Result<uint64_t> JournalServer::AdmitWriter(const std::string& peer, const v1::Hello& hello,
                                            const std::string& who, const VolumeInfo& v) {
  if (hello.instance_id() == 0) {
    return Status::ProtocolMismatch(
        "agent " + who + " for volume " + v.name +
        " sends no instance id: it is older than this journal-server, which lets one agent "
        "write a volume at a time (docs/wire-protocol.md, \"One writer per volume\"); upgrade "
        "the agent");
  }
  VolumeRuntime& rt = runtime_[v.name];
  const uint64_t current = v.writer_epoch;
  const uint64_t presented = hello.writer_epoch();
  const uint64_t instance = hello.instance_id();
  // The session writing the volume now, on another connection; `live` when it is another
  // process that was heard lately.
  Session* writer = nullptr;
  if (!rt.agent_peer.empty() && rt.agent_peer != peer) {
    auto it = sessions_.find(rt.agent_peer);
    if (it != sessions_.end() && it->second->role == v1::ROLE_AGENT &&
        it->second->volume == v.name && !it->second->fenced) {
      writer = it->second.get();
    }
  }
  const Session* live = writer != nullptr && writer->instance_id != instance &&
                                Clock::now() - writer->last_seen < kAgentAliveWindow
                            ? writer
                            : nullptr;
  auto busy = [&] {
    const double quiet = std::chrono::duration<double>(Clock::now() - live->last_seen).count();
    return Status::Unavailable(
        "volume " + v.name + ": agent " + live->identity + " writes it with writer epoch " +
        std::to_string(current) + " (heard " + std::to_string(quiet).substr(0, 4) +
        " s ago) and this agent presents epoch " + std::to_string(presented) +
        ": two agents share one state dir (a cloned source, or a copied state dir); stop one "
        "of them. This agent retries, and becomes the writer (with a new epoch, fencing the "
        "other) only once the other has been silent for " +
        std::to_string(kAgentAliveWindow.count()) + " s");
  };
  const std::string since =
      v.writer_since_ns != 0 ? " since " + FormatRfc3339(v.writer_since_ns) : std::string();
  uint64_t grant = 0;
  if (current > 0 && instance == v.writer_instance_id && presented <= current) {
    // The process the epoch was granted to, asking again: its reply was lost, or it could not
    // save the epoch. The same answer, whatever it presents.
    grant = current;
  } else if (hello.take_over()) {
    grant = std::max(current, presented) + 1;
  } else if (current > 0 && !v.writer_confirmed && presented == v.writer_presented_epoch &&
             presented < current && live == nullptr) {
    // The agent granted `current` never used it (no batch, no report) and presented what this
    // one presents: it died before saving the grant, and this is its restart. The grant moves
    // to this process, still unconfirmed.
    grant = current;
  } else if (presented < current) {
    return Status::PermissionDenied(
        "volume " + v.name + ": this agent holds writer epoch " + std::to_string(presented) +
        (presented == 0 ? " (none: a new or emptied state dir)" : "") +
        ", but the volume's writer is epoch " + std::to_string(current) + ", granted to " +
        (v.writer_identity.empty() ? std::string("another agent") : v.writer_identity) + since +
        ". Another agent writes this volume now (a restarted host, a clone of the source, the "
        "source after a cutover), so this one must not: stop it. If this agent is the one that "
        "should protect the volume and the other is gone for good, restart it with --take-over");
  } else if (live != nullptr) {
    return busy();
  } else if (current == 0) {
    grant = std::max<uint64_t>(presented, 1);  // the volume's first writer (or a journal that
                                               // predates epochs)
  } else if (presented > current) {
    grant = presented;  // the journal's record is older than the agent's (restored journal?)
    CDP_LOG(warning) << "journal-server: volume " << v.name << ": agent " << who
                     << " holds writer epoch " << presented << ", newer than the journal's "
                     << current << " (was the journal restored from an older copy?); it "
                     << "stays the writer";
  } else {
    // The same epoch from another process (a restart): a new one, so that a process still
    // holding the old one is fenced.
    grant = current + 1;
  }
  const bool same_grant = grant == current && v.writer_instance_id == instance;
  if (!same_grant || v.writer_identity != who) {
    // A grant that moves to this process records what it presented, unconfirmed.
    Status granted = store_->GrantWriter(v.name, grant, who, instance,
                                         same_grant ? v.writer_presented_epoch : presented);
    if (!granted.ok()) {
      return Status::Unavailable(
          granted.WithContext("journal-server: volume " + v.name + ": recording the writer epoch")
              .message());
    }
  }
  if (writer != nullptr) {
    writer->fenced = true;
    if (writer->instance_id != instance) {
      CDP_LOG(warning) << "journal-server: volume " << v.name << ": agent " << who
                       << " is the writer now (epoch " << grant
                       << (hello.take_over() ? ", --take-over" : "") << "); agent "
                       << writer->identity << " is fenced: its writes are refused";
    }
  }
  rt.agent_peer = peer;
  return grant;
}

void JournalServer::ConfirmWriter(const VolumeInfo& v) {
  if (v.writer_confirmed) return;
  Status s = store_->ConfirmWriter(v.name);
  if (!s.ok()) CDP_LOG(warning) << "journal-server: " << s.ToString() << " (tried again later)";
}

Status JournalServer::CheckWriter(const std::string& peer, const Session& session) {
  auto rt = runtime_.find(session.volume);
  if (!session.fenced && rt != runtime_.end() && rt->second.agent_peer == peer) {
    return Status::Ok();
  }
  auto v = store_->GetVolume(session.volume);
  const std::string writer = v.ok() && !v->writer_identity.empty() ? v->writer_identity
                                                                    : std::string("another agent");
  return Status::PermissionDenied(
      "volume " + session.volume + ": this agent is fenced: " + writer +
      " became the volume's writer (epoch " + std::to_string(v.ok() ? v->writer_epoch : 0) +
      "); this agent's writes are not journaled. Stop it, or restart it with --take-over if it "
      "is the one that should protect the volume");
}

void JournalServer::HandleBatch(wire::Message& msg, WriteGroup* group,
                                std::vector<PendingAck>* acks) {
  const v1::ChangeBatch& batch = msg.header.change_batch();
  Session* session = FindSession(msg.peer);
  if (session == nullptr || session->role != v1::ROLE_AGENT || session->volume != batch.volume()) {
    SendError(msg.peer,
              Status::FailedPrecondition("journal-server: no agent session for volume '" +
                                         batch.volume() + "' on this connection; send Hello"),
              false);
    return;
  }
  const std::string& name = batch.volume();
  Status writer = CheckWriter(msg.peer, *session);
  if (!writer.ok()) {
    CDP_LOG(warning) << "journal-server: batch from " << session->identity
                     << " refused: " << writer.message();
    SendError(msg.peer, writer, true);
    return;
  }
  auto vol = store_->GetVolume(name);
  if (!vol.ok()) {
    SendError(msg.peer, vol.status(), true);
    return;
  }
  ConfirmWriter(*vol);
  auto reject = [&](const Status& why) {
    Status s = why.WithContext("journal-server: volume " + name + ": batch from " +
                               session->identity + " rejected, nothing journaled");
    CDP_LOG(warning) << s.message();
    SendError(msg.peer, s, true);
  };

  // Validate the whole batch before appending anything.
  size_t next_payload = 0;
  std::vector<ChangeRecord> records;
  records.reserve(batch.records_size());
  for (int i = 0; i < batch.records_size(); ++i) {
    ChangeRecord rec = wire::RecordFromProto(batch.records(i));
    if (rec.lsn != batch.first_lsn() + static_cast<uint64_t>(i)) {
      reject(Status::InvalidArgument(
          "record " + std::to_string(i) + " has LSN " + std::to_string(rec.lsn) + ", expected " +
          std::to_string(batch.first_lsn() + i) + " (records must be contiguous)"));
      return;
    }
    if (rec.lsn == 0) {
      reject(Status::InvalidArgument("LSN 0 is reserved"));
      return;
    }
    Status range = ValidateRecordRange(rec, vol->size_bytes);
    if (!range.ok()) {
      reject(range);
      return;
    }
    std::string_view payload;
    if (rec.has_payload()) {
      if (next_payload >= msg.payloads.size()) {
        reject(Status::Corruption("record LSN " + std::to_string(rec.lsn) +
                                  " has no payload frame (truncated message)"));
        return;
      }
      payload = std::string_view(static_cast<const char*>(msg.payloads[next_payload].data()),
                                 msg.payloads[next_payload].size());
      ++next_payload;
    }
    Status crc = VerifyRecordPayload(rec, payload);
    if (!crc.ok()) {
      reject(crc);
      return;
    }
    records.push_back(std::move(rec));
  }
  if (next_payload != msg.payloads.size()) {
    reject(Status::Corruption(std::to_string(msg.payloads.size() - next_payload) +
                              " payload frames more than records with payload"));
    return;
  }

  // Idempotent resend: records at or below the journaled LSN were already taken — if they are
  // the same records. One that differs (another device's write under a reused LSN) is refused:
  // acking it would tell its writer that the journal holds what it does not.
  const uint64_t last = store_->LastLsn(name, *group);
  size_t first_new = 0;
  while (first_new < records.size() && records[first_new].lsn <= last) {
    const ChangeRecord& rec = records[first_new];
    auto stored = store_->StoredHeader(name, rec.lsn, *group);
    if (!stored.ok() && stored.status().IsNotFound() && rec.lsn <= vol->base_lsn) {
      ++first_new;  // folded into the base image by retention: it was journaled, and is no more
      continue;
    }
    if (!stored.ok() || stored->offset != rec.offset || stored->length != rec.length ||
        stored->kind != rec.kind || stored->crc32c != rec.crc32c) {
      reject(Status::FailedPrecondition(
          "LSN " + std::to_string(rec.lsn) + " is already journaled " +
          (stored.ok()
               ? "as a different record (offset " + std::to_string(stored->offset) + ", " +
                     std::to_string(stored->length) + " bytes, CRC " +
                     std::to_string(stored->crc32c) + ")"
               : std::string("and cannot be compared (") + stored.status().message() + ")") +
          " than this resend (offset " + std::to_string(rec.offset) + ", " +
          std::to_string(rec.length) + " bytes, CRC " + std::to_string(rec.crc32c) +
          "); the agent's LSNs do not match the journal's: restart the agent (it resyncs)"));
      return;
    }
    ++first_new;
  }
  if (first_new < records.size() && records[first_new].lsn != last + 1) {
    CDP_LOG(warning) << "journal-server: volume " << name << ": LSN " << records[first_new].lsn
                     << " arrived after " << last << " from " << session->identity
                     << "; a batch was lost in flight, asking for a resend from " << last + 1;
    v1::Header h;
    h.mutable_durable_ack()->set_volume(name);
    h.mutable_durable_ack()->set_durable_lsn(vol->durable_lsn);
    h.mutable_durable_ack()->set_resend_from(last + 1);
    h.mutable_durable_ack()->set_sequence(batch.sequence());
    (void)socket_->SendTo(msg.peer, h);
    return;
  }
  // The points first: merging one may read the point the journal holds at its LSN, and a read
  // that fails must leave nothing of the batch in the group.
  const uint64_t batch_last = records.empty() ? last : std::max(last, records.back().lsn);
  std::vector<v1::ConsistencyPoint> points;
  for (const auto& p : batch.points()) {
    // A point at or below the base LSN would outlive the history retention folded away.
    if (p.lsn() <= batch_last && p.lsn() >= vol->base_lsn) points.push_back(p);
  }
  Status prepared = store_->PreparePoints(*group, *vol, &points);
  if (!prepared.ok()) {
    Status s = prepared.WithContext("journal-server: volume " + name + ": batch from " +
                                    session->identity + " not journaled; will be retried");
    CDP_LOG(error) << s.message();
    SendError(msg.peer, s, false);
    return;
  }
  size_t payload_index = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    std::string_view payload;
    if (records[i].has_payload()) {
      const auto& f = msg.payloads[payload_index++];
      payload = std::string_view(static_cast<const char*>(f.data()), f.size());
    }
    if (i >= first_new) store_->AppendRecord(group, *vol, records[i], payload);
  }
  for (const auto& p : points) store_->AppendPoint(group, *vol, p);
  for (const auto& g : batch.gaps()) store_->AppendGap(group, *vol, g);
  acks->push_back(PendingAck{msg.peer, name, batch.sequence()});
}

void JournalServer::HandleReport(const wire::Message& msg) {
  const v1::AgentReport& report = msg.header.agent_report();
  Session* session = FindSession(msg.peer);
  if (session == nullptr || session->role != v1::ROLE_AGENT || session->volume != report.volume()) {
    SendError(msg.peer,
              Status::FailedPrecondition("journal-server: no agent session for volume '" +
                                         report.volume() + "' on this connection; send Hello"),
              false);
    return;
  }
  Status writer = CheckWriter(msg.peer, *session);
  if (!writer.ok()) return SendError(msg.peer, writer, true);
  VolumeRuntime& rt = runtime_[report.volume()];
  rt.report = report;
  rt.report_sequence++;
  rt.report_time = Clock::now();
  rt.agent_peer = msg.peer;
  auto v = store_->GetVolume(report.volume());
  if (!v.ok()) return;
  ConfirmWriter(*v);
  v1::Header h;
  h.mutable_durable_ack()->set_volume(report.volume());
  h.mutable_durable_ack()->set_durable_lsn(v->durable_lsn);
  (void)socket_->SendTo(msg.peer, h);
}

void JournalServer::HandleTail(const wire::Message& msg) {
  const v1::TailRequest& req = msg.header.tail_request();
  Session* session = FindSession(msg.peer);
  if (session == nullptr || session->role != v1::ROLE_REPLICATOR ||
      session->volume != req.volume()) {
    SendError(msg.peer,
              Status::FailedPrecondition("journal-server: no replicator session for volume '" +
                                         req.volume() + "' on this connection; send Hello"),
              false);
    return;
  }
  tails_->HandleRequest(msg.peer, req);
}

void JournalServer::SendAgentHelloReplies() {
  for (auto& d : hello_replies_) {
    auto v = store_->GetVolume(d.volume);
    if (!v.ok()) {
      SendError(d.peer, v.status(), false);
      continue;
    }
    d.reply.mutable_hello_reply()->set_durable_lsn(v->durable_lsn);
    (void)socket_->SendTo(d.peer, d.reply);
  }
  hello_replies_.clear();
}

void JournalServer::SendImageReplies() {
  for (auto& reply : images_->TakeReplies()) {
    Status sent = socket_->SendTo(reply.peer, reply.header, std::move(reply.frames));
    if (!sent.ok()) {
      CDP_LOG(debug) << "journal-server: image reply to " << PeerName(reply.peer) << ": " << sent;
    }
  }
}

void JournalServer::HandleRetention(const wire::Message& msg) {
  const v1::RetentionRequest& request = msg.header.retention_request();
  Status known = CheckVolumeKnown(*store_, request.volume());
  if (!known.ok()) return SendError(msg.peer, known, true);
  auto v = store_->GetVolume(request.volume());
  if (!v.ok()) return SendError(msg.peer, v.status(), false);
  if (request.has_window_s() || request.has_max_bytes()) {
    std::optional<uint64_t> window = v->window_s, max_bytes = v->max_bytes;
    if (request.has_window_s()) window = request.window_s();
    if (request.has_max_bytes()) max_bytes = request.max_bytes();
    Status s = store_->SetRetention(request.volume(), window, max_bytes);
    if (!s.ok()) return SendError(msg.peer, s, false);
    CDP_LOG(info) << "journal-server: volume " << request.volume() << ": retention window "
                  << (window ? std::to_string(*window) + " s" : "default") << ", max bytes "
                  << (max_bytes ? std::to_string(*max_bytes) : "default") << " (set by "
                  << PeerName(msg.peer) << ")";
    v = store_->GetVolume(request.volume());
    if (!v.ok()) return SendError(msg.peer, v.status(), false);
  }
  v1::Header h;
  auto* reply = h.mutable_retention_reply();
  reply->set_volume(v->name);
  reply->set_window_s(retention_->WindowSeconds(*v));
  reply->set_max_bytes(retention_->MaxBytes(*v));
  reply->set_window_default(!v->window_s.has_value());
  reply->set_max_bytes_default(!v->max_bytes.has_value());
  reply->set_base_lsn(v->base_lsn);
  reply->set_journal_bytes(v->journal_bytes);
  reply->set_durable_lsn(v->durable_lsn);
  reply->set_early_folds(v->early_folds);
  reply->set_early_fold_lsn(v->early_fold_lsn);
  reply->set_early_fold_time_ns(v->early_fold_time_ns);
  std::vector<v1::ConsistencyPoint> points;
  if (store_->ReadPoints(v->name, v->base_lsn, UINT64_MAX, &points, /*max_points=*/1).ok() &&
      !points.empty()) {
    reply->set_oldest_point_lsn(points.front().lsn());
    reply->set_oldest_point_time_ns(points.front().time_ns());
  }
  (void)socket_->SendTo(msg.peer, h);
}

void JournalServer::HandlePoints(const wire::Message& msg) {
  const v1::PointsRequest& request = msg.header.points_request();
  Status known = CheckVolumeKnown(*store_, request.volume());
  if (!known.ok()) return SendError(msg.peer, known, true);
  // Read on the ingest thread: bounded whatever the peer asks (a longer list is read in pages,
  // from_lsn after the last point of the previous one).
  constexpr uint32_t kMaxPoints = 100000;
  const uint32_t max =
      request.max_points() == 0 ? kMaxPoints : std::min(request.max_points(), kMaxPoints);
  std::vector<v1::ConsistencyPoint> points;
  // One more than asked for tells whether the list was cut; the reading stops there.
  Status s = store_->ReadPoints(request.volume(), request.from_lsn(),
                                request.to_lsn() == 0 ? UINT64_MAX : request.to_lsn(), &points,
                                size_t{max} + 1);
  if (!s.ok()) return SendError(msg.peer, s.WithContext("journal-server: reading points"), false);
  v1::Header h;
  auto* reply = h.mutable_points_reply();
  reply->set_volume(request.volume());
  for (size_t i = 0; i < points.size() && i < max; ++i) *reply->add_points() = points[i];
  reply->set_truncated(points.size() > max);
  (void)socket_->SendTo(msg.peer, h);
}

void JournalServer::HandleStatus(const wire::Message& msg) {
  v1::Header h;
  auto* reply = h.mutable_status_reply();
  reply->set_server_id(options_.server_id);
  if (auto free_bytes = store_->FreeBytes(); free_bytes.ok()) {
    reply->set_journal_free_bytes(*free_bytes);
  }
  reply->set_journal_reserve_bytes(store_->reserve_bytes());
  const uint64_t now_ns = NowNanos();
  reply->set_now_ns(now_ns);
  const auto now = Clock::now();
  for (const auto& v : store_->ListVolumes()) {
    auto* vs = reply->add_volumes();
    vs->set_name(v.name);
    vs->set_size_bytes(v.size_bytes);
    vs->set_durable_lsn(v.durable_lsn);
    vs->set_applied_lsn(v.applied_lsn);
    vs->set_bytes_received(v.bytes_received);
    vs->set_records(v.records);
    vs->set_gaps(v.gaps);
    vs->set_last_point_lsn(v.last_point_lsn);
    vs->set_base_lsn(v.base_lsn);
    vs->set_journal_bytes(v.journal_bytes);
    vs->set_retention_window_s(retention_->WindowSeconds(v));
    vs->set_retention_max_bytes(retention_->MaxBytes(v));
    vs->set_early_folds(v.early_folds);
    vs->set_early_fold_time_ns(v.early_fold_time_ns);
    vs->set_retention_error(retention_->LastError(v.name));
    vs->set_writer_epoch(v.writer_epoch);
    vs->set_writer_identity(v.writer_identity);
    auto rt = runtime_.find(v.name);
    uint64_t captured = v.durable_lsn;
    if (rt != runtime_.end() && rt->second.report_sequence > 0) {
      const auto& r = rt->second.report;
      captured = std::max<uint64_t>(r.captured_lsn(), v.durable_lsn);
      vs->set_pending_bytes(r.pending_bytes());
      vs->set_pending_records(r.pending_records());
      vs->set_resync_active(r.resync_active());
      vs->set_dirty_bytes(r.dirty_bytes());
      vs->set_initial_sync_done(r.initial_sync_done());
      vs->set_ack_mode(r.ack_mode());
      vs->set_initial_sync_total(r.initial_sync_total());
      vs->set_initial_sync_done_bytes(r.initial_sync_done_bytes());
      vs->set_capture_mode(r.capture_mode());
      if (r.has_trace()) *vs->mutable_trace() = r.trace();
      const double age = std::chrono::duration<double>(now - rt->second.report_time).count();
      vs->set_agent_report_age_seconds(age);
      vs->set_agent_connected(now - rt->second.report_time < kAgentAliveWindow);
      vs->set_report_sequence(rt->second.report_sequence);
    } else {
      vs->set_agent_report_age_seconds(-1);
    }
    if (auto applied = tails_->LastAppliedReport(v.name)) {
      const double age = std::chrono::duration<double>(now - *applied).count();
      vs->set_applied_report_age_seconds(age);
      vs->set_replicator_connected(age < 3.0);
    } else {
      vs->set_applied_report_age_seconds(-1);
    }
    vs->set_captured_lsn(captured);
    // Lag: age of the oldest captured write the replica has not applied.
    double lag = 0;
    if (v.applied_lsn < captured) {
      auto t = store_->RecordTime(v.name, v.applied_lsn + 1);
      if (t.ok() && *t <= now_ns) {
        lag = static_cast<double>(now_ns - *t) / 1e9;
      } else if (rt != runtime_.end() && rt->second.report.captured_lsn() > v.durable_lsn &&
                 rt->second.report_sequence > 0) {
        lag = std::chrono::duration<double>(now - rt->second.report_time).count();
      }
    }
    // Writes that only the agent's dirty bitmap remembers are as late as the bitmap is old.
    if (rt != runtime_.end() && rt->second.report_sequence > 0) {
      const uint64_t since = rt->second.report.dirty_since_ns();
      if (since != 0 && since < now_ns) {
        lag = std::max(lag, static_cast<double>(now_ns - since) / 1e9);
      }
    }
    vs->set_lag_seconds(lag);
  }
  (void)socket_->SendTo(msg.peer, h);
}

}  // namespace cdp::journal
