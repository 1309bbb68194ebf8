// Tests of Status and Result<T>: codes and their names, messages, context, and the
// CDP_RETURN_IF_ERROR / CDP_ASSIGN_OR_RETURN early-return macros.
#include "cdp/core/status.h"

#include <cerrno>
#include <memory>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

using ::testing::HasSubstr;

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(Status::Ok().ok());
}

// The numeric values travel on the wire (cdp.v1.Error.code): they must never change.
TEST(Status, CodesKeepTheirWireValues) {
  EXPECT_EQ(static_cast<int>(StatusCode::kOk), 0);
  EXPECT_EQ(static_cast<int>(StatusCode::kNotFound), 1);
  EXPECT_EQ(static_cast<int>(StatusCode::kCorruption), 2);
  EXPECT_EQ(static_cast<int>(StatusCode::kIOError), 3);
  EXPECT_EQ(static_cast<int>(StatusCode::kInvalidArgument), 4);
  EXPECT_EQ(static_cast<int>(StatusCode::kUnavailable), 5);
  EXPECT_EQ(static_cast<int>(StatusCode::kTimedOut), 6);
  EXPECT_EQ(static_cast<int>(StatusCode::kProtocolMismatch), 7);
  EXPECT_EQ(static_cast<int>(StatusCode::kAlreadyExists), 8);
  EXPECT_EQ(static_cast<int>(StatusCode::kOutOfRange), 9);
  EXPECT_EQ(static_cast<int>(StatusCode::kNotSupported), 10);
  EXPECT_EQ(static_cast<int>(StatusCode::kAborted), 11);
  EXPECT_EQ(static_cast<int>(StatusCode::kResourceExhausted), 12);
  EXPECT_EQ(static_cast<int>(StatusCode::kFailedPrecondition), 13);
  EXPECT_EQ(static_cast<int>(StatusCode::kInternal), 14);
  EXPECT_EQ(static_cast<int>(StatusCode::kPermissionDenied), 15);
}

TEST(Status, FactoriesSetCodeAndMessage) {
  struct Case {
    Status status;
    StatusCode code;
    const char* name;
  };
  const Case cases[] = {
      {Status::NotFound("m"), StatusCode::kNotFound, "NotFound"},
      {Status::Corruption("m"), StatusCode::kCorruption, "Corruption"},
      {Status::IOError("m"), StatusCode::kIOError, "IOError"},
      {Status::InvalidArgument("m"), StatusCode::kInvalidArgument, "InvalidArgument"},
      {Status::Unavailable("m"), StatusCode::kUnavailable, "Unavailable"},
      {Status::TimedOut("m"), StatusCode::kTimedOut, "TimedOut"},
      {Status::ProtocolMismatch("m"), StatusCode::kProtocolMismatch, "ProtocolMismatch"},
      {Status::AlreadyExists("m"), StatusCode::kAlreadyExists, "AlreadyExists"},
      {Status::OutOfRange("m"), StatusCode::kOutOfRange, "OutOfRange"},
      {Status::NotSupported("m"), StatusCode::kNotSupported, "NotSupported"},
      {Status::Aborted("m"), StatusCode::kAborted, "Aborted"},
      {Status::ResourceExhausted("m"), StatusCode::kResourceExhausted, "ResourceExhausted"},
      {Status::FailedPrecondition("m"), StatusCode::kFailedPrecondition, "FailedPrecondition"},
      {Status::Internal("m"), StatusCode::kInternal, "Internal"},
      {Status::PermissionDenied("m"), StatusCode::kPermissionDenied, "PermissionDenied"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.status.ok()) << c.name;
    EXPECT_EQ(c.status.code(), c.code) << c.name;
    EXPECT_EQ(c.status.message(), "m") << c.name;
    EXPECT_EQ(StatusCodeName(c.code), c.name);
    EXPECT_EQ(c.status.ToString(), std::string(c.name) + ": m");
  }
  EXPECT_EQ(StatusCodeName(StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(99)), "Unknown");
}

TEST(Status, Predicates) {
  EXPECT_TRUE(Status::NotFound("x").IsNotFound());
  EXPECT_TRUE(Status::Corruption("x").IsCorruption());
  EXPECT_TRUE(Status::TimedOut("x").IsTimedOut());
  EXPECT_TRUE(Status::Unavailable("x").IsUnavailable());
  EXPECT_FALSE(Status::NotFound("x").IsCorruption());
  EXPECT_FALSE(Status::Ok().IsNotFound());
}

TEST(Status, ToStringAndStream) {
  Status s = Status::Corruption("volume db01: record 42: payload CRC mismatch");
  EXPECT_EQ(s.ToString(), "Corruption: volume db01: record 42: payload CRC mismatch");
  std::ostringstream os;
  os << s;
  EXPECT_EQ(os.str(), s.ToString());
}

TEST(Status, WithContextPrefixesTheMessageAndKeepsTheCode) {
  Status s = Status::NotFound("LSN 7 not journaled").WithContext("volume db01");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "volume db01: LSN 7 not journaled");
  EXPECT_EQ(s.WithContext("journal-server").message(),
            "journal-server: volume db01: LSN 7 not journaled");
  EXPECT_TRUE(Status::Ok().WithContext("anything").ok());
  EXPECT_EQ(Status::Ok().WithContext("anything").message(), "");
}

TEST(Status, FromErrnoIsIOErrorWithContextAndReason) {
  Status s = Status::FromErrno(ENOENT, "cannot open /x");
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_EQ(s.message(), "cannot open /x: No such file or directory");
}

TEST(Result, HoldsAValue) {
  Result<std::string> r(std::string("hello"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.value(), "hello");
  EXPECT_EQ(*r, "hello");
  EXPECT_EQ(r->size(), 5u);
  r.value() += "!";
  EXPECT_EQ(*r, "hello!");
  std::string moved = std::move(r).value();
  EXPECT_EQ(moved, "hello!");
}

TEST(Result, HoldsAnError) {
  Result<int> r(Status::NotFound("no such volume"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "no such volume");
}

TEST(Result, HoldsMoveOnlyValues) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(5));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

// ---- Macros ----

int g_steps = 0;

Status Step(Status s) {
  ++g_steps;
  return s;
}

Status TwoSteps(Status first, Status second) {
  CDP_RETURN_IF_ERROR(Step(first));
  CDP_RETURN_IF_ERROR(Step(second));
  return Status::Ok();
}

TEST(Macros, ReturnIfErrorStopsAtTheFirstError) {
  g_steps = 0;
  EXPECT_TRUE(TwoSteps(Status::Ok(), Status::Ok()).ok());
  EXPECT_EQ(g_steps, 2);

  g_steps = 0;
  Status s = TwoSteps(Status::IOError("disk gone"), Status::Ok());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_EQ(s.message(), "disk gone");
  EXPECT_EQ(g_steps, 1);

  g_steps = 0;
  s = TwoSteps(Status::Ok(), Status::TimedOut("slow"));
  EXPECT_EQ(s.code(), StatusCode::kTimedOut);
  EXPECT_EQ(g_steps, 2);
}

Result<int> Parse(const std::string& text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("'" + text + "' is not a number");
  }
  return std::stoi(text);
}

// Two assignments in one function also check that the macro's temporaries do not clash.
Result<int> Sum(const std::string& a, const std::string& b) {
  CDP_ASSIGN_OR_RETURN(int x, Parse(a));
  CDP_ASSIGN_OR_RETURN(const int y, Parse(b));
  return x + y;
}

Status SumInto(const std::string& a, int* out) {
  CDP_ASSIGN_OR_RETURN(*out, Parse(a));
  return Status::Ok();
}

TEST(Macros, AssignOrReturnAssignsTheValue) {
  Result<int> r = Sum("40", "2");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 42);
  int out = 0;
  EXPECT_TRUE(SumInto("7", &out).ok());
  EXPECT_EQ(out, 7);
}

TEST(Macros, AssignOrReturnReturnsTheError) {
  Result<int> r = Sum("40", "two");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("'two' is not a number"));

  int out = -1;
  Status s = SumInto("x", &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, -1);
}

Result<std::unique_ptr<int>> MakeBox(bool ok) {
  if (!ok) return Status::ResourceExhausted("no boxes left");
  return std::make_unique<int>(3);
}

Status OpenBox(bool ok, int* out) {
  CDP_ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(ok));
  *out = *box;
  return Status::Ok();
}

TEST(Macros, AssignOrReturnMovesMoveOnlyValues) {
  int out = 0;
  EXPECT_TRUE(OpenBox(true, &out).ok());
  EXPECT_EQ(out, 3);
  EXPECT_EQ(OpenBox(false, &out).code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace cdp
