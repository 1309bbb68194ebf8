// Status and Result<T>: how every library in this project reports failure.
//
// No exceptions cross a library boundary. A function that can fail returns a
// Status (or a Result<T> holding either a value or a non-OK Status). Third-party
// errors (rocksdb::Status, zmq::error_t, errno, protobuf parse failures) are
// turned into a Status at the one adapter that calls them.
//
// Thread-safety: values; safe to copy between threads.
#pragma once

#include <cassert>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace cdp {

// Append only, never renumber: codes travel on the wire (cdp.v1.Error.code).
enum class StatusCode : int {
  kOk = 0,
  kNotFound = 1,
  kCorruption = 2,
  kIOError = 3,
  kInvalidArgument = 4,
  kUnavailable = 5,
  kTimedOut = 6,
  kProtocolMismatch = 7,
  kAlreadyExists = 8,
  kOutOfRange = 9,
  kNotSupported = 10,
  kAborted = 11,
  kResourceExhausted = 12,
  kFailedPrecondition = 13,
  kInternal = 14,
  // The peer may not do this: e.g. an agent fenced off a volume another agent now writes.
  kPermissionDenied = 15,
};

// Returns the stable, human-readable name of a code ("Corruption").
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status TimedOut(std::string m) { return {StatusCode::kTimedOut, std::move(m)}; }
  static Status ProtocolMismatch(std::string m) {
    return {StatusCode::kProtocolMismatch, std::move(m)};
  }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status NotSupported(std::string m) { return {StatusCode::kNotSupported, std::move(m)}; }
  static Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
  static Status ResourceExhausted(std::string m) {
    return {StatusCode::kResourceExhausted, std::move(m)};
  }
  static Status FailedPrecondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  static Status PermissionDenied(std::string m) {
    return {StatusCode::kPermissionDenied, std::move(m)};
  }

  // Builds an IOError from an errno value: "<context>: <strerror(err)>".
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "Corruption: volume db01: record 42: payload CRC mismatch".
  std::string ToString() const;

  // Returns a copy with "<prefix>: " put in front of the message.
  Status WithContext(std::string_view prefix) const;

  bool IsNotFound() const { return code_ == StatusCode::kNotFound; }
  bool IsCorruption() const { return code_ == StatusCode::kCorruption; }
  bool IsTimedOut() const { return code_ == StatusCode::kTimedOut; }
  bool IsUnavailable() const { return code_ == StatusCode::kUnavailable; }
  bool IsPermissionDenied() const { return code_ == StatusCode::kPermissionDenied; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Streams status.ToString().
inline std::ostream& operator<<(std::ostream& os, const Status& status) {
  return os << status.ToString();
}

// Either a T or a non-OK Status. Constructing a Result from an OK Status is a bug.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!status_.ok() && "Result constructed from an OK status");
    if (status_.ok()) status_ = Status::Internal("Result constructed from an OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok().
  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace cdp

#define CDP_STATUS_CONCAT_INNER_(a, b) a##b
#define CDP_STATUS_CONCAT_(a, b) CDP_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define CDP_RETURN_IF_ERROR(expr)                      \
  do {                                                 \
    ::cdp::Status cdp_status_tmp_ = (expr);            \
    if (!cdp_status_tmp_.ok()) return cdp_status_tmp_; \
  } while (0)

// `CDP_ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value or returns the error.
#define CDP_ASSIGN_OR_RETURN(lhs, expr) \
  CDP_ASSIGN_OR_RETURN_IMPL_(CDP_STATUS_CONCAT_(cdp_result_, __LINE__), lhs, expr)
#define CDP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
