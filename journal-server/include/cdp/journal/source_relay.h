// SourceRelay: the cutover's source control on the journal-server (docs/wire-protocol.md,
// "Source control"). The failover engine reaches the source server through the cdp-agent inside
// it — quiesce (hooks, group freeze held under a lease), renew the lease, release (thaw), fence,
// block hashes, status — and the agent is reached only through its session here, so the relay
// forwards a control client's SourceRequest to the agent writing the named volume and its
// SourceReply back:
//
//   client --SourceRequest(id C)--> relay --SourceRequest(request_id R)--> agent
//   agent  --SourceReply(R)--> relay --SourceReply(C)--> client     (error included, as sent)
//
// The relay answers the client itself with an Error:
//   NotFound (permanent)  the volume is unknown;
//   Unavailable           no agent of the volume was heard lately ("journal-server: volume V: no
//                         agent connected; is the cdp-agent protecting it running on the
//                         source?"), or the agent's session dropped before it answered (it went
//                         silent, or another session became the volume's writer);
//   TimedOut              no reply within the request's reply_timeout_ms (10 s when 0, at most
//                         kMaxTimeout).
// A reply from a peer that is not the agent the request went to is logged and ignored; one for a
// request already answered is dropped. Other clients are served meanwhile: nothing here waits.
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

class SourceRelay : public AgentRelay {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout{10000};
  static constexpr std::chrono::milliseconds kMaxTimeout{600000};

  // REQUIRES: store, outbox and agents outlive the relay.
  SourceRelay(const JournalStore* store, Outbox* outbox, Agents* agents)
      : AgentRelay(store, outbox, agents) {}

  // A SourceRequest from control client `client`: forwarded to the volume's agent with a
  // request id of the relay's, or answered with an Error at once (a request with no body is
  // InvalidArgument, permanent).
  void HandleRequest(const std::string& client, const wire::v1::SourceRequest& request);

  // A SourceReply from `agent`: forwarded to the client that asked, with the client's id.
  void HandleReply(const std::string& agent, const wire::v1::SourceReply& reply);

  // Answers the requests past their deadline (TimedOut) and those whose agent's session
  // dropped (Unavailable). The loop calls it after each group commit and when idle.
  void ServePending();

  // Requests relayed and not answered yet.
  size_t pending() const { return pending_.size(); }

  // "quiesce", "hold", "release", "fence", "hashes", "status": how a request is named in
  // errors ("" when it has no body).
  static std::string RequestName(const wire::v1::SourceRequest& request);

 private:
  struct PendingRequest {
    std::string client;
    uint64_t client_request_id = 0;
    std::string volume;
    std::string agent;  // the routing id it went to
    std::string what;   // RequestName
    std::chrono::milliseconds timeout{0};
    Clock::time_point deadline;
  };

  std::map<uint64_t, PendingRequest> pending_;  // by the relay's request id
  uint64_t next_request_ = 1;
};

}  // namespace cdp::journal
