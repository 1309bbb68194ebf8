#include "cdp/nbd/nbd_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <system_error>
#include <utility>
#include <vector>

#include "cdp/core/logging.h"

namespace cdp::nbd {

namespace {

// Option payloads are small (names, info lists, meta-context queries). Anything bigger is a
// broken or hostile client; we close rather than buffer it.
constexpr uint32_t kMaxOptionLength = 64 * 1024;
// Chunk size for discarding the payload of a rejected NBD_CMD_WRITE.
constexpr size_t kDiscardChunk = 64 * 1024;
// A read buffer bigger than this is freed after its reply, so that an idle connection does not
// keep the largest read it ever served (up to max_block_size) allocated.
constexpr size_t kMaxRetainedReadBuffer = 1 << 20;
constexpr int kListenBacklog = 16;
// While connections are being refused, at most one log line per this interval.
constexpr std::chrono::seconds kRefusalLogInterval{60};
// TCP keepalive after Options::tcp_keepalive_idle of silence: probe interval and count.
constexpr int kKeepaliveIntervalSeconds = 30;
constexpr int kKeepaliveProbes = 10;
// TCP_KEEPIDLE's upper bound in Linux (MAX_TCP_KEEPIDLE).
constexpr int64_t kMaxKeepaliveIdleSeconds = 32767;

using Clock = std::chrono::steady_clock;
// The deadline of a socket operation that may wait forever (the transmission phase).
constexpr Clock::time_point kNoDeadline = Clock::time_point::max();

// "10 s", "250 ms".
std::string DescribeDuration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

// Waits until `fd` is ready for `events` (or has an error or hang-up, which the following
// recv/send reports). TimedOut once `deadline` has passed.
Status WaitReady(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return Status::TimedOut("time ran out");
    const int64_t left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, INT_MAX)));
    if (r > 0) return Status::Ok();
    if (r < 0 && errno != EINTR) return Status::FromErrno(errno, "poll");
  }
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// A peer that hangs up is routine (Unavailable, logged at info); other socket errors are not.
Status SocketError(int err, std::string_view op) {
  if (err == EPIPE || err == ECONNRESET) {
    return Status::Unavailable(std::string(op) + ": peer closed the connection (" +
                               std::strerror(err) + ")");
  }
  return Status::FromErrno(err, op);
}

// Reads exactly `n` bytes. On failure `*got` says how many arrived first, so the caller can
// tell a clean close between messages (got == 0) from one in the middle of a message.
// Unavailable when the peer closed the connection, IOError on a socket error, TimedOut when
// `deadline` passed first (the wait is in poll(), so a peer that trickles bytes cannot stretch
// it the way it could a per-call SO_RCVTIMEO).
Status RecvExact(int fd, char* buf, size_t n, size_t* got = nullptr,
                 Clock::time_point deadline = kNoDeadline) {
  const bool timed = deadline != kNoDeadline;
  size_t done = 0;
  while (done < n) {
    if (timed) {
      Status ready = WaitReady(fd, POLLIN, deadline);
      if (!ready.ok()) {
        if (got != nullptr) *got = done;
        return ready.WithContext("received " + std::to_string(done) + " of " + std::to_string(n) +
                                 " bytes");
      }
    }
    const ssize_t r = ::recv(fd, buf + done, n - done, timed ? MSG_DONTWAIT : 0);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (got != nullptr) *got = done;
    if (r == 0) {
      return Status::Unavailable(done == 0
                                     ? "peer closed the connection"
                                     : "peer closed the connection after " + std::to_string(done) +
                                           " of " + std::to_string(n) + " bytes of a message");
    }
    if (errno == EINTR || (timed && (errno == EAGAIN || errno == EWOULDBLOCK))) continue;
    return SocketError(errno, "recv");
  }
  if (got != nullptr) *got = done;
  return Status::Ok();
}

// Writes every byte of every buffer, in order, with one sendmsg() per round. MSG_NOSIGNAL keeps
// a vanished peer from raising SIGPIPE in the host process. TimedOut when `deadline` passed
// before the peer made room for everything (it is not reading).
Status SendAll(int fd, std::span<const std::string_view> parts,
               Clock::time_point deadline = kNoDeadline) {
  const bool timed = deadline != kNoDeadline;
  std::vector<iovec> iov;
  iov.reserve(parts.size());
  size_t total = 0;
  for (std::string_view p : parts) {
    if (!p.empty()) iov.push_back({const_cast<char*>(p.data()), p.size()});
    total += p.size();
  }
  size_t done = 0;
  size_t first = 0;
  while (first < iov.size()) {
    if (timed) {
      Status ready = WaitReady(fd, POLLOUT, deadline);
      if (!ready.ok()) {
        return ready.WithContext("sent " + std::to_string(done) + " of " + std::to_string(total) +
                                 " bytes; the peer is not reading");
      }
    }
    msghdr msg{};
    msg.msg_iov = &iov[first];
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t r = ::sendmsg(fd, &msg, MSG_NOSIGNAL | (timed ? MSG_DONTWAIT : 0));
    if (r < 0) {
      if (errno == EINTR || (timed && (errno == EAGAIN || errno == EWOULDBLOCK))) continue;
      return SocketError(errno, "send");
    }
    size_t sent = static_cast<size_t>(r);
    done += sent;
    while (sent > 0 && first < iov.size()) {
      if (sent >= iov[first].iov_len) {
        sent -= iov[first].iov_len;
        ++first;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + sent;
        iov[first].iov_len -= sent;
        sent = 0;
      }
    }
  }
  return Status::Ok();
}

// Reads and drops `n` bytes in bounded chunks, to keep the stream in sync after rejecting a
// write without ever allocating the (client-chosen) payload size.
Status Discard(int fd, uint64_t n) {
  char buf[kDiscardChunk];
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, sizeof(buf)));
    CDP_RETURN_IF_ERROR(RecvExact(fd, buf, chunk));
    n -= chunk;
  }
  return Status::Ok();
}

// "192.0.2.7", "[::1]"; the port in *port.
std::string InetHost(const sockaddr_storage& ss, uint16_t* port) {
  char host[INET6_ADDRSTRLEN] = "?";
  *port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    *port = ntohs(in->sin_port);
    return host;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    *port = ntohs(in6->sin6_port);
    return "[" + std::string(host) + "]";
  }
  return "?";
}

// "tcp:192.0.2.7:51234", "tcp:[::1]:51234".
std::string FormatInetAddress(const sockaddr_storage& ss) {
  uint16_t port;
  const std::string host = InetHost(ss, &port);
  if (host == "?") return "tcp:?";
  return "tcp:" + host + ":" + std::to_string(port);
}

// The peer of an accepted socket.
struct Peer {
  // For logs. Unix peers have no address, so the process is named instead:
  // "unix:pid=812,uid=107", "tcp:192.0.2.7:51234".
  std::string description;
  // What max_connections_per_peer counts by: the process on a unix socket ("unix:pid=812", or
  // "unix:uid=107" when SO_PEERCRED reports pid 0 because the peer's pid is not visible in our
  // pid namespace), the host on TCP ("tcp:192.0.2.7", any port). Peers that cannot be told
  // apart ("unix:?", "tcp:?") share one key.
  std::string key;
};

Peer IdentifyPeer(int fd, const sockaddr_storage& ss) {
  if (ss.ss_family == AF_UNIX) {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      return {"unix:pid=" + std::to_string(cred.pid) + ",uid=" + std::to_string(cred.uid),
              cred.pid > 0 ? "unix:pid=" + std::to_string(cred.pid)
                           : "unix:uid=" + std::to_string(cred.uid)};
    }
    return {"unix:?", "unix:?"};
  }
  uint16_t port;
  const std::string host = InetHost(ss, &port);
  if (host == "?") return {"tcp:?", "tcp:?"};
  return {"tcp:" + host + ":" + std::to_string(port), "tcp:" + host};
}

void CloseFd(int* fd) {
  if (*fd >= 0) ::close(*fd);
  *fd = -1;
}

struct Listener {
  int fd = -1;
  std::string bound_address;
  ino_t inode = 0;  // unix only
};

Result<Listener> ListenUnix(const NbdListenAddress& addr, const std::string& text, mode_t mode) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (addr.path.size() >= sizeof(sun.sun_path)) {
    return Status::InvalidArgument("nbd: cannot listen on " + text + ": socket path is " +
                                   std::to_string(addr.path.size()) + " bytes; the limit is " +
                                   std::to_string(sizeof(sun.sun_path) - 1));
  }
  std::memcpy(sun.sun_path, addr.path.data(), addr.path.size());

  struct stat st {};
  if (::lstat(addr.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::AlreadyExists("nbd: cannot listen on " + text +
                                   ": the path exists and is not a socket; remove it or "
                                   "choose another path");
    }
    // A socket file is either a live server's or left over from a crash: ask it.
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return Status::FromErrno(errno, "nbd: cannot listen on " + text + ": socket");
    const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&sun), sizeof(sun));
    const int err = errno;
    ::close(probe);
    if (rc == 0) {
      return Status::AlreadyExists("nbd: cannot listen on " + text +
                                   ": another server is accepting on it; stop that server or "
                                   "choose another path");
    }
    if (err != ECONNREFUSED) {
      return Status::FromErrno(err, "nbd: cannot listen on " + text + ": probing existing socket");
    }
    CDP_LOG(info) << "nbd: removing stale socket file " << addr.path;
    if (::unlink(addr.path.c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(errno, "nbd: cannot listen on " + text + ": removing stale socket");
    }
  }

  Listener l;
  l.fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (l.fd < 0) return Status::FromErrno(errno, "nbd: cannot listen on " + text + ": socket");
  if (::bind(l.fd, reinterpret_cast<const sockaddr*>(&sun), sizeof(sun)) != 0) {
    Status s = Status::FromErrno(errno, "nbd: cannot listen on " + text + ": bind");
    CloseFd(&l.fd);
    return s;
  }
  if (::chmod(addr.path.c_str(), mode) != 0 || ::listen(l.fd, kListenBacklog) != 0 ||
      ::stat(addr.path.c_str(), &st) != 0) {
    Status s = Status::FromErrno(errno, "nbd: cannot listen on " + text);
    CloseFd(&l.fd);
    ::unlink(addr.path.c_str());
    return s;
  }
  l.inode = st.st_ino;
  l.bound_address = "unix:" + addr.path;
  return l;
}

Result<Listener> ListenTcp(const NbdListenAddress& addr, const std::string& text) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(addr.port);
  const int gai =
      ::getaddrinfo(addr.host.empty() ? nullptr : addr.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) {
    return Status::InvalidArgument("nbd: cannot listen on " + text + ": resolving '" + addr.host +
                                   "': " + ::gai_strerror(gai));
  }
  Status last = Status::IOError("nbd: cannot listen on " + text + ": no usable address");
  Listener l;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    l.fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (l.fd < 0) {
      last = Status::FromErrno(errno, "nbd: cannot listen on " + text + ": socket");
      continue;
    }
    const int one = 1;
    ::setsockopt(l.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(l.fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      last = Status::FromErrno(errno, "nbd: cannot listen on " + text + ": bind");
      CloseFd(&l.fd);
      continue;
    }
    if (::listen(l.fd, kListenBacklog) != 0) {
      last = Status::FromErrno(errno, "nbd: cannot listen on " + text + ": listen");
      CloseFd(&l.fd);
      continue;
    }
    break;
  }
  ::freeaddrinfo(res);
  if (l.fd < 0) return last;
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(l.fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    Status s = Status::FromErrno(errno, "nbd: cannot listen on " + text + ": getsockname");
    CloseFd(&l.fd);
    return s;
  }
  l.bound_address = FormatInetAddress(ss);
  return l;
}

}  // namespace

Result<NbdListenAddress> ParseNbdListenAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("nbd: bad listen address '" + std::string(text) +
                                   "': " + std::string(why) +
                                   "; expected unix:PATH or tcp:HOST:PORT (tcp:[IPV6]:PORT)");
  };
  NbdListenAddress addr;
  if (text.starts_with("unix:")) {
    addr.kind = NbdListenAddress::Kind::kUnix;
    addr.path = std::string(text.substr(5));
    if (addr.path.empty()) return bad("empty socket path");
    return addr;
  }
  if (!text.starts_with("tcp:")) return bad("unknown scheme");
  addr.kind = NbdListenAddress::Kind::kTcp;
  std::string_view rest = text.substr(4);
  std::string_view port_text;
  if (rest.starts_with("[")) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) return bad("unterminated '[' in IPv6 host");
    addr.host = std::string(rest.substr(1, close - 1));
    if (rest.substr(close + 1, 1) != ":") return bad("missing ':PORT' after ']'");
    port_text = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("missing ':PORT'");
    addr.host = std::string(rest.substr(0, colon));
    if (addr.host.find(':') != std::string::npos) return bad("IPv6 hosts need [brackets]");
    port_text = rest.substr(colon + 1);
  }
  unsigned port = 0;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return bad("port '" + std::string(port_text) + "' is not a number in 0..65535");
  }
  addr.port = static_cast<uint16_t>(port);
  return addr;
}

// One NBD session on an accepted socket: handshake, then transmission until the client
// disconnects, the stream goes out of sync, or the server stops. Runs on its connection's
// thread; uses the server's immutable export description and atomic counters.
class NbdSession {
 public:
  // The handshake must be over by `accepted_at` + the server's handshake_timeout.
  NbdSession(NbdServer* server, int fd, std::string peer, Clock::time_point accepted_at)
      : server_(server),
        fd_(fd),
        peer_(std::move(peer)),
        target_(server->options_.target),
        log_prefix_("nbd: export '" + server->options_.export_name + "' peer " + peer_ + ": "),
        deadline_(accepted_at + server->options_.handshake_timeout) {}

  void Run() {
    bool transmission = false;
    Status s = Handshake(&transmission);
    if (s.code() == StatusCode::kTimedOut) {
      server_->counters_.handshake_timeouts.fetch_add(1, std::memory_order_relaxed);
      const std::string timeout = DescribeDuration(server_->options_.handshake_timeout);
      CDP_LOG(warning) << log_prefix_ << "disconnected: no export selected within the " << timeout
                       << " handshake timeout (" << options_seen_ << " options received; it was "
                       << stage_ << ": " << s.message()
                       << "). A client must send NBD_OPT_GO or NBD_OPT_EXPORT_NAME within "
                       << timeout << " of connecting";
      return;
    }
    // Legitimate clients may stay idle for hours in transmission; only the handshake is timed.
    deadline_ = kNoDeadline;
    if (s.ok() && transmission) s = Transmission();
    if (s.ok()) {
      CDP_LOG(info) << log_prefix_ << "disconnected";
    } else if (s.code() == StatusCode::kUnavailable) {
      CDP_LOG(info) << log_prefix_ << "connection closed: " << s.message();
    } else {
      CDP_LOG(warning) << log_prefix_ << "closing connection: " << s.ToString();
    }
  }

 private:
  // Fixed-newstyle handshake. Sets *transmission when the client selected the export (GO or
  // EXPORT_NAME); returns OK without it after NBD_OPT_ABORT.
  Status Handshake(bool* transmission) {
    stage_ = "sending the greeting";
    CDP_RETURN_IF_ERROR(Send(nbd::EncodeGreeting(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes)));
    char flags_buf[4];
    stage_ = "waiting for the client flags";
    CDP_RETURN_IF_ERROR(Recv(flags_buf, sizeof(flags_buf)));
    const uint32_t client_flags = nbd::LoadBe32(flags_buf);
    if ((client_flags & ~nbd::kKnownClientFlags) != 0) {
      // proto.md: the server MUST drop the connection on unknown client flags.
      return Status::ProtocolMismatch("client flags 0x" + ToHex(client_flags) +
                                      " contain bits this server does not know");
    }
    no_zeroes_ = (client_flags & nbd::kClientFlagNoZeroes) != 0;

    for (;;) {
      std::string header(nbd::kOptionHeaderSize, '\0');
      stage_ = "waiting for an option";
      CDP_RETURN_IF_ERROR(Recv(header.data(), header.size()));
      CDP_ASSIGN_OR_RETURN(const nbd::OptionHeader h, nbd::ParseOptionHeader(header));
      ++options_seen_;
      stage_ = "reading the data of " + nbd::OptionName(h.option);
      if (h.length > kMaxOptionLength) {
        return Status::ProtocolMismatch(nbd::OptionName(h.option) + " announces " +
                                        std::to_string(h.length) + " bytes of data; the limit is " +
                                        std::to_string(kMaxOptionLength));
      }
      std::string payload(h.length, '\0');
      CDP_RETURN_IF_ERROR(Recv(payload.data(), payload.size()));
      stage_ = "answering " + nbd::OptionName(h.option);

      switch (static_cast<nbd::Option>(h.option)) {
        case nbd::Option::kExportName:
          if (!IsOurExport(payload)) {
            // EXPORT_NAME has no error reply; proto.md says to terminate the session.
            return Status::NotFound("NBD_OPT_EXPORT_NAME asked for " + UnknownExport(payload));
          }
          CDP_RETURN_IF_ERROR(Send(nbd::EncodeExportNameReply(
              server_->limits_.size, server_->transmission_flags_, no_zeroes_)));
          CDP_LOG(info) << log_prefix_ << "connected (NBD_OPT_EXPORT_NAME)";
          *transmission = true;
          return Status::Ok();

        case nbd::Option::kAbort:
          // The client may already be gone; the ACK is a courtesy.
          (void)Send(nbd::EncodeAck(h.option));
          *transmission = false;
          return Status::Ok();

        case nbd::Option::kList:
          if (!payload.empty()) {
            CDP_RETURN_IF_ERROR(RefuseOption(
                h.option, nbd::OptionReply::kErrInvalid,
                "NBD_OPT_LIST takes no data; got " + std::to_string(payload.size()) + " bytes"));
            break;
          }
          CDP_RETURN_IF_ERROR(Send(nbd::EncodeServerReply(h.option, server_->options_.export_name) +
                                   nbd::EncodeAck(h.option)));
          break;

        case nbd::Option::kStartTls:
          CDP_RETURN_IF_ERROR(RefuseOption(h.option, nbd::OptionReply::kErrPolicy,
                                           "TLS is not offered on this socket; connect without "
                                           "TLS (local unix socket or trusted network)"));
          break;

        case nbd::Option::kInfo:
        case nbd::Option::kGo: {
          bool go = false;
          CDP_RETURN_IF_ERROR(AnswerInfo(h.option, payload, &go));
          if (go) {
            CDP_LOG(info) << log_prefix_ << "connected (NBD_OPT_GO)";
            *transmission = true;
            return Status::Ok();
          }
          break;
        }

        default:
          // STRUCTURED_REPLY, META_CONTEXT, EXTENDED_HEADERS and anything unknown: the payload
          // has been consumed, so refusing keeps the stream in sync.
          CDP_RETURN_IF_ERROR(
              RefuseOption(h.option, nbd::OptionReply::kErrUnsup,
                           nbd::OptionName(h.option) + " is not supported by this server"));
          break;
      }
    }
  }

  // Answers NBD_OPT_INFO / NBD_OPT_GO. Sets *go when a GO succeeded.
  Status AnswerInfo(uint32_t option, std::string_view payload, bool* go) {
    Result<nbd::InfoRequest> request = nbd::ParseInfoRequest(payload);
    if (!request.ok()) {
      return RefuseOption(option, nbd::OptionReply::kErrInvalid, request.status().message());
    }
    if (!IsOurExport(request->name)) {
      return RefuseOption(option, nbd::OptionReply::kErrUnknown, UnknownExport(request->name));
    }
    // NBD_INFO_EXPORT is mandatory and block sizes are always sent because this server
    // enforces them; NAME only when asked.
    std::string reply =
        nbd::EncodeInfoExport(option, server_->limits_.size, server_->transmission_flags_) +
        nbd::EncodeInfoBlockSize(option, server_->limits_.min_block_size,
                                 server_->preferred_block_size_, server_->limits_.max_block_size);
    const auto& types = request->info_types;
    if (std::find(types.begin(), types.end(), static_cast<uint16_t>(nbd::InfoType::kName)) !=
        types.end()) {
      reply += nbd::EncodeInfoName(option, server_->options_.export_name);
    }
    reply += nbd::EncodeAck(option);
    CDP_RETURN_IF_ERROR(Send(reply));
    *go = option == static_cast<uint32_t>(nbd::Option::kGo);
    return Status::Ok();
  }

  Status RefuseOption(uint32_t option, nbd::OptionReply error, const std::string& message) {
    // Unsupported options are routine capability probes (QEMU asks for structured replies on
    // every connect); only real refusals are worth a warning.
    if (error == nbd::OptionReply::kErrUnsup) {
      CDP_LOG(debug) << log_prefix_ << nbd::OptionReplyName(static_cast<uint32_t>(error)) << ": "
                     << message;
    } else {
      CDP_LOG(warning) << log_prefix_ << "refused " << nbd::OptionName(option) << " with "
                       << nbd::OptionReplyName(static_cast<uint32_t>(error)) << ": " << message;
    }
    return Send(nbd::EncodeOptionError(option, error, message));
  }

  // Serves requests until NBD_CMD_DISC (OK), the client closes (OK), or a fatal stream error.
  Status Transmission() {
    std::string header(nbd::kRequestHeaderSize, '\0');
    for (;;) {
      size_t got = 0;
      Status s = Recv(header.data(), header.size(), &got);
      if (!s.ok()) {
        if (s.code() == StatusCode::kUnavailable && got == 0) {
          return Status::Unavailable("client closed the connection without NBD_CMD_DISC");
        }
        return s;
      }
      CDP_ASSIGN_OR_RETURN(const nbd::RequestHeader r, nbd::ParseRequestHeader(header));
      server_->counters_.requests.fetch_add(1, std::memory_order_relaxed);
      if (r.type == static_cast<uint16_t>(nbd::Command::kDisc)) return Status::Ok();
      CDP_RETURN_IF_ERROR(HandleRequest(r));
    }
  }

  Status HandleRequest(const nbd::RequestHeader& r) {
    const nbd::RequestVerdict verdict = nbd::ValidateRequest(r, server_->limits_);
    if (!verdict.ok()) {
      if (r.type == static_cast<uint16_t>(nbd::Command::kWrite)) {
        CDP_RETURN_IF_ERROR(Discard(fd_, r.length));
      }
      return ReplyError(r, verdict.error, verdict.message);
    }
    const bool fua = (r.flags & nbd::kCmdFlagFua) != 0;
    const std::string reply_ok = nbd::EncodeSimpleReply(nbd::Error::kOk, r.handle);

    switch (static_cast<nbd::Command>(r.type)) {
      case nbd::Command::kRead: {
        if (r.length == 0) return Send(reply_ok);
        read_buf_.resize(r.length);
        Status s = target_->Read(r.offset, std::span<char>(read_buf_.data(), r.length));
        if (s.ok()) {
          const std::string_view parts[] = {reply_ok, std::string_view(read_buf_.data(), r.length)};
          // Counted before the reply so a client never sees a reply the stats do not reflect.
          server_->counters_.bytes_read.fetch_add(r.length, std::memory_order_relaxed);
          s = Send(parts);
        } else {
          s = ReplyTargetError(r, s);
        }
        if (read_buf_.capacity() > kMaxRetainedReadBuffer) std::string().swap(read_buf_);
        return s;
      }
      case nbd::Command::kWrite: {
        if (r.length == 0) return Send(reply_ok);
        auto data = std::make_shared<std::string>(r.length, '\0');
        CDP_RETURN_IF_ERROR(Recv(data->data(), data->size()));
        Status s = target_->Write(r.offset, std::move(data), fua);
        if (!s.ok()) return ReplyTargetError(r, s);
        server_->counters_.bytes_written.fetch_add(r.length, std::memory_order_relaxed);
        return Send(reply_ok);
      }
      case nbd::Command::kFlush: {
        Status s = target_->Flush();
        if (!s.ok()) return ReplyTargetError(r, s);
        return Send(reply_ok);
      }
      case nbd::Command::kTrim: {
        if (r.length == 0) return Send(reply_ok);
        Status s = target_->Trim(r.offset, r.length);
        if (!s.ok()) return ReplyTargetError(r, s);
        return Send(reply_ok);
      }
      case nbd::Command::kWriteZeroes: {
        if (r.length == 0) return Send(reply_ok);
        Status s = target_->WriteZeroes(r.offset, r.length, fua);
        if (!s.ok()) return ReplyTargetError(r, s);
        return Send(reply_ok);
      }
      default:
        // ValidateRequest admits only the commands above (DISC is handled by the caller).
        return ReplyError(r, nbd::Error::kNotSup, nbd::CommandName(r.type) + " not handled");
    }
  }

  Status ReplyTargetError(const nbd::RequestHeader& r, const Status& s) {
    return ReplyError(r, nbd::ErrorFromStatus(s),
                      nbd::CommandName(r.type) + " of " + std::to_string(r.length) +
                          " bytes at offset " + std::to_string(r.offset) +
                          " failed: " + s.ToString());
  }

  Status ReplyError(const nbd::RequestHeader& r, nbd::Error error, const std::string& message) {
    server_->counters_.errors.fetch_add(1, std::memory_order_relaxed);
    CDP_LOG(warning) << log_prefix_ << "replied " << nbd::ErrorName(error) << ": " << message;
    return Send(nbd::EncodeSimpleReply(error, r.handle));
  }

  bool IsOurExport(std::string_view name) const {
    // The empty name is the NBD "default export", which is ours.
    return name.empty() || name == server_->options_.export_name;
  }

  std::string UnknownExport(std::string_view name) const {
    return "unknown export '" + std::string(name.substr(0, 256)) + "'; this agent exports '" +
           server_->options_.export_name + "'";
  }

  // Socket I/O on this connection: bounded by the handshake deadline until the export is
  // selected, unbounded in transmission.
  Status Recv(char* buf, size_t n, size_t* got = nullptr) {
    return RecvExact(fd_, buf, n, got, deadline_);
  }
  Status Send(std::span<const std::string_view> parts) { return SendAll(fd_, parts, deadline_); }
  Status Send(std::string_view bytes) {
    const std::string_view parts[] = {bytes};
    return Send(parts);
  }

  static std::string ToHex(uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%x", v);
    return buf;
  }

  NbdServer* const server_;
  const int fd_;
  const std::string peer_;
  ExportTarget* const target_;
  const std::string log_prefix_;
  bool no_zeroes_ = false;
  // Reused across reads; at most max_block_size bytes, freed after a read of over 1 MiB.
  std::string read_buf_;
  Clock::time_point deadline_;  // of every socket operation; kNoDeadline in transmission
  // For the handshake timeout's log line: what the session was doing, and how far it got.
  std::string stage_;
  uint64_t options_seen_ = 0;
};

NbdServer::NbdServer(Options options) : options_(std::move(options)) {}

NbdServer::~NbdServer() { Stop(); }

Result<std::unique_ptr<NbdServer>> NbdServer::Start(Options options) {
  const std::string& text = options.listen_address;
  if (options.target == nullptr) {
    return Status::InvalidArgument("nbd: " + text + ": no capture target given");
  }
  if (options.export_name.empty() || options.export_name.size() > nbd::kMaxStringLength) {
    return Status::InvalidArgument("nbd: " + text + ": export name must be 1.." +
                                   std::to_string(nbd::kMaxStringLength) + " bytes");
  }
  if (options.max_connections == 0) {
    return Status::InvalidArgument("nbd: " + text +
                                   ": max_connections is 0, which would refuse every client; "
                                   "give at least 1 (the default is 64)");
  }
  if (options.max_connections_per_peer == 0) {
    return Status::InvalidArgument("nbd: " + text +
                                   ": max_connections_per_peer is 0, which would refuse every "
                                   "client; give at least 1 (the default is 16)");
  }
  if (options.max_connections_per_peer > options.max_connections) {
    return Status::InvalidArgument(
        "nbd: " + text + ": max_connections_per_peer is " +
        std::to_string(options.max_connections_per_peer) + " but max_connections is " +
        std::to_string(options.max_connections) +
        "; one peer cannot hold more connections than the server serves: lower "
        "max_connections_per_peer to at most " +
        std::to_string(options.max_connections) + " or raise max_connections");
  }
  if (options.handshake_timeout.count() <= 0) {
    return Status::InvalidArgument("nbd: " + text + ": handshake_timeout is " +
                                   std::to_string(options.handshake_timeout.count()) +
                                   " ms; it must be positive (the default is 10 s)");
  }
  if (options.tcp_keepalive_idle.count() < 0 ||
      options.tcp_keepalive_idle.count() > kMaxKeepaliveIdleSeconds) {
    return Status::InvalidArgument("nbd: " + text + ": tcp_keepalive_idle is " +
                                   std::to_string(options.tcp_keepalive_idle.count()) +
                                   " s; it must be 0 (off) to " +
                                   std::to_string(kMaxKeepaliveIdleSeconds));
  }
  CDP_ASSIGN_OR_RETURN(const NbdListenAddress addr, ParseNbdListenAddress(text));

  // Block size rules from proto.md, "Block size constraints".
  const uint64_t size = options.target->size();
  const uint32_t min_bs = options.target->block_size();
  if (!IsPowerOfTwo(min_bs) || min_bs > 65536) {
    return Status::InvalidArgument("nbd: export '" + options.export_name + "': block size " +
                                   std::to_string(min_bs) +
                                   " is not a power of two between 1 and 65536");
  }
  const uint32_t preferred = std::max({options.preferred_block_size, min_bs, 512u});
  if (!IsPowerOfTwo(preferred)) {
    return Status::InvalidArgument("nbd: export '" + options.export_name +
                                   "': preferred block size " + std::to_string(preferred) +
                                   " is not a power of two");
  }
  if (options.max_block_size % min_bs != 0 ||
      options.max_block_size < std::min<uint64_t>(preferred, size)) {
    return Status::InvalidArgument("nbd: export '" + options.export_name + "': max block size " +
                                   std::to_string(options.max_block_size) +
                                   " must be a multiple of the block size " +
                                   std::to_string(min_bs) + " and at least " +
                                   std::to_string(std::min<uint64_t>(preferred, size)));
  }
  if (size % min_bs != 0) {
    CDP_LOG(warning) << "nbd: export '" << options.export_name << "': size " << size
                     << " is not a multiple of the block size " << min_bs
                     << "; the last partial block is not addressable";
  }

  Result<Listener> listener = addr.kind == NbdListenAddress::Kind::kUnix
                                  ? ListenUnix(addr, text, options.unix_socket_mode)
                                  : ListenTcp(addr, text);
  if (!listener.ok()) return listener.status();

  std::unique_ptr<NbdServer> server(new NbdServer(std::move(options)));
  server->listen_fd_ = listener->fd;
  server->bound_address_ = listener->bound_address;
  server->is_tcp_ = addr.kind == NbdListenAddress::Kind::kTcp;
  if (!server->is_tcp_) {
    server->unix_path_ = addr.path;
    server->unix_inode_ = listener->inode;
  }
  server->limits_.size = size;
  server->limits_.min_block_size = min_bs;
  server->limits_.max_block_size = server->options_.max_block_size;
  server->limits_.read_only = server->options_.read_only;
  server->preferred_block_size_ = preferred;
  server->transmission_flags_ = nbd::kTransHasFlags | nbd::kTransSendFlush | nbd::kTransSendFua |
                                nbd::kTransSendTrim | nbd::kTransSendWriteZeroes;
  if (server->options_.read_only) server->transmission_flags_ |= nbd::kTransReadOnly;

  server->wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (server->wake_fd_ < 0) {
    return Status::FromErrno(errno, "nbd: " + server->bound_address_ + ": eventfd");
  }
  try {
    server->accept_thread_ = std::thread(&NbdServer::AcceptLoop, server.get());
  } catch (const std::system_error& e) {
    return Status::ResourceExhausted("nbd: " + server->bound_address_ +
                                     ": cannot start accept thread: " + e.what());
  }
  CDP_LOG(info) << "nbd: export '" << server->options_.export_name << "' (" << size
                << " bytes, block size " << min_bs << ") listening on " << server->bound_address_
                << " (at most " << server->options_.max_connections << " connections, "
                << server->options_.max_connections_per_peer << " per peer, handshake timeout "
                << DescribeDuration(server->options_.handshake_timeout) << ")";
  return server;
}

void NbdServer::AcceptLoop() {
  for (;;) {
    // While refusals wait to be summarized, wake up in time to log them even if nobody
    // connects any more.
    int timeout_ms = -1;
    if (const std::optional<Clock::time_point> next = NextRefusalSummary()) {
      const int64_t left =
          std::chrono::ceil<std::chrono::milliseconds>(*next - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
    }
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int ready = ::poll(fds, 2, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      CDP_LOG(error) << "nbd: " << bound_address_ << ": poll: " << std::strerror(errno)
                     << "; no longer accepting connections";
      return;
    }
    if (!peer_refusals_.empty()) {
      // Before a summary says a peer is still refused, end the episodes of peers whose
      // connections have closed since.
      ReapFinishedConnections();
      EndPeerRefusalEpisodes();
    }
    MaybeLogRefusals(Clock::now());
    if (ready == 0) continue;
    if (fds[1].revents != 0) return;  // Stop()
    if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) {
      CDP_LOG(error) << "nbd: " << bound_address_
                     << ": listening socket failed; no longer accepting connections";
      return;
    }
    if ((fds[0].revents & POLLIN) == 0) continue;

    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED) continue;
      CDP_LOG(error) << "nbd: " << bound_address_ << ": accept: " << std::strerror(err);
      // Out of descriptors or memory: back off instead of spinning on poll().
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    const Clock::time_point accepted_at = Clock::now();
    Peer peer = IdentifyPeer(fd, ss);
    // Only this thread adds connections, so the counts can only fall before the push below.
    const size_t open = ReapFinishedConnections();
    if (!peer_refusals_.empty()) EndPeerRefusalEpisodes();
    // The peer's own limit first: a peer at it would be refused even with places free, so
    // that is the reason to log and count.
    const uint32_t peer_open = OpenFromPeer(peer.key);
    if (peer_open >= options_.max_connections_per_peer) {
      RefusePeerConnection(fd, peer.description, peer.key, peer_open);
      continue;
    }
    if (open >= options_.max_connections) {
      RefuseConnection(fd, peer.description, open);
      continue;
    }
    if (refusals_.active) EndRefusalEpisode(peer.description);
    if (is_tcp_) ConfigureTcpSocket(fd, peer.description);
    auto conn = std::make_unique<Connection>();
    conn->fd = fd;
    conn->peer = std::move(peer.description);
    conn->peer_key = std::move(peer.key);
    conn->accepted_at = accepted_at;
    counters_.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    CDP_LOG(info) << "nbd: export '" << options_.export_name << "': accepted " << conn->peer
                  << " on " << bound_address_;

    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      ::close(fd);
      return;
    }
    try {
      // The thread takes mu_ before it touches the list, so it cannot finish before the
      // connection is in connections_.
      conn->thread = std::thread(&NbdServer::ServeConnection, this, conn.get());
    } catch (const std::system_error& e) {
      CDP_LOG(error) << "nbd: " << bound_address_ << ": cannot start a thread for " << conn->peer
                     << ": " << e.what() << "; connection dropped";
      ::close(fd);
      continue;
    }
    ++connections_per_peer_[conn->peer_key];
    connections_.push_back(std::move(conn));
  }
}

void NbdServer::RefuseConnection(int fd, const std::string& peer, size_t open) {
  // Closed before the greeting: the client sees the connection end and may retry. Counted and
  // logged first, so a client that sees the close finds it in the stats.
  counters_.connections_refused.fetch_add(1, std::memory_order_relaxed);
  LogRefusal(peer, open);
  ::close(fd);
}

void NbdServer::LogRefusal(const std::string& peer, size_t open) {
  const Clock::time_point now = Clock::now();
  if (!refusals_.active) {
    refusals_.active = true;
    refusals_.refused = 1;
    refusals_.unlogged = 0;
    refusals_.last_peer = peer;
    refusals_.started = now;
    refusals_.next_summary = now + kRefusalLogInterval;
    CDP_LOG(warning) << "nbd: export '" << options_.export_name << "': refused a connection from "
                     << peer << ": " << open << " connections are open and the limit is "
                     << options_.max_connections
                     << "; closed it unserved. Further refusals are summarized at most once a "
                        "minute until a connection is admitted again; find the client holding "
                        "connections open (the 'accepted' lines) or raise the limit";
    return;
  }
  ++refusals_.refused;
  ++refusals_.unlogged;
  refusals_.last_peer = peer;
  MaybeLogRefusals(now);
}

void NbdServer::MaybeLogRefusals(Clock::time_point now) {
  for (auto& [key, episode] : peer_refusals_) {
    if (episode.unlogged == 0 || now < episode.next_summary) continue;
    CDP_LOG(warning)
        << "nbd: export '" << options_.export_name << "': still refusing connections from peer "
        << key << " at the per-peer limit of " << options_.max_connections_per_peer << ": "
        << episode.unlogged << " more refused (the last from " << episode.last_peer << "), "
        << episode.refused << " since it reached the limit "
        << std::chrono::duration_cast<std::chrono::seconds>(now - episode.started).count()
        << " s ago";
    episode.unlogged = 0;
    episode.next_summary = now + kRefusalLogInterval;
  }
  if (!refusals_.active || refusals_.unlogged == 0 || now < refusals_.next_summary) return;
  CDP_LOG(warning)
      << "nbd: export '" << options_.export_name << "': still refusing connections at the limit of "
      << options_.max_connections << ": " << refusals_.unlogged << " more refused (the last from "
      << refusals_.last_peer << "), " << refusals_.refused << " since the limit was reached "
      << std::chrono::duration_cast<std::chrono::seconds>(now - refusals_.started).count()
      << " s ago";
  refusals_.unlogged = 0;
  refusals_.next_summary = now + kRefusalLogInterval;
}

void NbdServer::EndRefusalEpisode(const std::string& peer) {
  CDP_LOG(info)
      << "nbd: export '" << options_.export_name << "': admitting connections again (" << peer
      << "); " << refusals_.refused << " refused at the limit of " << options_.max_connections
      << " in the last "
      << std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - refusals_.started).count()
      << " s, the last from " << refusals_.last_peer;
  refusals_ = RefusalEpisode{};
}

void NbdServer::RefusePeerConnection(int fd, const std::string& peer, const std::string& peer_key,
                                     uint32_t peer_open) {
  // As RefuseConnection: counted and logged before the client can see the close.
  counters_.connections_refused_per_peer.fetch_add(1, std::memory_order_relaxed);
  const Clock::time_point now = Clock::now();
  auto [it, first] = peer_refusals_.try_emplace(peer_key);
  RefusalEpisode& episode = it->second;
  if (first) {
    episode.active = true;
    episode.refused = 1;
    episode.last_peer = peer;
    episode.started = now;
    episode.next_summary = now + kRefusalLogInterval;
    CDP_LOG(warning) << "nbd: export '" << options_.export_name << "': refused a connection from "
                     << peer << ": peer " << peer_key << " already has " << peer_open
                     << " connections open and the per-peer limit is "
                     << options_.max_connections_per_peer
                     << "; closed it unserved. Further refusals of this peer are summarized at "
                        "most once a minute until it has fewer than "
                     << options_.max_connections_per_peer
                     << " open; find what on that peer holds connections open (its 'accepted' "
                        "lines) or raise max_connections_per_peer";
  } else {
    ++episode.refused;
    ++episode.unlogged;
    episode.last_peer = peer;
    MaybeLogRefusals(now);
  }
  ::close(fd);
}

void NbdServer::EndPeerRefusalEpisodes() {
  for (auto it = peer_refusals_.begin(); it != peer_refusals_.end();) {
    const uint32_t open = OpenFromPeer(it->first);
    if (open >= options_.max_connections_per_peer) {
      ++it;
      continue;
    }
    const RefusalEpisode& episode = it->second;
    CDP_LOG(info)
        << "nbd: export '" << options_.export_name << "': peer " << it->first
        << " is under the per-peer limit of " << options_.max_connections_per_peer << " again ("
        << open << " open); refused " << episode.refused << " of its connections in the last "
        << std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - episode.started).count()
        << " s, the last from " << episode.last_peer;
    it = peer_refusals_.erase(it);
  }
}

std::optional<Clock::time_point> NbdServer::NextRefusalSummary() const {
  std::optional<Clock::time_point> next;
  if (refusals_.active && refusals_.unlogged > 0) next = refusals_.next_summary;
  for (const auto& [key, episode] : peer_refusals_) {
    if (episode.unlogged > 0 && (!next || episode.next_summary < *next)) {
      next = episode.next_summary;
    }
  }
  return next;
}

void NbdServer::ConfigureTcpSocket(int fd, const std::string& peer) const {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const int idle = static_cast<int>(options_.tcp_keepalive_idle.count());
  if (idle == 0) return;
  const int interval = kKeepaliveIntervalSeconds;
  const int probes = kKeepaliveProbes;
  if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes)) != 0) {
    CDP_LOG(warning) << "nbd: export '" << options_.export_name << "' peer " << peer
                     << ": cannot set TCP keepalive: " << std::strerror(errno)
                     << "; if this peer vanishes, its connection stays open until the agent "
                        "stops";
  }
}

void NbdServer::ServeConnection(Connection* conn) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = conn->fd;
  }
  counters_.connections_active.fetch_add(1, std::memory_order_relaxed);
  NbdSession(this, fd, conn->peer, conn->accepted_at).Run();
  {
    // Under mu_ so that Stop() never shutdown()s a descriptor number that was reused.
    std::lock_guard<std::mutex> lock(mu_);
    ::close(conn->fd);
    conn->fd = -1;
  }
  // finished before connections_active falls: once anyone sees the count fall, the accept
  // thread no longer counts this connection against max_connections.
  conn->finished.store(true, std::memory_order_release);
  counters_.connections_active.fetch_sub(1, std::memory_order_relaxed);
}

size_t NbdServer::ReapFinishedConnections() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->finished.load(std::memory_order_acquire)) {
      (*it)->thread.join();
      auto count = connections_per_peer_.find((*it)->peer_key);
      if (count != connections_per_peer_.end() && --count->second == 0) {
        connections_per_peer_.erase(count);
      }
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
  return connections_.size();
}

uint32_t NbdServer::OpenFromPeer(const std::string& peer_key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto count = connections_per_peer_.find(peer_key);
  return count == connections_per_peer_.end() ? 0 : count->second;
}

void NbdServer::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    // Best effort: a full counter still leaves the eventfd readable.
    (void)!::write(wake_fd_, &one, sizeof(one));
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  CloseFd(&listen_fd_);
  CloseFd(&wake_fd_);
  if (!unix_path_.empty()) {
    // Remove the socket file only if it is still the one we created.
    struct stat st {};
    if (::lstat(unix_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == unix_inode_) {
      ::unlink(unix_path_.c_str());
    }
  }
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& conn : connections_) {
      if (conn->fd >= 0) ::shutdown(conn->fd, SHUT_RDWR);
    }
    connections.swap(connections_);
    connections_per_peer_.clear();
  }
  for (auto& conn : connections) conn->thread.join();
  CDP_LOG(info) << "nbd: export '" << options_.export_name << "': stopped listening on "
                << bound_address_;
}

NbdServerStats NbdServer::stats() const {
  NbdServerStats s;
  s.connections_accepted = counters_.connections_accepted.load(std::memory_order_relaxed);
  s.connections_active = counters_.connections_active.load(std::memory_order_relaxed);
  s.connections_refused = counters_.connections_refused.load(std::memory_order_relaxed);
  s.connections_refused_per_peer =
      counters_.connections_refused_per_peer.load(std::memory_order_relaxed);
  s.handshake_timeouts = counters_.handshake_timeouts.load(std::memory_order_relaxed);
  s.requests = counters_.requests.load(std::memory_order_relaxed);
  s.errors = counters_.errors.load(std::memory_order_relaxed);
  s.bytes_read = counters_.bytes_read.load(std::memory_order_relaxed);
  s.bytes_written = counters_.bytes_written.load(std::memory_order_relaxed);
  return s;
}

}  // namespace cdp::nbd
