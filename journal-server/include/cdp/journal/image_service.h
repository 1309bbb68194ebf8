// ImageService: the images a restore or an export has open on the journal-server
// (ImageOpenRequest, ImageReadRequest, ImageCloseRequest; docs/restore.md, section 3), served on
// a thread of its own.
//
// Building an image reads every record header of its history (1-2 us per record) and a read
// copies up to 8 MiB out of the journal: on the server's thread either would delay the next
// group commit, and every agent's acks with it. Here the server thread only hands a request
// over (Submit) and later sends the replies the service has made (TakeReplies, announced on
// ready_fd()); ingest and tails never wait for an image, and an image waits for a fold only
// during the fold's short exclusive step (JournalStore::FoldReadLock).
//
// Requests are served one at a time, in the order submitted, so one client's replies come back
// in the order it asked. At most 8 images are open at once (opening a 9th closes the least
// recently used); an image unused for 5 minutes is closed. An open image pins its LSN against
// retention (RetentionWorker::Pin) until it is closed.
//
// Bounds (docs/wire-protocol.md, section 7): a request counts from Submit until TakeReplies
// hands its reply to the server thread. A client may have kMaxRequestsPerPeer of them, all
// clients together kMaxRequests; a request over either is answered at once (its Error may
// overtake the replies of that client's earlier requests) with a non-permanent
// ResourceExhausted naming the limit, and logged at most every 10 s. So the queue of requests
// and the replies not yet taken stay bounded (each reply at most 8 MiB); what the server thread
// then sends to a client that does not read is bounded by the socket (core/transport.h).
//
// Thread-safety: Submit, TakeReplies and ready_fd are called by the server thread; the rest of
// the work happens on the service's thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/point_image.h"
#include "cdp/journal/retention.h"

namespace cdp::journal {

class ImageService {
 public:
  // Requests counted per client (routing id) and over all clients; see the file comment.
  // cdpctl restore keeps 4 in flight, cdpctl export 1.
  static constexpr size_t kMaxRequestsPerPeer = 16;
  static constexpr size_t kMaxRequests = 256;

  // A reply for the server thread to send to `peer`.
  struct Reply {
    std::string peer;
    wire::v1::Header header;
    std::vector<zmq::message_t> frames;
  };

  // REQUIRES: store and retention outlive the service. Starts the thread; IOError when the
  // wake-up eventfd cannot be made.
  static Result<std::unique_ptr<ImageService>> Start(const JournalStore* store,
                                                     RetentionWorker* retention);
  // Stops the thread (after the request it is serving), drops the requests not served yet and
  // closes every image, unpinning its LSN.
  ~ImageService();

  // Queues an image request from `peer`; `peer_name` names it in the log and in errors. A
  // message of another kind is answered with an InvalidArgument error; a request over the
  // bounds above with a ResourceExhausted one, without queueing it.
  void Submit(wire::Message msg, std::string peer_name);

  // The replies made since the last call, in the order made; clears ready_fd().
  std::vector<Reply> TakeReplies();

  // Readable (an eventfd) while replies are waiting for TakeReplies.
  int ready_fd() const { return ready_fd_; }

  // Tests only: runs on the service thread before each request is served.
  void SetBeforeRequestHookForTesting(std::function<void()> hook);

  // Requests refused over the bounds since Start.
  uint64_t refused_requests() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Request {
    wire::Message msg;
    std::string peer_name;
  };
  // A reply made, and whether its request is counted against the bounds.
  struct Posted {
    Reply reply;
    bool counted = true;
  };
  struct OpenImage {
    std::unique_ptr<PointImage> image;
    Clock::time_point last_used;
    std::shared_ptr<void> pin;  // RetentionWorker::Pin of the image's LSN, unpinned on erase
  };

  ImageService(const JournalStore* store, RetentionWorker* retention, int ready_fd)
      : store_(store), retention_(retention), ready_fd_(ready_fd) {}

  void Loop();
  // Serve* run on the service thread and return the reply to send.
  Reply Serve(Request& request);
  Reply ServeOpen(const Request& request);
  Reply ServeRead(const Request& request);
  Reply ServeClose(const Request& request);
  void CloseIdleImages();
  void PostReply(Reply reply);

  const JournalStore* const store_;
  RetentionWorker* const retention_;
  const int ready_fd_;

  // Touched by the service thread only.
  std::map<uint64_t, OpenImage> images_;  // by image id
  uint64_t next_image_ = 1;

  // Touched by the server thread only (Submit): refusals not logged yet, and when last logged.
  uint64_t unlogged_refusals_ = 0;
  std::string last_refusal_;
  Clock::time_point last_refusal_log_{};

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Request> requests_;  // GUARDED_BY(mu_)
  std::vector<Posted> replies_;   // GUARDED_BY(mu_)
  // Requests counted (see kMaxRequestsPerPeer) by routing id, and in total.
  std::map<std::string, size_t> counted_;      // GUARDED_BY(mu_)
  size_t counted_total_ = 0;                   // GUARDED_BY(mu_)
  uint64_t refused_ = 0;                       // GUARDED_BY(mu_)
  std::function<void()> before_request_hook_;  // GUARDED_BY(mu_)
  bool stop_ = false;                          // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace cdp::journal
