#include "cdp/journal/image_service.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cdp/core/block_device.h"
#include "cdp/core/logging.h"
#include "cdp/core/record.h"
#include "cdp/journal/point_choice.h"

namespace cdp::journal {

namespace v1 = wire::v1;

namespace {
constexpr auto kImageIdle = std::chrono::minutes(5);
constexpr size_t kMaxOpenImages = 8;
constexpr uint32_t kMaxImageRead = 8u << 20;

ImageService::Reply ErrorReply(const std::string& peer, const Status& status, bool permanent) {
  return ImageService::Reply{peer, wire::MakeErrorHeader(status, permanent), {}};
}
}  // namespace

Result<std::unique_ptr<ImageService>> ImageService::Start(const JournalStore* store,
                                                          RetentionWorker* retention) {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    return Status::IOError(std::string("journal-server: eventfd for the image service: ") +
                           std::strerror(errno));
  }
  std::unique_ptr<ImageService> service(new ImageService(store, retention, fd));
  service->thread_ = std::thread([s = service.get()] {
    pthread_setname_np(pthread_self(), "images");
    s->Loop();
  });
  return service;
}

ImageService::~ImageService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  images_.clear();  // unpins
  ::close(ready_fd_);
}

void ImageService::Submit(wire::Message msg, std::string peer_name) {
  Status refused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = counted_.try_emplace(msg.peer, 0).first;
    if (it->second >= kMaxRequestsPerPeer) {
      refused = Status::ResourceExhausted(
          "journal-server: " + peer_name + " has " + std::to_string(kMaxRequestsPerPeer) +
          " image requests waiting already (the limit per client); read their replies before "
          "asking for more");
    } else if (counted_total_ >= kMaxRequests) {
      refused = Status::ResourceExhausted(
          "journal-server: " + std::to_string(kMaxRequests) +
          " image requests of all clients are waiting already (the limit); ask again in a "
          "moment");
    }
    if (refused.ok()) {
      ++it->second;
      ++counted_total_;
      requests_.push_back(Request{std::move(msg), std::move(peer_name)});
    } else {
      if (it->second == 0) counted_.erase(it);
      ++refused_;
      replies_.push_back(Posted{ErrorReply(msg.peer, refused, false), /*counted=*/false});
    }
  }
  if (refused.ok()) {
    wake_.notify_one();
    return;
  }
  const uint64_t one = 1;
  ssize_t n = ::write(ready_fd_, &one, sizeof(one));
  (void)n;
  ++unlogged_refusals_;
  last_refusal_ = refused.message();
  const auto now = Clock::now();
  if (now - last_refusal_log_ >= std::chrono::seconds(10)) {
    const bool first = last_refusal_log_ == Clock::time_point{};
    const auto seconds =
        std::chrono::duration_cast<std::chrono::seconds>(now - last_refusal_log_).count();
    CDP_LOG(warning) << "journal-server: refused " << unlogged_refusals_ << " image request(s)"
                     << (first ? std::string() : " in the last " + std::to_string(seconds) + " s")
                     << "; the last: " << last_refusal_;
    unlogged_refusals_ = 0;
    last_refusal_log_ = now;
  }
}

std::vector<ImageService::Reply> ImageService::TakeReplies() {
  uint64_t count = 0;
  ssize_t n = ::read(ready_fd_, &count, sizeof(count));  // EAGAIN when nothing was posted
  (void)n;
  std::vector<Posted> posted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted.swap(replies_);
    for (const Posted& p : posted) {
      if (!p.counted) continue;
      auto it = counted_.find(p.reply.peer);
      if (it != counted_.end() && --it->second == 0) counted_.erase(it);
      --counted_total_;
    }
  }
  std::vector<Reply> out;
  out.reserve(posted.size());
  for (Posted& p : posted) out.push_back(std::move(p.reply));
  return out;
}

uint64_t ImageService::refused_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refused_;
}

void ImageService::SetBeforeRequestHookForTesting(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  before_request_hook_ = std::move(hook);
}

void ImageService::PostReply(Reply reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    replies_.push_back(Posted{std::move(reply), /*counted=*/true});
  }
  const uint64_t one = 1;
  ssize_t n = ::write(ready_fd_, &one, sizeof(one));
  (void)n;
}

void ImageService::Loop() {
  while (true) {
    Request request;
    std::function<void()> hook;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Wakes at least every 10 s to close idle images.
      wake_.wait_for(lock, std::chrono::seconds(10),
                     [&] { return stop_ || !requests_.empty(); });
      if (stop_) return;
      if (requests_.empty()) {
        lock.unlock();
        CloseIdleImages();
        continue;
      }
      request = std::move(requests_.front());
      requests_.pop_front();
      hook = before_request_hook_;
    }
    if (hook) hook();
    PostReply(Serve(request));
    CloseIdleImages();
  }
}

void ImageService::CloseIdleImages() {
  const auto now = Clock::now();
  for (auto it = images_.begin(); it != images_.end();) {
    it = now - it->second.last_used > kImageIdle ? images_.erase(it) : std::next(it);
  }
}

ImageService::Reply ImageService::Serve(Request& request) {
  switch (request.msg.header.body_case()) {
    case v1::Header::kImageOpenRequest:
      return ServeOpen(request);
    case v1::Header::kImageReadRequest:
      return ServeRead(request);
    case v1::Header::kImageCloseRequest:
      return ServeClose(request);
    default:
      return ErrorReply(request.msg.peer,
                        Status::InvalidArgument("journal-server: not an image request (header "
                                                "case " +
                                                std::to_string(request.msg.header.body_case()) +
                                                ") from " + request.peer_name),
                        true);
  }
}

ImageService::Reply ImageService::ServeOpen(const Request& request) {
  const std::string& peer = request.msg.peer;
  const v1::ImageOpenRequest& open = request.msg.header.image_open_request();
  Status known = CheckVolumeKnown(*store_, open.volume());
  if (!known.ok()) return ErrorReply(peer, known, true);
  auto v = store_->GetVolume(open.volume());
  if (!v.ok()) return ErrorReply(peer, v.status(), false);
  std::vector<v1::ConsistencyPoint> points;
  std::vector<v1::Gap> gaps;
  // Points below the history start are folded, or being folded, into the base image: they are
  // not offered, but they still say where the windows end.
  const uint64_t history_start = retention_->HistoryStart(open.volume());
  Status read = store_->ReadPoints(open.volume(), v->base_lsn, UINT64_MAX, &points);
  if (read.ok()) read = store_->ReadGaps(open.volume(), &gaps);
  if (!read.ok()) return ErrorReply(peer, read, false);
  auto point = ChoosePoint(open.volume(), points, gaps,
                           PointTarget{open.at_lsn(), open.at_time_ns()}, v->durable_lsn,
                           NowNanos(), v->base_lsn, history_start);
  if (!point.ok()) return ErrorReply(peer, point.status(), true);
  auto token = retention_->Pin(open.volume(), point->lsn());
  if (!token.ok()) return ErrorReply(peer, token.status(), false);
  RetentionWorker* worker = retention_;
  std::shared_ptr<void> pin(nullptr, [worker, t = *token](void*) { worker->Unpin(t); });
  const auto started = Clock::now();
  auto image = PointImage::Build(store_, open.volume(), point->lsn());
  if (!image.ok()) {
    CDP_LOG(error) << "journal-server: image of volume " << open.volume() << " at LSN "
                   << point->lsn() << ": " << image.status().ToString();
    return ErrorReply(peer, image.status(), false);
  }
  while (images_.size() >= kMaxOpenImages) {
    auto oldest = std::min_element(images_.begin(), images_.end(), [](const auto& a, const auto& b) {
      return a.second.last_used < b.second.last_used;
    });
    images_.erase(oldest);
  }
  const uint64_t id = next_image_++;
  CDP_LOG(info) << "journal-server: " << request.peer_name << " opened image " << id
                << " of volume " << open.volume() << " at LSN " << point->lsn() << " ("
                << (*image)->extent_count() << " extents, built in "
                << std::chrono::duration<double>(Clock::now() - started).count() << " s)";
  Reply reply{peer, {}, {}};
  auto* r = reply.header.mutable_image_open_reply();
  r->set_volume(open.volume());
  r->set_image_id(id);
  r->set_size_bytes((*image)->size_bytes());
  *r->mutable_point() = *point;
  images_[id] = OpenImage{std::move(*image), Clock::now(), std::move(pin)};
  return reply;
}

ImageService::Reply ImageService::ServeRead(const Request& request) {
  const std::string& peer = request.msg.peer;
  const v1::ImageReadRequest& read = request.msg.header.image_read_request();
  auto it = images_.find(read.image_id());
  if (it == images_.end()) {
    return ErrorReply(peer,
                      Status::NotFound("journal-server: image " + std::to_string(read.image_id()) +
                                       " is not open (unused for 5 minutes, or the server "
                                       "restarted); open it again"),
                      false);
  }
  if (read.length() == 0 || read.length() > kMaxImageRead) {
    return ErrorReply(peer,
                      Status::InvalidArgument("journal-server: image read of " +
                                              std::to_string(read.length()) +
                                              " bytes; ask for 1 byte to 8 MiB"),
                      true);
  }
  it->second.last_used = Clock::now();
  auto data = std::make_shared<std::string>(read.length(), '\0');
  Status s = it->second.image->Read(read.offset(), std::span<char>(data->data(), data->size()));
  if (!s.ok()) {
    if (s.code() != StatusCode::kInvalidArgument) {
      CDP_LOG(error) << "journal-server: image " << read.image_id() << ": " << s.ToString();
    }
    return ErrorReply(peer, s, s.code() == StatusCode::kInvalidArgument);
  }
  Reply reply{peer, {}, {}};
  auto* r = reply.header.mutable_image_read_reply();
  r->set_image_id(read.image_id());
  r->set_offset(read.offset());
  r->set_length(read.length());
  if (IsAllZero(*data)) {
    r->set_zero(true);
  } else {
    reply.frames.push_back(wire::FrameFromShared(std::move(data)));
  }
  return reply;
}

ImageService::Reply ImageService::ServeClose(const Request& request) {
  const uint64_t id = request.msg.header.image_close_request().image_id();
  images_.erase(id);
  Reply reply{request.msg.peer, {}, {}};
  reply.header.mutable_image_close_reply()->set_image_id(id);
  return reply;
}

}  // namespace cdp::journal
