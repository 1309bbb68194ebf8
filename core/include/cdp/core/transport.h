// ZeroMQ transport: one ROUTER on the server side, DEALERs on the client side, cdp.v1 framing
// (wire.h), receive timeouts and the client half of the Hello handshake.
//
// Thread-safety: a Socket belongs to one thread at a time (ZeroMQ sockets are not thread
// safe). The context may be shared.
#pragma once

#include <memory>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"

namespace cdp {

// Checks that `endpoint` is "tcp://HOST:PORT" (or "ipc://PATH", "inproc://NAME" for tests);
// InvalidArgument with the expected form otherwise.
Status ValidateEndpoint(const std::string& endpoint);

class Socket {
 public:
  enum class Kind { kRouter, kDealer };

  // Binds a ROUTER at endpoint. A busy port or a bad address is a Status naming the endpoint.
  static Result<std::unique_ptr<Socket>> Bind(zmq::context_t& ctx, const std::string& endpoint);
  // Creates a DEALER that connects to endpoint (connection happens in the background; ZeroMQ
  // reconnects by itself). Messages are queued only on completed connections.
  static Result<std::unique_ptr<Socket>> Connect(zmq::context_t& ctx, const std::string& endpoint);

  // DEALER: sends [header][payloads...]. Waits at most timeout_ms for the queue to accept it;
  // Unavailable if it would not (peer not connected, or its queue full).
  Status Send(const wire::v1::Header& header, std::vector<zmq::message_t> payloads = {},
              int timeout_ms = 1000);
  // ROUTER: sends to the peer with routing id `peer`. Unavailable if that peer is gone.
  Status SendTo(const std::string& peer, const wire::v1::Header& header,
                std::vector<zmq::message_t> payloads = {});

  // Waits up to timeout_ms (-1: forever) for one message. TimedOut when none came; Corruption
  // when the header frame does not parse (the message is consumed).
  Result<wire::Message> Recv(int timeout_ms);

  // True when a message can be received without waiting up to timeout_ms. With wake_fd >= 0,
  // also returns (false, unless a message is there too) as soon as wake_fd is readable.
  bool Readable(int timeout_ms, int wake_fd = -1);

  const std::string& endpoint() const { return endpoint_; }
  zmq::socket_t& raw() { return socket_; }

 private:
  Socket(zmq::socket_t socket, Kind kind, std::string endpoint)
      : socket_(std::move(socket)), kind_(kind), endpoint_(std::move(endpoint)) {}

  zmq::socket_t socket_;
  Kind kind_;
  std::string endpoint_;
};

// Sends `hello` and waits up to timeout_ms for the HelloReply. An Error reply becomes its
// Status (ProtocolMismatch for a version mismatch, NotFound for an unknown volume, ...);
// TimedOut when the server does not answer.
Result<wire::v1::HelloReply> Handshake(Socket& socket, const wire::v1::Hello& hello,
                                       int timeout_ms);

}  // namespace cdp
