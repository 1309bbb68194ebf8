// ZeroMQ transport: one ROUTER on the server side, DEALERs on the client side, cdp.v1 framing
// (wire.h), receive timeouts and the client half of the Hello handshake.
//
// Limits (docs/wire-protocol.md, section 1): every frame at most kMaxFrameBytes; a ROUTER
// queues at most RouterLimits::recv_messages messages from each peer and
// RouterLimits::send_messages to each peer, and the bytes of its replies still inside ZeroMQ
// are counted per peer and in total (RouterLimits::peer_bytes, total_bytes): a reply over them
// is refused (SendTo says so, the socket logs it, rate-limited), never queued, never waited for.
//
// Routing ids: a ROUTER serves only peers whose routing id has the form ZeroMQ generates (5
// bytes, the first 0). A message from a peer that announced another (ZMQ_ROUTING_ID) is dropped
// unanswered and counted (Counters::refused_routing_ids); ZMQ_ROUTER_HANDOVER is off, so an id
// in use cannot be taken over; and Bind seeds rand(), where libzmq 4.3.4 starts its generator
// (it never seeds it itself), so the ids it generates cannot be predicted. Callers must never
// print a routing id. What this does not prevent (a peer announcing a guessed id of ZeroMQ's
// own form makes libzmq abort once it generates that id) is in docs/wire-protocol.md, section
// 1, "Routing ids".
//
// Thread-safety: a Socket belongs to one thread at a time (ZeroMQ sockets are not thread
// safe). The context may be shared.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"

namespace cdp {

// The largest frame any socket accepts (ZMQ_MAXMSGSIZE; a larger inbound frame disconnects its
// sender). The largest legitimate frame is one record's payload, and the largest record is one
// NBD write: 32 MiB (NbdServer's max_block_size; trace mode and the sync engine make 1 MiB
// records). Header frames stay below 8 MiB (a PointsReply of 100000 points is about 5 MiB). Twice
// the largest record leaves room without letting a peer make us hold 256 MiB per frame.
inline constexpr int64_t kMaxFrameBytes = int64_t{64} << 20;

// What a ROUTER (Socket::Bind) lets one peer, and all of them, cost it.
struct RouterLimits {
  // Inbound messages queued per peer (ZMQ_RCVHWM). The busiest sender, an agent, keeps at most
  // 8 MiB (its window) in flight, 128 batches of tiny records at most; beyond this ZeroMQ stops
  // reading that peer's TCP connection and the rest waits on the peer's own queue.
  int recv_messages = 64;
  // Outbound messages queued per peer (ZMQ_SNDHWM). A server sends at most one reply per
  // message it read, and reads at most 512 messages per round (journal-server), so bursts of
  // acks to a reading peer always fit; a peer that never reads gets at most this many.
  int send_messages = 1024;
  // Bytes of replies still inside ZeroMQ (not yet handed to the kernel) per peer: a reply that
  // would go over is refused, unless nothing is queued for that peer (so one reply of any size
  // always goes). Legitimate peers ask for the next large reply only after reading the last
  // (a replicator's read-ahead, a restore's 4 reads of 4 MiB), so they never reach it.
  uint64_t peer_bytes = uint64_t{64} << 20;
  // The same over all peers together: a reply that would go over is refused.
  uint64_t total_bytes = uint64_t{512} << 20;
};

// Checks that `endpoint` is "tcp://HOST:PORT" (or "ipc://PATH", "inproc://NAME" for tests);
// InvalidArgument with the expected form otherwise.
Status ValidateEndpoint(const std::string& endpoint);

// True when `routing_id` has the form of an id libzmq generated for a peer that announced none:
// 5 bytes, the first 0. Every other id was chosen by the peer (ZMQ_ROUTING_ID).
bool IsGeneratedRoutingId(const std::string& routing_id);

class Socket {
 public:
  enum class Kind { kRouter, kDealer };

  // Binds a ROUTER at endpoint. A busy port or a bad address is a Status naming the endpoint.
  static Result<std::unique_ptr<Socket>> Bind(zmq::context_t& ctx, const std::string& endpoint,
                                              const RouterLimits& limits = RouterLimits());
  // Creates a DEALER that connects to endpoint (connection happens in the background; ZeroMQ
  // reconnects by itself). Messages are queued only on completed connections. A peer that sends
  // nothing (not even a heartbeat) for heartbeat_timeout_ms is taken for gone and disconnected
  // (5 s by default; a peer in an emulated VM that stalls for seconds needs more).
  static Result<std::unique_ptr<Socket>> Connect(zmq::context_t& ctx, const std::string& endpoint,
                                                 int heartbeat_timeout_ms = 5000);

  ~Socket();

  // DEALER: sends [header][payloads...]. Waits at most timeout_ms for the queue to accept it;
  // Unavailable if it would not (peer not connected, or its queue full).
  Status Send(const wire::v1::Header& header, std::vector<zmq::message_t> payloads = {},
              int timeout_ms = 1000);
  // ROUTER: sends to the peer with routing id `peer`, never waiting and never throwing.
  // Unavailable when that peer is gone; ResourceExhausted, and nothing queued, when the peer's
  // queue is full or the reply would exceed RouterLimits::peer_bytes or total_bytes. Refusals
  // are logged by the socket at most every 10 s, with counts (never the routing id).
  Status SendTo(const std::string& peer, const wire::v1::Header& header,
                std::vector<zmq::message_t> payloads = {});

  // Waits up to timeout_ms (-1: forever) for one message. TimedOut when none came; Corruption
  // when the header frame does not parse (the message is consumed). A ROUTER drops messages
  // from peers with a routing id they chose (see above) and goes on waiting.
  Result<wire::Message> Recv(int timeout_ms);

  // True when a message can be received without waiting up to timeout_ms. With wake_fd >= 0,
  // also returns (false, unless a message is there too) as soon as wake_fd is readable.
  bool Readable(int timeout_ms, int wake_fd = -1);

  const std::string& endpoint() const { return endpoint_; }
  zmq::socket_t& raw() { return socket_; }

  // ROUTER counters since Bind, for status and tests.
  struct Counters {
    uint64_t refused_routing_ids = 0;  // messages dropped: the peer chose its routing id
    uint64_t refused_queue_full = 0;   // replies not sent: the peer's queue was full
    uint64_t refused_peer_bytes = 0;   // replies not sent: over RouterLimits::peer_bytes
    uint64_t refused_total_bytes = 0;  // replies not sent: over RouterLimits::total_bytes
  };
  const Counters& counters() const { return counters_; }
  // Bytes of replies to `peer` (all peers: QueuedBytes()) still inside ZeroMQ.
  uint64_t QueuedBytes(const std::string& peer) const;
  uint64_t QueuedBytes() const;

 private:
  // Bytes of replies inside ZeroMQ, shared with the free callbacks that ZeroMQ's I/O thread runs
  // when it is done with a frame (so they outlive the Socket if they must).
  struct Budget;

  Socket(zmq::socket_t socket, Kind kind, std::string endpoint, RouterLimits limits);
  // Logs the refusals counted since the last report, at most every 10 s.
  void ReportRefusals();

  zmq::socket_t socket_;
  Kind kind_;
  std::string endpoint_;
  RouterLimits limits_;
  std::shared_ptr<Budget> budget_;
  Counters counters_;
  Counters reported_;
  std::chrono::steady_clock::time_point last_report_{};
};

// Sends `hello` and waits up to timeout_ms for the HelloReply. An Error reply becomes its
// Status (ProtocolMismatch for a version mismatch, NotFound for an unknown volume, ...);
// TimedOut when the server does not answer.
Result<wire::v1::HelloReply> Handshake(Socket& socket, const wire::v1::Hello& hello,
                                       int timeout_ms);

}  // namespace cdp
