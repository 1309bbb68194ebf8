// JournalView: what a cutover or a drill reads from the journal-server — the status of the
// protected volumes (agent connected, lag, captured/durable LSNs, pending bytes, the agent's
// report sequence, replicator connected) — over one connection held for the whole run.
//
// The cutover asks it at precheck (agent connected, lag within budget) and polls it at quiesce
// (until the journal holds everything the source wrote: the final LSNs); the drill asks it once,
// at replication (is the replicator connected). Not thread-safe: one engine thread calls it.
#pragma once

#include <memory>
#include <string>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"

namespace cdp::failover {

class JournalView {
 public:
  virtual ~JournalView() = default;

  // The server's status of every volume it knows. Unavailable/TimedOut naming the endpoint when
  // the server does not answer.
  virtual Result<wire::v1::StatusReply> Status() = 0;
};

// The journal-server at `endpoint` (tcp://HOST:PORT), through its control client: connects (and
// says Hello) at the first call and keeps the connection; after an error the next call connects
// again.
std::unique_ptr<JournalView> MakeJournalView(std::string endpoint);

}  // namespace cdp::failover
