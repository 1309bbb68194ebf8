#include "cdp/nbd/nbd_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/log/core.hpp>
#include <boost/log/expressions/message.hpp>
#include <boost/log/sinks/basic_sink_backend.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/make_shared.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cdp/nbd/nbd_protocol.h"

namespace cdp::nbd {
namespace {

namespace fs = std::filesystem;
using nbd::Command;
using nbd::Error;
using nbd::Option;
using nbd::OptionReply;

constexpr uint64_t kVolumeSize = 4 << 20;
constexpr uint32_t kBlockSize = 512;
constexpr char kInitialByte = 0x5a;
// Every socket operation in the fake client gives up after this, so a server bug fails the test
// instead of hanging the suite.
constexpr int kClientTimeoutSeconds = 10;

// ---------------------------------------------------------------------------------------------
// An ExportTarget over a std::string that records every call.

struct Call {
  std::string op;  // "read", "write", "trim", "zero", "flush"
  uint64_t offset = 0;
  uint64_t length = 0;
  bool fua = false;
};

class FakeTarget : public ExportTarget {
 public:
  explicit FakeTarget(uint64_t size = kVolumeSize, uint32_t block_size = kBlockSize)
      : data_(size, kInitialByte), block_size_(block_size) {}

  uint64_t size() const override { return data_.size(); }
  uint32_t block_size() const override { return block_size_; }

  Status Read(uint64_t offset, std::span<char> buf) override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back({"read", offset, buf.size(), false});
    if (!fail_next_.ok()) return std::exchange(fail_next_, Status::Ok());
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    return Status::Ok();
  }
  Status Write(uint64_t offset, SharedBytes data, bool fua) override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back({"write", offset, data->size(), fua});
    if (!fail_next_.ok()) return std::exchange(fail_next_, Status::Ok());
    data_.replace(offset, data->size(), *data);
    return Status::Ok();
  }
  Status Trim(uint64_t offset, uint32_t length) override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back({"trim", offset, length, false});
    return std::exchange(fail_next_, Status::Ok());
  }
  Status WriteZeroes(uint64_t offset, uint32_t length, bool fua) override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back({"zero", offset, length, fua});
    if (!fail_next_.ok()) return std::exchange(fail_next_, Status::Ok());
    data_.replace(offset, length, std::string(length, '\0'));
    return Status::Ok();
  }
  Status Flush() override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back({"flush", 0, 0, false});
    return std::exchange(fail_next_, Status::Ok());
  }

  // The next call of any kind fails with `s`.
  void FailNext(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_next_ = std::move(s);
  }
  std::vector<Call> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::string bytes(uint64_t offset, uint64_t length) const {
    std::lock_guard<std::mutex> lock(mu_);
    return data_.substr(offset, length);
  }

 private:
  mutable std::mutex mu_;
  std::string data_;
  const uint32_t block_size_;
  std::vector<Call> calls_;
  Status fail_next_;
};

// ---------------------------------------------------------------------------------------------
// A temp directory removed on destruction, even when the test fails.

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "nbd_server_test.XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string path() const { return path_; }
  std::string sock() const { return path_ + "/vol.sock"; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// A minimal raw-socket NBD client. Methods report failures with ADD_FAILURE and return empty
// results, so tests read linearly.

struct OptReply {
  nbd::OptionReplyHeader header;
  std::string payload;
};

struct CmdReply {
  bool received = false;
  uint32_t error = 0;
  uint64_t handle = 0;
  std::string data;  // READ payload on success
};

class TestClient {
 public:
  static std::unique_ptr<TestClient> ConnectUnix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      ADD_FAILURE() << "connect " << path << ": " << std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
    return std::unique_ptr<TestClient>(new TestClient(fd));
  }

  // Connects from a child process, which exits at once; this process then uses the
  // connection. The server sees another peer: SO_PEERCRED names the process that called
  // connect(). `*pid` gets the child's pid.
  static std::unique_ptr<TestClient> ConnectUnixFromChild(const std::string& path,
                                                          pid_t* pid = nullptr) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path.c_str());
    const pid_t child = ::fork();
    if (child < 0) {
      ADD_FAILURE() << "fork: " << std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
    if (child == 0) {
      // Only async-signal-safe calls in the child of a threaded process.
      ::_exit(::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0 ? 0 : errno);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ADD_FAILURE() << "connect " << path << " from a child process: "
                    << (WIFEXITED(status) ? std::strerror(WEXITSTATUS(status)) : "child died");
      ::close(fd);
      return nullptr;
    }
    if (pid != nullptr) *pid = child;
    return std::unique_ptr<TestClient>(new TestClient(fd));
  }

  // Connects to 127.0.0.1:`port` from `source` (any loopback address, 127.0.0.0/8).
  static std::unique_ptr<TestClient> ConnectTcp(uint16_t port, const char* source = "127.0.0.1") {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    if (::inet_pton(AF_INET, source, &from.sin_addr) != 1 ||
        ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) {
      ADD_FAILURE() << "bind to " << source << ": " << std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
      ADD_FAILURE() << "connect 127.0.0.1:" << port << ": " << std::strerror(errno);
      ::close(fd);
      return nullptr;
    }
    return std::unique_ptr<TestClient>(new TestClient(fd));
  }

  ~TestClient() { ::close(fd_); }

  bool Send(std::string_view bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t r = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        ADD_FAILURE() << "send: " << std::strerror(errno);
        return false;
      }
      done += static_cast<size_t>(r);
    }
    return true;
  }

  std::optional<std::string> Recv(size_t n) {
    std::string buf(n, '\0');
    size_t done = 0;
    while (done < n) {
      ssize_t r = ::recv(fd_, buf.data() + done, n - done, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        ADD_FAILURE() << "recv " << n
                      << " bytes: " << (r == 0 ? "connection closed" : std::strerror(errno))
                      << " after " << done;
        return std::nullopt;
      }
      done += static_cast<size_t>(r);
    }
    return buf;
  }

  // True if the server closed the connection (EOF or reset), false on timeout or data.
  bool WaitClosed() {
    char c;
    for (;;) {
      ssize_t r = ::recv(fd_, &c, 1, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0 || (r < 0 && errno == ECONNRESET)) return true;
      if (r > 0) ADD_FAILURE() << "expected the server to close; got data";
      if (r < 0) ADD_FAILURE() << "expected the server to close: " << std::strerror(errno);
      return false;
    }
  }

  // Reads the greeting, checks it, answers with `client_flags`.
  void Greet(uint32_t client_flags = nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes) {
    std::optional<std::string> greeting = Recv(nbd::kGreetingSize);
    if (!greeting) return;
    Result<uint16_t> flags = nbd::ParseGreeting(*greeting);
    ASSERT_TRUE(flags.ok()) << flags.status().ToString();
    EXPECT_EQ(*flags, nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
    std::string out;
    nbd::AppendBe32(&out, client_flags);
    Send(out);
  }

  void SendOption(uint32_t option, std::string_view payload) {
    Send(nbd::EncodeOptionHeader(option, static_cast<uint32_t>(payload.size())) +
         std::string(payload));
  }

  OptReply ReadOptionReply() {
    OptReply reply;
    std::optional<std::string> header = Recv(nbd::kOptionReplyHeaderSize);
    if (!header) return reply;
    Result<nbd::OptionReplyHeader> h = nbd::ParseOptionReplyHeader(*header);
    if (!h.ok()) {
      ADD_FAILURE() << h.status().ToString();
      return reply;
    }
    reply.header = *h;
    if (h->length > 0) reply.payload = Recv(h->length).value_or("");
    return reply;
  }

  // Sends INFO or GO for `name` and collects replies up to and including the final one.
  std::vector<OptReply> Info(Option option, const std::string& name,
                             std::vector<uint16_t> info_types = {}) {
    nbd::InfoRequest request{name, std::move(info_types)};
    SendOption(static_cast<uint32_t>(option), nbd::EncodeInfoRequest(request));
    std::vector<OptReply> replies;
    for (int i = 0; i < 16; ++i) {
      replies.push_back(ReadOptionReply());
      if (replies.back().header.reply_type != static_cast<uint32_t>(OptionReply::kInfo)) break;
    }
    return replies;
  }

  // Handshake + successful GO on `name`.
  void Go(const std::string& name = "vol") {
    Greet();
    std::vector<OptReply> replies = Info(Option::kGo, name);
    ASSERT_FALSE(replies.empty());
    ASSERT_EQ(replies.back().header.reply_type, static_cast<uint32_t>(OptionReply::kAck))
        << replies.back().payload;
  }

  CmdReply Request(Command type, uint64_t offset, uint32_t length, uint16_t flags = 0,
                   std::string_view payload = {}) {
    nbd::RequestHeader r;
    r.type = static_cast<uint16_t>(type);
    r.flags = flags;
    r.offset = offset;
    r.length = length;
    r.handle = ++next_handle_;
    return RawRequest(r, payload);
  }

  CmdReply RawRequest(const nbd::RequestHeader& r, std::string_view payload = {}) {
    Send(nbd::EncodeRequestHeader(r) + std::string(payload));
    CmdReply reply;
    std::optional<std::string> header = Recv(nbd::kSimpleReplyHeaderSize);
    if (!header) return reply;
    Result<nbd::SimpleReply> parsed = nbd::ParseSimpleReply(*header);
    if (!parsed.ok()) {
      ADD_FAILURE() << parsed.status().ToString();
      return reply;
    }
    reply.received = true;
    reply.error = parsed->error;
    reply.handle = parsed->handle;
    EXPECT_EQ(reply.handle, r.handle) << "reply handle must echo the request";
    if (r.type == static_cast<uint16_t>(Command::kRead) && reply.error == 0) {
      reply.data = Recv(r.length).value_or("");
    }
    return reply;
  }

  int fd() const { return fd_; }

 private:
  explicit TestClient(int fd) : fd_(fd) {
    timeval tv{kClientTimeoutSeconds, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }

  int fd_;
  uint64_t next_handle_ = 1000;
};

uint32_t Rep(OptionReply r) { return static_cast<uint32_t>(r); }
uint32_t Err(Error e) { return static_cast<uint32_t>(e); }
uint32_t Opt(Option o) { return static_cast<uint32_t>(o); }

// ---------------------------------------------------------------------------------------------
// Fixture: a server on a unix socket in a temp dir over a FakeTarget.

class NbdServerTest : public ::testing::Test {
 protected:
  void StartServer(NbdServer::Options overrides = {}) {
    NbdServer::Options options = std::move(overrides);
    if (options.listen_address.empty()) options.listen_address = "unix:" + dir_.sock();
    if (options.export_name.empty()) options.export_name = "vol";
    if (options.target == nullptr) options.target = &target_;
    Result<std::unique_ptr<NbdServer>> server = NbdServer::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  std::unique_ptr<TestClient> Connect() { return TestClient::ConnectUnix(dir_.sock()); }

  // Connects and completes a GO on "vol".
  std::unique_ptr<TestClient> ConnectAndGo() {
    std::unique_ptr<TestClient> c = Connect();
    if (c) c->Go();
    return c;
  }

  TempDir dir_;
  FakeTarget target_;
  std::unique_ptr<NbdServer> server_;
};

constexpr uint16_t kExpectedFlags = nbd::kTransHasFlags | nbd::kTransSendFlush |
                                    nbd::kTransSendFua | nbd::kTransSendTrim |
                                    nbd::kTransSendWriteZeroes;

TEST_F(NbdServerTest, HandshakeAndGoReportExportAndBlockSizes) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  std::vector<OptReply> replies = c->Info(Option::kGo, "vol",
                                          {static_cast<uint16_t>(nbd::InfoType::kName),
                                           static_cast<uint16_t>(nbd::InfoType::kBlockSize)});
  ASSERT_EQ(replies.size(), 4u);
  bool saw_export = false, saw_block = false, saw_name = false;
  for (size_t i = 0; i + 1 < replies.size(); ++i) {
    const OptReply& r = replies[i];
    EXPECT_EQ(r.header.option, Opt(Option::kGo));
    ASSERT_EQ(r.header.reply_type, Rep(OptionReply::kInfo));
    ASSERT_GE(r.payload.size(), 2u);
    switch (static_cast<nbd::InfoType>(nbd::LoadBe16(r.payload.data()))) {
      case nbd::InfoType::kExport:
        saw_export = true;
        ASSERT_EQ(r.payload.size(), 12u);
        EXPECT_EQ(nbd::LoadBe64(r.payload.data() + 2), kVolumeSize);
        EXPECT_EQ(nbd::LoadBe16(r.payload.data() + 10), kExpectedFlags);
        break;
      case nbd::InfoType::kBlockSize:
        saw_block = true;
        ASSERT_EQ(r.payload.size(), 14u);
        EXPECT_EQ(nbd::LoadBe32(r.payload.data() + 2), kBlockSize);
        EXPECT_EQ(nbd::LoadBe32(r.payload.data() + 6), 4096u);
        EXPECT_EQ(nbd::LoadBe32(r.payload.data() + 10), 32u << 20);
        break;
      case nbd::InfoType::kName:
        saw_name = true;
        EXPECT_EQ(r.payload.substr(2), "vol");
        break;
      default:
        ADD_FAILURE() << "unexpected info type";
    }
  }
  EXPECT_TRUE(saw_export && saw_block && saw_name);
  EXPECT_EQ(replies.back().header.reply_type, Rep(OptionReply::kAck));

  // Transmission phase works.
  CmdReply flush = c->Request(Command::kFlush, 0, 0);
  ASSERT_TRUE(flush.received);
  EXPECT_EQ(flush.error, 0u);
  ASSERT_EQ(target_.calls().size(), 1u);
  EXPECT_EQ(target_.calls()[0].op, "flush");
}

TEST_F(NbdServerTest, InfoThenGoAndDefaultExportName) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  std::vector<OptReply> info = c->Info(Option::kInfo, "vol");
  ASSERT_FALSE(info.empty());
  EXPECT_EQ(info.back().header.reply_type, Rep(OptionReply::kAck));
  // INFO does not enter transmission: another option is still answered. "" is the default.
  std::vector<OptReply> go = c->Info(Option::kGo, "");
  ASSERT_FALSE(go.empty());
  EXPECT_EQ(go.back().header.reply_type, Rep(OptionReply::kAck));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
}

TEST_F(NbdServerTest, UnknownExportIsErrUnknownWithMessage) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  std::vector<OptReply> replies = c->Info(Option::kGo, "nope");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].header.reply_type, Rep(OptionReply::kErrUnknown));
  EXPECT_EQ(replies[0].payload, "unknown export 'nope'; this agent exports 'vol'");
  // The client may try again.
  replies = c->Info(Option::kGo, "vol");
  EXPECT_EQ(replies.back().header.reply_type, Rep(OptionReply::kAck));
}

TEST_F(NbdServerTest, ListReturnsTheExport) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->SendOption(Opt(Option::kList), "");
  OptReply server = c->ReadOptionReply();
  EXPECT_EQ(server.header.reply_type, Rep(OptionReply::kServer));
  ASSERT_EQ(server.payload.size(), 7u);
  EXPECT_EQ(nbd::LoadBe32(server.payload.data()), 3u);
  EXPECT_EQ(server.payload.substr(4), "vol");
  EXPECT_EQ(c->ReadOptionReply().header.reply_type, Rep(OptionReply::kAck));
}

TEST_F(NbdServerTest, UnsupportedOptionsAreRefusedAndGoStillWorks) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->SendOption(99, "some payload the server must skip");
  OptReply unknown = c->ReadOptionReply();
  EXPECT_EQ(unknown.header.option, 99u);
  EXPECT_EQ(unknown.header.reply_type, Rep(OptionReply::kErrUnsup));
  EXPECT_NE(unknown.payload.find("NBD_OPT_<99> is not supported"), std::string::npos)
      << unknown.payload;

  c->SendOption(Opt(Option::kStructuredReply), "");
  EXPECT_EQ(c->ReadOptionReply().header.reply_type, Rep(OptionReply::kErrUnsup));
  c->SendOption(Opt(Option::kSetMetaContext), std::string(20, '\0'));
  EXPECT_EQ(c->ReadOptionReply().header.reply_type, Rep(OptionReply::kErrUnsup));
  c->SendOption(Opt(Option::kStartTls), "");
  OptReply tls = c->ReadOptionReply();
  EXPECT_EQ(tls.header.reply_type, Rep(OptionReply::kErrPolicy));
  EXPECT_NE(tls.payload.find("TLS"), std::string::npos);

  std::vector<OptReply> go = c->Info(Option::kGo, "vol");
  EXPECT_EQ(go.back().header.reply_type, Rep(OptionReply::kAck));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
}

TEST_F(NbdServerTest, MalformedGoIsErrInvalid) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  std::string payload;
  nbd::AppendBe32(&payload, 1000);  // name length past the end
  payload += "vol";
  nbd::AppendBe16(&payload, 0);
  c->SendOption(Opt(Option::kGo), payload);
  OptReply r = c->ReadOptionReply();
  EXPECT_EQ(r.header.reply_type, Rep(OptionReply::kErrInvalid));
  EXPECT_NE(r.payload.find("runs past the end"), std::string::npos) << r.payload;
  EXPECT_EQ(c->Info(Option::kGo, "vol").back().header.reply_type, Rep(OptionReply::kAck));
}

TEST_F(NbdServerTest, ExportNameOptionWithAndWithoutZeroes) {
  StartServer();
  for (bool no_zeroes : {false, true}) {
    SCOPED_TRACE(no_zeroes ? "NO_ZEROES" : "zeroes");
    auto c = Connect();
    ASSERT_TRUE(c);
    c->Greet(nbd::kClientFlagFixedNewstyle | (no_zeroes ? uint32_t{nbd::kClientFlagNoZeroes} : 0u));
    c->SendOption(Opt(Option::kExportName), "vol");
    std::optional<std::string> reply = c->Recv(no_zeroes ? 10 : 134);
    ASSERT_TRUE(reply);
    EXPECT_EQ(nbd::LoadBe64(reply->data()), kVolumeSize);
    EXPECT_EQ(nbd::LoadBe16(reply->data() + 8), kExpectedFlags);
    if (!no_zeroes) {
      EXPECT_EQ(reply->substr(10), std::string(124, '\0'));
    }
    // The next bytes are the reply to our request, not padding.
    CmdReply read = c->Request(Command::kRead, 0, 512);
    EXPECT_EQ(read.error, 0u);
    EXPECT_EQ(read.data, std::string(512, kInitialByte));
  }
}

TEST_F(NbdServerTest, ExportNameWithUnknownNameCloses) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->SendOption(Opt(Option::kExportName), "other");
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, AbortIsAcknowledgedThenClosed) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->SendOption(Opt(Option::kAbort), "");
  OptReply r = c->ReadOptionReply();
  EXPECT_EQ(r.header.option, Opt(Option::kAbort));
  EXPECT_EQ(r.header.reply_type, Rep(OptionReply::kAck));
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, UnknownClientFlagsClose) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet(nbd::kClientFlagFixedNewstyle | 0x100);
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, OversizedOptionCloses) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->Send(nbd::EncodeOptionHeader(Opt(Option::kGo), 1u << 20));
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, BadOptionMagicCloses) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  c->Send(std::string(nbd::kOptionHeaderSize, 'x'));
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, WriteThenReadBack) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  std::string pattern(64 * 1024, '\0');
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i * 7 + 3);

  CmdReply w = c->Request(Command::kWrite, 128 * 1024, pattern.size(), 0, pattern);
  ASSERT_TRUE(w.received);
  EXPECT_EQ(w.error, 0u);
  CmdReply r = c->Request(Command::kRead, 128 * 1024, pattern.size());
  ASSERT_TRUE(r.received);
  EXPECT_EQ(r.error, 0u);
  EXPECT_TRUE(r.data == pattern);
  EXPECT_TRUE(target_.bytes(128 * 1024, pattern.size()) == pattern);
  // Neighbours untouched.
  EXPECT_EQ(target_.bytes(128 * 1024 - 512, 512), std::string(512, kInitialByte));

  std::vector<Call> calls = target_.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].op, "write");
  EXPECT_EQ(calls[0].offset, 128u * 1024);
  EXPECT_EQ(calls[0].length, pattern.size());
  EXPECT_FALSE(calls[0].fua);
  EXPECT_EQ(calls[1].op, "read");

  NbdServerStats stats = server_->stats();
  EXPECT_EQ(stats.connections_accepted, 1u);
  EXPECT_EQ(stats.requests, 2u);
  EXPECT_EQ(stats.errors, 0u);
  EXPECT_EQ(stats.bytes_written, pattern.size());
  EXPECT_EQ(stats.bytes_read, pattern.size());
}

TEST_F(NbdServerTest, FuaAndTrimAndZeroesPassThrough) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kWrite, 0, 512, nbd::kCmdFlagFua, std::string(512, 'a')).error, 0u);
  EXPECT_EQ(
      c->Request(Command::kWriteZeroes, 4096, 8192, nbd::kCmdFlagFua | nbd::kCmdFlagNoHole).error,
      0u);
  EXPECT_EQ(c->Request(Command::kWriteZeroes, 65536, 512).error, 0u);
  EXPECT_EQ(c->Request(Command::kTrim, 1 << 20, 1 << 20).error, 0u);

  std::vector<Call> calls = target_.calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[0].op, "write");
  EXPECT_TRUE(calls[0].fua);
  EXPECT_EQ(calls[1].op, "zero");
  EXPECT_EQ(calls[1].offset, 4096u);
  EXPECT_EQ(calls[1].length, 8192u);
  EXPECT_TRUE(calls[1].fua);
  EXPECT_EQ(calls[2].op, "zero");
  EXPECT_FALSE(calls[2].fua);
  EXPECT_EQ(calls[3].op, "trim");
  EXPECT_EQ(calls[3].offset, 1u << 20);
  EXPECT_EQ(calls[3].length, 1u << 20);
  EXPECT_EQ(target_.bytes(0, 512), std::string(512, 'a'));
  EXPECT_EQ(target_.bytes(4096, 8192), std::string(8192, '\0'));
}

TEST_F(NbdServerTest, OutOfRangeReadIsEinvalAndConnectionSurvives) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  CmdReply bad = c->Request(Command::kRead, kVolumeSize - 512, 1024);
  ASSERT_TRUE(bad.received);
  EXPECT_EQ(bad.error, Err(Error::kInval));
  EXPECT_TRUE(bad.data.empty());
  CmdReply good = c->Request(Command::kRead, kVolumeSize - 512, 512);
  EXPECT_EQ(good.error, 0u);
  EXPECT_EQ(good.data, std::string(512, kInitialByte));
  // The rejected read never reached the target.
  ASSERT_EQ(target_.calls().size(), 1u);
  EXPECT_EQ(target_.calls()[0].length, 512u);
  EXPECT_EQ(server_->stats().errors, 1u);
}

TEST_F(NbdServerTest, OverMaxWriteIsEinvalAndPayloadIsSkipped) {
  NbdServer::Options options;
  options.max_block_size = 1 << 20;
  StartServer(options);
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  const std::string big(2 << 20, 'B');
  CmdReply bad = c->Request(Command::kWrite, 0, big.size(), 0, big);
  ASSERT_TRUE(bad.received);
  EXPECT_EQ(bad.error, Err(Error::kInval));
  // The 2 MiB payload was consumed: the next request parses and works.
  EXPECT_EQ(c->Request(Command::kWrite, 0, 512, 0, std::string(512, 'c')).error, 0u);
  EXPECT_EQ(target_.bytes(0, 513), std::string(512, 'c') + kInitialByte);
  ASSERT_EQ(target_.calls().size(), 1u);  // nothing journaled for the rejected write
}

TEST_F(NbdServerTest, WritePastEndIsEnospcAndPayloadIsSkipped) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  CmdReply bad = c->Request(Command::kWrite, kVolumeSize - 512, 1024, 0, std::string(1024, 'x'));
  EXPECT_EQ(bad.error, Err(Error::kNoSpc));
  EXPECT_EQ(c->Request(Command::kRead, kVolumeSize - 512, 512).data,
            std::string(512, kInitialByte));
  EXPECT_EQ(c->Request(Command::kWriteZeroes, kVolumeSize, 512).error, Err(Error::kNoSpc));
  EXPECT_EQ(c->Request(Command::kTrim, kVolumeSize, 512).error, Err(Error::kInval));
}

TEST_F(NbdServerTest, MisalignedRequestIsEinval) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kWrite, 100, 512, 0, std::string(512, 'm')).error,
            Err(Error::kInval));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
  EXPECT_EQ(target_.bytes(0, 1024), std::string(1024, kInitialByte));
}

TEST_F(NbdServerTest, UnknownCommandIsEnotsup) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  nbd::RequestHeader r;
  r.type = 42;
  r.handle = 77;
  CmdReply reply = c->RawRequest(r);
  ASSERT_TRUE(reply.received);
  EXPECT_EQ(reply.error, Err(Error::kNotSup));
  EXPECT_EQ(c->Request(Command::kBlockStatus, 0, 512).error, Err(Error::kNotSup));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512, nbd::kCmdFlagDf).error, Err(Error::kInval));
  EXPECT_EQ(c->Request(Command::kFlush, 0, 0).error, 0u);
}

TEST_F(NbdServerTest, BadRequestMagicClosesTheConnection) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  std::string header = nbd::EncodeRequestHeader(nbd::RequestHeader{});
  header[0] = 0x7f;
  c->Send(header);
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(target_.calls().empty());
  // The server keeps serving other clients.
  auto c2 = ConnectAndGo();
  ASSERT_TRUE(c2);
  EXPECT_EQ(c2->Request(Command::kFlush, 0, 0).error, 0u);
}

TEST_F(NbdServerTest, DiscClosesCleanly) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  c->Send(nbd::EncodeRequestHeader({0, static_cast<uint16_t>(Command::kDisc), 1, 0, 0}));
  EXPECT_TRUE(c->WaitClosed());
}

TEST_F(NbdServerTest, TargetErrorsMapToEioAndEnospc) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  target_.FailNext(Status::IOError("disk gone"));
  CmdReply read = c->Request(Command::kRead, 0, 512);
  EXPECT_EQ(read.error, Err(Error::kIo));
  EXPECT_TRUE(read.data.empty());  // no payload after an error header
  target_.FailNext(Status::ResourceExhausted("journal full"));
  EXPECT_EQ(c->Request(Command::kWrite, 0, 512, 0, std::string(512, 'w')).error,
            Err(Error::kNoSpc));
  target_.FailNext(Status::Unavailable("journal down"));
  EXPECT_EQ(c->Request(Command::kFlush, 0, 0).error, Err(Error::kIo));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
  EXPECT_EQ(server_->stats().errors, 3u);
}

TEST_F(NbdServerTest, ReadOnlyExportRefusesWrites) {
  NbdServer::Options options;
  options.read_only = true;
  StartServer(options);
  auto c = Connect();
  ASSERT_TRUE(c);
  c->Greet();
  std::vector<OptReply> replies = c->Info(Option::kGo, "vol");
  ASSERT_EQ(replies.back().header.reply_type, Rep(OptionReply::kAck));
  EXPECT_EQ(nbd::LoadBe16(replies[0].payload.data() + 10), kExpectedFlags | nbd::kTransReadOnly);
  EXPECT_EQ(c->Request(Command::kWrite, 0, 512, 0, std::string(512, 'w')).error, Err(Error::kPerm));
  EXPECT_EQ(c->Request(Command::kTrim, 0, 512).error, Err(Error::kPerm));
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
  EXPECT_EQ(target_.calls().size(), 1u);
}

TEST_F(NbdServerTest, ConcurrentConnectionsAreServed) {
  StartServer();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      auto c = ConnectAndGo();
      ASSERT_TRUE(c);
      const std::string data(4096, static_cast<char>('0' + t));
      for (int i = 0; i < 16; ++i) {
        const uint64_t offset = (uint64_t(t) * 16 + i) * 4096;
        ASSERT_EQ(c->Request(Command::kWrite, offset, 4096, 0, data).error, 0u);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(target_.bytes(uint64_t(t) * 16 * 4096, 16 * 4096),
              std::string(16 * 4096, static_cast<char>('0' + t)));
  }
  EXPECT_EQ(server_->stats().connections_accepted, 4u);
}

TEST_F(NbdServerTest, StopDisconnectsClientsAndIsIdempotent) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).error, 0u);
  EXPECT_TRUE(fs::exists(dir_.sock()));
  server_->Stop();
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_FALSE(fs::exists(dir_.sock())) << "socket file should be removed on Stop()";
  EXPECT_EQ(server_->stats().connections_active, 0u);
  server_->Stop();
  server_.reset();  // destructor calls Stop() a third time
}

TEST_F(NbdServerTest, StaleSocketFileIsReplaced) {
  // A socket file nobody accepts on, as left by a crashed agent.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", dir_.sock().c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)), 0);
  ::close(fd);
  ASSERT_TRUE(fs::is_socket(dir_.sock()));
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kFlush, 0, 0).error, 0u);
  struct stat st {};
  ASSERT_EQ(::stat(dir_.sock().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(NbdServerTest, StartFailuresNameTheAddress) {
  StartServer();
  const std::string busy = "unix:" + dir_.sock();

  NbdServer::Options options;
  options.export_name = "vol";
  options.target = &target_;
  options.listen_address = busy;
  Result<std::unique_ptr<NbdServer>> second = NbdServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find(busy), std::string::npos) << second.status().message();
  // The running server was not disturbed.
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kFlush, 0, 0).error, 0u);

  const std::string plain_file = dir_.path() + "/not-a-socket";
  {
    std::FILE* f = std::fopen(plain_file.c_str(), "w");
    ASSERT_TRUE(f);
    std::fclose(f);
  }
  options.listen_address = "unix:" + plain_file;
  second = NbdServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("not a socket"), std::string::npos);
  EXPECT_TRUE(fs::exists(plain_file)) << "must never delete a non-socket file";

  options.listen_address = "unix:" + dir_.path() + "/no/such/dir/vol.sock";
  second = NbdServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kIOError);
  EXPECT_NE(second.status().message().find(options.listen_address), std::string::npos)
      << second.status().message();
  EXPECT_NE(second.status().message().find("No such file or directory"), std::string::npos)
      << second.status().message();

  options.listen_address = "http://nope";
  second = NbdServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(second.status().message().find("'http://nope'"), std::string::npos);
  EXPECT_NE(second.status().message().find("unix:PATH or tcp:HOST:PORT"), std::string::npos);

  options.listen_address = "unix:" + dir_.path() + "/other.sock";
  options.target = nullptr;
  EXPECT_EQ(NbdServer::Start(options).status().code(), StatusCode::kInvalidArgument);
  options.target = &target_;
  options.max_block_size = 1000;  // not a multiple of 512
  EXPECT_EQ(NbdServer::Start(options).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(NbdServerTest, TcpPortZeroReportsBoundPortAndBusyPortFails) {
  NbdServer::Options options;
  options.listen_address = "tcp:127.0.0.1:0";
  StartServer(options);
  const std::string bound = server_->bound_address();
  ASSERT_TRUE(bound.starts_with("tcp:127.0.0.1:")) << bound;
  const int port = std::stoi(bound.substr(bound.rfind(':') + 1));
  ASSERT_GT(port, 0);

  auto c = TestClient::ConnectTcp(static_cast<uint16_t>(port));
  ASSERT_TRUE(c);
  c->Go();
  const std::string data(4096, 't');
  EXPECT_EQ(c->Request(Command::kWrite, 8192, 4096, 0, data).error, 0u);
  EXPECT_EQ(c->Request(Command::kRead, 8192, 4096).data, data);

  NbdServer::Options again;
  again.listen_address = bound;
  again.export_name = "vol";
  again.target = &target_;
  Result<std::unique_ptr<NbdServer>> second = NbdServer::Start(again);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(bound), std::string::npos) << second.status().message();
  EXPECT_NE(second.status().message().find("Address already in use"), std::string::npos)
      << second.status().message();
}

// ---------------------------------------------------------------------------------------------
// Limits: connections, handshake time, per-connection memory (issue 15, item 7).

// Polls `done` every 10 ms for up to kClientTimeoutSeconds; true once it holds. For waiting on
// the server's threads, never for measuring time.
template <typename Pred>
bool Eventually(Pred done) {
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(kClientTimeoutSeconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Keeps the message of every record CDP_LOG writes (Boost.Log) while it lives.
class LogLines {
 public:
  LogLines() : sink_(boost::make_shared<Sink>(boost::make_shared<Backend>())) {
    boost::log::core::get()->add_sink(sink_);
  }
  ~LogLines() { boost::log::core::get()->remove_sink(sink_); }
  LogLines(const LogLines&) = delete;
  LogLines& operator=(const LogLines&) = delete;

  // How many messages contain `needle`; `*example` gets the first of them.
  size_t Count(const std::string& needle, std::string* example = nullptr) const {
    auto backend = sink_->locked_backend();
    size_t n = 0;
    for (const std::string& line : backend->lines) {
      if (line.find(needle) == std::string::npos) continue;
      if (n++ == 0 && example != nullptr) *example = line;
    }
    return n;
  }

 private:
  struct Backend : boost::log::sinks::basic_sink_backend<boost::log::sinks::synchronized_feeding> {
    void consume(const boost::log::record_view& record) {
      if (auto message = record[boost::log::expressions::smessage]) lines.push_back(*message);
    }
    std::vector<std::string> lines;
  };
  using Sink = boost::log::sinks::synchronous_sink<Backend>;
  boost::shared_ptr<Sink> sink_;
};

// Sends NBD_OPT_LIST on a raw socket and reads both replies (NBD_REP_SERVER for "vol", then
// NBD_REP_ACK: 27 + 20 bytes). False once the server has closed the connection.
bool ListRoundTrip(int fd) {
  const std::string option = nbd::EncodeOptionHeader(Opt(Option::kList), 0);
  if (::send(fd, option.data(), option.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(option.size())) {
    return false;
  }
  char buf[47];
  size_t done = 0;
  while (done < sizeof(buf)) {
    const ssize_t r = ::recv(fd, buf + done, sizeof(buf) - done, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<size_t>(r);
  }
  return true;
}

// The server with a handshake timeout short enough for tests to wait it out.
class NbdServerHandshakeTest : public NbdServerTest {
 protected:
  void SetUp() override {
    NbdServer::Options options;
    options.handshake_timeout = kHandshakeTimeout;
    StartServer(options);
  }

  // Connects, reads the greeting and answers it.
  std::unique_ptr<TestClient> ConnectAndGreet() {
    std::unique_ptr<TestClient> c = Connect();
    if (c) c->Greet();
    return c;
  }

  // Waits for every connection thread to end; `n` of them must have ended by the timeout.
  void ExpectHandshakeTimeouts(uint64_t n) {
    ASSERT_TRUE(Eventually([&] { return server_->stats().connections_active == 0; }))
        << "a connection thread is still there";
    EXPECT_EQ(server_->stats().handshake_timeouts, n);
  }

  static constexpr std::chrono::milliseconds kHandshakeTimeout{300};
};

TEST_F(NbdServerTest, ConnectionsOverTheLimitAreRefusedAndOpenOnesKeepWorking) {
  NbdServer::Options options;
  options.max_connections = 2;
  options.max_connections_per_peer = 2;
  StartServer(options);
  // From two other processes, so that the flood from this one meets max_connections and not
  // its own peer's limit.
  auto a = TestClient::ConnectUnixFromChild(dir_.sock());
  auto b = TestClient::ConnectUnixFromChild(dir_.sock());
  ASSERT_TRUE(a && b);
  a->Go();
  b->Go();

  LogLines log;
  constexpr int kFlood = 20;
  for (int i = 0; i < kFlood; ++i) {
    auto extra = Connect();
    ASSERT_TRUE(extra);
    // Closed before the greeting: not one byte of NBD, no thread.
    EXPECT_TRUE(extra->WaitClosed()) << "connection " << i << " over the limit was served";
  }
  NbdServerStats stats = server_->stats();
  EXPECT_EQ(stats.connections_refused, uint64_t{kFlood});
  EXPECT_EQ(stats.connections_refused_per_peer, 0u);
  EXPECT_EQ(stats.connections_accepted, 2u);
  EXPECT_EQ(stats.connections_active, 2u);
  // One line for the whole flood, naming the peer and the limit.
  std::string line;
  EXPECT_EQ(log.Count("refused a connection from", &line), 1u);
  EXPECT_NE(line.find("unix:pid="), std::string::npos) << line;
  EXPECT_NE(line.find("the limit is 2"), std::string::npos) << line;
  EXPECT_EQ(log.Count("still refusing connections"), 0u);

  // The connections being served did not notice the flood.
  const std::string data(4096, 'L');
  EXPECT_EQ(a->Request(Command::kWrite, 8192, 4096, 0, data).error, 0u);
  CmdReply read = b->Request(Command::kRead, 8192, 4096);
  EXPECT_EQ(read.error, 0u);
  EXPECT_EQ(read.data, data);

  // A closed connection frees its place for the next client.
  a.reset();
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_active == 1; }));
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(Command::kRead, 8192, 4096).data, data);
  EXPECT_EQ(server_->stats().connections_accepted, 3u);
  EXPECT_EQ(server_->stats().connections_refused, uint64_t{kFlood});
  EXPECT_EQ(log.Count("admitting connections again"), 1u);
}

TEST_F(NbdServerTest, LimitOptionsAreValidated) {
  NbdServer::Options options;
  options.listen_address = "unix:" + dir_.sock();
  options.export_name = "vol";
  options.target = &target_;

  options.max_connections = 0;
  Result<std::unique_ptr<NbdServer>> server = NbdServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("max_connections is 0"), std::string::npos)
      << server.status().message();
  options.max_connections = 1;

  options.max_connections_per_peer = 0;
  server = NbdServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("max_connections_per_peer is 0"), std::string::npos)
      << server.status().message();
  // The default (16) is over this max_connections; the error names both.
  options.max_connections_per_peer = NbdServer::Options{}.max_connections_per_peer;
  ASSERT_EQ(options.max_connections_per_peer, 16u);
  server = NbdServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      server.status().message().find("max_connections_per_peer is 16 but max_connections is 1"),
      std::string::npos)
      << server.status().message();
  options.max_connections_per_peer = 1;

  options.handshake_timeout = std::chrono::milliseconds(0);
  server = NbdServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("handshake_timeout is 0 ms"), std::string::npos)
      << server.status().message();
  options.handshake_timeout = std::chrono::seconds(1);

  options.tcp_keepalive_idle = std::chrono::seconds(40000);
  server = NbdServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(server.status().message().find("tcp_keepalive_idle is 40000 s"), std::string::npos)
      << server.status().message();
  options.tcp_keepalive_idle = std::chrono::seconds(0);

  EXPECT_TRUE(NbdServer::Start(options).ok());
}

TEST_F(NbdServerTest, UnixPeerOverItsLimitIsRefusedWhileAnotherProcessIsAdmitted) {
  NbdServer::Options options;
  options.max_connections = 8;
  options.max_connections_per_peer = 2;
  StartServer(options);
  auto a = ConnectAndGo();
  auto b = ConnectAndGo();
  ASSERT_TRUE(a && b);

  LogLines log;
  constexpr int kOver = 5;
  for (int i = 0; i < kOver; ++i) {
    auto extra = Connect();
    ASSERT_TRUE(extra);
    // Closed before the greeting, with 6 of the 8 places still free.
    EXPECT_TRUE(extra->WaitClosed())
        << "connection " << i << " over this process's limit was served";
  }
  NbdServerStats stats = server_->stats();
  EXPECT_EQ(stats.connections_refused_per_peer, uint64_t{kOver});
  EXPECT_EQ(stats.connections_refused, 0u);
  EXPECT_EQ(stats.connections_accepted, 2u);
  EXPECT_EQ(stats.connections_active, 2u);
  // One line for all of them, naming this process, its open connections and the limit.
  const std::string me = "unix:pid=" + std::to_string(::getpid());
  std::string line;
  EXPECT_EQ(log.Count("refused a connection from", &line), 1u);
  EXPECT_NE(line.find("peer " + me + " already has 2 connections open"), std::string::npos) << line;
  EXPECT_NE(line.find("the per-peer limit is 2"), std::string::npos) << line;
  EXPECT_EQ(log.Count("still refusing connections"), 0u);

  // Another process is admitted and served.
  pid_t child = 0;
  auto other = TestClient::ConnectUnixFromChild(dir_.sock(), &child);
  ASSERT_TRUE(other);
  other->Go();
  EXPECT_EQ(server_->stats().connections_accepted, 3u);
  EXPECT_EQ(log.Count("accepted unix:pid=" + std::to_string(child) + ","), 1u);

  // The first two did not notice; all three see each other's writes.
  const std::string data(4096, 'P');
  EXPECT_EQ(a->Request(Command::kWrite, 4096, 4096, 0, data).error, 0u);
  EXPECT_EQ(b->Request(Command::kRead, 4096, 4096).data, data);
  EXPECT_EQ(other->Request(Command::kRead, 4096, 4096).data, data);
  const std::string more(4096, 'Q');
  EXPECT_EQ(b->Request(Command::kWrite, 8192, 4096, 0, more).error, 0u);
  EXPECT_EQ(a->Request(Command::kRead, 8192, 4096).data, more);

  // Closing one of this process's connections lets it connect again, once.
  a.reset();
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_active == 2; }));
  auto again = ConnectAndGo();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->Request(Command::kRead, 4096, 4096).data, data);
  EXPECT_EQ(log.Count("is under the per-peer limit of 2 again", &line), 1u);
  EXPECT_NE(line.find("peer " + me + " is under"), std::string::npos) << line;
  EXPECT_NE(line.find("refused " + std::to_string(kOver) + " of its connections"),
            std::string::npos)
      << line;
  auto over = Connect();
  ASSERT_TRUE(over);
  EXPECT_TRUE(over->WaitClosed());
  stats = server_->stats();
  EXPECT_EQ(stats.connections_refused_per_peer, uint64_t{kOver} + 1);
  EXPECT_EQ(stats.connections_refused, 0u);
  EXPECT_EQ(stats.connections_accepted, 4u);
  EXPECT_EQ(stats.connections_active, 3u);
}

TEST_F(NbdServerTest, TcpPeerIsItsAddressWhateverThePort) {
  NbdServer::Options options;
  options.listen_address = "tcp:127.0.0.1:0";
  options.max_connections = 8;
  options.max_connections_per_peer = 2;
  StartServer(options);
  const std::string bound = server_->bound_address();
  const auto port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
  auto a = TestClient::ConnectTcp(port);
  auto b = TestClient::ConnectTcp(port);
  ASSERT_TRUE(a && b);
  a->Go();
  b->Go();

  LogLines log;
  // A third from 127.0.0.1, from yet another port: the same peer.
  auto third = TestClient::ConnectTcp(port);
  ASSERT_TRUE(third);
  EXPECT_TRUE(third->WaitClosed()) << "a third connection from 127.0.0.1 was served";
  NbdServerStats stats = server_->stats();
  EXPECT_EQ(stats.connections_refused_per_peer, 1u);
  EXPECT_EQ(stats.connections_refused, 0u);
  EXPECT_EQ(stats.connections_accepted, 2u);
  EXPECT_EQ(stats.connections_active, 2u);
  std::string line;
  EXPECT_EQ(log.Count("refused a connection from tcp:127.0.0.1:", &line), 1u);
  EXPECT_NE(line.find("peer tcp:127.0.0.1 already has 2 connections open"), std::string::npos)
      << line;

  // Another address is another peer.
  auto other = TestClient::ConnectTcp(port, "127.0.0.2");
  ASSERT_TRUE(other);
  other->Go();
  const std::string data(4096, 'T');
  EXPECT_EQ(other->Request(Command::kWrite, 0, 4096, 0, data).error, 0u);
  EXPECT_EQ(a->Request(Command::kRead, 0, 4096).data, data);
  EXPECT_EQ(b->Request(Command::kRead, 0, 4096).data, data);
  stats = server_->stats();
  EXPECT_EQ(stats.connections_accepted, 3u);
  EXPECT_EQ(stats.connections_refused_per_peer, 1u);

  // A closed connection frees its place for its own address.
  b.reset();
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_active == 2; }));
  auto again = TestClient::ConnectTcp(port);
  ASSERT_TRUE(again);
  again->Go();
  EXPECT_EQ(again->Request(Command::kRead, 0, 4096).data, data);
  EXPECT_EQ(log.Count("peer tcp:127.0.0.1 is under the per-peer limit of 2 again"), 1u);
  stats = server_->stats();
  EXPECT_EQ(stats.connections_accepted, 4u);
  EXPECT_EQ(stats.connections_refused_per_peer, 1u);
  EXPECT_EQ(stats.connections_active, 3u);
}

TEST_F(NbdServerHandshakeTest, SilentClientIsDropped) {
  LogLines log;
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->Recv(nbd::kGreetingSize));  // and never answers it
  EXPECT_TRUE(c->WaitClosed());
  ExpectHandshakeTimeouts(1);
  std::string line;
  ASSERT_EQ(log.Count("handshake timeout", &line), 1u);
  EXPECT_NE(line.find("300 ms"), std::string::npos) << line;
  EXPECT_NE(line.find("waiting for the client flags"), std::string::npos) << line;
  EXPECT_NE(line.find("unix:pid="), std::string::npos) << line;
}

TEST_F(NbdServerHandshakeTest, PartialHandshakesAreDropped) {
  // Half of the client flags.
  auto flags = Connect();
  ASSERT_TRUE(flags);
  ASSERT_TRUE(flags->Recv(nbd::kGreetingSize));
  ASSERT_TRUE(flags->Send(std::string(2, '\0')));
  // The flags and half of an option header.
  auto option = ConnectAndGreet();
  ASSERT_TRUE(option);
  ASSERT_TRUE(option->Send(nbd::EncodeOptionHeader(Opt(Option::kGo), 100).substr(0, 8)));
  // A whole option header whose data never comes.
  auto data = ConnectAndGreet();
  ASSERT_TRUE(data);
  ASSERT_TRUE(data->Send(nbd::EncodeOptionHeader(Opt(Option::kGo), 100)));

  EXPECT_TRUE(flags->WaitClosed());
  EXPECT_TRUE(option->WaitClosed());
  EXPECT_TRUE(data->WaitClosed());
  ExpectHandshakeTimeouts(3);
  EXPECT_EQ(target_.calls().size(), 0u);
}

TEST_F(NbdServerHandshakeTest, OptionsKeptComingDoNotExtendIt) {
  auto c = ConnectAndGreet();
  ASSERT_TRUE(c);
  // Each option is answered, but the deadline is for the whole handshake, not each message.
  bool closed = false;
  for (int i = 0; i < kClientTimeoutSeconds * 20 && !closed; ++i) {
    closed = !ListRoundTrip(c->fd());
    if (!closed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(closed) << "a client that never selects the export kept its connection";
  ExpectHandshakeTimeouts(1);
}

TEST_F(NbdServerHandshakeTest, ClientNotReadingRepliesIsDropped) {
  auto c = ConnectAndGreet();
  ASSERT_TRUE(c);
  // Options whose replies are never read, until neither side's socket buffer takes more: the
  // server's thread is then stuck sending, and only the deadline frees it.
  const std::string list = nbd::EncodeOptionHeader(Opt(Option::kList), 0);
  size_t sent = 0;
  for (int i = 0; i < 100000; ++i) {
    const ssize_t r = ::send(c->fd(), list.data(), list.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    ASSERT_EQ(r, static_cast<ssize_t>(list.size())) << std::strerror(errno);
    ++sent;
  }
  ASSERT_GT(sent, 0u);
  ExpectHandshakeTimeouts(1);
}

TEST_F(NbdServerTest, StopEndsAClientStillInTheHandshake) {
  StartServer();  // the default 10 s handshake timeout: Stop() must not wait for it
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->Recv(nbd::kGreetingSize));
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_active == 1; }));
  server_->Stop();
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_EQ(server_->stats().connections_active, 0u);
  EXPECT_EQ(server_->stats().handshake_timeouts, 0u);
}

TEST_F(NbdServerHandshakeTest, TransmissionHasNoIdleTimeout) {
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  // Idle for several handshake timeouts, as a VM whose disk is the export may be for hours.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  const std::string data(512, 'I');
  EXPECT_EQ(c->Request(Command::kWrite, 0, 512, 0, data).error, 0u);
  EXPECT_EQ(c->Request(Command::kRead, 0, 512).data, data);
  EXPECT_EQ(server_->stats().handshake_timeouts, 0u);
  EXPECT_EQ(server_->stats().connections_active, 1u);
}

TEST_F(NbdServerTest, PipelinedRequestsWaitInTheSocketNotInServerMemory) {
  StartServer();
  auto c = ConnectAndGo();
  ASSERT_TRUE(c);
  // 1000 reads of 64 KiB sent at once (28 KB of headers), replies not read yet: 64 MiB of
  // replies if the server read ahead and queued them.
  constexpr int kRequests = 1000;
  constexpr uint32_t kLength = 64 * 1024;
  std::string batch;
  for (int i = 0; i < kRequests; ++i) {
    nbd::RequestHeader r;
    r.type = static_cast<uint16_t>(Command::kRead);
    r.handle = static_cast<uint64_t>(i) + 1;
    r.offset = static_cast<uint64_t>(i % 64) * kLength;
    r.length = kLength;
    batch += nbd::EncodeRequestHeader(r);
  }
  ASSERT_TRUE(c->Send(batch));
  // Wait for the server to stop reading (it only ever could stop early, which the bound below
  // tolerates), then check it holds no more than a socket buffer's worth of replies.
  uint64_t seen = 0;
  for (int stable = 0; stable < 20;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const uint64_t now = server_->stats().requests;
    stable = now == seen ? stable + 1 : 0;
    seen = now;
  }
  EXPECT_LT(seen, uint64_t{kRequests / 10})
      << "the server read requests far ahead of a client that is not reading its replies";
  // Every request is still answered, in order, once the client reads.
  for (int i = 0; i < kRequests; ++i) {
    std::optional<std::string> header = c->Recv(nbd::kSimpleReplyHeaderSize);
    ASSERT_TRUE(header);
    Result<nbd::SimpleReply> reply = nbd::ParseSimpleReply(*header);
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    ASSERT_EQ(reply->error, 0u);
    ASSERT_EQ(reply->handle, static_cast<uint64_t>(i) + 1);
    ASSERT_TRUE(c->Recv(kLength));
  }
  EXPECT_EQ(server_->stats().requests, 1u * kRequests);
}

// The server-side socket of a loopback connection, as /proc/net/tcp shows it: the timer kind
// (0 none, 1 retransmit, 2 keepalive, ...) and when it fires, in USER_HZ ticks.
struct TcpTimer {
  int kind = -1;
  uint64_t ticks = 0;
};

std::optional<TcpTimer> ServerSideTimer(uint16_t server_port, uint16_t client_port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // column names
  char local[32], remote[32];
  std::snprintf(local, sizeof(local), "0100007F:%04X", server_port);
  std::snprintf(remote, sizeof(remote), "0100007F:%04X", client_port);
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local_address, remote_address, state, queues, timer;
    fields >> slot >> local_address >> remote_address >> state >> queues >> timer;
    if (local_address != local || remote_address != remote) continue;
    const size_t colon = timer.find(':');
    if (colon == std::string::npos) return std::nullopt;
    return TcpTimer{std::stoi(timer.substr(0, colon), nullptr, 16),
                    std::stoull(timer.substr(colon + 1), nullptr, 16)};
  }
  return std::nullopt;
}

TEST_F(NbdServerTest, TcpConnectionsGetKeepalive) {
  for (const int idle : {123, 0}) {
    SCOPED_TRACE("tcp_keepalive_idle " + std::to_string(idle));
    NbdServer::Options options;
    options.listen_address = "tcp:127.0.0.1:0";
    options.tcp_keepalive_idle = std::chrono::seconds(idle);
    StartServer(options);
    const std::string bound = server_->bound_address();
    const auto server_port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
    auto c = TestClient::ConnectTcp(server_port);
    ASSERT_TRUE(c);
    c->Go();
    sockaddr_in me{};
    socklen_t len = sizeof(me);
    ASSERT_EQ(::getsockname(c->fd(), reinterpret_cast<sockaddr*>(&me), &len), 0);
    // Right after the GO reply a retransmit timer (kind 1) may run until the ACK arrives.
    std::optional<TcpTimer> timer;
    ASSERT_TRUE(Eventually([&] {
      timer = ServerSideTimer(server_port, ntohs(me.sin_port));
      return timer && timer->kind != 1;
    })) << (timer ? "the server's retransmit timer never stopped"
                  : "the server's socket is not in /proc/net/tcp");
    if (idle == 0) {
      EXPECT_EQ(timer->kind, 0);
    } else {
      // Armed to fire after at most `idle` seconds of silence (the kernel default is 7200 s).
      EXPECT_EQ(timer->kind, 2);
      EXPECT_LE(timer->ticks, uint64_t(idle) * ::sysconf(_SC_CLK_TCK));
      EXPECT_GT(timer->ticks, uint64_t(idle - 30) * ::sysconf(_SC_CLK_TCK));
    }
    c.reset();
    server_.reset();
  }
}

TEST(NbdListenAddress, Parses) {
  Result<NbdListenAddress> a = ParseNbdListenAddress("unix:/run/cdp/vol.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, NbdListenAddress::Kind::kUnix);
  EXPECT_EQ(a->path, "/run/cdp/vol.sock");

  a = ParseNbdListenAddress("tcp:127.0.0.1:10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, NbdListenAddress::Kind::kTcp);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 10809);

  a = ParseNbdListenAddress("tcp:[::1]:0");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "::1");
  EXPECT_EQ(a->port, 0);

  a = ParseNbdListenAddress("tcp::10809");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "");
}

TEST(NbdListenAddress, RejectsBadSyntax) {
  for (const char* text : {"", "unix:", "tcp:host", "tcp:host:", "tcp:host:99999", "tcp:host:12ab",
                           "tcp:::1:10809", "tcp:[::1:10809", "udp:x:1", "/run/vol.sock"}) {
    Result<NbdListenAddress> a = ParseNbdListenAddress(text);
    ASSERT_FALSE(a.ok()) << text;
    EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a.status().message().find(std::string("'") + text + "'"), std::string::npos)
        << a.status().message();
    EXPECT_NE(a.status().message().find("expected unix:PATH or tcp:HOST:PORT"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// Real clients: qemu-io and nbdinfo against the server. Skipped (with a message) when the tools
// are not installed, except under CI where a missing tool is a failure.

bool InPath(const std::string& tool) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::string dirs = path;
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string candidate = dirs.substr(start, end - start) + "/" + tool;
    if (::access(candidate.c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

// Runs `command` under coreutils timeout, capturing stdout+stderr. Returns the exit code.
int RunTool(const std::string& command, std::string* output) {
  const std::string full = "timeout -k 5 60 " + command + " 2>&1";
  std::FILE* p = ::popen(full.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define REQUIRE_TOOL(tool)                                                                   \
  do {                                                                                       \
    if (!InPath(tool)) {                                                                     \
      if (std::getenv("CI") != nullptr) {                                                    \
        FAIL() << tool << " not found in PATH; CI must install it (deploy/install-deps.sh)"; \
      }                                                                                      \
      GTEST_SKIP() << tool << " not installed; install qemu-utils / libnbd-bin to run this"; \
    }                                                                                        \
  } while (0)

TEST_F(NbdServerTest, QemuIoWritesReadsFlushesDiscardsAndZeroes) {
  REQUIRE_TOOL("qemu-io");
  StartServer();
  const std::string uri = "nbd+unix:///vol?socket=" + dir_.sock();
  std::string out;
  const int rc = RunTool("qemu-io -f raw '" + uri +
                             "' -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' -c 'flush'"
                             " -c 'discard 64k 64k' -c 'write -z 128k 64k'",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("wrote 65536/65536 bytes at offset 0"), std::string::npos) << out;
  EXPECT_NE(out.find("read 65536/65536 bytes at offset 0"), std::string::npos) << out;
  EXPECT_EQ(out.find("Pattern verification failed"), std::string::npos) << out;
  EXPECT_NE(out.find("discard 65536/65536 bytes at offset 65536"), std::string::npos) << out;
  EXPECT_NE(out.find("wrote 65536/65536 bytes at offset 131072"), std::string::npos) << out;

  EXPECT_EQ(target_.bytes(0, 64 * 1024), std::string(64 * 1024, '\xab'));
  EXPECT_EQ(target_.bytes(128 * 1024, 64 * 1024), std::string(64 * 1024, '\0'));
  EXPECT_EQ(target_.bytes(192 * 1024, 4096), std::string(4096, kInitialByte));

  bool saw_write = false, saw_flush = false, saw_trim = false, saw_zero = false;
  for (const Call& call : target_.calls()) {
    if (call.op == "write" && call.offset == 0 && call.length == 65536) saw_write = true;
    if (call.op == "flush") saw_flush = true;
    if (call.op == "trim" && call.offset == 65536 && call.length == 65536) saw_trim = true;
    if (call.op == "zero" && call.offset == 131072 && call.length == 65536) saw_zero = true;
  }
  EXPECT_TRUE(saw_write && saw_flush && saw_trim && saw_zero) << out;
  EXPECT_EQ(server_->stats().errors, 0u);
}

TEST_F(NbdServerTest, NbdinfoReportsSizeAndBlockSizes) {
  REQUIRE_TOOL("nbdinfo");
  StartServer();
  std::string out;
  const int rc = RunTool("nbdinfo --json 'nbd+unix:///vol?socket=" + dir_.sock() + "'", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"export-name\": \"vol\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"export-size\": 4194304"), std::string::npos) << out;
  EXPECT_NE(out.find("\"block_size_minimum\": 512"), std::string::npos) << out;
  EXPECT_NE(out.find("\"block_size_preferred\": 4096"), std::string::npos) << out;
  EXPECT_NE(out.find("\"block_size_maximum\": 33554432"), std::string::npos) << out;
  EXPECT_NE(out.find("\"is_read_only\": false"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_flush\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_fua\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_trim\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_zero\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_multi_conn\": false"), std::string::npos) << out;
}

TEST_F(NbdServerTest, NbdinfoListShowsTheExport) {
  REQUIRE_TOOL("nbdinfo");
  StartServer();
  std::string out;
  const int rc = RunTool("nbdinfo --list 'nbd+unix:///?socket=" + dir_.sock() + "'", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("export=\"vol\""), std::string::npos) << out;
}

}  // namespace
}  // namespace cdp::nbd
