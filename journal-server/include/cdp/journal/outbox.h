// Outbox: how the services that run on the journal-server's loop thread (TailService,
// CheckpointRelay) reach their peers. The server implements it over its ROUTER socket; a unit
// test implements it with a recorder, so a service can be driven without a socket.
//
// Thread-safety: called on the loop thread only.
#pragma once

#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"

namespace cdp::journal {

class Outbox {
 public:
  virtual ~Outbox() = default;

  // Sends `header` and its payload `frames` to the peer with routing id `peer`, never waiting:
  // Unavailable when that peer is gone, ResourceExhausted (nothing queued) when it does not read
  // (core/transport.h, Socket::SendTo).
  virtual Status SendTo(const std::string& peer, const wire::v1::Header& header,
                        std::vector<zmq::message_t> frames) = 0;

  // How `peer` is named in the log and in errors: the identity its Hello gave, never the routing
  // id (docs/wire-protocol.md, section 1, "Routing ids").
  virtual std::string PeerName(const std::string& peer) = 0;

  // Sends `status` as an Error; `permanent` tells the peer not to retry the request as it was.
  Status SendError(const std::string& peer, const Status& status, bool permanent) {
    return SendTo(peer, wire::MakeErrorHeader(status, permanent), {});
  }
};

}  // namespace cdp::journal
