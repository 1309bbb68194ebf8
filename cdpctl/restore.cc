#include "cdp/ctl/restore.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <thread>

#include "cdp/core/block_device.h"
#include "cdp/core/host_command.h"
#include "cdp/core/record.h"
#include "cdp/core/time_text.h"
#include "cdp/ctl/image_export.h"
#include "cdp/journal/control_client.h"
#include "cdp/nbd/nbd_server.h"

namespace cdp::ctl {

namespace {

constexpr uint32_t kReadChunk = 4u << 20;  // one ImageReadRequest
constexpr size_t kReadsInFlight = 4;
constexpr size_t kSparseBlock = 4096;  // zero runs of this size stay holes
constexpr int kTimeoutMs = 60000;

std::string Mib(uint64_t bytes) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// Writes the non-zero kSparseBlock runs of `data` at `offset`.
Status WriteSparse(int fd, const std::string& path, uint64_t offset, const std::string& data,
                   uint64_t* written) {
  size_t pos = 0;
  while (pos < data.size()) {
    size_t len = std::min(kSparseBlock, data.size() - pos);
    if (IsAllZero(std::span<const char>(data.data() + pos, len))) {
      pos += len;
      continue;
    }
    size_t end = pos + len;
    while (end < data.size()) {
      const size_t next = std::min(kSparseBlock, data.size() - end);
      if (IsAllZero(std::span<const char>(data.data() + end, next))) break;
      end += next;
    }
    size_t done = pos;
    while (done < end) {
      const ssize_t n = pwrite(fd, data.data() + done, end - done, offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "writing " + path + " at offset " +
                                            std::to_string(offset + done));
      }
      done += static_cast<size_t>(n);
    }
    *written += end - pos;
    pos = end;
  }
  return Status::Ok();
}

// The temporary file: removed when this goes out of scope unless kept.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) close(fd_);
    if (!kept_) unlink(path_.c_str());
  }
  Status Create() {
    fd_ = open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return Status::FromErrno(errno, "creating " + path_);
    return Status::Ok();
  }
  Status SyncAndClose() {
    if (fsync(fd_) != 0) return Status::FromErrno(errno, "syncing " + path_);
    const int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) return Status::FromErrno(errno, "closing " + path_);
    return Status::Ok();
  }
  void Keep() { kept_ = true; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  bool kept_ = false;
};

// Prints progress: in place on a terminal, else a line every 5 s.
class ProgressBar {
 public:
  ProgressBar(std::ostream& out, bool tty, uint64_t total)
      : out_(out), tty_(tty), total_(total), start_(std::chrono::steady_clock::now()) {}

  void Update(uint64_t done, bool final) {
    const auto now = std::chrono::steady_clock::now();
    const auto min_gap = tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000);
    if (!final && now - last_ < min_gap) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double pct = total_ == 0 ? 100.0 : 100.0 * static_cast<double>(done) / total_;
    char line[160];
    snprintf(line, sizeof(line), "restore: %5.1f%% %s of %s, %.0f MB/s", pct, Mib(done).c_str(),
             Mib(total_).c_str(), secs > 0 ? static_cast<double>(done) / secs / 1e6 : 0.0);
    if (tty_) {
      const int width = 30;
      const int filled = static_cast<int>(pct / 100.0 * width);
      out_ << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] "
           << line << (final ? "\n" : "") << std::flush;
    } else {
      out_ << line << "\n" << std::flush;
    }
  }

 private:
  std::ostream& out_;
  const bool tty_;
  const uint64_t total_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_{};
};

// Renames the complete, synced temporary file to `output` and syncs the directory. Without
// `force` an output that appeared meanwhile is not replaced (AlreadyExists).
Status Publish(TempFile* file, const std::string& output, bool force) {
  const int rc = force ? rename(file->path().c_str(), output.c_str())
                       : renameat2(AT_FDCWD, file->path().c_str(), AT_FDCWD, output.c_str(),
                                   RENAME_NOREPLACE);
  if (rc != 0 && errno == EEXIST) {
    return Status::AlreadyExists("output " + output +
                                 " appeared while restoring; pass --force to replace it (nothing "
                                 "was written under that name)");
  }
  if (rc != 0) {
    return Status::FromErrno(errno, "renaming " + file->path() + " to " + output);
  }
  file->Keep();
  const std::filesystem::path out(output);
  const std::string dir = out.has_parent_path() ? out.parent_path().string() : ".";
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return Status::Ok();
}

// Checks the output path before anything is asked of the server.
Status CheckOutput(const RestoreOptions& o) {
  const std::filesystem::path out(o.output);
  const std::filesystem::path dir = out.has_parent_path() ? out.parent_path() : ".";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return Status::InvalidArgument("output directory " + dir.string() +
                                   " does not exist; create it first");
  }
  struct stat st;
  if (lstat(o.output.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      return Status::InvalidArgument("output " + o.output +
                                     " exists and is not a regular file; restore writes image "
                                     "files (raw, or qcow2 for a .qcow2 name)");
    }
    if (!o.force) {
      return Status::AlreadyExists("output " + o.output +
                                   " exists; pass --force to replace it (nothing was written)");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<AtSpec> ParseAt(std::string_view text, uint64_t now_ns) {
  const std::string forms =
      "; give an LSN (1234), a time before now (-90s, -15m, -2h, -1d) or an RFC 3339 time "
      "(2026-11-26T17:39:40Z)";
  if (text.empty()) return Status::InvalidArgument("--at is empty" + forms);
  auto digits = [](std::string_view s) {
    return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
  };
  if (text.substr(0, 6) == "group:") {
    const std::string_view id = text.substr(6);
    if (!digits(id) || id.size() > 19 || std::stoull(std::string(id)) == 0) {
      return Status::InvalidArgument("--at " + std::string(text) +
                                     ": a group point's id is a positive number, as `cdpctl "
                                     "points` shows it (group:1765100000123456)");
    }
    AtSpec at;
    at.group_point_id = std::stoull(std::string(id));
    return at;
  }
  if (digits(text)) {
    if (text.size() > 19) return Status::InvalidArgument("--at " + std::string(text) + ": LSN too large");
    const uint64_t lsn = std::stoull(std::string(text));
    if (lsn == 0) return Status::InvalidArgument("--at 0: LSNs start at 1" + forms);
    return AtSpec{lsn, 0};
  }
  if (text[0] == '-') {
    const std::string_view number = text.substr(1, text.size() - 2);
    const char unit = text.back();
    uint64_t scale = 0;
    switch (unit) {
      case 's': scale = 1; break;
      case 'm': scale = 60; break;
      case 'h': scale = 3600; break;
      case 'd': scale = 86400; break;
    }
    if (text.size() < 3 || scale == 0 || !digits(number) || number.size() > 9) {
      return Status::InvalidArgument("--at " + std::string(text) +
                                     " is not a relative time" + forms);
    }
    const uint64_t back_s = std::stoull(std::string(number)) * scale;  // < 10^9 * 86400
    if (back_s >= now_ns / 1000000000ull) {
      return Status::InvalidArgument("--at " + std::string(text) + " is before 1970" + forms);
    }
    return AtSpec{0, now_ns - back_s * 1000000000ull};
  }
  auto t = ParseRfc3339(text);
  if (!t.ok()) return Status::InvalidArgument("--at " + t.status().message() + forms);
  return AtSpec{0, *t};
}

ImageFormat FormatForPath(const std::string& path) {
  const std::string ext = ".qcow2";
  return path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0
             ? ImageFormat::kQcow2
             : ImageFormat::kRaw;
}

namespace {

void PrintStart(std::ostream& progress, const RestoreOptions& o, const v1::ConsistencyPoint& p,
                uint64_t size) {
  progress << "restore: volume " << o.volume << " at LSN " << p.lsn() << " ("
           << FormatRfc3339(p.time_ns()) << "), " << Mib(size) << ", to " << o.output << "\n";
}

// DIR/.NAME.restore-PID: the temporary files' common prefix, beside the output.
std::string TempStem(const std::string& output) {
  const std::filesystem::path out(output);
  const std::string dir = out.has_parent_path() ? out.parent_path().string() + "/" : "";
  return dir + "." + out.filename().string() + ".restore-" + std::to_string(getpid());
}

// qcow2: qemu-img convert reads the image from a private read-only NBD export of it (the same
// one `cdpctl export` serves) and writes the qcow2, sparse, to the temporary file.
Result<RestoreResult> RestoreQcow2(const RestoreOptions& o, std::ostream& progress,
                                   bool progress_tty) {
  const auto started = std::chrono::steady_clock::now();
  CDP_ASSIGN_OR_RETURN(auto target, RemoteImageTarget::Open(o.server, o.volume, o.at));
  target->set_cancel(o.cancel);
  RestoreResult result;
  result.point = target->point();
  result.size_bytes = target->size();
  result.format = ImageFormat::kQcow2;
  PrintStart(progress, o, result.point, result.size_bytes);

  char sock_dir[] = "/tmp/cdpctl-restore.XXXXXX";
  if (mkdtemp(sock_dir) == nullptr) return Status::FromErrno(errno, "creating a socket dir in /tmp");
  const std::string sock = std::string(sock_dir) + "/nbd.sock";
  struct RemoveDir {
    std::string path;
    ~RemoveDir() { std::error_code ec; std::filesystem::remove_all(path, ec); }
  } remove_sock_dir{sock_dir};
  nbd::NbdServer::Options nbd;
  nbd.listen_address = "unix:" + sock;
  nbd.export_name = o.volume;
  nbd.target = target.get();
  nbd.read_only = true;
  nbd.max_block_size = 8u << 20;
  nbd.unix_socket_mode = 0600;
  CDP_ASSIGN_OR_RETURN(auto server, nbd::NbdServer::Start(nbd));

  TempFile qcow2(TempStem(o.output) + ".qcow2");
  // Claimed with O_EXCL (so never another's file), then written over by qemu-img.
  CDP_RETURN_IF_ERROR(qcow2.Create());
  const std::vector<std::string> argv = {
      "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
      "nbd+unix:///" + o.volume + "?socket=" + sock, qcow2.path()};
  Result<CommandResult> converted = Status::Internal("not run");
  std::thread convert([&] { converted = RunHostCommand(argv, 24 * 3600 * 1000); });
  ProgressBar bar(progress, progress_tty, result.size_bytes);
  std::atomic<bool> finished{false};
  std::thread ticker([&] {
    while (!finished) {
      bar.Update(target->bytes_read(), false);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  convert.join();
  finished = true;
  ticker.join();
  server->Stop();
  if (o.cancel != nullptr && *o.cancel) {
    return Status::Aborted("interrupted at " + Mib(target->bytes_read()) + " of " +
                           Mib(result.size_bytes) + "; nothing was left under " + o.output);
  }
  if (!converted.ok()) return converted.status();
  if (converted->exit_code != 0) {
    return Status::IOError(CommandLine(argv) + " failed: " + converted->output);
  }
  bar.Update(result.size_bytes, true);
  const int fd = open(qcow2.path().c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fsync(fd) != 0 || fstat(fd, &st) != 0) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return Status::FromErrno(err, "syncing " + qcow2.path());
  }
  close(fd);
  result.data_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
  CDP_RETURN_IF_ERROR(Publish(&qcow2, o.output, o.force));
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace

Result<AtSpec> ResolveGroupPoint(journal::ControlClient* client, const std::string& volume,
                                 const AtSpec& at) {
  if (at.group_point_id == 0) return at;
  CDP_ASSIGN_OR_RETURN(auto points, client->Points(volume, kTimeoutMs));
  for (const auto& p : points) {
    if (p.group_point_id() == at.group_point_id) return AtSpec{p.lsn(), 0, 0};
  }
  return Status::NotFound("volume " + volume + " has no point of group point " +
                          std::to_string(at.group_point_id) + "; `cdpctl points --volume " +
                          volume + "` lists its points and their group points");
}

Result<RestoreResult> Restore(const RestoreOptions& o, std::ostream& progress, bool progress_tty) {
  CDP_RETURN_IF_ERROR(CheckOutput(o));
  if (FormatForPath(o.output) == ImageFormat::kQcow2) return RestoreQcow2(o, progress, progress_tty);
  const auto started = std::chrono::steady_clock::now();
  CDP_ASSIGN_OR_RETURN(auto client, journal::ControlClient::Connect(o.server, 5000));
  CDP_ASSIGN_OR_RETURN(AtSpec at, ResolveGroupPoint(client.get(), o.volume, o.at));
  CDP_ASSIGN_OR_RETURN(v1::ImageOpenReply image,
                       client->OpenImage(o.volume, at.lsn, at.time_ns, kTimeoutMs));
  struct CloseOnExit {
    journal::ControlClient* client;
    uint64_t id;
    ~CloseOnExit() { client->CloseImage(id); }
  } close_image{client.get(), image.image_id()};
  RestoreResult result;
  result.point = image.point();
  result.size_bytes = image.size_bytes();
  result.format = ImageFormat::kRaw;
  PrintStart(progress, o, result.point, result.size_bytes);

  TempFile raw(TempStem(o.output) + ".raw");
  CDP_RETURN_IF_ERROR(raw.Create());
  if (ftruncate(raw.fd(), static_cast<off_t>(image.size_bytes())) != 0) {
    return Status::FromErrno(errno, "sizing " + raw.path());
  }

  ProgressBar bar(progress, progress_tty, image.size_bytes());
  std::deque<uint64_t> in_flight;  // offsets asked for, in order
  uint64_t next = 0, done = 0;
  std::string data;
  while (done < image.size_bytes()) {
    if (o.cancel != nullptr && *o.cancel) {
      return Status::Aborted("interrupted at " + Mib(done) + " of " + Mib(image.size_bytes()) +
                             "; nothing was left under " + o.output);
    }
    while (in_flight.size() < kReadsInFlight && next < image.size_bytes()) {
      const uint32_t len =
          static_cast<uint32_t>(std::min<uint64_t>(kReadChunk, image.size_bytes() - next));
      CDP_RETURN_IF_ERROR(client->SendImageRead(image.image_id(), next, len, kTimeoutMs));
      in_flight.push_back(next);
      next += len;
    }
    CDP_ASSIGN_OR_RETURN(v1::ImageReadReply reply, client->ReceiveImageRead(&data, kTimeoutMs));
    const uint64_t expected_len = std::min<uint64_t>(kReadChunk, image.size_bytes() - reply.offset());
    if (reply.offset() != in_flight.front() || reply.length() != expected_len) {
      return Status::Corruption("image read reply for offset " + std::to_string(reply.offset()) +
                                ", expected " + std::to_string(in_flight.front()));
    }
    in_flight.pop_front();
    if (!reply.zero()) {
      CDP_RETURN_IF_ERROR(WriteSparse(raw.fd(), raw.path(), reply.offset(), data,
                                      &result.data_bytes));
    }
    done += reply.length();
    bar.Update(done, false);
  }
  CDP_RETURN_IF_ERROR(raw.SyncAndClose());
  bar.Update(done, true);
  CDP_RETURN_IF_ERROR(Publish(&raw, o.output, o.force));
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace cdp::ctl
