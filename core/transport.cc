#include "cdp/core/transport.h"

#include <chrono>

namespace cdp {

namespace v1 = wire::v1;

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

namespace {

void CommonOptions(zmq::socket_t& s) {
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::sndhwm, 1000);
  s.set(zmq::sockopt::rcvhwm, 1000);
  s.set(zmq::sockopt::heartbeat_ivl, 1000);
  s.set(zmq::sockopt::heartbeat_timeout, 5000);
  s.set(zmq::sockopt::reconnect_ivl, 100);
  s.set(zmq::sockopt::reconnect_ivl_max, 1000);
  s.set(zmq::sockopt::maxmsgsize, int64_t{256} << 20);
}

Status FromZmq(const zmq::error_t& e, const std::string& what) {
  return Status::Unavailable(what + ": " + e.what());
}

}  // namespace

Result<std::unique_ptr<Socket>> Socket::Bind(zmq::context_t& ctx, const std::string& endpoint) {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(endpoint));
  try {
    zmq::socket_t s(ctx, zmq::socket_type::router);
    CommonOptions(s);
    s.set(zmq::sockopt::router_mandatory, 1);
    s.set(zmq::sockopt::sndhwm, 100000);
    s.bind(endpoint);
    return std::unique_ptr<Socket>(new Socket(std::move(s), Kind::kRouter, endpoint));
  } catch (const zmq::error_t& e) {
    if (e.num() == EADDRINUSE) {
      return Status::Unavailable("cannot listen on " + endpoint +
                                 ": address already in use; stop the other process or pick "
                                 "another port");
    }
    return Status::Unavailable("cannot listen on " + endpoint + ": " + e.what());
  }
}

Result<std::unique_ptr<Socket>> Socket::Connect(zmq::context_t& ctx, const std::string& endpoint) {
  CDP_RETURN_IF_ERROR(ValidateEndpoint(endpoint));
  try {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    CommonOptions(s);
    s.set(zmq::sockopt::immediate, 1);
    s.connect(endpoint);
    return std::unique_ptr<Socket>(new Socket(std::move(s), Kind::kDealer, endpoint));
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
  std::string bytes;
  if (!header.SerializeToString(&bytes)) return Status::Internal("cannot serialize header");
  try {
    if (!socket_.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return Status::Unavailable("peer queue full");
    }
    const auto more = payloads.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore;
    socket_.send(zmq::buffer(bytes), more);
    for (size_t i = 0; i < payloads.size(); ++i) {
      const auto f = i + 1 < payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      socket_.send(payloads[i], f);
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return Status::Unavailable("peer is gone");
    return FromZmq(e, "send on " + endpoint_);
  }
  return Status::Ok();
}

bool Socket::Readable(int timeout_ms, int wake_fd) {
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
  if (timeout_ms >= 0 && !Readable(timeout_ms)) {
    return Status::TimedOut("no message from " + endpoint_ + " within " +
                            std::to_string(timeout_ms) + " ms");
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
