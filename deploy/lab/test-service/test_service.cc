// cdp-test-service: the lab source server's small durable service (docs/lab-source-os.md §5).
//
// A line protocol over TCP. `PUT <n>` appends record n to the data file and answers `OK <n>`
// only after fdatasync(), so every acknowledged record survives a crash of the VM; after a
// cutover the client checks that the target answers LAST and HAS for everything it was told OK.
// `WHO` answers the machine's SMBIOS UUID, which tells the source VM from the target VM.
//
// One thread, one poll() loop, any number of clients. The PUTs of all clients that arrive in
// the same loop turn share one write() and one fdatasync() (group commit). Statically linked
// (CMakeLists.txt) so it runs in the busybox image without libraries: it uses libc and the C++
// standard library only.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

constexpr char kProg[] = "cdp-test-service";
constexpr size_t kMaxLine = 4096;              // a longer request closes the connection
constexpr size_t kMaxQueuedOutput = 64 << 10;  // stop reading a client that does not read
constexpr size_t kMaxClients = 1000;

void Log(const std::string& msg) {
  std::string line = std::string(kProg) + ": " + msg + "\n";
  // stderr is the console in the lab; nothing useful to do when it is gone.
  [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
}

std::string Errno(int err) { return std::strerror(err); }

// ParseRecordNumber: n from a decimal string of digits only (no sign, no spaces), at most
// 2^64-1. Returns false for anything else.
bool ParseRecordNumber(std::string_view s, uint64_t* n) {
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *n = v;
  return true;
}

// WriteAll: write() until all of data is written. Returns "" or the error text.
std::string WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t w = write(fd, data.data(), data.size());
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno(errno);
    }
    data.remove_prefix(static_cast<size_t>(w));
  }
  return "";
}

// RecordFile: the data file, one decimal record number per line, appended only. It keeps the
// set of committed numbers in memory. Not thread-safe; the service has one thread.
class RecordFile {
 public:
  RecordFile() = default;
  RecordFile(const RecordFile&) = delete;
  RecordFile& operator=(const RecordFile&) = delete;
  ~RecordFile() {
    if (fd_ >= 0) close(fd_);
  }

  // Open: opens (creating when absent) and loads the file at path. A last line without its
  // newline is what a crash in the middle of an append leaves: it was never acknowledged, so it
  // is dropped and the file truncated to its last complete line. Any other line that is not a
  // record number is damage this service cannot explain, and Open refuses to start. Returns ""
  // or an error an operator can act on.
  [[nodiscard]] std::string Open(const std::string& path) {
    path_ = path;
    bool created = true;
    fd_ = open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno == EEXIST) {
      created = false;
      fd_ = open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
    }
    if (fd_ < 0) {
      return "cannot open the data file " + path + ": " + Errno(errno) +
             "; its directory must exist and be writable (--data PATH)";
    }
    if (created) {
      // The new file's directory entry must be durable before the first OK.
      const size_t slash = path.rfind('/');
      const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
      const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd < 0 || fsync(dfd) != 0) {
        const int err = errno;
        if (dfd >= 0) close(dfd);
        return "cannot fsync the directory " + dir + " of the new data file: " + Errno(err);
      }
      close(dfd);
      Log("created the data file " + path);
      return "";
    }
    std::string data;
    char buf[1 << 16];
    for (;;) {
      const ssize_t r = pread(fd_, buf, sizeof buf, static_cast<off_t>(data.size()));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return "cannot read the data file " + path + ": " + Errno(errno);
      if (r == 0) break;
      data.append(buf, static_cast<size_t>(r));
    }
    size_t start = 0, line_no = 0;
    for (size_t nl; (nl = data.find('\n', start)) != std::string::npos; start = nl + 1) {
      ++line_no;
      const std::string_view line(data.data() + start, nl - start);
      uint64_t n;
      if (!ParseRecordNumber(line, &n)) {
        return "data file " + path + " line " + std::to_string(line_no) + " (byte " +
               std::to_string(start) + ") is not a record number: '" +
               std::string(line.substr(0, 40)) +
               "'; the file is damaged: move it away to start empty";
      }
      Insert(n);
    }
    if (start < data.size()) {
      Log("data file " + path + ": dropping a torn last line ('" +
          data.substr(start, std::min<size_t>(data.size() - start, 40)) + "', " +
          std::to_string(data.size() - start) +
          " bytes without a newline, never acknowledged); "
          "truncating to " +
          std::to_string(start) + " bytes");
      if (ftruncate(fd_, static_cast<off_t>(start)) != 0 || fdatasync(fd_) != 0) {
        return "cannot truncate the torn last line of " + path + ": " + Errno(errno);
      }
    }
    Log("loaded " + std::to_string(committed_.size()) + " records from " + path + " (last " +
        std::to_string(last_) + ")");
    return "";
  }

  bool Has(uint64_t n) const { return committed_.count(n) != 0; }
  // Last: the highest committed record number, 0 when there is none.
  uint64_t Last() const { return last_; }

  // Commit: appends a line per number and fdatasync()s the file; only then are the numbers
  // committed (Has, Last). Returns "" or the error; after an error the file's tail is unknown
  // (the caller must stop: a later fdatasync could succeed without the lost pages).
  [[nodiscard]] std::string Commit(const std::vector<uint64_t>& numbers) {
    std::string lines;
    for (uint64_t n : numbers) lines += std::to_string(n) + "\n";
    std::string err = WriteAll(fd_, lines);
    if (err.empty() && fdatasync(fd_) != 0) err = Errno(errno);
    if (!err.empty()) return "cannot append to the data file " + path_ + ": " + err;
    for (uint64_t n : numbers) Insert(n);
    return "";
  }

 private:
  void Insert(uint64_t n) {
    committed_.insert(n);
    if (n > last_) last_ = n;
  }

  int fd_ = -1;
  std::string path_;
  std::unordered_set<uint64_t> committed_;
  uint64_t last_ = 0;
};

struct Options {
  std::string bind = "0.0.0.0";
  int port = -1;
  std::string data;
  std::string uuid_file = "/sys/class/dmi/id/product_uuid";
};

// One connection. `in` holds bytes not yet taken as requests, `out` replies not yet sent.
struct Client {
  int fd = -1;
  std::string in, out;
  bool waiting_commit = false;   // its current PUT is in the batch: no more requests until then
  bool eof = false;              // the client shut down its side; close once `out` is sent
  bool close_after_out = false;  // a protocol error ends the connection once `out` is sent
};

class Service {
 public:
  explicit Service(Options options) : options_(std::move(options)) {}

  // Start: loads the data file and listens. Returns "" or the error.
  [[nodiscard]] std::string Start() {
    std::string err = records_.Open(options_.data);
    if (!err.empty()) return err;
    sockaddr_storage ss{};
    socklen_t len;
    const bool v6 = options_.bind.find(':') != std::string::npos;
    if (v6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      a->sin6_family = AF_INET6;
      a->sin6_port = htons(static_cast<uint16_t>(options_.port));
      if (inet_pton(AF_INET6, options_.bind.c_str(), &a->sin6_addr) != 1) return BadBind();
      len = sizeof *a;
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      a->sin_family = AF_INET;
      a->sin_port = htons(static_cast<uint16_t>(options_.port));
      if (inet_pton(AF_INET, options_.bind.c_str(), &a->sin_addr) != 1) return BadBind();
      len = sizeof *a;
    }
    listen_fd_ = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) return "socket: " + Errno(errno);
    const int one = 1;
    // A restarted service must get its port back while old connections sit in TIME_WAIT.
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
        listen(listen_fd_, 128) != 0) {
      return "cannot listen on " + Endpoint() + ": " + Errno(errno) +
             "; is another service on that port? (--port, --bind)";
    }
    Log("listening on " + Endpoint() + "; data file " + options_.data);
    return "";
  }

  // Run: serves until a commit fails; returns its error (the process must then exit).
  std::string Run() {
    std::vector<pollfd> fds;
    for (;;) {
      if (!accepting_ && std::chrono::steady_clock::now() >= accept_retry_at_) accepting_ = true;
      fds.clear();
      fds.push_back({listen_fd_,
                     static_cast<short>(accepting_ && clients_.size() < kMaxClients ? POLLIN : 0),
                     0});
      bool ready = false;  // a client has a request that can be handled without waiting
      for (const Client& c : clients_) {
        short events = 0;
        if (!c.eof && !c.close_after_out && c.in.size() < kMaxLine &&
            c.out.size() < kMaxQueuedOutput) {
          events |= POLLIN;
        }
        if (!c.out.empty()) events |= POLLOUT;
        fds.push_back({c.fd, events, 0});
        if (CanHandle(c) && c.in.find('\n') != std::string::npos) ready = true;
      }
      if (poll(fds.data(), fds.size(), ready ? 0 : accepting_ ? -1 : 1000) < 0) {
        if (errno == EINTR) continue;
        return "poll: " + Errno(errno);
      }
      // fds[i + 1] belongs to clients_[i]; accepting afterwards only appends to clients_.
      for (size_t i = 0; i + 1 < fds.size(); ++i) {
        if (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) Receive(&clients_[i]);
      }
      if (fds[0].revents & POLLIN) Accept();
      std::string err = HandleRequests();
      for (Client& c : clients_) Send(&c);
      if (!err.empty()) return err;
      RemoveFinished();
    }
  }

 private:
  std::string BadBind() const {
    return "--bind " + options_.bind + " is not a numeric IPv4 or IPv6 address";
  }
  std::string Endpoint() const {
    return (options_.bind.find(':') != std::string::npos ? "[" + options_.bind + "]"
                                                         : options_.bind) +
           ":" + std::to_string(options_.port);
  }

  static bool CanHandle(const Client& c) {
    return c.fd >= 0 && !c.waiting_commit && !c.close_after_out && c.out.size() < kMaxQueuedOutput;
  }

  void Accept() {
    for (;;) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          // Out of descriptors or memory: the listening socket stays readable, so stop polling
          // it (no busy loop) for a second or until a client goes; the new client waits in the
          // backlog.
          Log("accept: " + Errno(errno) + "; accepting again in 1 s or when a client leaves");
          accepting_ = false;
          accept_retry_at_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        }
        return;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      Client c;
      c.fd = fd;
      clients_.push_back(std::move(c));
      if (clients_.size() >= kMaxClients) return;
    }
  }

  void Receive(Client* c) {
    char buf[16 << 10];
    for (;;) {
      const ssize_t r = recv(c->fd, buf, sizeof buf, 0);
      if (r > 0) {
        c->in.append(buf, static_cast<size_t>(r));
        if (c->in.size() >= kMaxLine) return;
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (r < 0 && errno == EINTR) continue;
      // 0: the client shut down its sending side. Its complete requests are still answered;
      // an incomplete last one is dropped (a half-sent "PUT 123" must not store 12).
      c->eof = true;
      if (r < 0) Drop(c);
      return;
    }
  }

  void Send(Client* c) {
    while (c->fd >= 0 && !c->out.empty()) {
      const ssize_t w = send(c->fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
      if (w > 0) {
        c->out.erase(0, static_cast<size_t>(w));
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else {
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) Drop(c);
        return;
      }
    }
  }

  static void Drop(Client* c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
  }

  void RemoveFinished() {
    std::vector<Client> kept;
    kept.reserve(clients_.size());
    for (Client& c : clients_) {
      if (c.fd >= 0 && c.out.empty() &&
          (c.close_after_out || (c.eof && c.in.find('\n') == std::string::npos))) {
        Drop(&c);
      }
      if (c.fd >= 0) kept.push_back(std::move(c));
    }
    if (kept.size() < clients_.size()) accepting_ = true;
    clients_.swap(kept);
  }

  // HandleRequests: answers every request that can be answered now; the PUTs of new records
  // go into one batch, committed at the end, and their clients wait for it.
  std::string HandleRequests() {
    std::vector<uint64_t> batch;                       // new record numbers, each once
    std::vector<std::pair<size_t, uint64_t>> waiting;  // (client index, n) answered after commit
    std::unordered_set<uint64_t> in_batch;
    for (size_t i = 0; i < clients_.size(); ++i) {
      Client& c = clients_[i];
      while (CanHandle(c)) {
        const size_t nl = c.in.find('\n');
        if (nl == std::string::npos) {
          if (c.in.size() >= kMaxLine) {
            c.out += "ERR request longer than " + std::to_string(kMaxLine) + " bytes\n";
            c.close_after_out = true;
          }
          break;
        }
        std::string line = c.in.substr(0, nl);
        c.in.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();  // telnet, nc -C
        uint64_t n;
        if (IsNewPut(line, &n, &c.out)) {
          if (in_batch.insert(n).second) batch.push_back(n);
          waiting.emplace_back(i, n);
          c.waiting_commit = true;
        }
      }
    }
    if (batch.empty()) return "";
    const std::string err = records_.Commit(batch);
    for (auto& [i, n] : waiting) {
      Client& c = clients_[i];
      c.waiting_commit = false;
      c.out += err.empty() ? "OK " + std::to_string(n) + "\n" : "ERR " + err + "\n";
    }
    return err;
  }

  // IsNewPut: handles one request. Returns true, with *n set, for a PUT of a record that is
  // not committed yet (the caller batches it); otherwise appends the reply to *out.
  bool IsNewPut(const std::string& line, uint64_t* n, std::string* out) {
    std::vector<std::string_view> words;
    std::string_view rest(line);
    while (!rest.empty()) {
      const size_t start = rest.find_first_not_of(" \t");
      if (start == std::string_view::npos) break;
      rest.remove_prefix(start);
      const size_t end = std::min(rest.find_first_of(" \t"), rest.size());
      words.push_back(rest.substr(0, end));
      rest.remove_prefix(end);
    }
    if (words.empty()) {
      *out += "ERR empty request; expected PUT <n>, LAST, HAS <n> or WHO\n";
      return false;
    }
    const std::string_view cmd = words[0];
    const size_t args = words.size() - 1;
    if (cmd == "PUT" || cmd == "HAS") {
      if (args != 1) {
        *out += "ERR " + std::string(cmd) + " takes one record number\n";
        return false;
      }
      if (!ParseRecordNumber(words[1], n)) {
        *out += "ERR '" + std::string(words[1].substr(0, 40)) +
                "' is not a record number (0 to 18446744073709551615)\n";
        return false;
      }
      if (cmd == "HAS") {
        *out += records_.Has(*n) ? "YES\n" : "NO\n";
        return false;
      }
      if (records_.Has(*n)) {
        *out += "OK " + std::to_string(*n) + "\n";
        return false;
      }
      return true;
    }
    if (cmd == "LAST" || cmd == "WHO") {
      if (args != 0) {
        *out += "ERR " + std::string(cmd) + " takes no argument\n";
      } else if (cmd == "LAST") {
        *out += std::to_string(records_.Last()) + "\n";
      } else {
        *out += Who() + "\n";
      }
      return false;
    }
    std::string shown;
    for (char ch : cmd.substr(0, 40)) shown += (ch >= 0x20 && ch < 0x7f) ? ch : '?';
    *out += "ERR unknown request '" + shown + "'; expected PUT <n>, LAST, HAS <n> or WHO\n";
    return false;
  }

  // Who: the SMBIOS product UUID in lower case, read each time (it is one small sysfs file).
  std::string Who() const {
    const int fd = open(options_.uuid_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "ERR cannot read " + options_.uuid_file + ": " + Errno(errno);
    char buf[128];
    const ssize_t r = read(fd, buf, sizeof buf - 1);
    const int err = errno;
    close(fd);
    if (r < 0) return "ERR cannot read " + options_.uuid_file + ": " + Errno(err);
    std::string uuid(buf, static_cast<size_t>(r));
    while (!uuid.empty() && (uuid.back() == '\n' || uuid.back() == ' ')) uuid.pop_back();
    for (char& ch : uuid) {
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
      if (ch < 0x20 || ch >= 0x7f) ch = '?';
    }
    if (uuid.empty()) return "ERR " + options_.uuid_file + " is empty";
    return uuid;
  }

  Options options_;
  RecordFile records_;
  int listen_fd_ = -1;
  bool accepting_ = true;  // false for a while after accept() ran out of descriptors or memory
  std::chrono::steady_clock::time_point accept_retry_at_;
  std::vector<Client> clients_;
};

constexpr char kUsage[] =
    "usage: cdp-test-service --port PORT --data PATH [--bind ADDR] [--uuid-file PATH]\n"
    "\n"
    "The lab's durable test service: one request per line over TCP, one reply line each.\n"
    "  PUT <n>   append record n (0..2^64-1) to PATH, fdatasync, then answer 'OK <n>'\n"
    "  LAST      the highest committed record number ('0' when there is none)\n"
    "  HAS <n>   'YES' or 'NO'\n"
    "  WHO       this machine's SMBIOS UUID, lower case\n"
    "  other     'ERR <what>'\n"
    "\n"
    "  --port PORT       TCP port to listen on\n"
    "  --data PATH       the record file (created when absent; its directory must exist)\n"
    "  --bind ADDR       numeric IPv4 or IPv6 address to listen on (default 0.0.0.0)\n"
    "  --uuid-file PATH  what WHO reads (default /sys/class/dmi/id/product_uuid)\n"
    "\n"
    "Exit status: 1 the data file is unusable or a write failed; 2 bad arguments.\n";

int UsageError(const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n%s", kProg, msg.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return UsageError(arg + " needs a value");
    }
    if (name == "--port") {
      uint64_t port;
      if (!ParseRecordNumber(value, &port) || port == 0 || port > 65535) {
        return UsageError("--port " + value + " is not a TCP port (1-65535)");
      }
      options.port = static_cast<int>(port);
    } else if (name == "--data") {
      options.data = value;
    } else if (name == "--bind") {
      options.bind = value;
    } else if (name == "--uuid-file") {
      options.uuid_file = value;
    } else {
      return UsageError("unknown argument " + arg);
    }
  }
  if (options.port < 0) return UsageError("--port is required");
  if (options.data.empty()) return UsageError("--data is required");
  std::signal(SIGPIPE, SIG_IGN);
  Service service(options);
  std::string err = service.Start();
  if (err.empty()) err = service.Run();
  Log("error: " + err);
  return 1;
}
