// CheckpointRelay: `cdpctl checkpoint` on the journal-server (docs/wire-protocol.md,
// CheckpointRequest and CheckpointReply). Only a volume's agent can make a consistency point
// (it knows when the source is consistent), so the relay forwards a control client's request to
// the agent writing the volume and answers the client once the point is durable in the journal:
//
//   client --CheckpointRequest--> relay --CheckpointRequest(request_id)--> agent
//   agent  --CheckpointReply(lsn)--> relay   (pending until the point at lsn is durable and
//                                             carries the operator's label)
//   relay  --CheckpointReply(lsn, point)--> client
//
// A request is answered with an Error when the volume is unknown (NotFound, permanent), when no
// agent of the volume was heard lately (Unavailable), when the agent made no point
// (FailedPrecondition, permanent, with the agent's reason), and when the point did not become
// durable within the timeout (TimedOut). A reply from a peer that is not the volume's writer is
// logged and ignored; one for a request already answered is dropped.
//
// Threading: every method runs on the server's loop thread; the class is not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "cdp/core/wire.h"
#include "cdp/journal/agent_relay.h"

namespace cdp::journal {

// Routing and the no-agent errors are AgentRelay's (agent_relay.h).
class CheckpointRelay : public AgentRelay {
 public:
  static constexpr std::chrono::seconds kDefaultTimeout{10};

  // REQUIRES: store, outbox and agents outlive the relay. A relayed checkpoint not answered
  // within `timeout` is answered TimedOut.
  CheckpointRelay(const JournalStore* store, Outbox* outbox, Agents* agents,
                  std::chrono::milliseconds timeout = kDefaultTimeout)
      : AgentRelay(store, outbox, agents), timeout_(timeout) {}

  // A CheckpointRequest from control client `client`: forwarded to the volume's agent with a
  // request id of the relay's, or answered with an Error at once.
  void HandleRequest(const std::string& client, const wire::v1::CheckpointRequest& request);

  // A CheckpointReply from `agent`: the LSN of the point it made (answered to the client by
  // ServePending once durable), or why it made none (answered at once).
  void HandleReply(const std::string& agent, const wire::v1::CheckpointReply& reply);

  // Answers the checkpoints whose points are durable now and carry their label, and those past
  // their deadline. The loop calls it after each group commit and when idle.
  void ServePending();

  // Checkpoints relayed and not answered yet.
  size_t pending() const { return pending_.size(); }

 private:
  struct PendingCheckpoint {
    std::string client;
    std::string volume;
    std::string label;  // answered once the point at `lsn` carries it
    uint64_t lsn = 0;   // 0 until the agent answered
    Clock::time_point deadline;
  };

  const std::chrono::milliseconds timeout_;
  std::map<uint64_t, PendingCheckpoint> pending_;  // by request id
  uint64_t next_request_ = 1;
};

}  // namespace cdp::journal
