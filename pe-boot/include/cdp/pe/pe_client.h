// PeClient: one connection to a pe-agent (the replicator's PE sink, cdpctl target status, the
// failover engine's verification). Thread-compatible: one thread at a time.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/record_apply.h"
#include "cdp/core/transport.h"

namespace cdp::pe {

class PeClient {
 public:
  // How long a connection waits for any sign of life (a heartbeat) from the pe-agent before it
  // counts it gone: a VM under TCG stalls for seconds while it reads a cold disk or takes in a
  // large batch.
  static constexpr int kHeartbeatTimeoutMs = 60000;

  // Connects to `endpoint` (tcp://HOST:PORT) and says Hello. As a replicator (`volume` set,
  // role ROLE_REPLICATOR) the reply carries the volume's durable applied LSN. Unavailable when
  // nothing answers within timeout_ms; the pe-agent's own refusal (ProtocolMismatch, NotFound
  // for a volume it does not have, FailedPrecondition for a disk too small or a target in
  // error) is returned as its Status.
  static Result<std::unique_ptr<PeClient>> Connect(const std::string& endpoint, wire::v1::Role role,
                                                   const std::string& volume, uint64_t volume_size,
                                                   int timeout_ms);

  const wire::v1::HelloReply& hello_reply() const { return hello_reply_; }
  const std::string& endpoint() const { return socket_->endpoint(); }

  // Sends the items (contiguous LSNs) as one ApplyBatch and waits for its ApplyAck: returns the
  // volume's durable applied LSN. The pe-agent's Error comes back as its Status (with
  // `permanent` set when retrying cannot help); TimedOut when no answer came.
  Result<uint64_t> Apply(const std::string& volume, std::span<const ApplyItem> items,
                         int timeout_ms, bool* permanent);

  Result<wire::v1::PeStatusReply> Status(int timeout_ms);

  // XXH3-64 of each region of the volume's disk on the target.
  Result<wire::v1::ChecksumReply> Checksums(const std::string& volume,
                                            const std::vector<wire::v1::Region>& regions,
                                            int timeout_ms);

  // Asks the pe-agent to take over (docs/pe-agent.md §5): REQUIRES a connection made with role
  // ROLE_CONTROL. The reply says whether it went through (ok) and carries every step; a refused
  // takeover is a reply with ok=false and the error, not an error Status. Error Statuses are the
  // pe-agent's Error (FailedPrecondition for a session that is not a control client), TimedOut
  // when no reply came within timeout_ms (steps can take seconds under TCG: give it 60 s), and
  // Unavailable when the connection dropped first. After ok=true without dry_run the pe-agent
  // is gone: the connection drops and the VM runs the migrated OS.
  // Holds (hold=true, for at most max_ms) or releases the apply of batches (docs/pe-agent.md
  // §6): REQUIRES role ROLE_CONTROL. When the reply comes, a hold is in force and the disks are
  // at a batch boundary whose LSNs the reply carries; a release has applied the queued batches.
  Result<wire::v1::ApplyHoldReply> Hold(bool hold, uint32_t max_ms, int timeout_ms);

  // The regions of `volume` written since its mark (docs/pe-agent.md §7): REQUIRES role
  // ROLE_CONTROL. reset=true sets a new mark (region_bytes: the granularity) and returns the
  // empty set; reset=false returns the set (FailedPrecondition when there is no mark, e.g.
  // after a restart of the pe-agent).
  Result<wire::v1::WrittenRegionsReply> WrittenRegions(const std::string& volume,
                                                       uint64_t region_bytes, bool reset,
                                                       int timeout_ms);

  Result<wire::v1::TakeoverReply> Takeover(const wire::v1::TakeoverRequest& request,
                                           int timeout_ms);

  // PrepareBoot (docs/pe-agent.md §5, "Prepare boot"): REQUIRES role ROLE_CONTROL. An ok=false
  // reply is a value, not an error. A rebuild takes minutes: give it a long timeout.
  Result<wire::v1::PrepareBootReply> PrepareBoot(const wire::v1::PrepareBootRequest& request,
                                                 int timeout_ms);

 private:
  PeClient() = default;
  // Sends `request` and returns the first reply with the body `expect` (or an Error).
  Result<wire::Message> Call(const wire::v1::Header& request, std::vector<zmq::message_t> payloads,
                             wire::v1::Header::BodyCase expect, int timeout_ms, bool* permanent,
                             uint64_t sequence = 0);

  zmq::context_t ctx_{1};
  std::unique_ptr<Socket> socket_;
  zmq::socket_t monitor_;  // ZMQ_EVENT_DISCONNECTED of socket_
  wire::v1::HelloReply hello_reply_;
  uint64_t sequence_ = 0;
};

}  // namespace cdp::pe
