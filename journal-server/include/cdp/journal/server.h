// JournalServer: the ingest, tail and status service of the backup server.
//
// One ROUTER socket serves agents (ChangeBatch -> DurableAck after a synced group commit),
// replicators (TailRequest -> TailBatch in LSN order, long-polled, pull-based so a slow
// replicator is never flooded) and cdpctl (StatusRequest, points, checkpoints, retention, and
// the images of restores and exports). One thread runs the loop: it drains every message that
// is ready, commits all their records with one synced write, then acks them (group commit),
// then answers tails and checkpoints that the commit made servable.
//
// The server keeps the loop, the sessions (Hello, one writer per volume and its fencing), the
// ingest with its group commit, status, points and retention requests. The rest are services of
// their own, each with its contract in its header:
//
//   TailService      (tail_service.h)      replicators' tails and applied-LSN reports; loop thread
//   CheckpointRelay  (checkpoint_relay.h)  `cdpctl checkpoint` relayed to the agent; loop thread
//   SourceRelay      (source_relay.h)      the cutover's source control relayed to the agent;
//                                          loop thread
//   ImageService     (image_service.h)     images of restores and exports; its own thread, whose
//                                          replies the loop sends when they are ready
//   RetentionWorker  (retention.h)         folds old history into the base image; its own thread
//
// The loop-thread services send through an Outbox (outbox.h) and learn of agents through
// CheckpointRelay::Agents, both implemented here over the socket and the sessions.
//
// Bad input (a wrong version, an unknown volume, a malformed frame, a CRC mismatch) is answered
// with a worded Error to that peer, logged once, journals nothing, and never stops the loop.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <zmq.hpp>

#include "cdp/core/transport.h"
#include "cdp/journal/checkpoint_relay.h"
#include "cdp/journal/image_service.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/retention.h"
#include "cdp/journal/source_relay.h"
#include "cdp/journal/tail_service.h"

namespace cdp::journal {

struct ServerOptions {
  std::string data_dir;
  std::string listen;  // tcp://HOST:PORT
  std::string server_id = "journal-server";
  uint64_t max_tail_bytes = 16ull << 20;   // cap of one TailBatch
  uint64_t max_group_bytes = 64ull << 20;  // cap of one group commit
  RetentionOptions retention;
  uint64_t reserve_bytes = 256ull << 20;  // free space the journal's filesystem keeps
};

class JournalServer {
 public:
  // Opens the journal and binds the socket; errors are one line naming the directory or port.
  static Result<std::unique_ptr<JournalServer>> Start(const ServerOptions& options);
  ~JournalServer();

  // Serves until *stop becomes true (checked at least every 100 ms). Returns the error that
  // made it stop, OK on a requested stop.
  Status Run(const std::atomic<bool>* stop);

  // Tests only: runs on the image thread before each image request is served (to hold one).
  void SetImageRequestHookForTesting(std::function<void()> hook) {
    images_->SetBeforeRequestHookForTesting(std::move(hook));
  }

 private:
  using Clock = std::chrono::steady_clock;

  // One Hello-ed peer, keyed by its routing id.
  struct Session {
    wire::v1::Role role = wire::v1::ROLE_UNSPECIFIED;
    std::string identity;
    std::string volume;
    uint32_t version = 0;
    Clock::time_point last_seen;
    uint64_t instance_id = 0;  // agent: Hello.instance_id
    bool fenced = false;       // agent: another session became the volume's writer
  };
  // What the server knows of a volume beyond the journal: the agent's last report.
  struct VolumeRuntime {
    wire::v1::AgentReport report;
    uint64_t report_sequence = 0;
    Clock::time_point report_time{};
    std::string agent_peer;  // the writer's session (one writer per volume)
  };
  // An agent's HelloReply, sent once the open group has committed (its durable LSN then).
  struct DeferredHelloReply {
    std::string peer;
    std::string volume;
    wire::v1::Header reply;
  };
  // An ack to send once the group commit is durable.
  struct PendingAck {
    std::string peer;
    std::string volume;
    uint64_t sequence = 0;  // ChangeBatch.sequence to echo
  };

  // The services' view of the server: its socket (Outbox) and its agents' sessions.
  class Links;

  explicit JournalServer(ServerOptions options);

  void Handle(wire::Message& msg, WriteGroup* group, std::vector<PendingAck>* acks);
  void HandleHello(const wire::Message& msg);
  // One writer per volume (docs/wire-protocol.md): decides whether the agent of `hello` may
  // write volume `v`, records the grant (synced) and fences the session it replaces. Returns
  // the epoch granted; PermissionDenied (an older epoch: another agent writes the volume) or
  // Unavailable (another live process with the same epoch, or the grant not recorded).
  Result<uint64_t> AdmitWriter(const std::string& peer, const wire::v1::Hello& hello,
                               const std::string& who, const VolumeInfo& v);
  // OK when `session` (an agent's, for its volume) is the volume's writer; PermissionDenied
  // naming the writer when it was fenced.
  Status CheckWriter(const std::string& peer, const Session& session);
  // The writer of `v` has used its grant (a batch or a report): records it once (synced).
  void ConfirmWriter(const VolumeInfo& v);
  void HandleBatch(wire::Message& msg, WriteGroup* group, std::vector<PendingAck>* acks);
  void HandleReport(const wire::Message& msg);
  // TailRequest: checks the replicator session, then hands it to the TailService.
  void HandleTail(const wire::Message& msg);
  void HandleStatus(const wire::Message& msg);
  // PointsRequest: the consistency points of a volume (NotFound for an unknown one).
  void HandlePoints(const wire::Message& msg);
  // Sends the agents' HelloReplies held back until the group committed, with the durable LSN.
  void SendAgentHelloReplies();
  // Sends the replies the image service has ready.
  void SendImageReplies();
  // RetentionRequest: sets and/or reports a volume's retention.
  void HandleRetention(const wire::Message& msg);
  void SendError(const std::string& peer, const Status& status, bool permanent);
  Session* FindSession(const std::string& peer);
  std::string PeerName(const std::string& peer);

  ServerOptions options_;
  zmq::context_t ctx_{1};
  std::unique_ptr<JournalStore> store_;
  std::unique_ptr<RetentionWorker> retention_;  // stopped before store_ goes
  std::unique_ptr<ImageService> images_;        // destroyed before retention_ (its pins)
  std::unique_ptr<Socket> socket_;
  std::unique_ptr<Links> links_;
  std::unique_ptr<TailService> tails_;
  std::unique_ptr<CheckpointRelay> checkpoints_;
  std::unique_ptr<SourceRelay> sources_;
  std::map<std::string, std::unique_ptr<Session>> sessions_;  // by routing id
  std::map<std::string, VolumeRuntime> runtime_;              // by volume name
  std::vector<DeferredHelloReply> hello_replies_;             // until the group commits
  uint64_t next_session_ = 1;
};

}  // namespace cdp::journal
