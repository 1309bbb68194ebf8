// BlockDevice on io_uring or libaio.
//
// Layout of this file:
//   IoQueue          the few primitives an asynchronous engine must offer (start, kick, wait,
//                    sync);
//   KernelQueue      what both engines share: the submit loop that makes room by reaping, and
//                    the completions reaped early that the next Wait returns; its two
//                    implementations IoUringQueue and LibaioQueue;
//   AsyncBlockDevice the BlockDevice: bounds and alignment checks, the engine-independent
//                    driver loop (queue depth, refill, short transfers, draining on error),
//                    zeroing and discard through ioctl/fallocate;
//   OpenBlockDevice  path checks, sparse-file creation, engine choice.
//
// The one rule everything here keeps: when a call returns, no I/O it submitted is still in
// flight, so the kernel never touches a caller's buffer after the call that received it.
#include "cdp/core/block_device.h"

#include <fcntl.h>
#include <libaio.h>
#include <liburing.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cdp/core/logging.h"

namespace cdp {

bool IsAllZero(std::span<const char> bytes) {
  const char* p = bytes.data();
  size_t n = bytes.size();
  // 64 bytes per branch: in a TCG guest the branch costs more than the loads (7 GB/s there,
  // against 1.4 GB/s for a memcmp of the buffer with itself).
  for (; n >= 64; p += 64, n -= 64) {
    uint64_t w[8];
    std::memcpy(w, p, sizeof(w));
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
  }
  for (; n > 0; ++p, --n) {
    if (*p != 0) return false;
  }
  return true;
}
namespace {

// Largest piece handed to the kernel in one request. Linux transfers at most 0x7ffff000 bytes
// per read/write and io_uring lengths are 32-bit; 1 GiB keeps every piece a multiple of any
// logical block size, so O_DIRECT alignment survives the split.
constexpr size_t kMaxTransferBytes = size_t{1} << 30;
// Upper bound for BlockDeviceOptions::queue_depth (io_uring allows 32768 entries, but every
// libaio context counts against the system-wide fs.aio-max-nr, 65536 by default).
constexpr unsigned kMaxQueueDepth = 4096;
// Chunk size of the last-resort zeroing by plain writes.
constexpr size_t kZeroChunkBytes = size_t{1} << 20;
// How often one request is resubmitted after completing with EAGAIN or EINTR.
constexpr int kMaxTransientRetries = 16;
// How often a submission the kernel refuses with EAGAIN is retried while nothing is in
// flight (waiting 1 ms each time) before giving up.
constexpr int kMaxIdleSubmitRetries = 1000;
// Alignment of AlignedBuffer: the largest logical block size in common use.
constexpr size_t kBufferAlignment = 4096;

std::string ErrnoText(int err) {
  char buf[256];
  // GNU strerror_r: returns a pointer to the message, which may or may not be `buf`.
  return strerror_r(err, buf, sizeof(buf));
}

bool IsUnsupportedErrno(int err) { return err == EOPNOTSUPP || err == ENOSYS || err == ENOTTY; }

// Owns a file descriptor.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;

  int get() const { return fd_; }

 private:
  int fd_;
};

enum class IoKind { kRead, kWrite };

// One transfer of a driver run. For writes `buf` is only read from.
struct IoRequest {
  IoKind kind = IoKind::kRead;
  uint64_t offset = 0;
  char* buf = nullptr;
  size_t length = 0;
};

// The kernel's answer for the request started under `slot`: bytes transferred or -errno.
struct IoCompletion {
  uint32_t slot = 0;
  int64_t result = 0;
};

// The primitives of an asynchronous I/O engine bound to one file descriptor. Slots are small
// integers chosen by the caller, below the depth the queue was created with; each names at
// most one request in flight.
//
// Thread-safety: none; used by one AsyncBlockDevice under its one-thread-at-a-time contract.
class IoQueue {
 public:
  virtual ~IoQueue() = default;

  // "io_uring" or "libaio".
  virtual std::string_view name() const = 0;
  // Queues `req` under `slot`; it reaches the kernel at the next Kick. On error it was not
  // queued. REQUIRES: slot < depth and no request is in flight or queued under it.
  virtual Status Start(const IoRequest& req, uint32_t slot) = 0;
  // Hands every queued request to the kernel. On error, the slots of the requests that did not
  // reach it (and so will never complete) are appended to *rejected; every other queued request
  // will complete through Wait.
  virtual Status Kick(std::vector<uint32_t>* rejected) = 0;
  // Blocks until at least one kicked request completed and appends all available completions
  // to *out. REQUIRES: a kicked request has not been returned by Wait yet. An error means the
  // engine can no longer account for I/O in flight.
  virtual Status Wait(std::vector<IoCompletion>* out) = 0;
  // fdatasync of the file. REQUIRES: nothing queued or in flight.
  virtual Status Sync() = 0;
};

// The engine-independent half of Kick and Wait. An engine supplies one submission call
// (SubmitQueued), one blocking reap (ReapCompletions) and what to do with requests that never
// reached the kernel (RejectQueued); this class runs the retry policy around them and keeps
// the count of requests in the kernel.
//
// Kick submits until every queued request is in the kernel. When the kernel takes none (out of
// resources or completion-queue space: 0, -EAGAIN, -EBUSY), it reaps completions to make room,
// keeping them for the next Wait; with nothing in flight to reap it retries every 1 ms, at most
// kMaxIdleSubmitRetries times. -EINTR is retried at once. Any other failure rejects the
// requests still queued.
class KernelQueue : public IoQueue {
 public:
  Status Kick(std::vector<uint32_t>* rejected) final {
    int idle_retries = 0;
    while (queued() > 0) {
      const int ret = SubmitQueued();
      if (ret > 0) {
        in_kernel_ += static_cast<size_t>(ret);
        continue;
      }
      if (ret == -EINTR) continue;
      // -EBUSY is io_uring's "completion queue full"; io_submit never returns it.
      if (ret == 0 || ret == -EAGAIN || ret == -EBUSY) {
        if (in_kernel_ > 0) {
          Status reaped = Reap(&reaped_);
          if (reaped.ok()) continue;
          RejectQueued(reaped, rejected);
          return reaped;
        }
        if (++idle_retries <= kMaxIdleSubmitRetries) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
      }
      Status error = Status::FromErrno(ret == 0 ? EAGAIN : -ret, submit_call_);
      RejectQueued(error, rejected);
      return error;
    }
    return Status::Ok();
  }

  Status Wait(std::vector<IoCompletion>* out) final {
    if (!reaped_.empty()) {
      out->insert(out->end(), reaped_.begin(), reaped_.end());
      reaped_.clear();
      return Status::Ok();
    }
    return Reap(out);
  }

 protected:
  // `submit_call` names the engine's submission call in errors ("io_submit").
  explicit KernelQueue(std::string_view submit_call) : submit_call_(submit_call) {}

  // How many started requests have not yet been taken by the kernel.
  virtual size_t queued() const = 0;
  // One submission call for the queued requests: returns how many the kernel took (and forgets
  // them), or 0 or -errno when it took none. REQUIRES: queued() > 0.
  virtual int SubmitQueued() = 0;
  // Blocks until at least one submitted request completed and appends every available
  // completion to *out.
  virtual Status ReapCompletions(std::vector<IoCompletion>* out) = 0;
  // Appends the slots of the requests still queued to *rejected and forgets them; `error` is
  // why Kick gave up on them.
  virtual void RejectQueued(const Status& error, std::vector<uint32_t>* rejected) = 0;

 private:
  Status Reap(std::vector<IoCompletion>* out) {
    const size_t before = out->size();
    CDP_RETURN_IF_ERROR(ReapCompletions(out));
    in_kernel_ -= std::min(out->size() - before, in_kernel_);
    return Status::Ok();
  }

  const std::string_view submit_call_;
  size_t in_kernel_ = 0;              // taken by the kernel, completion not yet reaped
  std::vector<IoCompletion> reaped_;  // reaped by Kick, not yet returned by Wait
};

// io_uring engine. Submission entries are filled by Start and published by Kick; the SQ ring
// has `depth` entries and never holds more than `depth` requests, so Start always finds one.
class IoUringQueue final : public KernelQueue {
 public:
  // Creates a ring of `depth` entries for `fd` and checks with a NOP round trip that the
  // kernel really executes requests (some sandboxes allow the setup but refuse io_uring_enter).
  // Unavailable when io_uring cannot be used here.
  static Result<std::unique_ptr<IoQueue>> Create(int fd, unsigned depth) {
    std::unique_ptr<IoUringQueue> queue(new IoUringQueue(fd));
    const int ret = io_uring_queue_init(depth, &queue->ring_, 0);
    if (ret < 0) {
      return Status::Unavailable("io_uring_queue_init(" + std::to_string(depth) +
                                 "): " + ErrnoText(-ret));
    }
    queue->initialized_ = true;
    Status nop = queue->RunAlone([](io_uring_sqe* sqe) { io_uring_prep_nop(sqe); }, "NOP");
    if (!nop.ok()) return Status::Unavailable("io_uring NOP round trip: " + nop.message());
    return std::unique_ptr<IoQueue>(std::move(queue));
  }

  ~IoUringQueue() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  std::string_view name() const override { return "io_uring"; }

  Status Start(const IoRequest& req, uint32_t slot) override {
    CDP_RETURN_IF_ERROR(CheckUsable());
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      return Status::Internal("io_uring: submission ring full with " +
                              std::to_string(queued_slots_.size()) + " requests queued");
    }
    // Fits in 32 bits: the driver never asks for more than kMaxTransferBytes at once.
    const auto length = static_cast<unsigned>(req.length);
    if (req.kind == IoKind::kRead) {
      io_uring_prep_read(sqe, fd_, req.buf, length, req.offset);
    } else {
      io_uring_prep_write(sqe, fd_, req.buf, length, req.offset);
    }
    io_uring_sqe_set_data64(sqe, slot);
    queued_slots_.push_back(slot);
    return Status::Ok();
  }

  Status Sync() override {
    return RunAlone(
        [fd = fd_](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); },
        "fdatasync");
  }

 private:
  // The slot of requests run by RunAlone; never a driver slot (those are below the depth).
  static constexpr uint32_t kAloneSlot = UINT32_MAX;

  explicit IoUringQueue(int fd) : KernelQueue("io_uring_submit"), fd_(fd) {}

  // Once requests are stuck in the ring (a hard io_uring_submit failure) they would be
  // submitted by the next Kick long after their caller returned; refuse all further work.
  Status CheckUsable() const {
    if (!broken_.ok()) {
      return Status::FailedPrecondition("io_uring ring unusable after an earlier failure (" +
                                        broken_.message() + "); reopen the device");
    }
    return Status::Ok();
  }

  size_t queued() const override { return queued_slots_.size(); }

  int SubmitQueued() override {
    const int ret = io_uring_submit(&ring_);
    if (ret <= 0) return ret;
    // The kernel consumes the ring in order: the first `ret` queued requests are in flight.
    const auto consumed = std::min(static_cast<size_t>(ret), queued_slots_.size());
    queued_slots_.erase(queued_slots_.begin(), queued_slots_.begin() + consumed);
    return static_cast<int>(consumed);
  }

  void RejectQueued(const Status& error, std::vector<uint32_t>* rejected) override {
    rejected->insert(rejected->end(), queued_slots_.begin(), queued_slots_.end());
    queued_slots_.clear();
    broken_ = error;
  }

  Status ReapCompletions(std::vector<IoCompletion>* out) override {
    io_uring_cqe* cqe = nullptr;
    int ret;
    do {
      ret = io_uring_wait_cqe(&ring_, &cqe);
    } while (ret == -EINTR);
    if (ret < 0) return Status::FromErrno(-ret, "io_uring_wait_cqe");
    io_uring_cqe* batch[64];
    unsigned n;
    while ((n = io_uring_peek_batch_cqe(&ring_, batch, 64)) > 0) {
      for (unsigned i = 0; i < n; ++i) {
        out->push_back({static_cast<uint32_t>(io_uring_cqe_get_data64(batch[i])), batch[i]->res});
      }
      io_uring_cq_advance(&ring_, n);
    }
    return Status::Ok();
  }

  // Runs one request built by `prep` by itself and returns its result as a Status.
  // REQUIRES: nothing queued or in flight.
  template <typename Prep>
  Status RunAlone(Prep prep, std::string_view what) {
    CDP_RETURN_IF_ERROR(CheckUsable());
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return Status::Internal("io_uring: submission ring full while idle");
    prep(sqe);
    io_uring_sqe_set_data64(sqe, kAloneSlot);
    queued_slots_.push_back(kAloneSlot);
    std::vector<uint32_t> rejected;
    CDP_RETURN_IF_ERROR(Kick(&rejected));
    std::vector<IoCompletion> done;
    while (true) {
      CDP_RETURN_IF_ERROR(Wait(&done));
      for (const IoCompletion& c : done) {
        if (c.slot != kAloneSlot) continue;
        if (c.result < 0) return Status::FromErrno(static_cast<int>(-c.result), what);
        return Status::Ok();
      }
      done.clear();
    }
  }

  const int fd_;
  io_uring ring_{};
  bool initialized_ = false;
  Status broken_;                       // non-OK once the ring must not be used again
  std::vector<uint32_t> queued_slots_;  // filled SQEs not yet consumed by the kernel, in order
};

// libaio engine (Linux native AIO). Truly asynchronous only with O_DIRECT; on buffered files
// io_submit performs the I/O synchronously, which is still correct.
class LibaioQueue final : public KernelQueue {
 public:
  // Creates an AIO context of `depth` events for `fd`. Unavailable when the kernel refuses.
  static Result<std::unique_ptr<IoQueue>> Create(int fd, unsigned depth) {
    io_context_t ctx = nullptr;
    const int ret = io_setup(static_cast<int>(depth), &ctx);
    if (ret < 0) {
      std::string message = "io_setup(" + std::to_string(depth) + "): " + ErrnoText(-ret);
      if (ret == -EAGAIN) message += "; raise sysctl fs.aio-max-nr or lower queue_depth";
      return Status::Unavailable(std::move(message));
    }
    return std::unique_ptr<IoQueue>(new LibaioQueue(fd, depth, ctx));
  }

  ~LibaioQueue() override { io_destroy(ctx_); }

  std::string_view name() const override { return "libaio"; }

  Status Start(const IoRequest& req, uint32_t slot) override {
    iocb* cb = &iocbs_[slot];
    const auto offset = static_cast<long long>(req.offset);
    if (req.kind == IoKind::kRead) {
      io_prep_pread(cb, fd_, req.buf, req.length, offset);
    } else {
      io_prep_pwrite(cb, fd_, req.buf, req.length, offset);
    }
    queued_.push_back(cb);
    return Status::Ok();
  }

  Status Sync() override {
    // IOCB_CMD_FDSYNC is unsupported by most filesystems; the plain syscall always works.
    while (fdatasync(fd_) != 0) {
      if (errno != EINTR) return Status::FromErrno(errno, "fdatasync");
    }
    return Status::Ok();
  }

 private:
  LibaioQueue(int fd, unsigned depth, io_context_t ctx)
      : KernelQueue("io_submit"), fd_(fd), ctx_(ctx), iocbs_(depth), events_(depth) {}

  uint32_t SlotOf(const iocb* cb) const { return static_cast<uint32_t>(cb - iocbs_.data()); }

  size_t queued() const override { return queued_.size() - submitted_; }

  int SubmitQueued() override {
    const int ret = io_submit(ctx_, static_cast<long>(queued()), &queued_[submitted_]);
    if (ret > 0) submitted_ += static_cast<size_t>(ret);
    if (submitted_ == queued_.size()) {
      queued_.clear();
      submitted_ = 0;
    }
    return ret;
  }

  // io_submit reports an error only when the first remaining iocb could not be queued, so the
  // rejected ones are exactly those from submitted_ on.
  void RejectQueued(const Status& /*error*/, std::vector<uint32_t>* rejected) override {
    for (size_t i = submitted_; i < queued_.size(); ++i) rejected->push_back(SlotOf(queued_[i]));
    queued_.clear();
    submitted_ = 0;
  }

  Status ReapCompletions(std::vector<IoCompletion>* out) override {
    int ret;
    do {
      ret = io_getevents(ctx_, 1, static_cast<long>(events_.size()), events_.data(), nullptr);
    } while (ret == -EINTR);
    if (ret < 0) return Status::FromErrno(-ret, "io_getevents");
    for (int i = 0; i < ret; ++i) {
      // io_event::res is unsigned; errors come back as a negated errno.
      out->push_back(
          {SlotOf(events_[i].obj), static_cast<int64_t>(static_cast<long>(events_[i].res))});
    }
    return Status::Ok();
  }

  const int fd_;
  const io_context_t ctx_;
  std::vector<iocb> iocbs_;           // indexed by slot
  std::vector<io_event> events_;      // scratch for io_getevents
  std::vector<iocb*> queued_;         // started; those before submitted_ are in the kernel
  size_t submitted_ = 0;              // how many of queued_ io_submit has taken
};

// Returns why io_uring cannot be used in this process, or "" if it can. Probed once (ring set-up
// plus a NOP round trip); the fallback is logged once.
const std::string& IoUringUnavailableReason() {
  static const std::string reason = [] {
    Result<std::unique_ptr<IoQueue>> probe = IoUringQueue::Create(/*fd=*/-1, /*depth=*/2);
    std::string why = probe.ok() ? "" : probe.status().message();
    if (!why.empty())
      CDP_LOG(info) << "io_uring unavailable (" << why << "); block I/O uses libaio";
    return why;
  }();
  return reason;
}

struct DeviceGeometry {
  bool is_block_device = false;
  uint64_t size = 0;
  uint32_t logical_block_size = 512;
};

class AsyncBlockDevice final : public BlockDevice {
 public:
  AsyncBlockDevice(std::string path, ScopedFd fd, const DeviceGeometry& geometry,
                   const BlockDeviceOptions& options, std::unique_ptr<IoQueue> queue)
      : path_(std::move(path)),
        fd_(std::move(fd)),
        geometry_(geometry),
        writable_(options.writable),
        direct_(options.direct),
        queue_depth_(options.queue_depth),
        queue_(std::move(queue)) {}

  uint64_t size() const override { return geometry_.size; }
  uint32_t logical_block_size() const override { return geometry_.logical_block_size; }
  bool is_block_device() const override { return geometry_.is_block_device; }
  const std::string& path() const override { return path_; }
  std::string_view engine_name() const override { return queue_->name(); }

  Status ReadAt(uint64_t offset, std::span<char> buf) override {
    CDP_RETURN_IF_ERROR(CheckRange("read", offset, buf.size()));
    CDP_RETURN_IF_ERROR(CheckDirectAlignment("read", offset, buf.size(), buf.data()));
    if (buf.empty()) return Status::Ok();
    const IoRequest request{IoKind::kRead, offset, buf.data(), buf.size()};
    return Run({&request, 1});
  }

  Status WriteAt(uint64_t offset, std::span<const char> data) override {
    const WriteOp op{offset, data};
    return WriteBatch({&op, 1});
  }

  Status WriteBatch(std::span<const WriteOp> ops) override {
    CDP_RETURN_IF_ERROR(CheckWritable("write"));
    // Check every op before submitting any, so a bad batch changes nothing.
    std::vector<IoRequest> requests;
    requests.reserve(ops.size());
    for (const WriteOp& op : ops) {
      CDP_RETURN_IF_ERROR(CheckRange("write", op.offset, op.data.size()));
      CDP_RETURN_IF_ERROR(CheckDirectAlignment("write", op.offset, op.data.size(), op.data.data()));
      if (op.data.empty()) continue;
      // The engines take a non-const pointer for both directions; writes only read from it.
      requests.push_back(
          {IoKind::kWrite, op.offset, const_cast<char*>(op.data.data()), op.data.size()});
    }
    return Run(requests);
  }

  Status ReadBatch(std::span<const ReadOp> ops) override {
    std::vector<IoRequest> requests;
    requests.reserve(ops.size());
    for (const ReadOp& op : ops) {
      CDP_RETURN_IF_ERROR(CheckRange("read", op.offset, op.buf.size()));
      CDP_RETURN_IF_ERROR(CheckDirectAlignment("read", op.offset, op.buf.size(), op.buf.data()));
      if (op.buf.empty()) continue;
      requests.push_back({IoKind::kRead, op.offset, op.buf.data(), op.buf.size()});
    }
    return Run(requests);
  }

  Status WriteZeroes(uint64_t offset, uint64_t length) override {
    CDP_RETURN_IF_ERROR(CheckWritable("zero"));
    CDP_RETURN_IF_ERROR(CheckRange("zero", offset, length));
    CDP_RETURN_IF_ERROR(CheckDirectAlignment("zero", offset, length, nullptr));
    if (length == 0) return Status::Ok();
    if (geometry_.is_block_device) return ZeroBlockDeviceRange(offset, length);
    return ZeroFileRange(offset, length, /*punch_first=*/false);
  }

  Status Discard(uint64_t offset, uint64_t length) override {
    CDP_RETURN_IF_ERROR(CheckWritable("discard"));
    CDP_RETURN_IF_ERROR(CheckRange("discard", offset, length));
    CDP_RETURN_IF_ERROR(CheckDirectAlignment("discard", offset, length, nullptr));
    if (length == 0) return Status::Ok();
    // BLKDISCARD does not promise zeroes on read; BLKZEROOUT does, and the kernel unmaps the
    // range through it where the device supports that.
    if (geometry_.is_block_device) return ZeroBlockDeviceRange(offset, length);
    return ZeroFileRange(offset, length, /*punch_first=*/true);
  }

  Status Flush() override { return queue_->Sync().WithContext(path_); }

  Result<uint64_t> NextDataOffset(uint64_t offset) override {
    if (offset >= geometry_.size) return geometry_.size;
    const off_t found = lseek(fd_.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (found >= 0) return std::min(static_cast<uint64_t>(found), geometry_.size);
    const int err = errno;
    if (err == ENXIO) return geometry_.size;  // only a hole from offset to the end
    if (err == EINVAL || IsUnsupportedErrno(err)) return offset;  // no hole support
    return Status::FromErrno(err,
                             path_ + ": lseek(SEEK_DATA) from offset " + std::to_string(offset));
  }

 private:
  Status CheckRange(std::string_view what, uint64_t offset, uint64_t length) const {
    if (offset > geometry_.size || length > geometry_.size - offset) {
      return Status::OutOfRange(path_ + ": " + std::string(what) + " of " + std::to_string(length) +
                                " bytes at offset " + std::to_string(offset) +
                                " goes past the end of the device (" +
                                std::to_string(geometry_.size) + " bytes)");
    }
    return Status::Ok();
  }

  Status CheckWritable(std::string_view what) const {
    if (!writable_) {
      return Status::FailedPrecondition(path_ + ": cannot " + std::string(what) +
                                        ": device was opened read-only (set writable)");
    }
    return Status::Ok();
  }

  // With O_DIRECT the kernel rejects misaligned I/O with a bare EINVAL; say which part is off.
  Status CheckDirectAlignment(std::string_view what, uint64_t offset, uint64_t length,
                              const void* buf) const {
    if (!direct_) return Status::Ok();
    const uint32_t block = geometry_.logical_block_size;
    const char* bad = nullptr;
    if (offset % block != 0) {
      bad = "offset";
    } else if (length % block != 0) {
      bad = "length";
    } else if (reinterpret_cast<uintptr_t>(buf) % block != 0) {
      bad = "buffer address";
    }
    if (bad == nullptr) return Status::Ok();
    return Status::InvalidArgument(path_ + ": O_DIRECT " + std::string(what) + " of " +
                                   std::to_string(length) + " bytes at offset " +
                                   std::to_string(offset) + ": " + bad + " is not a multiple of " +
                                   std::to_string(block) + " bytes (use AlignedBuffer)");
  }

  // BLKZEROOUT on the whole blocks of the range; partial blocks at either end (possible only
  // without O_DIRECT) are written.
  Status ZeroBlockDeviceRange(uint64_t offset, uint64_t length) {
    const uint64_t block = geometry_.logical_block_size;
    const uint64_t end = offset + length;
    const uint64_t first = (offset + block - 1) / block * block;
    const uint64_t last = end / block * block;
    if (first >= last) return WriteZeroBytes(offset, length);
    CDP_RETURN_IF_ERROR(WriteZeroBytes(offset, first - offset));
    uint64_t range[2] = {first, last - first};
    while (ioctl(fd_.get(), BLKZEROOUT, range) != 0) {
      if (errno != EINTR) {
        return Status::FromErrno(errno, path_ + ": BLKZEROOUT of " + std::to_string(range[1]) +
                                            " bytes at offset " + std::to_string(first));
      }
    }
    return WriteZeroBytes(last, end - last);
  }

  // fallocate ZERO_RANGE and PUNCH_HOLE|KEEP_SIZE (in the order asked), then plain writes.
  // Modes the filesystem does not support are remembered and not tried again.
  Status ZeroFileRange(uint64_t offset, uint64_t length, bool punch_first) {
    struct Mode {
      int flags;
      bool* supported;
      const char* name;
    };
    Mode zero{FALLOC_FL_ZERO_RANGE, &zero_range_supported_, "FALLOC_FL_ZERO_RANGE"};
    Mode punch{FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, &punch_hole_supported_,
               "FALLOC_FL_PUNCH_HOLE"};
    for (const Mode& mode : punch_first ? std::array{punch, zero} : std::array{zero, punch}) {
      if (!*mode.supported) continue;
      int ret;
      do {
        ret = fallocate(fd_.get(), mode.flags, static_cast<off_t>(offset),
                        static_cast<off_t>(length));
      } while (ret != 0 && errno == EINTR);
      if (ret == 0) return Status::Ok();
      const int err = errno;
      if (IsUnsupportedErrno(err)) {
        *mode.supported = false;
        continue;
      }
      // Some filesystems refuse a mode with EINVAL for particular ranges; the next way
      // still gives the right result.
      if (err == EINVAL) continue;
      return Status::FromErrno(err, path_ + ": fallocate(" + mode.name + ") of " +
                                        std::to_string(length) + " bytes at offset " +
                                        std::to_string(offset));
    }
    return WriteZeroBytes(offset, length);
  }

  // Writes zeroes over the range in kZeroChunkBytes pieces, queue_depth pieces at a time.
  Status WriteZeroBytes(uint64_t offset, uint64_t length) {
    if (length == 0) return Status::Ok();
    if (zeroes_.size() == 0) {
      zeroes_ = AlignedBuffer(kZeroChunkBytes);
      std::memset(zeroes_.data(), 0, zeroes_.size());
    }
    std::vector<IoRequest> requests;
    const uint64_t end = offset + length;
    while (offset < end) {
      requests.clear();
      while (offset < end && requests.size() < queue_depth_) {
        const auto n = static_cast<size_t>(std::min<uint64_t>(kZeroChunkBytes, end - offset));
        requests.push_back({IoKind::kWrite, offset, zeroes_.data(), n});
        offset += n;
      }
      CDP_RETURN_IF_ERROR(Run(requests));
    }
    return Status::Ok();
  }

  // Runs all requests on the engine, at most queue_depth_ in flight, starting the next one
  // as each completes and resubmitting the rest of short transfers. After the first error
  // nothing new is started; the error is returned once everything in flight has completed.
  Status Run(std::span<const IoRequest> requests) {
    struct Slot {
      size_t request = 0;  // index into `requests`
      uint64_t done = 0;   // bytes transferred so far
      int retries = 0;     // transient errors so far
    };
    const size_t depth = std::min<size_t>(queue_depth_, requests.size());
    std::vector<Slot> slots(depth);
    std::vector<uint32_t> free_slots;
    for (size_t i = depth; i > 0; --i) free_slots.push_back(static_cast<uint32_t>(i - 1));
    std::vector<uint32_t> to_resume;  // slots whose request still has bytes to transfer
    std::vector<uint32_t> rejected;
    std::vector<IoCompletion> completions;
    size_t next = 0;
    size_t in_flight = 0;
    Status first_error;

    auto piece = [&](uint32_t slot) {
      const IoRequest& r = requests[slots[slot].request];
      const uint64_t done = slots[slot].done;
      return IoRequest{r.kind, r.offset + done, r.buf + done,
                       static_cast<size_t>(std::min<uint64_t>(r.length - done, kMaxTransferBytes))};
    };
    auto fail = [&](Status error) {
      if (first_error.ok()) first_error = std::move(error);
    };

    while (true) {
      std::vector<uint32_t> starting;
      if (first_error.ok()) {
        starting.swap(to_resume);
        while (!free_slots.empty() && next < requests.size()) {
          const uint32_t slot = free_slots.back();
          free_slots.pop_back();
          slots[slot] = Slot{next++, 0, 0};
          starting.push_back(slot);
        }
      }
      // After an error, requests waiting to resume are simply dropped.
      to_resume.clear();
      size_t started = 0;
      for (const uint32_t slot : starting) {
        Status s = first_error.ok() ? queue_->Start(piece(slot), slot) : first_error;
        if (s.ok()) {
          ++started;
        } else {
          fail(s.WithContext(path_));
          free_slots.push_back(slot);
        }
      }
      if (started > 0) {
        rejected.clear();
        Status s = queue_->Kick(&rejected);
        if (!s.ok()) fail(s.WithContext(path_));
        in_flight += started - rejected.size();
        free_slots.insert(free_slots.end(), rejected.begin(), rejected.end());
      }
      if (in_flight == 0) break;

      completions.clear();
      Status waited = queue_->Wait(&completions);
      if (!waited.ok()) {
        // Returning would hand buffers back to the caller while the kernel may still write
        // into them; no error code makes that safe.
        CDP_LOG(fatal) << path_ << ": lost track of " << in_flight << " in-flight "
                       << queue_->name() << " requests: " << waited.ToString();
        std::abort();
      }
      for (const IoCompletion& c : completions) {
        --in_flight;
        Slot& slot = slots[c.slot];
        const IoRequest sent = piece(c.slot);
        const char* verb = sent.kind == IoKind::kRead ? "read" : "write";
        if (c.result > 0) {
          slot.done += static_cast<uint64_t>(c.result);
          if (slot.done < requests[slot.request].length) {
            to_resume.push_back(c.slot);
          } else {
            free_slots.push_back(c.slot);
          }
          continue;
        }
        if ((c.result == -EAGAIN || c.result == -EINTR) && ++slot.retries <= kMaxTransientRetries) {
          to_resume.push_back(c.slot);
          continue;
        }
        free_slots.push_back(c.slot);
        const std::string where = std::string(queue_->name()) + " " + verb + " of " +
                                  std::to_string(sent.length) + " bytes at offset " +
                                  std::to_string(sent.offset) + " on " + path_;
        if (c.result < 0) {
          fail(Status::FromErrno(static_cast<int>(-c.result), where));
        } else if (sent.kind == IoKind::kRead) {
          fail(Status::OutOfRange(where + ": hit end of file; did the file shrink after open?"));
        } else {
          fail(Status::IOError(where + ": kernel wrote 0 bytes"));
        }
      }
    }
    return first_error;
  }

  const std::string path_;
  const ScopedFd fd_;
  const DeviceGeometry geometry_;
  const bool writable_;
  const bool direct_;
  const unsigned queue_depth_;
  const std::unique_ptr<IoQueue> queue_;
  bool zero_range_supported_ = true;  // until fallocate says otherwise
  bool punch_hole_supported_ = true;
  AlignedBuffer zeroes_;  // kZeroChunkBytes of zeroes once WriteZeroBytes first needs them
};

std::string_view FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "of unknown type";
}

Status CheckFileType(const std::string& path, mode_t mode) {
  if (S_ISREG(mode) || S_ISBLK(mode)) return Status::Ok();
  return Status::InvalidArgument("device " + path +
                                 " is not a regular file or block device (it is " +
                                 std::string(FileTypeName(mode)) + ")");
}

// Creates `path` as a sparse regular file of `size` bytes. Someone else creating it first is
// fine: the caller opens whatever is there.
Status CreateSparseFile(const std::string& path, uint64_t size) {
  ScopedFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    if (errno == EEXIST) return Status::Ok();
    return Status::FromErrno(errno, "create device file " + path);
  }
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return Status::FromErrno(
        err, "create device file " + path + ": set size to " + std::to_string(size) + " bytes");
  }
  return Status::Ok();
}

Result<DeviceGeometry> ReadGeometry(const std::string& path, int fd, const struct stat& st) {
  DeviceGeometry geometry;
  if (!S_ISBLK(st.st_mode)) {
    geometry.size = static_cast<uint64_t>(st.st_size);
    return geometry;
  }
  geometry.is_block_device = true;
  if (ioctl(fd, BLKGETSIZE64, &geometry.size) != 0) {
    return Status::FromErrno(errno, path + ": ioctl(BLKGETSIZE64)");
  }
  int block = 0;
  if (ioctl(fd, BLKSSZGET, &block) == 0 && block > 0) {
    geometry.logical_block_size = static_cast<uint32_t>(block);
  }
  return geometry;
}

}  // namespace

Result<IoEngine> ParseIoEngine(std::string_view name) {
  if (name == "auto") return IoEngine::kAuto;
  if (name == "io_uring") return IoEngine::kIoUring;
  if (name == "libaio") return IoEngine::kLibaio;
  return Status::InvalidArgument("unknown I/O engine '" + std::string(name) +
                                 "'; expected auto, io_uring or libaio");
}

Result<std::unique_ptr<BlockDevice>> OpenBlockDevice(const std::string& path,
                                                     const BlockDeviceOptions& options) {
  if (options.queue_depth == 0 || options.queue_depth > kMaxQueueDepth) {
    return Status::InvalidArgument("open device " + path + ": queue_depth " +
                                   std::to_string(options.queue_depth) + " is not in 1.." +
                                   std::to_string(kMaxQueueDepth));
  }

  // stat before open: opening a FIFO blocks and opening some character devices has effects.
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return Status::FromErrno(errno, "stat device " + path);
    if (options.create_size == 0) {
      return Status::NotFound("device " + path +
                              " does not exist; check the path, or set create_size to create a "
                              "sparse file");
    }
    CDP_RETURN_IF_ERROR(CreateSparseFile(path, options.create_size));
    if (stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "stat device " + path);
  }
  CDP_RETURN_IF_ERROR(CheckFileType(path, st.st_mode));

  int flags = (options.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  if (options.direct) flags |= O_DIRECT;
  ScopedFd fd(open(path.c_str(), flags));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == EINVAL && options.direct) {
      return Status::InvalidArgument("open device " + path +
                                     " with O_DIRECT: the filesystem does not support it; "
                                     "open without direct or move the file");
    }
    return Status::FromErrno(err, "open device " + path);
  }
  // The path may have been replaced between stat and open.
  if (fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "fstat device " + path);
  CDP_RETURN_IF_ERROR(CheckFileType(path, st.st_mode));
  CDP_ASSIGN_OR_RETURN(const DeviceGeometry geometry, ReadGeometry(path, fd.get(), st));

  Result<std::unique_ptr<IoQueue>> queue = Status::Internal("no I/O engine chosen");
  switch (options.engine) {
    case IoEngine::kAuto:
      if (IoUringUnavailableReason().empty()) {
        queue = IoUringQueue::Create(fd.get(), options.queue_depth);
        if (!queue.ok()) {
          CDP_LOG(info) << path << ": io_uring unavailable (" << queue.status().message()
                        << "); using libaio";
        }
      }
      if (!queue.ok()) queue = LibaioQueue::Create(fd.get(), options.queue_depth);
      break;
    case IoEngine::kIoUring:
      queue = IoUringQueue::Create(fd.get(), options.queue_depth);
      if (!queue.ok()) {
        return Status(queue.status().code(), "open device " + path + ": " +
                                                 queue.status().message() +
                                                 "; use engine libaio or auto");
      }
      break;
    case IoEngine::kLibaio:
      queue = LibaioQueue::Create(fd.get(), options.queue_depth);
      break;
  }
  if (!queue.ok()) return queue.status().WithContext("open device " + path);
  return std::unique_ptr<BlockDevice>(
      new AsyncBlockDevice(path, std::move(fd), geometry, options, std::move(queue).value()));
}

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  void* p = nullptr;
  const int err = posix_memalign(&p, kBufferAlignment, size);
  if (err != 0) {
    // Like operator new in a build without exceptions: out of memory is not recoverable here.
    CDP_LOG(fatal) << "AlignedBuffer: cannot allocate " << size << " bytes: " << ErrnoText(err);
    std::abort();
  }
  data_ = static_cast<char*>(p);
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

}  // namespace cdp
