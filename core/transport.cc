#include "cdp/core/transport.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "cdp/core/logging.h"

namespace cdp {

// v1 here is cdp::v1 itself; an alias `namespace v1 = wire::v1;` would redefine it (clang refuses).

Status ValidateEndpoint(const std::string& endpoint) {
  auto fail = [&] {
    return Status::InvalidArgument(
        "bad endpoint '" + endpoint +
        "': expected tcp://HOST:PORT (for example tcp://127.0.0.1:7700)");
  };
  // The path or name after the scheme must not be empty.
  if (endpoint.rfind("ipc://", 0) == 0) return endpoint.size() > 6 ? Status::Ok() : fail();
  if (endpoint.rfind("inproc://", 0) == 0) return endpoint.size() > 9 ? Status::Ok() : fail();
  if (endpoint.rfind("tcp://", 0) != 0) return fail();
  const std::string rest = endpoint.substr(6);
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= rest.size()) return fail();
  const std::string port = rest.substr(colon + 1);
  if (port == "*") return Status::Ok();
  for (char c : port) {
    if (c < '0' || c > '9') return fail();
  }
  if (port.size() > 5 || std::stoul(port) > 65535) return fail();
  return Status::Ok();
}

bool IsGeneratedRoutingId(const std::string& routing_id) {
  // libzmq 4.3 router.cpp, identify_peer: buf[0] = 0; put_uint32 (buf + 1, counter++).
  return routing_id.size() == 5 && routing_id[0] == '\0';
}

namespace {

// Frames smaller than this are copied and bounded by the message count alone (1024 small
// replies are a few hundred KiB); larger ones are counted in the Budget until ZeroMQ frees them.
constexpr size_t kCountedFrameBytes = 1024;
// A Recv drops at most this many messages from refused peers before it returns TimedOut, so a
// flood of them cannot keep the caller's loop inside one Recv.
constexpr int kMaxRefusedPerRecv = 256;
constexpr auto kReportInterval = std::chrono::seconds(10);

// libzmq 4.3.4 starts each ROUTER's generator of routing ids at generate_random(), which is
// rand() (src/random.cpp), and never calls srand(): every process that does not seed it hands
// out 00 6b 8b 45 67 first, then counts up. A peer that announces the next id as its own
// (ZMQ_ROUTING_ID) makes libzmq abort when it generates that id for the next peer
// (socket_base.cpp, add_out_pipe: zmq_assert (ok)). A random start means the id to forge must be
// guessed: 1 in 2^32 per id planted and per connection made.
void SeedRoutingIdGenerator() {
  static std::once_flag once;
  std::call_once(once, [] {
    unsigned int seed = 0;
    if (::getrandom(&seed, sizeof(seed), 0) != static_cast<ssize_t>(sizeof(seed))) {
      seed =
          static_cast<unsigned int>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
          (static_cast<unsigned int>(::getpid()) << 16);
    }
    std::srand(seed);
  });
}

void CommonOptions(zmq::socket_t& s) {
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::sndhwm, 1000);
  s.set(zmq::sockopt::rcvhwm, 1000);
  s.set(zmq::sockopt::heartbeat_ivl, 1000);
  s.set(zmq::sockopt::heartbeat_timeout, 5000);
  s.set(zmq::sockopt::reconnect_ivl, 100);
  s.set(zmq::sockopt::reconnect_ivl_max, 1000);
  s.set(zmq::sockopt::maxmsgsize, kMaxFrameBytes);
}

Status FromZmq(const zmq::error_t& e, const std::string& what) {
  return Status::Unavailable(what + ": " + e.what());
}

std::string MiB(uint64_t bytes) {
  if (bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes) + " bytes";
}

}  // namespace

struct Socket::Budget {
  // Bytes of counted frames inside ZeroMQ, over all peers and per peer. Each counter is shared
  // with the frames that use it, whose Release may run after the Socket is gone.
  std::shared_ptr<std::atomic<uint64_t>> total = std::make_shared<std::atomic<uint64_t>>(0);
  // Touched by the socket's thread only.
  std::unordered_map<std::string, std::shared_ptr<std::atomic<uint64_t>>> peers;

  std::shared_ptr<std::atomic<uint64_t>> Peer(const std::string& peer) {
    auto it = peers.find(peer);
    if (it != peers.end()) return it->second;
    if (peers.size() >= 4096) Prune();
    return peers.emplace(peer, std::make_shared<std::atomic<uint64_t>>(0)).first->second;
  }
  // Forgets peers with nothing queued: a routing id is never used again once its peer is gone.
  void Prune() {
    for (auto it = peers.begin(); it != peers.end();) {
      const bool idle = it->second.use_count() == 1 && it->second->load() == 0;
      it = idle ? peers.erase(it) : std::next(it);
    }
  }
};

namespace {

// A frame whose bytes are counted while ZeroMQ holds them. ZeroMQ sends them without copying
// and calls ReleaseCountedFrame once it is done with them (written to the kernel, or dropped
// with the peer's connection), on its I/O thread or ours.
struct CountedFrame {
  std::shared_ptr<std::atomic<uint64_t>> total;
  std::shared_ptr<std::atomic<uint64_t>> peer;
  uint64_t bytes = 0;
  std::string owned;        // the header frame's bytes, or
  zmq::message_t borrowed;  // a payload frame, kept alive (it may share a journal buffer)
};

void ReleaseCountedFrame(void*, void* hint) {
  auto* frame = static_cast<CountedFrame*>(hint);
  frame->peer->fetch_sub(frame->bytes);
  frame->total->fetch_sub(frame->bytes);
  delete frame;
}

// Makes the message that sends `frame` (its bytes in owned or borrowed) and counts them.
zmq::message_t CountFrame(std::unique_ptr<CountedFrame> frame) {
  const bool own = frame->borrowed.size() == 0;
  void* data = own ? frame->owned.data() : frame->borrowed.data();
  frame->bytes = own ? frame->owned.size() : frame->borrowed.size();
  CountedFrame* raw = frame.get();
  zmq::message_t msg(data, raw->bytes, &ReleaseCountedFrame, raw);  // throws before owning it
  frame.release();
  raw->peer->fetch_add(raw->bytes);
  raw->total->fetch_add(raw->bytes);
  return msg;
}

}  // namespace

Socket::Socket(zmq::socket_t socket, Kind kind, std::string endpoint, RouterLimits limits)
    : socket_(std::move(socket)),
      kind_(kind),
      endpoint_(std::move(endpoint)),
      limits_(limits),
      budget_(std::make_shared<Budget>()) {}

Socket::~Socket() = default;

Result<std::unique_ptr<Socket>> Socket::Bind(zmq::context_t& ctx, const std::string& endpoint,
                                             const RouterLimits& limits) {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(endpoint));
  SeedRoutingIdGenerator();  // before the socket: its constructor draws the generator's start
  try {
    zmq::socket_t s(ctx, zmq::socket_type::router);
    CommonOptions(s);
    s.set(zmq::sockopt::router_mandatory, 1);
    s.set(zmq::sockopt::router_handover, 0);
    s.set(zmq::sockopt::sndhwm, limits.send_messages);
    s.set(zmq::sockopt::rcvhwm, limits.recv_messages);
    s.set(zmq::sockopt::sndtimeo, 0);
    s.bind(endpoint);
    return std::unique_ptr<Socket>(new Socket(std::move(s), Kind::kRouter, endpoint, limits));
  } catch (const zmq::error_t& e) {
    if (e.num() == EADDRINUSE) {
      return Status::Unavailable("cannot listen on " + endpoint +
                                 ": address already in use; stop the other process or pick "
                                 "another port");
    }
    return Status::Unavailable("cannot listen on " + endpoint + ": " + e.what());
  }
}

Result<std::unique_ptr<Socket>> Socket::Connect(zmq::context_t& ctx, const std::string& endpoint,
                                                int heartbeat_timeout_ms) {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(endpoint));
  try {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    CommonOptions(s);
    s.set(zmq::sockopt::heartbeat_timeout, heartbeat_timeout_ms);
    s.set(zmq::sockopt::immediate, 1);
    s.connect(endpoint);
    return std::unique_ptr<Socket>(
        new Socket(std::move(s), Kind::kDealer, endpoint, RouterLimits()));
  } catch (const zmq::error_t& e) {
    return Status::Unavailable("cannot connect to " + endpoint + ": " + e.what());
  }
}
Status Socket::Send(const v1::Header& header, std::vector<zmq::message_t> payloads,
                    int timeout_ms) {
  std::string bytes;
  if (!header.SerializeToString(&bytes)) return Status::Internal("cannot serialize header");
  try {
    socket_.set(zmq::sockopt::sndtimeo, timeout_ms);
    const auto more = payloads.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore;
    if (!socket_.send(zmq::buffer(bytes), more)) {
      return Status::Unavailable("cannot send to " + endpoint_ + ": not connected or queue full");
    }
    for (size_t i = 0; i < payloads.size(); ++i) {
      // Once the first frame is queued the rest of the message goes without blocking.
      const auto f = i + 1 < payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      socket_.send(payloads[i], f);
    }
  } catch (const zmq::error_t& e) {
    return FromZmq(e, "send to " + endpoint_);
  }
  return Status::Ok();
}

Status Socket::SendTo(const std::string& peer, const v1::Header& header,
                      std::vector<zmq::message_t> payloads) {
  ReportRefusals();
  std::string bytes;
  if (!header.SerializeToString(&bytes)) return Status::Internal("cannot serialize header");
  uint64_t size = bytes.size();
  for (const auto& p : payloads) size += p.size();

  std::shared_ptr<std::atomic<uint64_t>> peer_bytes = budget_->Peer(peer);
  const uint64_t queued = peer_bytes->load();
  if (queued > 0 && queued + size > limits_.peer_bytes) {
    ++counters_.refused_peer_bytes;
    return Status::ResourceExhausted(
        "reply of " + std::to_string(size) + " bytes not sent: " + std::to_string(queued) +
        " bytes of earlier replies to this peer are still queued (at most " +
        MiB(limits_.peer_bytes) + " per peer); the peer is not reading");
  }
  const uint64_t total = budget_->total->load();
  if (total > 0 && total + size > limits_.total_bytes) {
    ++counters_.refused_total_bytes;
    return Status::ResourceExhausted(
        "reply of " + std::to_string(size) + " bytes not sent: " + std::to_string(total) +
        " bytes of replies are queued for all peers (at most " + MiB(limits_.total_bytes) + ")");
  }
  const auto flags = zmq::send_flags::dontwait;
  try {
    // With ZMQ_ROUTER_MANDATORY the routing-id frame fails at once (EAGAIN: the peer's queue
    // is full; EHOSTUNREACH: no such peer) and then nothing of the message is queued.
    if (!socket_.send(zmq::buffer(peer), flags | zmq::send_flags::sndmore)) {
      ++counters_.refused_queue_full;
      return Status::ResourceExhausted("reply not sent: the peer's queue holds " +
                                       std::to_string(limits_.send_messages) +
                                       " messages already; the peer is not reading");
    }
    // From here the message goes whole (a ROUTER never refuses a later frame), without waiting.
    const auto more = payloads.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore;
    if (bytes.size() >= kCountedFrameBytes) {
      auto frame = std::make_unique<CountedFrame>();
      frame->total = budget_->total;
      frame->peer = peer_bytes;
      frame->owned = std::move(bytes);
      zmq::message_t m = CountFrame(std::move(frame));
      socket_.send(m, flags | more);
    } else {
      socket_.send(zmq::buffer(bytes), flags | more);
    }
    for (size_t i = 0; i < payloads.size(); ++i) {
      const auto f = i + 1 < payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      if (payloads[i].size() >= kCountedFrameBytes) {
        auto frame = std::make_unique<CountedFrame>();
        frame->total = budget_->total;
        frame->peer = peer_bytes;
        frame->borrowed = std::move(payloads[i]);
        zmq::message_t m = CountFrame(std::move(frame));
        socket_.send(m, flags | f);
      } else {
        socket_.send(payloads[i], flags | f);
      }
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return Status::Unavailable("peer is gone");
    return FromZmq(e, "send on " + endpoint_);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("send on " + endpoint_ + ": out of memory");
  }
  return Status::Ok();
}

uint64_t Socket::QueuedBytes(const std::string& peer) const {
  auto it = budget_->peers.find(peer);
  return it == budget_->peers.end() ? 0 : it->second->load();
}

uint64_t Socket::QueuedBytes() const { return budget_->total->load(); }

void Socket::ReportRefusals() {
  if (kind_ != Kind::kRouter) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_report_ < kReportInterval) return;
  const Counters& c = counters_;
  const Counters& r = reported_;
  std::string what;
  auto add = [&](uint64_t n, const std::string& text) {
    if (n == 0) return;
    what += (what.empty() ? "" : "; ") + std::to_string(n) + " " + text;
  };
  add(c.refused_routing_ids - r.refused_routing_ids,
      "message(s) dropped unanswered from peers that chose their own routing id (ZeroMQ "
      "ZMQ_ROUTING_ID; no cdp client does)");
  add(c.refused_queue_full - r.refused_queue_full,
      "reply(ies) not sent to peers that do not read (" + std::to_string(limits_.send_messages) +
          " messages queued)");
  add(c.refused_peer_bytes - r.refused_peer_bytes,
      "reply(ies) not sent to peers that do not read (" + MiB(limits_.peer_bytes) +
          " queued for one peer)");
  add(c.refused_total_bytes - r.refused_total_bytes,
      "reply(ies) not sent: " + MiB(limits_.total_bytes) + " of replies queued for all peers");
  if (what.empty()) return;
  const bool first = last_report_ == std::chrono::steady_clock::time_point{};
  CDP_LOG(warning) << "ZeroMQ ROUTER on " << endpoint_ << ": "
                   << (first ? std::string()
                             : "in the last " +
                                   std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                                      now - last_report_)
                                                      .count()) +
                                   " s: ")
                   << what;
  reported_ = counters_;
  last_report_ = now;
}

bool Socket::Readable(int timeout_ms, int wake_fd) {
  ReportRefusals();
  zmq::pollitem_t items[2] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                              {nullptr, wake_fd, ZMQ_POLLIN, 0}};
  try {
    zmq::poll(items, wake_fd >= 0 ? 2 : 1, std::chrono::milliseconds(timeout_ms));
  } catch (const zmq::error_t&) {
    return false;
  }
  return (items[0].revents & ZMQ_POLLIN) != 0;
}

Result<wire::Message> Socket::Recv(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (int refused = 0;;) {
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      if (refused >= kMaxRefusedPerRecv ||
          !Readable(static_cast<int>(std::max<int64_t>(left, 0)))) {
        return Status::TimedOut("no message from " + endpoint_ + " within " +
                                std::to_string(timeout_ms) + " ms");
      }
    }
    std::vector<zmq::message_t> frames;
    try {
      while (true) {
        zmq::message_t m;
        if (!socket_.recv(m, zmq::recv_flags::none)) {
          return Status::TimedOut("interrupted receive on " + endpoint_);
        }
        const bool more = m.more();
        frames.push_back(std::move(m));
        if (!more) break;
      }
    } catch (const zmq::error_t& e) {
      return FromZmq(e, "receive on " + endpoint_);
    }
    wire::Message msg;
    size_t next = 0;
    if (kind_ == Kind::kRouter) {
      msg.peer = frames[0].to_string();
      next = 1;
      if (!IsGeneratedRoutingId(msg.peer)) {
        // Serving it would honour an id the peer chose (section "Routing ids" of
        // docs/wire-protocol.md): never answered, counted, logged without the id.
        ++counters_.refused_routing_ids;
        ++refused;
        ReportRefusals();
        continue;
      }
    }
    if (next >= frames.size()) {
      return Status::Corruption("message without a header frame");
    }
    if (!msg.header.ParseFromArray(frames[next].data(), static_cast<int>(frames[next].size()))) {
      return Status::Corruption("header frame of " + std::to_string(frames[next].size()) +
                                " bytes does not parse as cdp.v1.Header");
    }
    for (size_t i = next + 1; i < frames.size(); ++i) msg.payloads.push_back(std::move(frames[i]));
    return msg;
  }
}

Result<v1::HelloReply> Handshake(Socket& socket, const v1::Hello& hello, int timeout_ms) {
  v1::Header header;
  *header.mutable_hello() = hello;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  Status sent = socket.Send(header, {}, timeout_ms);
  if (!sent.ok()) {
    return Status::Unavailable("journal-server at " + socket.endpoint() +
                               " is not reachable: " + sent.message());
  }
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      return Status::TimedOut("no Hello reply from " + socket.endpoint() + " within " +
                              std::to_string(timeout_ms) + " ms");
    }
    auto msg = socket.Recv(static_cast<int>(left));
    if (!msg.ok()) {
      if (msg.status().IsTimedOut()) continue;
      return msg.status();
    }
    if (msg->header.has_error()) return wire::StatusFromError(msg->header.error());
    if (msg->header.has_hello_reply()) return msg->header.hello_reply();
    // Anything else is a late reply from an earlier session on this socket: ignore it.
  }
}

}  // namespace cdp
