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
// Replies are read through QmpObject (below), which checks every JSON type before reading it:
// a reply of an unexpected shape is a ProtocolMismatch naming the command and the field, never a
// nlohmann::json exception. Events are queued up to QmpClient::kMaxQueuedEvents; beyond that the
// oldest are dropped (counted, logged once per overflow).
//
// See docs/qmp-client.md for the error mapping, the timeouts and the event cap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
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

// A checked view of one JSON object inside a QMP reply. Every accessor checks the JSON type of
// what it reads; a missing field or one of the wrong type is a ProtocolMismatch whose message
// names the context (e.g. "qmp query-status"), the field's path in the reply and what was there:
//   qmp query-status: return.running: expected boolean, got string '"yes"'
//   qmp query-block: return[1].inserted.file: expected string, got nothing (return[1].inserted
//   is '{"ro":false}')
// Received values are shown as JSON, cut to 60 bytes, non-printable bytes as '?'.
//
// Does not own the JSON it views. REQUIRES: the viewed value outlives the view (binding a
// temporary is refused at compile time). Copyable; no member throws.
class QmpObject {
 public:
  // `value` as the object a command returned; its path is "return". `context` starts every
  // message, by convention "qmp COMMAND".
  static Result<QmpObject> FromReturn(const nlohmann::json& value, std::string_view context);
  static Result<QmpObject> FromReturn(const nlohmann::json&& value,
                                      std::string_view context) = delete;
  // Each element of an array a command returned, each required to be an object ("return[i]").
  static Result<std::vector<QmpObject>> ArrayFromReturn(const nlohmann::json& value,
                                                        std::string_view context);
  static Result<std::vector<QmpObject>> ArrayFromReturn(const nlohmann::json&& value,
                                                        std::string_view context) = delete;

  // The field `key`: required, of the given type.
  Result<bool> Bool(std::string_view key) const;
  Result<std::string> String(std::string_view key) const;
  Result<QmpObject> Object(std::string_view key) const;
  // The field `key` when present (and not null), else `fallback` / nullopt; present but of
  // another type is still an error.
  Result<std::string> StringOr(std::string_view key, std::string_view fallback) const;
  Result<std::optional<QmpObject>> OptionalObject(std::string_view key) const;

  // Where this object is in the reply, e.g. "return[1].inserted".
  const std::string& path() const { return path_; }

 private:
  QmpObject(const nlohmann::json* value, std::string context, std::string path)
      : value_(value), context_(std::move(context)), path_(std::move(path)) {}
  // The field `key`, or null when absent (or JSON null).
  const nlohmann::json* Find(std::string_view key) const;
  // ProtocolMismatch: field `key` (nullptr: this object) expected `type`, found `found`.
  Status Mismatch(std::string_view key, std::string_view type, const nlohmann::json* found) const;

  const nlohmann::json* value_;
  std::string context_;
  std::string path_;
};

// What query-status returns (QEMU's StatusInfo): whether the guest's vCPUs run, and the run
// state ("running", "paused", "prelaunch", "shutdown", ...).
struct QmpRunState {
  bool running = false;
  std::string status;
};

// Parses the return value of query-status. ProtocolMismatch (see QmpObject; `context` starts its
// message) when it is not an object with a boolean "running" and a string "status".
Result<QmpRunState> ParseQueryStatus(const nlohmann::json& value,
                                     std::string_view context = "qmp query-status");

// A client of one QEMU monitor socket (unix socket, QMP).
//
// Thread-compatible: one thread at a time may call any member; distinct clients are independent.
// Owns the socket and closes it on destruction. No member throws.
//
// Timeouts are in milliseconds, measured on the monotonic clock from the start of the call; a
// negative timeout counts as 0 (use what is already buffered, do not wait).
class QmpClient {
 public:
  // At most this many events, of at most this many bytes on the wire together, are queued (the
  // newest event is always kept, whatever its size). A monitor that sends more before they are
  // taken (a flooding peer, a caller that never takes events) loses the oldest: each drop is
  // counted (dropped_events()), and one warning per overflow is logged when the overflow ends
  // (the caller takes events, or the client is destroyed) saying how many of which were dropped.
  static constexpr size_t kMaxQueuedEvents = 1024;
  static constexpr size_t kMaxQueuedEventBytes = 4 << 20;

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

  // Execute("query-status") parsed by ParseQueryStatus: the errors of both, a malformed reply's
  // message starting with ReplyContext("query-status").
  Result<QmpRunState> QueryStatus(int timeout_ms = 5000);

  // "qmp COMMAND: reply from PATH": the context to give QmpObject for a reply of this client.
  std::string ReplyContext(std::string_view command) const;

  // Returns the first queued or arriving event named `name` (any event when name is empty), waiting
  // up to timeout_ms. Earlier events of other names stay queued, in order. Replies that arrive
  // meanwhile are dropped (no command is outstanding). Events queued before the connection closed
  // are still returned. An event arriving while it waits is returned even when the queue is full;
  // one queued earlier may have been dropped at the cap (the TimedOut message then says how many
  // were). TimedOut when none came; Unavailable when the connection closed first;
  // ProtocolMismatch when the monitor sent a line that is not a JSON object.
  Result<QmpEvent> WaitEvent(std::string_view name, int timeout_ms);

  // Removes and returns every queued event, oldest first (reading what is already buffered on the
  // socket first, without waiting). Lines that do not parse are dropped.
  std::vector<QmpEvent> TakeEvents();

  // QEMU's version from the greeting, e.g. "7.2.0" ("" if the greeting did not say).
  const std::string& qemu_version() const { return qemu_version_; }

  // The socket path given to Connect.
  const std::string& path() const { return path_; }

  // How many events were dropped at the caps (kMaxQueuedEvents, kMaxQueuedEventBytes) since
  // Connect.
  uint64_t dropped_events() const { return dropped_events_; }

  // False once the monitor closed the connection (QEMU exited or dropped us); every later Execute
  // but "quit" fails with Unavailable.
  bool connected() const { return !closed_; }

 private:
  // What ReadMessage found.
  enum class ReadOutcome { kMessage, kTimedOut, kClosed };
  // One queued event and the length of its line (for kMaxQueuedEventBytes).
  struct QueuedEvent {
    QmpEvent event;
    size_t bytes = 0;
  };

  QmpClient(int fd, std::string path);

  // Sends all of `bytes` before `deadline_ms` (a monotonic time in ms).
  Status SendAll(std::string_view bytes, int64_t deadline_ms, std::string_view what);
  // Reads from the socket until one complete line is buffered, the deadline passes or the peer
  // closes. On kMessage `*message` holds the parsed object and `*bytes` its line's length. A line
  // that is not a JSON object is a ProtocolMismatch (the line is consumed; the stream stays
  // usable).
  Result<ReadOutcome> ReadMessage(int64_t deadline_ms, nlohmann::json* message, size_t* bytes);
  // Pops one complete line (without "\r\n") off the buffer; false when there is none.
  bool PopLine(std::string* line);
  // Receives once, waiting until `deadline_ms` for data. False on timeout; sets closed_ on EOF.
  Result<bool> Receive(int64_t deadline_ms);
  // Queues `message` (`bytes` long on the wire) if it is an event, dropping the oldest ones at
  // the caps; returns whether it was one.
  bool QueueIfEvent(const nlohmann::json& message, size_t bytes);
  // Removes and returns the queued event at `index`.
  QmpEvent TakeQueued(size_t index);
  // Ends an overflow episode, if one is under way: logs what it dropped and forgets it.
  void ReportDroppedEvents();
  // Reads the greeting and negotiates capabilities before `deadline_ms` (the body of Connect;
  // timeout_ms is the caller's budget, for messages).
  Status Handshake(int64_t deadline_ms, int timeout_ms);

  const int fd_;
  const std::string path_;
  std::string qemu_version_;
  std::string buffer_;              // bytes received and not yet consumed, from buffer_offset_ on
  size_t buffer_offset_ = 0;        // start of the unconsumed bytes in buffer_
  size_t scanned_ = 0;              // bytes after buffer_offset_ known to hold no '\n'
  std::deque<QueuedEvent> events_;  // oldest first; within the caps
  size_t queued_bytes_ = 0;         // the sum of events_[i].bytes
  uint64_t dropped_events_ = 0;     // since Connect
  // The overflow under way (reported and cleared by ReportDroppedEvents): drops per event name,
  // the first few names only (kMaxDropNames in qmp_client.cc), the rest counted as "other".
  std::map<std::string, uint64_t> episode_drops_;
  uint64_t episode_dropped_ = 0;
  uint64_t next_id_ = 1;
  bool closed_ = false;  // the peer closed the connection (EOF or reset)
};

}  // namespace cdp
