// AgentRelay: what the relays of a control client's request to a volume's agent share
// (CheckpointRelay: `cdpctl checkpoint`; SourceRelay: the cutover's source control). The agent
// writing a volume is reached through its session on the journal-server's socket; the relay
// finds that session, or answers the client with the Error that says why there is none:
//
//   NotFound (permanent)  the volume is unknown to the journal
//   Unavailable           no agent of the volume was heard lately: "journal-server: volume V: no
//                         agent connected; HINT"
//
// and words a timeout the same way everywhere ("within 10 s", "within 250 ms").
//
// Threading: every method runs on the server's loop thread; not thread-safe.
#pragma once

#include <chrono>
#include <string>

#include "cdp/journal/journal_store.h"
#include "cdp/journal/outbox.h"

namespace cdp::journal {

class AgentRelay {
 public:
  using Clock = std::chrono::steady_clock;

  // The agents a relay talks to, as the server's sessions know them.
  class Agents {
   public:
    virtual ~Agents() = default;
    // The routing id of the session that writes `volume` (one writer per volume), empty when
    // there is none.
    virtual std::string WriterOf(const std::string& volume) = 0;
    // Whether the writer of `volume` reported lately (a request is relayed only to an agent
    // that is alive).
    virtual bool WriterAlive(const std::string& volume) = 0;
  };

  // "1 s", "250 ms": how a relay's timeout is worded in its errors.
  static std::string Within(std::chrono::milliseconds timeout);

 protected:
  // REQUIRES: store, outbox and agents outlive the relay.
  AgentRelay(const JournalStore* store, Outbox* outbox, Agents* agents)
      : store_(store), outbox_(outbox), agents_(agents) {}

  // The routing id of the live writer of `volume`; or "" after answering `client` with the
  // Error above (NotFound / Unavailable ending in `hint`).
  std::string LiveWriterOrAnswer(const std::string& client, const std::string& volume,
                                 const std::string& hint);

  const JournalStore* const store_;
  Outbox* const outbox_;
  Agents* const agents_;
};

}  // namespace cdp::journal
