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

#include "cdp/core/logging.h"

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
// How many event names an overflow warning counts separately (the rest are "other"): a peer
// that names every event differently must not grow the tally without bound either.
constexpr size_t kMaxDropNames = 8;

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

// `value` as one line of JSON; `replace` keeps dump() from throwing on invalid UTF-8.
std::string Dump(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// What a reply had where something else was expected: "string '\"yes\"'", "null".
std::string Described(const Json& value) {
  if (value.is_null()) return "null";
  return std::string(value.type_name()) + " '" + Printable(Dump(value)) + "'";
}

Status ShapeMismatch(std::string_view context, std::string_view path, std::string_view expected,
                     std::string_view got) {
  return Status::ProtocolMismatch(std::string(context) + ": " + std::string(path) + ": expected " +
                                  std::string(expected) + ", got " + std::string(got));
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
    if (d != error.end()) desc = d->is_string() ? d->get<std::string>() : Dump(*d);
  } else {
    desc = Dump(error);
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
    if (it == qemu->end() || !it->is_number_unsigned()) return "";
    if (!out.empty()) out += '.';
    out += std::to_string(it->get<uint64_t>());
  }
  return out;
}

// An event's {"seconds", "microseconds"} in microseconds; 0 when absent or out of range.
int64_t TimestampUs(const Json& event) {
  auto timestamp = event.find("timestamp");
  if (timestamp == event.end() || !timestamp->is_object()) return 0;
  auto seconds = timestamp->find("seconds");
  auto micros = timestamp->find("microseconds");
  if (seconds == timestamp->end() || !seconds->is_number_unsigned() || micros == timestamp->end() ||
      !micros->is_number_unsigned()) {
    return 0;
  }
  const uint64_t s = seconds->get<uint64_t>();
  const uint64_t us = micros->get<uint64_t>();
  if (s > static_cast<uint64_t>(INT64_MAX) / 1000000 - 1 || us >= 1000000) return 0;
  return static_cast<int64_t>(s * 1000000 + us);
}

}  // namespace

Result<QmpObject> QmpObject::FromReturn(const Json& value, std::string_view context) {
  if (!value.is_object()) return ShapeMismatch(context, "return", "object", Described(value));
  return QmpObject(&value, std::string(context), "return");
}

Result<std::vector<QmpObject>> QmpObject::ArrayFromReturn(const Json& value,
                                                          std::string_view context) {
  if (!value.is_array()) return ShapeMismatch(context, "return", "array", Described(value));
  std::vector<QmpObject> out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    std::string path = "return[" + std::to_string(i) + "]";
    if (!value[i].is_object()) return ShapeMismatch(context, path, "object", Described(value[i]));
    out.push_back(QmpObject(&value[i], std::string(context), std::move(path)));
  }
  return out;
}

const Json* QmpObject::Find(std::string_view key) const {
  auto it = value_->find(std::string(key));
  return it == value_->end() ? nullptr : &*it;
}

Status QmpObject::Mismatch(std::string_view key, std::string_view type, const Json* found) const {
  return ShapeMismatch(context_, path_ + "." + std::string(key), type,
                       found != nullptr
                           ? Described(*found)
                           : "nothing (" + path_ + " is '" + Printable(Dump(*value_)) + "')");
}

Result<bool> QmpObject::Bool(std::string_view key) const {
  const Json* found = Find(key);
  if (found == nullptr || !found->is_boolean()) return Mismatch(key, "boolean", found);
  return found->get<bool>();
}

Result<std::string> QmpObject::String(std::string_view key) const {
  const Json* found = Find(key);
  if (found == nullptr || !found->is_string()) return Mismatch(key, "string", found);
  return found->get<std::string>();
}

Result<QmpObject> QmpObject::Object(std::string_view key) const {
  const Json* found = Find(key);
  if (found == nullptr || !found->is_object()) return Mismatch(key, "object", found);
  return QmpObject(found, context_, path_ + "." + std::string(key));
}

Result<std::string> QmpObject::StringOr(std::string_view key, std::string_view fallback) const {
  const Json* found = Find(key);
  if (found == nullptr || found->is_null()) return std::string(fallback);
  if (!found->is_string()) return Mismatch(key, "string", found);
  return found->get<std::string>();
}

Result<std::optional<QmpObject>> QmpObject::OptionalObject(std::string_view key) const {
  const Json* found = Find(key);
  if (found == nullptr || found->is_null()) return std::optional<QmpObject>();
  if (!found->is_object()) return Mismatch(key, "object", found);
  return std::optional<QmpObject>(QmpObject(found, context_, path_ + "." + std::string(key)));
}

Result<QmpRunState> ParseQueryStatus(const Json& value, std::string_view context) {
  CDP_ASSIGN_OR_RETURN(QmpObject reply, QmpObject::FromReturn(value, context));
  QmpRunState state;
  CDP_ASSIGN_OR_RETURN(state.running, reply.Bool("running"));
  CDP_ASSIGN_OR_RETURN(state.status, reply.String("status"));
  return state;
}

QmpClient::QmpClient(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

QmpClient::~QmpClient() {
  ReportDroppedEvents();
  ::close(fd_);
}

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
  std::string bytes = Dump(request) + '\n';
  Status sent = SendAll(bytes, deadline, command);
  if (!sent.ok()) {
    if (command == "quit" && closed_) return Json::object();
    return sent;
  }

  for (;;) {
    Json message;
    size_t message_bytes = 0;
    Result<ReadOutcome> outcome = ReadMessage(deadline, &message, &message_bytes);
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
    if (QueueIfEvent(message, message_bytes)) continue;
    auto reply_id = message.find("id");
    // A reply to a command that timed out earlier, or one without an id: not ours.
    if (reply_id == message.end() || *reply_id != id) continue;
    auto error = message.find("error");
    if (error != message.end()) return ErrorReplyStatus(command, *error);
    auto value = message.find("return");
    if (value != message.end()) return std::move(*value);
    return Status::ProtocolMismatch("qmp " + command + ": reply from " + path_ +
                                    " has neither 'return' nor 'error': '" +
                                    Printable(Dump(message)) + "'");
  }
}

Result<QmpRunState> QmpClient::QueryStatus(int timeout_ms) {
  CDP_ASSIGN_OR_RETURN(Json value, Execute("query-status", nullptr, timeout_ms));
  return ParseQueryStatus(value, ReplyContext("query-status"));
}

std::string QmpClient::ReplyContext(std::string_view command) const {
  return "qmp " + std::string(command) + ": reply from " + path_;
}

Result<QmpEvent> QmpClient::WaitEvent(std::string_view name, int timeout_ms) {
  const int64_t deadline = DeadlineAfter(timeout_ms);
  const auto matches = [name](const QueuedEvent& queued) {
    return name.empty() || queued.event.name == name;
  };
  auto queued = std::find_if(events_.begin(), events_.end(), matches);
  if (queued != events_.end()) return TakeQueued(static_cast<size_t>(queued - events_.begin()));
  const std::string what = name.empty() ? "event" : std::string(name) + " event";
  for (;;) {
    Json message;
    size_t message_bytes = 0;
    CDP_ASSIGN_OR_RETURN(ReadOutcome outcome, ReadMessage(deadline, &message, &message_bytes));
    switch (outcome) {
      case ReadOutcome::kTimedOut:
        return Status::TimedOut(
            "qmp " + path_ + ": no " + what + " within " + std::to_string(timeout_ms) + " ms" +
            (dropped_events_ == 0 ? ""
                                  : " (" + std::to_string(dropped_events_) +
                                        " older events were dropped at the queue cap)"));
      case ReadOutcome::kClosed:
        return Status::Unavailable("qmp " + path_ + ": connection closed while waiting for " +
                                   what + " (QEMU exited?)");
      case ReadOutcome::kMessage:
        break;
    }
    if (QueueIfEvent(message, message_bytes) && matches(events_.back())) {
      return TakeQueued(events_.size() - 1);
    }
  }
}

QmpEvent QmpClient::TakeQueued(size_t index) {
  QmpEvent event = std::move(events_[index].event);
  queued_bytes_ -= events_[index].bytes;
  events_.erase(events_.begin() + static_cast<std::ptrdiff_t>(index));
  ReportDroppedEvents();  // the caller takes events again: an overflow is over
  return event;
}

std::vector<QmpEvent> QmpClient::TakeEvents() {
  const int64_t now = NowMs();
  for (;;) {
    Json message;
    size_t message_bytes = 0;
    Result<ReadOutcome> outcome = ReadMessage(now, &message, &message_bytes);
    if (!outcome.ok()) {
      // The bad line was consumed; anything else (a failing poll) would fail again.
      if (outcome.status().code() == StatusCode::kProtocolMismatch && !closed_) continue;
      break;
    }
    if (*outcome != ReadOutcome::kMessage) break;
    QueueIfEvent(message, message_bytes);
  }
  std::vector<QmpEvent> events;
  events.reserve(events_.size());
  for (QueuedEvent& queued : events_) events.push_back(std::move(queued.event));
  events_.clear();
  queued_bytes_ = 0;
  ReportDroppedEvents();
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

Result<QmpClient::ReadOutcome> QmpClient::ReadMessage(int64_t deadline_ms, Json* message,
                                                      size_t* bytes) {
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
      *bytes = line.size();
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

bool QmpClient::QueueIfEvent(const Json& message, size_t bytes) {
  auto name = message.find("event");
  if (name == message.end() || !name->is_string()) return false;
  QueuedEvent queued;
  queued.event.name = name->get<std::string>();
  auto data = message.find("data");
  if (data != message.end()) queued.event.data = *data;
  queued.event.timestamp_us = TimestampUs(message);
  queued.bytes = bytes;
  // Make room: the oldest go first, and the newest is kept whatever its size, so that a
  // WaitEvent for it still sees it.
  while (!events_.empty() &&
         (events_.size() >= kMaxQueuedEvents || queued_bytes_ + bytes > kMaxQueuedEventBytes)) {
    const QueuedEvent& oldest = events_.front();
    auto tally = episode_drops_.find(oldest.event.name);
    if (tally != episode_drops_.end()) {
      ++tally->second;
    } else if (episode_drops_.size() < kMaxDropNames) {
      episode_drops_.emplace(oldest.event.name, 1);
    }
    ++episode_dropped_;
    ++dropped_events_;
    queued_bytes_ -= oldest.bytes;
    events_.pop_front();
  }
  queued_bytes_ += bytes;
  events_.push_back(std::move(queued));
  return true;
}

void QmpClient::ReportDroppedEvents() {
  if (episode_dropped_ == 0) return;
  std::string names;
  uint64_t named = 0;
  for (const auto& [name, count] : episode_drops_) {
    names += (names.empty() ? "" : ", ") + Printable(name) + " x" + std::to_string(count);
    named += count;
  }
  if (named < episode_dropped_) names += ", other x" + std::to_string(episode_dropped_ - named);
  CDP_LOG(warning) << "qmp " << path_ << ": dropped " << episode_dropped_
                   << " queued event(s), oldest first (" << names << "), at the queue cap of "
                   << kMaxQueuedEvents << " events / " << (kMaxQueuedEventBytes >> 20)
                   << " MiB: the monitor sent events faster than they were taken";
  episode_drops_.clear();
  episode_dropped_ = 0;
}

}  // namespace cdp
