// ControlClient: a control connection to the journal-server (role control: status, points,
// checkpoints, retention, images of a volume at a point; docs/wire-protocol.md), and WaitSynced
// built on it. Used by cdpctl and by the failover engines (cutover, drill). Depends on core and
// proto only; how cdpctl shows the replies lives in cdpctl (cdp/ctl/journal_views.h).
#pragma once

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/transport.h"
#include "cdp/core/wire.h"

namespace cdp::journal {

class ControlClient {
 public:
  // Connects and says Hello (role control). Unavailable/TimedOut naming the endpoint when the
  // server does not answer within timeout_ms.
  static Result<std::unique_ptr<ControlClient>> Connect(const std::string& server, int timeout_ms);

  // One StatusRequest round trip.
  Result<wire::v1::StatusReply> Status(int timeout_ms);

  // Every consistency point of `volume`, oldest first (as many PointsRequests as it takes).
  // NotFound naming the known volumes for an unknown one.
  Result<std::vector<wire::v1::ConsistencyPoint>> Points(const std::string& volume, int timeout_ms);

  // `cdpctl checkpoint`: asks the volume's agent, through the server, for an operator point
  // now; returns it once durable in the journal. The server's worded errors otherwise.
  Result<wire::v1::ConsistencyPoint> Checkpoint(const std::string& volume, const std::string& label,
                                                int timeout_ms);

  // Source control (docs/wire-protocol.md, "Source control"): `request` relayed by the server to
  // the agent writing request.volume(), and that agent's reply. Its error when the agent
  // answered one (the message names what failed: a hook, a mount point; the code is the
  // agent's); the server's when the volume has no live agent (Unavailable), when the agent's
  // session dropped before it answered (Unavailable), or when no reply came in time (TimedOut:
  // the server gives up a little before timeout_ms, so its worded error arrives first). Sets
  // request_id and reply_timeout_ms. REQUIRES: request has a body.
  Result<wire::v1::SourceReply> Source(wire::v1::SourceRequest request, int timeout_ms);

  // Sets the window and/or the cap when given (0 = keep everything / no cap) and returns the
  // retention in effect. NotFound naming the known volumes for an unknown one.
  Result<wire::v1::RetentionReply> Retention(const std::string& volume,
                                             std::optional<uint64_t> window_s,
                                             std::optional<uint64_t> max_bytes, int timeout_ms);

  // Opens the image of `volume` at the latest consistency point at or before at_lsn (when
  // nonzero) or at_time_ns; the server's worded error otherwise (docs/restore.md, section 2).
  Result<wire::v1::ImageOpenReply> OpenImage(const std::string& volume, uint64_t at_lsn,
                                             uint64_t at_time_ns, int timeout_ms);

  // One read of an open image, in two halves so several can be in flight: replies come back in
  // the order the requests were sent. `data` gets the bytes, or stays empty when the reply says
  // the range is all zeroes.
  ::cdp::Status SendImageRead(uint64_t image_id, uint64_t offset, uint32_t length, int timeout_ms);
  Result<wire::v1::ImageReadReply> ReceiveImageRead(std::string* data, int timeout_ms);
  // Tells the server the image is no longer needed (waits up to 2 s; errors ignored).
  void CloseImage(uint64_t image_id);

 private:
  ControlClient() = default;
  // Sends `request` and returns the first reply with body `expect` (an Error as its Status).
  Result<wire::Message> Call(const wire::v1::Header& request, wire::v1::Header::BodyCase expect,
                             int timeout_ms);
  // The next reply with body `expect` (others are dropped; an Error is returned as its Status).
  Result<wire::Message> Receive(wire::v1::Header::BodyCase expect, int timeout_ms);
  zmq::context_t ctx_{1};
  std::unique_ptr<Socket> socket_;
  uint64_t next_source_request_ = 1;
};

// Why a volume is not synced yet ("" when it is). `min_report_sequence`: the agent's report
// must be at least this new (so it was built after the wait began).
std::string NotSyncedReason(const wire::v1::VolumeStatus& v, uint64_t min_report_sequence);

// wait-synced: polls status until the volume is synced (OK) or timeout_s passes (TimedOut with
// the state and the reason, e.g. "unknown volume 'x' (known: ...)" when its agent never said
// Hello). Unavailable when the server does not answer. Progress lines go to `progress`.
::cdp::Status WaitSynced(const std::string& server, const std::string& volume, double timeout_s,
                         std::ostream& progress);

}  // namespace cdp::journal
