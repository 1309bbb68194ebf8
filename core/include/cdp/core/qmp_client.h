// QmpClient: a client of one QEMU monitor socket speaking QMP (the QEMU Machine Protocol).
//
// QMP is line-oriented JSON over a unix stream socket. On connect QEMU sends a greeting
//   {"QMP": {"version": {"qemu": {"major", "minor", "micro"}, "package"}, "capabilities": [...]}}
// and accepts nothing but {"execute": "qmp_capabilities"} until that has been answered. After that
// every {"execute": CMD, "arguments": {...}, "id": ID} gets exactly one reply carrying the same id,
// either {"return": VALUE, "id": ID} or {"error": {"class": CLASS, "desc": TEXT}, "id": ID}.
// Asynchronous events {"event": NAME, "data": {...}, "timestamp": {"seconds", "microseconds"}}
// may arrive at any time, including between a command and its reply. QEMU ends every object with
// "\r\n". QEMU serves one client per monitor socket: a second client is accepted by the kernel but
// is not greeted until the first one disconnects.
//
// See docs/qmp-client.md for the error mapping and the timeouts.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"

namespace cdp {

// One asynchronous QMP event.
struct QmpEvent {
  std::string name;          // "SHUTDOWN", "STOP", "RESUME", ...
  nlohmann::json data;       // the event's "data" (null when absent)
  int64_t timestamp_us = 0;  // from the event's "timestamp" {seconds, microseconds}
};

// A client of one QEMU monitor socket (unix socket, QMP).
//
// Thread-compatible: one thread at a time may call any member; distinct clients are independent.
// Owns the socket and closes it on destruction. No member throws.
//
// Timeouts are in milliseconds, measured on the monotonic clock from the start of the call; a
// negative timeout counts as 0 (use what is already buffered, do not wait).
class QmpClient {
 public:
  // Connects to the unix socket `path`, reads the greeting {"QMP":
  // {"version":..,"capabilities":..}}, sends qmp_capabilities and waits for its {"return": {}}; all
  // within timeout_ms.
  //
  // Errors:
  //   NotFound           the socket file does not exist.
  //   InvalidArgument    `path` is empty, too long for a unix socket address, or names a file that
  //                      is not a socket.
  //   Unavailable        nothing accepts on the socket (ECONNREFUSED: QEMU exited, stale socket),
  //                      or the peer closed the connection before greeting.
  //   TimedOut           no greeting (or no qmp_capabilities reply) arrived in time: "PATH did not
  //                      greet as a QMP monitor within N ms; ...". Typical cause: another client
  //                      holds the monitor.
  //   ProtocolMismatch   the first line is not a QMP greeting: "PATH is not a QEMU QMP monitor: it
  //                      sent '<first 60 chars, non-printable bytes as '?'>'; check qmp_socket".
  //   others             from qmp_capabilities (see Execute) or the socket calls (IOError).
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& path, int timeout_ms);

  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Sends {"execute": command, "arguments": arguments (omitted when null), "id": "cdp-<n>"} and
  // waits up to timeout_ms for the reply carrying that id; events that arrive meanwhile are queued,
  // replies with other ids (late replies to commands that timed out) are dropped. Returns the
  // reply's "return" value.
  //
  // An {"error": {"class", "desc"}} reply is a Status whose message is "qmp COMMAND: CLASS: desc"
  // and whose code maps the class:
  //   CommandNotFound -> NotSupported        DeviceNotFound  -> NotFound
  //   DeviceNotActive -> FailedPrecondition  KVMMissingCap   -> NotSupported
  //   GenericError and anything else -> FailedPrecondition
  // Other errors: InvalidArgument when `arguments` is neither null nor an object; TimedOut when no
  // reply came; Unavailable when the connection closed (e.g. QEMU exited) or had closed before —
  // for "quit" a close before the reply (or before the call) counts as success and returns an
  // empty object; ProtocolMismatch when the monitor sent a line that is not a JSON object.
  Result<nlohmann::json> Execute(const std::string& command,
                                 const nlohmann::json& arguments = nullptr, int timeout_ms = 5000);

  // Returns the first queued or arriving event named `name` (any event when name is empty), waiting
  // up to timeout_ms. Earlier events of other names stay queued, in order. Replies that arrive
  // meanwhile are dropped (no command is outstanding). Events queued before the connection closed
  // are still returned. TimedOut when none came; Unavailable when the connection closed first;
  // ProtocolMismatch when the monitor sent a line that is not a JSON object.
  Result<QmpEvent> WaitEvent(std::string_view name, int timeout_ms);

  // Removes and returns every queued event, oldest first (reading what is already buffered on the
  // socket first, without waiting). Lines that do not parse are dropped.
  std::vector<QmpEvent> TakeEvents();

  // QEMU's version from the greeting, e.g. "7.2.0" ("" if the greeting did not say).
  const std::string& qemu_version() const { return qemu_version_; }

  // The socket path given to Connect.
  const std::string& path() const { return path_; }

  // False once the monitor closed the connection (QEMU exited or dropped us); every later Execute
  // but "quit" fails with Unavailable.
  bool connected() const { return !closed_; }

 private:
  // What ReadMessage found.
  enum class ReadOutcome { kMessage, kTimedOut, kClosed };

  QmpClient(int fd, std::string path);

  // Sends all of `bytes` before `deadline_ms` (a monotonic time in ms).
  Status SendAll(std::string_view bytes, int64_t deadline_ms, std::string_view what);
  // Reads from the socket until one complete line is buffered, the deadline passes or the peer
  // closes. On kMessage `*message` holds the parsed object. A line that is not a JSON object is a
  // ProtocolMismatch (the line is consumed; the stream stays usable).
  Result<ReadOutcome> ReadMessage(int64_t deadline_ms, nlohmann::json* message);
  // Pops one complete line (without "\r\n") off the buffer; false when there is none.
  bool PopLine(std::string* line);
  // Receives once, waiting until `deadline_ms` for data. False on timeout; sets closed_ on EOF.
  Result<bool> Receive(int64_t deadline_ms);
  // Queues `message` if it is an event; returns whether it was one.
  bool QueueIfEvent(const nlohmann::json& message);
  // Reads the greeting and negotiates capabilities before `deadline_ms` (the body of Connect;
  // timeout_ms is the caller's budget, for messages).
  Status Handshake(int64_t deadline_ms, int timeout_ms);

  const int fd_;
  const std::string path_;
  std::string qemu_version_;
  std::string buffer_;        // bytes received and not yet consumed, from buffer_offset_ on
  size_t buffer_offset_ = 0;  // start of the unconsumed bytes in buffer_
  size_t scanned_ = 0;        // bytes after buffer_offset_ known to hold no '\n'
  std::deque<QmpEvent> events_;
  uint64_t next_id_ = 1;
  bool closed_ = false;  // the peer closed the connection (EOF or reset)
};

}  // namespace cdp
