#include "cdp/ctl/image_export.h"

#include <chrono>
#include <thread>

#include "cdp/core/logging.h"
#include "cdp/nbd/nbd_server.h"

namespace cdp::ctl {

namespace {
constexpr uint32_t kMaxRead = 8u << 20;  // the server's cap on one ImageReadRequest
constexpr int kTimeoutMs = 60000;
}  // namespace

Result<std::unique_ptr<RemoteImageTarget>> RemoteImageTarget::Open(const std::string& server,
                                                                   const std::string& volume,
                                                                   const AtSpec& at) {
  std::unique_ptr<RemoteImageTarget> t(new RemoteImageTarget());
  CDP_ASSIGN_OR_RETURN(t->client_, journal::ControlClient::Connect(server, 5000));
  CDP_ASSIGN_OR_RETURN(AtSpec resolved, ResolveGroupPoint(t->client_.get(), volume, at));
  CDP_ASSIGN_OR_RETURN(v1::ImageOpenReply image,
                       t->client_->OpenImage(volume, resolved.lsn, resolved.time_ns, kTimeoutMs));
  t->volume_ = volume;
  t->image_id_ = image.image_id();
  t->size_ = image.size_bytes();
  t->point_ = image.point();
  return t;
}

RemoteImageTarget::~RemoteImageTarget() {
  if (client_) client_->CloseImage(image_id_);
}

Status RemoteImageTarget::ReadOnce(uint64_t offset, std::span<char> buf) {
  std::string data;
  for (size_t done = 0; done < buf.size();) {
    if (cancel_ != nullptr && *cancel_) return Status::Aborted("interrupted");
    const uint32_t len = static_cast<uint32_t>(std::min<size_t>(kMaxRead, buf.size() - done));
    CDP_RETURN_IF_ERROR(client_->SendImageRead(image_id_, offset + done, len, kTimeoutMs));
    CDP_ASSIGN_OR_RETURN(v1::ImageReadReply reply, client_->ReceiveImageRead(&data, kTimeoutMs));
    if (reply.offset() != offset + done || reply.length() != len) {
      return Status::Corruption("image read reply for " + std::to_string(reply.length()) +
                                " bytes at " + std::to_string(reply.offset()) + ", asked for " +
                                std::to_string(len) + " at " + std::to_string(offset + done));
    }
    if (reply.zero()) {
      std::fill(buf.begin() + done, buf.begin() + done + len, '\0');
    } else {
      std::copy(data.begin(), data.end(), buf.begin() + done);
    }
    done += len;
  }
  return Status::Ok();
}

Status RemoteImageTarget::Read(uint64_t offset, std::span<char> buf) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s = ReadOnce(offset, buf);
  if (s.code() == StatusCode::kNotFound) {
    // The server closed the image (idle, or restarted): open the same point again.
    auto image = client_->OpenImage(volume_, point_.lsn(), 0, kTimeoutMs);
    if (!image.ok()) return image.status();
    if (image->point().lsn() != point_.lsn()) {
      return Status::FailedPrecondition("volume " + volume_ + ": LSN " +
                                        std::to_string(point_.lsn()) +
                                        " is no longer a restorable point");
    }
    image_id_ = image->image_id();
    s = ReadOnce(offset, buf);
  }
  if (s.ok()) bytes_read_ += buf.size();
  return s;
}

Status RemoteImageTarget::Write(uint64_t, SharedBytes, bool) {
  return Status::NotSupported("the export of a point in time is read-only");
}
Status RemoteImageTarget::Trim(uint64_t, uint32_t) {
  return Status::NotSupported("the export of a point in time is read-only");
}
Status RemoteImageTarget::WriteZeroes(uint64_t, uint32_t, bool) {
  return Status::NotSupported("the export of a point in time is read-only");
}

Status ServeExport(const ExportOptions& options, const std::atomic<bool>* stop,
                   const std::function<void(const v1::ConsistencyPoint&, const std::string&)>& ready) {
  CDP_ASSIGN_OR_RETURN(auto target, RemoteImageTarget::Open(options.server, options.volume,
                                                            options.at));
  nbd::NbdServer::Options nbd;
  nbd.listen_address = options.nbd;
  nbd.export_name = options.volume;
  nbd.target = target.get();
  nbd.read_only = true;
  nbd.max_block_size = kMaxRead;
  nbd.unix_socket_mode = 0600;
  auto server = nbd::NbdServer::Start(nbd);
  if (!server.ok()) return server.status().WithContext("--nbd " + options.nbd);
  ready(target->point(), (*server)->bound_address());
  // An image unused for 5 minutes is closed by the server, and its point may then be folded by
  // retention: keep it in use while the export is up.
  auto last_touch = std::chrono::steady_clock::now();
  while (!*stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (std::chrono::steady_clock::now() - last_touch > std::chrono::seconds(60)) {
      last_touch = std::chrono::steady_clock::now();
      char byte;
      Status s = target->Read(0, std::span<char>(&byte, 1));
      if (!s.ok()) CDP_LOG(warning) << "cdpctl: export: keeping the image open: " << s.ToString();
    }
  }
  (*server)->Stop();
  return Status::Ok();
}

}  // namespace cdp::ctl
