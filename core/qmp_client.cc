#include "cdp/core/qmp_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>
#include <utility>

namespace cdp {
namespace {

using Json = nlohmann::json;

// A QMP reply or event is one line; query-qmp-schema, the largest, is well under 1 MiB. A longer
// line means the peer is not QEMU (or is broken), and buffering it further would only cost memory.
constexpr size_t kMaxLineBytes = 64 << 20;
// How much of an unexpected first line an error message shows.
constexpr size_t kShownBytes = 60;
// Once the first byte shows the peer is not a QMP monitor, how long to wait for the rest of its
// first line (so the message can show it) before reporting.
constexpr int64_t kMismatchGraceMs = 200;
// Pause between connect attempts while the listen backlog is full (EAGAIN).
constexpr auto kConnectRetry = std::chrono::milliseconds(10);

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t DeadlineAfter(int timeout_ms) { return NowMs() + std::max(timeout_ms, 0); }

int RemainingMs(int64_t deadline_ms) {
  return static_cast<int>(std::clamp<int64_t>(deadline_ms - NowMs(), 0, INT_MAX));
}

// The first kShownBytes bytes of `text`, without the line end, non-printable bytes as '?'.
std::string Printable(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  std::string out(text.substr(0, kShownBytes));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return out;
}

bool IsBlank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

// Maps a QMP error class (qapi/error.json: QapiErrorClass) to a status code.
StatusCode CodeForErrorClass(std::string_view error_class) {
  if (error_class == "CommandNotFound" || error_class == "KVMMissingCap") {
    return StatusCode::kNotSupported;
  }
  if (error_class == "DeviceNotFound") return StatusCode::kNotFound;
  return StatusCode::kFailedPrecondition;  // DeviceNotActive, GenericError, anything newer
}

Status ErrorReplyStatus(const std::string& command, const Json& error) {
  std::string error_class = "?";
  std::string desc;
  if (error.is_object()) {
    auto c = error.find("class");
    if (c != error.end() && c->is_string()) error_class = c->get<std::string>();
    auto d = error.find("desc");
    if (d != error.end()) {
      desc = d->is_string() ? d->get<std::string>()
                            : d->dump(-1, ' ', false, Json::error_handler_t::replace);
    }
  } else {
    desc = error.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
  return Status(CodeForErrorClass(error_class),
                "qmp " + command + ": " + error_class + ": " + desc);
}

// "7.2.0" from the greeting's {"qemu": {"major", "minor", "micro"}}; "" when absent.
std::string VersionFromGreeting(const Json& qmp) {
  auto version = qmp.find("version");
  if (version == qmp.end() || !version->is_object()) return "";
  auto qemu = version->find("qemu");
  if (qemu == version->end() || !qemu->is_object()) return "";
  std::string out;
  for (const char* part : {"major", "minor", "micro"}) {
    auto it = qemu->find(part);
    if (it == qemu->end() || !it->is_number_integer()) return "";
    if (!out.empty()) out += '.';
    out += std::to_string(it->get<int64_t>());
  }
  return out;
}

}  // namespace

QmpClient::QmpClient(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

QmpClient::~QmpClient() { ::close(fd_); }

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& path, int timeout_ms) {
  const int64_t deadline = DeadlineAfter(timeout_ms);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return Status::InvalidArgument("qmp socket path is empty; check qmp_socket");
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument(path + " is too long for a unix socket address (" +
                                   std::to_string(path.size()) + " bytes, limit " +
                                   std::to_string(sizeof(addr.sun_path) - 1) +
                                   "); use a shorter qmp_socket path");
  }
  path.copy(addr.sun_path, path.size());

  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return Status::NotFound(path + " does not exist; is QEMU running with -qmp unix:" + path +
                              ",server=on,wait=off? check qmp_socket");
    }
    return Status::FromErrno(errno, "qmp socket " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::InvalidArgument(path + " is not a unix socket; check qmp_socket");
  }

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::FromErrno(errno, "qmp socket " + path + ": socket");
  // Owns fd from here on, so every early return closes it.
  std::unique_ptr<QmpClient> client(new QmpClient(fd, path));
  for (;;) {
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == ECONNREFUSED) {
      return Status::Unavailable(path +
                                 ": nothing accepts connections on it (ECONNREFUSED); QEMU exited "
                                 "or the socket is stale");
    }
    if (err == ENOENT) return Status::NotFound(path + " disappeared while connecting");
    if (err != EAGAIN) return Status::FromErrno(err, "qmp socket " + path + ": connect");
    // A full listen backlog: QEMU is not accepting (busy or stopped). Retry until the deadline.
    if (NowMs() >= deadline) {
      return Status::TimedOut(path + " did not accept the connection within " +
                              std::to_string(timeout_ms) + " ms (listen backlog full)");
    }
    std::this_thread::sleep_for(kConnectRetry);
  }
  CDP_RETURN_IF_ERROR(client->Handshake(deadline, timeout_ms));
  return client;
}

Status QmpClient::Handshake(int64_t deadline_ms, int timeout_ms) {
  const auto mismatch = [this](std::string_view sent) {
    return Status::ProtocolMismatch(path_ + " is not a QEMU QMP monitor: it sent '" +
                                    Printable(sent) + "'; check qmp_socket");
  };

  std::string line;
  int64_t read_deadline = deadline_ms;
  for (;;) {
    if (PopLine(&line)) {
      if (IsBlank(line)) continue;
      break;
    }
    std::string_view pending(buffer_.data() + buffer_offset_, buffer_.size() - buffer_offset_);
    const size_t first = pending.find_first_not_of(" \t\r\n");
    // Anything but '{' first is not JSON: no need to wait for the end of the line to know.
    const bool not_json = first != std::string_view::npos && pending[first] != '{';
    if (not_json) {
      if (pending.size() - first >= kShownBytes) return mismatch(pending.substr(first));
      read_deadline = std::min(read_deadline, NowMs() + kMismatchGraceMs);
    }
    if (closed_) {
      if (first != std::string_view::npos) return mismatch(pending.substr(first));
      return Status::Unavailable(path_ +
                                 " closed the connection before greeting as a QMP monitor; is "
                                 "QEMU exiting?");
    }
    CDP_ASSIGN_OR_RETURN(bool progressed, Receive(read_deadline));
    if (!progressed) {
      // Receive may have moved the buffer: look again rather than through `pending`.
      if (not_json) return mismatch(std::string_view(buffer_).substr(buffer_offset_ + first));
      return Status::TimedOut(path_ + " did not greet as a QMP monitor within " +
                              std::to_string(timeout_ms) +
                              " ms; another client may hold the monitor (QEMU serves one at a "
                              "time), or QEMU is hung");
    }
  }

  Json greeting = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (greeting.is_discarded() || !greeting.is_object()) return mismatch(line);
  auto qmp = greeting.find("QMP");
  if (qmp == greeting.end() || !qmp->is_object()) return mismatch(line);
  qemu_version_ = VersionFromGreeting(*qmp);

  Result<Json> negotiated = Execute("qmp_capabilities", nullptr, RemainingMs(deadline_ms));
  if (!negotiated.ok()) {
    if (negotiated.status().IsTimedOut()) {
      return Status::TimedOut(path_ + " greeted but did not answer qmp_capabilities within " +
                              std::to_string(timeout_ms) + " ms; is QEMU hung?");
    }
    return negotiated.status().WithContext(path_);
  }
  return Status::Ok();
}

Result<Json> QmpClient::Execute(const std::string& command, const Json& arguments, int timeout_ms) {
  const int64_t deadline = DeadlineAfter(timeout_ms);
  if (!arguments.is_null() && !arguments.is_object()) {
    return Status::InvalidArgument("qmp " + command + ": arguments must be a JSON object, not " +
                                   std::string(arguments.type_name()));
  }
  if (closed_) {
    if (command == "quit") return Json::object();  // the monitor is gone already
    return Status::Unavailable("qmp " + command + ": " + path_ +
                               " closed the connection earlier (QEMU exited?); reconnect");
  }

  const std::string id = "cdp-" + std::to_string(next_id_++);
  Json request = {{"execute", command}};
  if (!arguments.is_null()) request["arguments"] = arguments;
  request["id"] = id;
  // `replace` keeps dump() from throwing on invalid UTF-8 in caller-supplied strings.
  std::string bytes = request.dump(-1, ' ', false, Json::error_handler_t::replace);
  bytes += '\n';
  Status sent = SendAll(bytes, deadline, command);
  if (!sent.ok()) {
    if (command == "quit" && closed_) return Json::object();
    return sent;
  }

  for (;;) {
    Json message;
    Result<ReadOutcome> outcome = ReadMessage(deadline, &message);
    if (!outcome.ok()) return outcome.status().WithContext("qmp " + command);
    switch (*outcome) {
      case ReadOutcome::kTimedOut:
        return Status::TimedOut("qmp " + command + ": no reply from " + path_ + " within " +
                                std::to_string(timeout_ms) + " ms");
      case ReadOutcome::kClosed:
        // QEMU may exit before its reply to "quit" reaches us; the command did what it asked.
        if (command == "quit") return Json::object();
        return Status::Unavailable("qmp " + command + ": " + path_ +
                                   " closed the connection before replying (QEMU exited?)");
      case ReadOutcome::kMessage:
        break;
    }
    if (QueueIfEvent(message)) continue;
    auto reply_id = message.find("id");
    // A reply to a command that timed out earlier, or one without an id: not ours.
    if (reply_id == message.end() || *reply_id != id) continue;
    auto error = message.find("error");
    if (error != message.end()) return ErrorReplyStatus(command, *error);
    auto value = message.find("return");
    if (value != message.end()) return std::move(*value);
    return Status::ProtocolMismatch(
        "qmp " + command + ": reply from " + path_ + " has neither 'return' nor 'error': '" +
        Printable(message.dump(-1, ' ', false, Json::error_handler_t::replace)) + "'");
  }
}

Result<QmpEvent> QmpClient::WaitEvent(std::string_view name, int timeout_ms) {
  const int64_t deadline = DeadlineAfter(timeout_ms);
  const auto matches = [name](const QmpEvent& event) { return name.empty() || event.name == name; };
  auto queued = std::find_if(events_.begin(), events_.end(), matches);
  if (queued != events_.end()) {
    QmpEvent event = std::move(*queued);
    events_.erase(queued);
    return event;
  }
  const std::string what = name.empty() ? "event" : std::string(name) + " event";
  for (;;) {
    Json message;
    CDP_ASSIGN_OR_RETURN(ReadOutcome outcome, ReadMessage(deadline, &message));
    switch (outcome) {
      case ReadOutcome::kTimedOut:
        return Status::TimedOut("qmp " + path_ + ": no " + what + " within " +
                                std::to_string(timeout_ms) + " ms");
      case ReadOutcome::kClosed:
        return Status::Unavailable("qmp " + path_ + ": connection closed while waiting for " +
                                   what + " (QEMU exited?)");
      case ReadOutcome::kMessage:
        break;
    }
    if (QueueIfEvent(message) && matches(events_.back())) {
      QmpEvent event = std::move(events_.back());
      events_.pop_back();
      return event;
    }
  }
}

std::vector<QmpEvent> QmpClient::TakeEvents() {
  const int64_t now = NowMs();
  for (;;) {
    Json message;
    Result<ReadOutcome> outcome = ReadMessage(now, &message);
    if (!outcome.ok()) {
      // The bad line was consumed; anything else (a failing poll) would fail again.
      if (outcome.status().code() == StatusCode::kProtocolMismatch && !closed_) continue;
      break;
    }
    if (*outcome != ReadOutcome::kMessage) break;
    QueueIfEvent(message);
  }
  std::vector<QmpEvent> events(std::make_move_iterator(events_.begin()),
                               std::make_move_iterator(events_.end()));
  events_.clear();
  return events;
}

Status QmpClient::SendAll(std::string_view bytes, int64_t deadline_ms, std::string_view what) {
  const std::string context = "qmp " + std::string(what) + ": ";
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n >= 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EPIPE || err == ECONNRESET) {
      closed_ = true;
      return Status::Unavailable(context + path_ +
                                 " closed the connection before the command was sent (QEMU "
                                 "exited?)");
    }
    if (err != EAGAIN && err != EWOULDBLOCK) return Status::FromErrno(err, context + "send");
    pollfd pfd{fd_, POLLOUT, 0};
    int ready = ::poll(&pfd, 1, RemainingMs(deadline_ms));
    if (ready < 0 && errno != EINTR) return Status::FromErrno(errno, context + "poll");
    if (ready == 0) {
      if (done > 0) {
        // Half a command is on the wire; whatever we send next would be appended to it and the
        // monitor's parser would reject both. The connection is unusable.
        ::shutdown(fd_, SHUT_RDWR);
        closed_ = true;
      }
      return Status::TimedOut(context + path_ + " did not take the command (" +
                              std::to_string(bytes.size() - done) + " of " +
                              std::to_string(bytes.size()) + " bytes unsent)");
    }
  }
  return Status::Ok();
}

Result<QmpClient::ReadOutcome> QmpClient::ReadMessage(int64_t deadline_ms, Json* message) {
  std::string line;
  for (;;) {
    while (PopLine(&line)) {
      if (IsBlank(line)) continue;
      Json parsed = Json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded() || !parsed.is_object()) {
        return Status::ProtocolMismatch(path_ + " sent a line that is not a JSON object: '" +
                                        Printable(line) + "'");
      }
      *message = std::move(parsed);
      return ReadOutcome::kMessage;
    }
    if (buffer_.size() - buffer_offset_ > kMaxLineBytes) {
      // No way to find the next line boundary we can trust; stop reading this peer.
      ::shutdown(fd_, SHUT_RDWR);
      closed_ = true;
      buffer_.clear();
      buffer_offset_ = scanned_ = 0;
      return Status::ProtocolMismatch(path_ + " sent a line longer than " +
                                      std::to_string(kMaxLineBytes) +
                                      " bytes; not a QMP monitor? connection dropped");
    }
    if (closed_) return ReadOutcome::kClosed;
    CDP_ASSIGN_OR_RETURN(bool progressed, Receive(deadline_ms));
    if (!progressed) return ReadOutcome::kTimedOut;
  }
}

bool QmpClient::PopLine(std::string* line) {
  const size_t newline = buffer_.find('\n', buffer_offset_ + scanned_);
  if (newline == std::string::npos) {
    scanned_ = buffer_.size() - buffer_offset_;
    return false;
  }
  size_t end = newline;
  if (end > buffer_offset_ && buffer_[end - 1] == '\r') --end;
  line->assign(buffer_, buffer_offset_, end - buffer_offset_);
  buffer_offset_ = newline + 1;
  scanned_ = 0;
  return true;
}

Result<bool> QmpClient::Receive(int64_t deadline_ms) {
  if (buffer_offset_ > 0) {
    buffer_.erase(0, buffer_offset_);
    buffer_offset_ = 0;
  }
  char chunk[64 << 10];
  for (;;) {
    pollfd pfd{fd_, POLLIN, 0};
    int ready = ::poll(&pfd, 1, RemainingMs(deadline_ms));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "qmp " + path_ + ": poll");
    }
    if (ready == 0) return false;
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n > 0) {
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
    if (n == 0) {
      closed_ = true;
      return true;
    }
    const int err = errno;
    if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) continue;
    if (err == ECONNRESET) {
      closed_ = true;
      return true;
    }
    return Status::FromErrno(err, "qmp " + path_ + ": recv");
  }
}

bool QmpClient::QueueIfEvent(const Json& message) {
  auto name = message.find("event");
  if (name == message.end() || !name->is_string()) return false;
  QmpEvent event;
  event.name = name->get<std::string>();
  auto data = message.find("data");
  if (data != message.end()) event.data = *data;
  auto timestamp = message.find("timestamp");
  if (timestamp != message.end() && timestamp->is_object()) {
    auto seconds = timestamp->find("seconds");
    auto micros = timestamp->find("microseconds");
    if (seconds != timestamp->end() && seconds->is_number_integer() && micros != timestamp->end() &&
        micros->is_number_integer()) {
      event.timestamp_us = seconds->get<int64_t>() * 1000000 + micros->get<int64_t>();
    }
  }
  events_.push_back(std::move(event));
  return true;
}

}  // namespace cdp
