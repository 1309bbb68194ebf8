// Tests of QmpClient: unit tests against a scripted fake monitor on a unix socket (greeting,
// capabilities, replies split or batched, events between replies, stale ids, error classes,
// timeouts, closes, peers that are not QMP monitors, replies of unexpected shapes, event floods),
// unit tests of QmpObject's checked reads, and integration tests against a real
// qemu-system-x86_64 (skipped when it is missing, unless CI is set: then they fail).
#include "cdp/core/qmp_client.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/log/core.hpp>
#include <boost/log/utility/setup/console.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace cdp {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int kWaitMs = 5000;  // generous: only reached when something is broken

// Binds a listening unix socket at `path`; -1 on failure.
int ListenUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 4) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

// The server side of one accepted connection, driven by a test's script on the monitor thread.
// Every read gives up after kWaitMs so that a broken client cannot hang the test.
class FakeConnection {
 public:
  explicit FakeConnection(int fd) : fd_(fd) {}
  ~FakeConnection() { CloseNow(); }
  FakeConnection(const FakeConnection&) = delete;
  FakeConnection& operator=(const FakeConnection&) = delete;

  // Writes all of `bytes` in one send.
  void Write(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ADD_FAILURE() << "fake monitor: send failed: " << strerror(errno);
        return;
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Writes `parts` one by one with a pause between them, so the client sees partial lines.
  void WriteInPieces(const std::vector<std::string>& parts) {
    for (const std::string& part : parts) {
      Write(part);
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
  }
  // Writes `message` as QEMU does: one line ended by "\r\n".
  void Send(const Json& message) { Write(message.dump() + "\r\n"); }
  void Reply(const Json& id, const Json& value) { Send({{"return", value}, {"id", id}}); }
  void ReplyError(const Json& id, const std::string& error_class, const std::string& desc) {
    Send({{"id", id}, {"error", {{"class", error_class}, {"desc", desc}}}});
  }
  void SendEvent(const std::string& name, int64_t seconds, int64_t micros,
                 const Json& data = nullptr) {
    Json event = {{"timestamp", {{"seconds", seconds}, {"microseconds", micros}}}, {"event", name}};
    if (!data.is_null()) event["data"] = data;
    Send(event);
  }

  // Reads one request line; null on EOF or timeout.
  Json ReadRequest() {
    std::string line;
    if (!ReadLine(&line)) return nullptr;
    Json request = Json::parse(line, nullptr, false);
    EXPECT_FALSE(request.is_discarded()) << "client sent non-JSON: " << line;
    return request;
  }
  // Reads one request, expects it to execute `command`, and returns its id.
  Json ExpectCommand(const std::string& command) {
    Json request = ReadRequest();
    EXPECT_TRUE(request.is_object()) << "no request; expected " << command;
    if (!request.is_object()) return nullptr;
    EXPECT_EQ(request.value("execute", ""), command) << request.dump();
    return request.value("id", Json());
  }

  // Sends the greeting of QEMU 7.2.0, as QEMU formats it.
  void Greet() {
    Write(
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
        "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n");
  }
  // Greets, then expects qmp_capabilities and accepts it.
  void Handshake() {
    Greet();
    Json request = ReadRequest();
    EXPECT_EQ(request, Json({{"execute", "qmp_capabilities"}, {"id", "cdp-1"}}));
    if (request.is_object()) Reply(request.value("id", Json()), Json::object());
  }

  // Reads and discards until the client closes its end (or kWaitMs passes).
  void WaitForClientClose() {
    std::string line;
    while (ReadLine(&line)) {
    }
  }
  void CloseNow() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  bool ReadLine(std::string* line) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    for (;;) {
      size_t newline = buffer_.find('\n');
      if (newline != std::string::npos) {
        *line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        return true;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd pfd{fd_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) return false;
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return false;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

  int fd_;
  std::string buffer_;
};

// A fake QEMU monitor: a unix socket in a temp dir, and a thread that accepts one connection and
// runs `script` on it. The destructor joins the thread, so declare the monitor before the client.
class FakeMonitor {
 public:
  using Script = std::function<void(FakeConnection&)>;

  explicit FakeMonitor(Script script) : dir_("qmp_client_test"), path_(dir_.File("qmp.sock")) {
    listen_fd_ = ListenUnix(path_);
    EXPECT_GE(listen_fd_, 0) << "cannot listen on " << path_;
    if (listen_fd_ < 0) return;
    thread_ = std::thread([this, script = std::move(script)] {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, kWaitMs) <= 0) return;  // the test never connected
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      FakeConnection connection(fd);
      script(connection);
    });
  }
  ~FakeMonitor() {
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }
  FakeMonitor(const FakeMonitor&) = delete;
  FakeMonitor& operator=(const FakeMonitor&) = delete;

  const std::string& path() const { return path_; }

 private:
  testing::TempDir dir_;
  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

// Connects to `monitor`, failing the test (and returning null) on error.
std::unique_ptr<QmpClient> MustConnect(const FakeMonitor& monitor) {
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  EXPECT_TRUE(client.ok()) << client.status();
  if (!client.ok()) return nullptr;
  return std::move(client).value();
}

// ---------------------------------------------------------------------------------------------
// Connect

TEST(QmpClient, ConnectReadsGreetingAndNegotiatesCapabilities) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();  // checks the exact qmp_capabilities request
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->qemu_version(), "7.2.0");
  EXPECT_EQ(client->path(), monitor.path());
  EXPECT_TRUE(client->connected());
}

TEST(QmpClient, MissingPathIsNotFound) {
  testing::TempDir dir("qmp_client_test");
  const std::string path = dir.File("absent.sock");
  auto client = QmpClient::Connect(path, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client.status().message(), path + " does not exist; is QEMU running with -qmp unix:" +
                                           path + ",server=on,wait=off? check qmp_socket");
}

TEST(QmpClient, SocketWithNobodyListeningIsUnavailable) {
  testing::TempDir dir("qmp_client_test");
  const std::string path = dir.File("stale.sock");
  // What a crashed QEMU leaves behind: the socket file, with nothing accepting on it.
  int fd = ListenUnix(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  auto client = QmpClient::Connect(path, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client.status().message(),
            path +
                ": nothing accepts connections on it (ECONNREFUSED); QEMU exited or the socket is "
                "stale");
}

TEST(QmpClient, RegularFileIsInvalidArgument) {
  testing::TempDir dir("qmp_client_test");
  const std::string path = dir.File("not-a-socket");
  std::ofstream(path) << "hello\n";
  auto client = QmpClient::Connect(path, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client.status().message(), path + " is not a unix socket; check qmp_socket");
}

TEST(QmpClient, TooLongPathIsInvalidArgument) {
  const std::string path = "/tmp/" + std::string(200, 'x');
  auto client = QmpClient::Connect(path, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client.status().message(),
            path +
                " is too long for a unix socket address (205 bytes, limit 107); use a shorter "
                "qmp_socket path");
}

TEST(QmpClient, SshServerIsProtocolMismatch) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Write("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n");
    conn.WaitForClientClose();
  });
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(client.status().message(),
            monitor.path() +
                " is not a QEMU QMP monitor: it sent 'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3'; "
                "check qmp_socket");
}

TEST(QmpClient, BinaryGreetingIsShownTruncatedAndPrintable) {
  FakeMonitor monitor([](FakeConnection& conn) {
    std::string garbage("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
    garbage += std::string(100, 'A') + "\n";
    conn.Write(garbage);
    conn.WaitForClientClose();
  });
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(client.status().message(), monitor.path() +
                                           " is not a QEMU QMP monitor: it sent '???????????" +
                                           std::string(49, 'A') + "'; check qmp_socket");
}

TEST(QmpClient, GarbageWithoutLineEndIsProtocolMismatchBeforeTheTimeout) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Write("HTTP/1.1 400 Bad Request");  // and then waits, as a confused server would
    conn.WaitForClientClose();
  });
  // The timeout is kWaitMs; the monitor's reads give up after kWaitMs too. If the client waited
  // for the line end, the result would be TimedOut instead.
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(client.status().message(),
            monitor.path() +
                " is not a QEMU QMP monitor: it sent 'HTTP/1.1 400 Bad Request'; check qmp_socket");
}

TEST(QmpClient, JsonThatIsNotAGreetingIsProtocolMismatch) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Write("{\"hello\": \"world\"}\r\n");
    conn.WaitForClientClose();
  });
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(client.status().message(),
            monitor.path() +
                " is not a QEMU QMP monitor: it sent '{\"hello\": \"world\"}'; check qmp_socket");
}

TEST(QmpClient, SilentServerTimesOut) {
  FakeMonitor monitor([](FakeConnection& conn) { conn.WaitForClientClose(); });
  auto client = QmpClient::Connect(monitor.path(), 200);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(client.status().message(),
            monitor.path() +
                " did not greet as a QMP monitor within 200 ms; another client may hold the "
                "monitor (QEMU serves one at a time), or QEMU is hung");
}

TEST(QmpClient, CloseBeforeGreetingIsUnavailable) {
  FakeMonitor monitor([](FakeConnection& conn) { conn.CloseNow(); });
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(
      client.status().message(),
      monitor.path() + " closed the connection before greeting as a QMP monitor; is QEMU exiting?");
}

TEST(QmpClient, NoCapabilitiesReplyTimesOut) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Greet();
    conn.WaitForClientClose();
  });
  auto client = QmpClient::Connect(monitor.path(), 200);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(
      client.status().message(),
      monitor.path() + " greeted but did not answer qmp_capabilities within 200 ms; is QEMU hung?");
}

TEST(QmpClient, CapabilitiesErrorFailsConnect) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Greet();
    conn.ReplyError(conn.ExpectCommand("qmp_capabilities"), "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored");
    conn.WaitForClientClose();
  });
  auto client = QmpClient::Connect(monitor.path(), kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kNotSupported);
  EXPECT_EQ(client.status().message(),
            monitor.path() +
                ": qmp qmp_capabilities: CommandNotFound: Capabilities negotiation is already "
                "complete, command ignored");
}

// ---------------------------------------------------------------------------------------------
// Execute

TEST(QmpClient, ExecuteSendsArgumentsOnlyWhenGivenAndReturnsTheValue) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json request = conn.ReadRequest();
    EXPECT_EQ(request, Json({{"execute", "query-status"}, {"id", "cdp-2"}}));
    conn.Reply(request["id"], {{"status", "paused"}, {"running", false}});
    request = conn.ReadRequest();
    EXPECT_EQ(request,
              Json({{"execute", "device_del"}, {"arguments", {{"id", "disk0"}}}, {"id", "cdp-3"}}));
    conn.Reply(request["id"], Json::object());
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, Json({{"status", "paused"}, {"running", false}}));
  auto deleted = client->Execute("device_del", {{"id", "disk0"}});
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, Json::object());
}

TEST(QmpClient, ArgumentsThatAreNotAnObjectAreRejectedBeforeSending) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    // The rejected call sent nothing and used no id.
    Json request = conn.ReadRequest();
    EXPECT_EQ(request, Json({{"execute", "query-status"}, {"id", "cdp-2"}}));
    conn.Reply(request["id"], "ok");
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto rejected = client->Execute("device_del", Json::array({1, 2}));
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(rejected.status().message(),
            "qmp device_del: arguments must be a JSON object, not array");
  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, "ok");
}

TEST(QmpClient, EventsBeforeTheReplyAreQueued) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("stop");
    conn.SendEvent("STOP", 1700000000, 123456);
    conn.SendEvent("BLOCK_JOB_READY", 1700000001, 7, {{"device", "job0"}, {"len", 1024}});
    conn.Reply(id, Json::object());
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto stopped = client->Execute("stop");
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name, "STOP");
  EXPECT_TRUE(events[0].data.is_null());
  EXPECT_EQ(events[0].timestamp_us, 1700000000123456);
  EXPECT_EQ(events[1].name, "BLOCK_JOB_READY");
  EXPECT_EQ(events[1].data, Json({{"device", "job0"}, {"len", 1024}}));
  EXPECT_EQ(events[1].timestamp_us, 1700000001000007);
  EXPECT_TRUE(client->TakeEvents().empty());
}

TEST(QmpClient, ReplySplitAcrossSeveralWrites) {
  FakeMonitor monitor([](FakeConnection& conn) {
    // The greeting, too, arrives in pieces.
    conn.WriteInPieces({"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 1, \"mi",
                        "nor\": 0, \"major\": 8}}, \"capabilities\": []}}\r", "\n"});
    conn.Reply(conn.ExpectCommand("qmp_capabilities"), Json::object());
    Json id = conn.ExpectCommand("query-name");
    std::string reply = Json({{"return", {{"name", "db01"}}}, {"id", id}}).dump() + "\r\n";
    // Cut inside a string, then between "\r" and "\n".
    conn.WriteInPieces({reply.substr(0, 15), reply.substr(15, reply.size() - 16), "\n"});
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->qemu_version(), "8.0.1");
  auto name = client->Execute("query-name");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, Json({{"name", "db01"}}));
}

TEST(QmpClient, SeveralObjectsInOneWrite) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("cont");
    // An event, the reply and a later event in one write, as QEMU does when it is quick.
    std::string batch =
        Json({{"timestamp", {{"seconds", 1}, {"microseconds", 2}}}, {"event", "RESUME"}}).dump() +
        "\r\n" + Json({{"return", Json::object()}, {"id", id}}).dump() + "\r\n" +
        Json({{"timestamp", {{"seconds", 3}, {"microseconds", 4}}}, {"event", "STOP"}}).dump() +
        "\r\n";
    conn.Write(batch);
    conn.Reply(conn.ExpectCommand("query-status"), {{"running", false}});
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto resumed = client->Execute("cont");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  // The STOP after the reply stays buffered until something reads on.
  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, Json({{"running", false}}));
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name, "RESUME");
  EXPECT_EQ(events[0].timestamp_us, 1000002);
  EXPECT_EQ(events[1].name, "STOP");
  EXPECT_EQ(events[1].timestamp_us, 3000004);
}

TEST(QmpClient, RepliesWithOtherIdsAreDropped) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("query-status");
    conn.Reply("cdp-999", "stale");
    conn.Send({{"return", "no id"}});
    conn.ReplyError("other", "GenericError", "not yours");
    conn.Reply(id, "mine");
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, "mine");
}

TEST(QmpClient, ErrorRepliesMapTheirClassToACode) {
  struct Case {
    std::string error_class;
    StatusCode code;
  };
  const std::vector<Case> cases = {
      {"CommandNotFound", StatusCode::kNotSupported},
      {"DeviceNotFound", StatusCode::kNotFound},
      {"DeviceNotActive", StatusCode::kFailedPrecondition},
      {"KVMMissingCap", StatusCode::kNotSupported},
      {"GenericError", StatusCode::kFailedPrecondition},
      {"SomeFutureClass", StatusCode::kFailedPrecondition},
  };
  FakeMonitor monitor([&cases](FakeConnection& conn) {
    conn.Handshake();
    for (const Case& c : cases) {
      conn.ReplyError(conn.ExpectCommand("device_del"), c.error_class, "Device 'nope' not found");
    }
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  for (const Case& c : cases) {
    auto result = client->Execute("device_del", {{"id", "nope"}});
    ASSERT_FALSE(result.ok()) << c.error_class;
    EXPECT_EQ(result.status().code(), c.code) << c.error_class;
    EXPECT_EQ(result.status().message(),
              "qmp device_del: " + c.error_class + ": Device 'nope' not found");
  }
}

TEST(QmpClient, NoReplyTimesOutAndTheLateReplyIsDropped) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json late_id = conn.ExpectCommand("query-status");
    // Answer only once the client has given up and sent the next command.
    Json id = conn.ExpectCommand("query-name");
    conn.Reply(late_id, "late");
    conn.Reply(id, "on time");
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->Execute("query-status", nullptr, 100);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(status.status().message(),
            "qmp query-status: no reply from " + monitor.path() + " within 100 ms");
  EXPECT_TRUE(client->connected());
  auto name = client->Execute("query-name");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "on time");
}

TEST(QmpClient, CloseBeforeTheReplyIsUnavailable) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.ExpectCommand("query-status");
    conn.CloseNow();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->Execute("query-status");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(status.status().message(), "qmp query-status: " + monitor.path() +
                                           " closed the connection before replying (QEMU exited?)");
  EXPECT_FALSE(client->connected());

  auto again = client->Execute("query-status");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(again.status().message(),
            "qmp query-status: " + monitor.path() +
                " closed the connection earlier (QEMU exited?); reconnect");
  // The monitor is gone: quit has nothing left to do.
  auto quit = client->Execute("quit");
  ASSERT_TRUE(quit.ok()) << quit.status();
}

TEST(QmpClient, QuitClosedBeforeTheReplySucceeds) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.ExpectCommand("quit");
    conn.SendEvent("SHUTDOWN", 5, 6, {{"guest", false}, {"reason", "host-qmp-quit"}});
    conn.CloseNow();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto quit = client->Execute("quit");
  ASSERT_TRUE(quit.ok()) << quit.status();
  EXPECT_EQ(*quit, Json::object());
  // The event that came before the close is still delivered; then there is nothing more.
  auto shutdown = client->WaitEvent("SHUTDOWN", kWaitMs);
  ASSERT_TRUE(shutdown.ok()) << shutdown.status();
  EXPECT_EQ(shutdown->data, Json({{"guest", false}, {"reason", "host-qmp-quit"}}));
  EXPECT_EQ(shutdown->timestamp_us, 5000006);
  auto more = client->WaitEvent("SHUTDOWN", kWaitMs);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(more.status().message(), "qmp " + monitor.path() +
                                         ": connection closed while waiting for SHUTDOWN event "
                                         "(QEMU exited?)");
}

TEST(QmpClient, LineThatIsNotJsonIsProtocolMismatchAndTheStreamGoesOn) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("query-status");
    conn.Write("oops, not json\r\n");
    conn.Reply(id, "first");
    conn.Reply(conn.ExpectCommand("query-name"), "second");
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->Execute("query-status");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(status.status().message(), "qmp query-status: " + monitor.path() +
                                           " sent a line that is not a JSON object: "
                                           "'oops, not json'");
  // The reply that followed the bad line belongs to a call that already failed: dropped.
  auto name = client->Execute("query-name");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "second");
}

// ---------------------------------------------------------------------------------------------
// WaitEvent and TakeEvents

TEST(QmpClient, WaitEventReturnsTheNamedEventAndKeepsTheOthersQueued) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.SendEvent("RESUME", 1, 0);
    // Later, while the client already waits.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    conn.SendEvent("STOP", 2, 0);
    conn.SendEvent("SHUTDOWN", 3, 0, {{"guest", true}});
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto stop = client->WaitEvent("STOP", kWaitMs);
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->name, "STOP");
  EXPECT_EQ(stop->timestamp_us, 2000000);
  // RESUME came first and is still queued; an empty name takes the oldest event.
  auto any = client->WaitEvent("", kWaitMs);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->name, "RESUME");
  auto shutdown = client->WaitEvent("SHUTDOWN", kWaitMs);
  ASSERT_TRUE(shutdown.ok()) << shutdown.status();
  EXPECT_EQ(shutdown->data, Json({{"guest", true}}));

  auto none = client->WaitEvent("DEVICE_DELETED", 100);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(none.status().message(),
            "qmp " + monitor.path() + ": no DEVICE_DELETED event within 100 ms");
  auto nothing = client->WaitEvent("", 0);
  ASSERT_FALSE(nothing.ok());
  EXPECT_EQ(nothing.status().message(), "qmp " + monitor.path() + ": no event within 0 ms");
  EXPECT_TRUE(client->TakeEvents().empty());
}

TEST(QmpClient, TakeEventsReadsWhatIsAlreadyOnTheSocket) {
  std::promise<void> sent;
  FakeMonitor monitor([&sent](FakeConnection& conn) {
    conn.Handshake();
    conn.SendEvent("STOP", 1, 0);
    conn.SendEvent("RESUME", 2, 0);
    sent.set_value();  // both events are in the client's receive queue now
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(sent.get_future().wait_for(std::chrono::milliseconds(kWaitMs)),
            std::future_status::ready);
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name, "STOP");
  EXPECT_EQ(events[1].name, "RESUME");
  EXPECT_TRUE(client->TakeEvents().empty());
}

TEST(QmpClient, EventTimestampOutOfRangeIsZero) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.Write(
        "{\"timestamp\": {\"seconds\": 18446744073709551615, \"microseconds\": 5}, "
        "\"event\": \"STOP\"}\r\n");
    conn.Write(
        "{\"timestamp\": {\"seconds\": 7, \"microseconds\": \"8\"}, \"event\": \"RESUME\"}\r\n");
    conn.Write("{\"timestamp\": [7, 8], \"event\": \"STOP\", \"data\": 3}\r\n");
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  for (const char* name : {"STOP", "RESUME", "STOP"}) {
    auto event = client->WaitEvent(name, kWaitMs);
    ASSERT_TRUE(event.ok()) << event.status();
    EXPECT_EQ(event->timestamp_us, 0) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// Replies of unexpected shapes: a ProtocolMismatch naming the command and the field, never an
// exception (issue 15 item 9: cutover's precheck threw nlohmann::json::type_error).

TEST(QmpObject, QueryStatusOfTheExpectedShapeParses) {
  const Json reply = {{"status", "paused"}, {"singlestep", false}, {"running", false}};
  auto state = ParseQueryStatus(reply);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_FALSE(state->running);
  EXPECT_EQ(state->status, "paused");
}

TEST(QmpObject, QueryStatusOfOtherShapesIsProtocolMismatchNamingTheField) {
  struct Case {
    Json reply;
    std::string message;
  };
  const std::vector<Case> cases = {
      {Json::array({1, 2}), "qmp query-status: return: expected object, got array '[1,2]'"},
      {"running", "qmp query-status: return: expected object, got string '\"running\"'"},
      {nullptr, "qmp query-status: return: expected object, got null"},
      {{{"running", "yes"}, {"status", "running"}},
       "qmp query-status: return.running: expected boolean, got string '\"yes\"'"},
      {{{"running", 1}, {"status", "running"}},
       "qmp query-status: return.running: expected boolean, got number '1'"},
      {{{"status", "paused"}},
       "qmp query-status: return.running: expected boolean, got nothing (return is "
       "'{\"status\":\"paused\"}')"},
      {{{"running", nullptr}, {"status", "paused"}},
       "qmp query-status: return.running: expected boolean, got null"},
      {{{"running", true}, {"status", Json::array({"run", "ning"})}},
       "qmp query-status: return.status: expected string, got array '[\"run\",\"ning\"]'"},
      // What was received is cut to 60 bytes, non-printable bytes as '?'.
      {{{"running", std::string("\x01") + std::string(100, 'y')}, {"status", "running"}},
       "qmp query-status: return.running: expected boolean, got string '\"\\u0001" +
           std::string(53, 'y') + "'"},
  };
  for (const Case& c : cases) {
    auto state = ParseQueryStatus(c.reply);
    ASSERT_FALSE(state.ok()) << c.reply.dump();
    EXPECT_EQ(state.status().code(), StatusCode::kProtocolMismatch) << c.reply.dump();
    EXPECT_EQ(state.status().message(), c.message);
  }
}

TEST(QmpObject, NestedFieldsAndArraysAreCheckedAndNamed) {
  const Json blocks = Json::parse(R"([
      {"device": "disk0", "inserted": {"file": "/d/disk0.raw", "ro": false}},
      {"device": "cd0"},
      {"device": "disk1", "inserted": {"ro": false}},
      {"device": 7, "inserted": null}
  ])");
  auto array = QmpObject::ArrayFromReturn(blocks, "qmp query-block");
  ASSERT_TRUE(array.ok()) << array.status();
  ASSERT_EQ(array->size(), 4u);
  const QmpObject& first = (*array)[0];
  EXPECT_EQ(first.path(), "return[0]");
  auto inserted = first.Object("inserted");
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  EXPECT_EQ(inserted->path(), "return[0].inserted");
  auto file = inserted->String("file");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file, "/d/disk0.raw");

  auto none = (*array)[1].OptionalObject("inserted");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  auto null_is_absent = (*array)[3].OptionalObject("inserted");
  ASSERT_TRUE(null_is_absent.ok()) << null_is_absent.status();
  EXPECT_FALSE(null_is_absent->has_value());
  auto missing = (*array)[1].Object("inserted");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "qmp query-block: return[1].inserted: expected object, got nothing (return[1] is "
            "'{\"device\":\"cd0\"}')");

  auto no_file = (*array)[2].Object("inserted");
  ASSERT_TRUE(no_file.ok()) << no_file.status();
  auto file_missing = no_file->String("file");
  ASSERT_FALSE(file_missing.ok());
  EXPECT_EQ(file_missing.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(file_missing.status().message(),
            "qmp query-block: return[2].inserted.file: expected string, got nothing "
            "(return[2].inserted is '{\"ro\":false}')");
  auto device = (*array)[3].String("device");
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().message(),
            "qmp query-block: return[3].device: expected string, got number '7'");

  // StringOr: absent or null gives the fallback; another type is still an error.
  const Json job = {{"id", "commit-disk0"}, {"error", nullptr}, {"status", 3}};
  auto object = QmpObject::FromReturn(job, "qmp query-jobs");
  ASSERT_TRUE(object.ok()) << object.status();
  EXPECT_EQ(object->StringOr("error", "none").value(), "none");
  EXPECT_EQ(object->StringOr("absent", "").value(), "");
  EXPECT_EQ(object->StringOr("id", "").value(), "commit-disk0");
  auto status = object->StringOr("status", "");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().message(),
            "qmp query-jobs: return.status: expected string, got number '3'");

  const Json not_objects = Json::array({Json::object(), "x"});
  auto bad_element = QmpObject::ArrayFromReturn(not_objects, "qmp query-jobs");
  ASSERT_FALSE(bad_element.ok());
  EXPECT_EQ(bad_element.status().message(),
            "qmp query-jobs: return[1]: expected object, got string '\"x\"'");
  const Json not_array = {{"device", "disk0"}};
  auto object_for_array = QmpObject::ArrayFromReturn(not_array, "qmp query-block");
  ASSERT_FALSE(object_for_array.ok());
  EXPECT_EQ(object_for_array.status().message(),
            "qmp query-block: return: expected array, got object '{\"device\":\"disk0\"}'");
}

TEST(QmpClient, QueryStatusRepliesOfOtherShapesAreProtocolMismatch) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.Reply(conn.ExpectCommand("query-status"), Json::array({"running"}));
    conn.Reply(conn.ExpectCommand("query-status"), {{"running", "true"}, {"status", "running"}});
    conn.Send({{"id", conn.ExpectCommand("query-status")}, {"status", "running"}});
    conn.Reply(conn.ExpectCommand("query-status"), {{"running", true}, {"status", "running"}});
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  const std::string context = "qmp query-status: reply from " + monitor.path();
  EXPECT_EQ(client->ReplyContext("query-status"), context);

  const std::vector<std::string> messages = {
      context + ": return: expected object, got array '[\"running\"]'",
      context + ": return.running: expected boolean, got string '\"true\"'",
      // No "return" at all: Execute's own check.
      context + " has neither 'return' nor 'error': '{\"id\":\"cdp-4\",\"status\":\"running\"}'",
  };
  for (const std::string& message : messages) {
    auto status = client->QueryStatus();
    ASSERT_FALSE(status.ok()) << message;
    EXPECT_EQ(status.status().code(), StatusCode::kProtocolMismatch) << message;
    EXPECT_EQ(status.status().message(), message);
  }

  // A malformed reply fails its own call only.
  auto good = client->QueryStatus();
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(good->running);
  EXPECT_EQ(good->status, "running");
}

// ---------------------------------------------------------------------------------------------
// The event queue's caps.

// Collects what is logged (Boost.Log) while it lives.
class LogCapture {
 public:
  LogCapture() : sink_(boost::log::add_console_log(stream_)) {}
  ~LogCapture() { boost::log::core::get()->remove_sink(sink_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::string Text() {
    sink_->flush();
    return stream_.str();
  }

 private:
  std::ostringstream stream_;
  boost::shared_ptr<boost::log::sinks::synchronous_sink<boost::log::sinks::text_ostream_backend>>
      sink_;
};

// How many overflow warnings `log` holds.
size_t DropWarnings(const std::string& log) {
  const std::string needle = "queued event(s), oldest first";
  size_t count = 0;
  for (size_t at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// `count` events named `name` with data {"n": first..}, as one write.
std::string EventBatch(const std::string& name, int first, int count) {
  std::string batch;
  for (int n = first; n < first + count; ++n) {
    batch += Json({{"timestamp", {{"seconds", 1}, {"microseconds", 0}}},
                   {"event", name},
                   {"data", {{"n", n}}}})
                 .dump() +
             "\r\n";
  }
  return batch;
}

TEST(QmpClient, AnEventFloodIsCappedCountedLoggedOnceAndTheClientStillAnswers) {
  constexpr int kFlood = 100000;
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("query-status");
    conn.Write(EventBatch("SHUTDOWN", 0, 1) + EventBatch("BLOCK_JOB_PENDING", 1, kFlood - 1));
    conn.Reply(id, {{"running", true}, {"status", "running"}});
    conn.Reply(conn.ExpectCommand("query-name"), {{"name", "db01"}});
    conn.WaitForClientClose();
  });
  LogCapture log;
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto status = client->QueryStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(status->running);
  auto name = client->Execute("query-name");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, Json({{"name", "db01"}}));

  const uint64_t dropped = kFlood - QmpClient::kMaxQueuedEvents;
  EXPECT_EQ(client->dropped_events(), dropped);
  // Nothing is logged until the overflow ends: the caller takes events.
  EXPECT_EQ(DropWarnings(log.Text()), 0u) << log.Text();
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), QmpClient::kMaxQueuedEvents);
  EXPECT_EQ(events.front().data, Json({{"n", dropped}}));
  EXPECT_EQ(events.back().data, Json({{"n", kFlood - 1}}));
  EXPECT_EQ(DropWarnings(log.Text()), 1u) << log.Text();
  EXPECT_THAT(log.Text(),
              HasSubstr("qmp " + monitor.path() + ": dropped " + std::to_string(dropped) +
                        " queued event(s), oldest first (BLOCK_JOB_PENDING x" +
                        std::to_string(dropped - 1) +
                        ", SHUTDOWN x1), at the queue cap of 1024 events / 4 MiB: the "
                        "monitor sent events faster than they were taken"));
  // The SHUTDOWN was among the oldest: dropped, and the timeout says events were.
  auto shutdown = client->WaitEvent("SHUTDOWN", 0);
  ASSERT_FALSE(shutdown.ok());
  EXPECT_EQ(shutdown.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(shutdown.status().message(),
            "qmp " + monitor.path() + ": no SHUTDOWN event within 0 ms (" +
                std::to_string(dropped) + " older events were dropped at the queue cap)");
  client.reset();
  EXPECT_EQ(DropWarnings(log.Text()), 1u) << log.Text();
}

TEST(QmpClient, WaitEventSeesTheEventThatEndsAFlood) {
  FakeMonitor monitor([](FakeConnection& conn) {
    conn.Handshake();
    conn.Write(EventBatch("BLOCK_JOB_PENDING", 0, 5000) + EventBatch("STOP", 5000, 1));
    conn.WaitForClientClose();
  });
  LogCapture log;
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  auto stop = client->WaitEvent("STOP", kWaitMs);
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->data, Json({{"n", 5000}}));
  EXPECT_EQ(client->dropped_events(), 5000u - (QmpClient::kMaxQueuedEvents - 1));
  // Taking the STOP ended the overflow; destroying the client logs nothing more.
  EXPECT_EQ(DropWarnings(log.Text()), 1u) << log.Text();
  client.reset();
  EXPECT_EQ(DropWarnings(log.Text()), 1u) << log.Text();
}

TEST(QmpClient, LargeEventsAreCappedByBytesAndTheNewestIsKept) {
  const std::string megabyte(1 << 20, 'x');
  FakeMonitor monitor([&megabyte](FakeConnection& conn) {
    conn.Handshake();
    Json id = conn.ExpectCommand("stop");
    for (int n = 0; n < 10; ++n) conn.SendEvent("VSERPORT_CHANGE", n, 0, {{"blob", megabyte}});
    conn.Reply(id, Json::object());
    id = conn.ExpectCommand("cont");
    conn.SendEvent("STOP", 20, 0);
    // Larger than the byte cap on its own: kept, alone.
    conn.SendEvent("HUGE", 21, 0, {{"blob", std::string(5 << 20, 'y')}});
    conn.Reply(id, Json::object());
    conn.WaitForClientClose();
  });
  auto client = MustConnect(monitor);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Execute("stop").ok());
  // Three events of just over 1 MiB fit in 4 MiB; the seven before them were dropped.
  EXPECT_EQ(client->dropped_events(), 7u);
  std::vector<QmpEvent> events = client->TakeEvents();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].timestamp_us, 7000000);
  EXPECT_EQ(events[2].timestamp_us, 9000000);

  ASSERT_TRUE(client->Execute("cont").ok());
  EXPECT_EQ(client->dropped_events(), 8u);
  events = client->TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "HUGE");
}

// ---------------------------------------------------------------------------------------------
// Integration: a real qemu-system-x86_64.

// Returns the full path of `program` found in $PATH, or "".
std::string FindInPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A QEMU process with its QMP socket and log in a temp dir. The destructor kills (SIGKILL) and
// reaps it if it still runs, then removes the dir, also when the test failed.
class QemuProcess {
 public:
  QemuProcess(const std::string& binary, const std::vector<std::string>& machine_args)
      : dir_("qmp_client_qemu"), socket_(dir_.File("qmp.sock")), log_(dir_.File("qemu.log")) {
    std::vector<std::string> args = {binary, "-nodefaults", "-display", "none", "-accel", "tcg"};
    args.insert(args.end(), machine_args.begin(), machine_args.end());
    args.insert(args.end(), {"-qmp", "unix:" + socket_ + ",server=on,wait=off"});
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int err = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) {
      ADD_FAILURE() << "cannot start " << binary << ": " << strerror(err);
      pid_ = -1;
    }
  }
  ~QemuProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;

  bool started() const { return pid_ > 0; }
  const std::string& socket() const { return socket_; }

  // Connects once QEMU has created and opened its monitor socket (it starts up asynchronously).
  Result<std::unique_ptr<QmpClient>> ConnectWhenReady() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      auto client = QmpClient::Connect(socket_, kWaitMs);
      const bool starting = !client.ok() && (client.status().code() == StatusCode::kNotFound ||
                                             client.status().code() == StatusCode::kUnavailable);
      if (!starting || std::chrono::steady_clock::now() > deadline || Exited()) return client;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Waits up to timeout_ms for the process to exit; returns its wait status, or nullopt.
  std::optional<int> WaitExit(int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (pid_ > 0) {
      int status = 0;
      pid_t reaped = ::waitpid(pid_, &status, WNOHANG);
      if (reaped == pid_) {
        pid_ = -1;
        return status;
      }
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }

  // What QEMU printed, for failure messages.
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  bool Exited() { return WaitExit(0).has_value() || pid_ <= 0; }

  testing::TempDir dir_;
  std::string socket_;
  std::string log_;
  pid_t pid_ = -1;
};

// Integration tests: skipped when qemu-system-x86_64 is not installed, failed when CI is set
// (there a missing QEMU means the test machine was not provisioned).
class QmpClientQemu : public ::testing::Test {
 protected:
  void SetUp() override {
    qemu_ = FindInPath("qemu-system-x86_64");
    if (qemu_.empty()) {
      if (std::getenv("CI") != nullptr) {
        GTEST_FAIL() << "qemu-system-x86_64 missing; run deploy/install-deps.sh";
      }
      GTEST_SKIP() << "qemu-system-x86_64 missing; run deploy/install-deps.sh";
    }
  }

  std::string qemu_;
};

TEST_F(QmpClientQemu, QueryStatusVersionAndErrors) {
  QemuProcess qemu(qemu_, {"-machine", "none", "-S"});
  ASSERT_TRUE(qemu.started());
  auto connected = qemu.ConnectWhenReady();
  ASSERT_TRUE(connected.ok()) << connected.status() << "\n" << qemu.Log();
  std::unique_ptr<QmpClient> client = std::move(connected).value();

  auto status = client->QueryStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_THAT(status->status, ::testing::AnyOf("prelaunch", "paused"));
  EXPECT_FALSE(status->running);

  auto version = client->Execute("query-version");
  ASSERT_TRUE(version.ok()) << version.status();
  const Json& qemu_version = (*version)["qemu"];
  EXPECT_EQ(client->qemu_version(), std::to_string(qemu_version.value("major", -1)) + "." +
                                        std::to_string(qemu_version.value("minor", -1)) + "." +
                                        std::to_string(qemu_version.value("micro", -1)));

  auto unknown = client->Execute("no-such-command");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotSupported);
  EXPECT_THAT(unknown.status().message(), StartsWith("qmp no-such-command: CommandNotFound: "));
  EXPECT_THAT(unknown.status().message(), HasSubstr("no-such-command has not been found"));

  auto no_device = client->Execute("device_del", {{"id", "nope"}});
  ASSERT_FALSE(no_device.ok());
  EXPECT_EQ(no_device.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(no_device.status().message(),
            "qmp device_del: DeviceNotFound: Device 'nope' not found");

  auto bad_argument = client->Execute("query-status", {{"bogus", 1}});
  ASSERT_FALSE(bad_argument.ok());
  EXPECT_EQ(bad_argument.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad_argument.status().message(), StartsWith("qmp query-status: GenericError: "));
  EXPECT_THAT(bad_argument.status().message(), HasSubstr("bogus"));

  // The connection is still good after errors.
  auto again = client->Execute("query-status");
  ASSERT_TRUE(again.ok()) << again.status();

  // The largest reply QEMU has: one line of well over one 64 KiB read.
  auto schema = client->Execute("query-qmp-schema");
  ASSERT_TRUE(schema.ok()) << schema.status();
  ASSERT_TRUE(schema->is_array());
  EXPECT_GT(schema->dump().size(), size_t{64 << 10});
}

TEST_F(QmpClientQemu, ContStopQuitProduceEventsAndQemuExits) {
  QemuProcess qemu(qemu_, {"-machine", "pc", "-m", "32", "-S"});
  ASSERT_TRUE(qemu.started());
  auto connected = qemu.ConnectWhenReady();
  ASSERT_TRUE(connected.ok()) << connected.status() << "\n" << qemu.Log();
  std::unique_ptr<QmpClient> client = std::move(connected).value();

  auto cont = client->Execute("cont");
  ASSERT_TRUE(cont.ok()) << cont.status() << "\n" << qemu.Log();
  auto resume = client->WaitEvent("RESUME", kWaitMs);
  ASSERT_TRUE(resume.ok()) << resume.status();
  EXPECT_GT(resume->timestamp_us, 0);
  auto running = client->QueryStatus();
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->status, "running");
  EXPECT_TRUE(running->running);

  auto stop = client->Execute("stop");
  ASSERT_TRUE(stop.ok()) << stop.status();
  auto stopped = client->WaitEvent("STOP", kWaitMs);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_GE(stopped->timestamp_us, resume->timestamp_us);
  auto paused = client->QueryStatus();
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->status, "paused");
  EXPECT_FALSE(paused->running);

  auto quit = client->Execute("quit");
  ASSERT_TRUE(quit.ok()) << quit.status();
  // QEMU announces SHUTDOWN before it replies to quit, so the event is queued by now.
  auto shutdown = client->WaitEvent("SHUTDOWN", kWaitMs);
  ASSERT_TRUE(shutdown.ok()) << shutdown.status();
  EXPECT_EQ(shutdown->data.value("reason", ""), "host-qmp-quit");

  std::optional<int> exit_status = qemu.WaitExit(30000);
  ASSERT_TRUE(exit_status.has_value()) << "QEMU still runs after quit\n" << qemu.Log();
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0) << qemu.Log();

  auto after = client->Execute("query-status");
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(client->connected());
}

TEST_F(QmpClientQemu, SecondClientIsNotGreetedWhileTheFirstHoldsTheMonitor) {
  QemuProcess qemu(qemu_, {"-machine", "none", "-S"});
  ASSERT_TRUE(qemu.started());
  auto first = qemu.ConnectWhenReady();
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << qemu.Log();

  auto second = QmpClient::Connect(qemu.socket(), 300);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kTimedOut);
  EXPECT_EQ(second.status().message(),
            qemu.socket() +
                " did not greet as a QMP monitor within 300 ms; another client may hold the "
                "monitor (QEMU serves one at a time), or QEMU is hung");

  // Once the first client is gone, a new one is served.
  std::unique_ptr<QmpClient> holder = std::move(first).value();
  holder.reset();
  auto third = QmpClient::Connect(qemu.socket(), kWaitMs);
  ASSERT_TRUE(third.ok()) << third.status();
  auto status = (*third)->Execute("query-status");
  ASSERT_TRUE(status.ok()) << status.status();
}

}  // namespace
}  // namespace cdp
