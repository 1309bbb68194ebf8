// cdpctl export: serves the image of a volume at a consistency point read-only over NBD, so it
// can be mounted, booted or copied without restoring it first (docs/restore.md, section 5).
// The bytes come from the journal-server (ImageOpen/ImageRead, docs/wire-protocol.md §7); the
// NBD front end is nbd::NbdServer (nbd/) in read-only mode.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>

#include "cdp.pb.h"
#include "cdp/core/status.h"
#include "cdp/ctl/restore.h"
#include "cdp/journal/control_client.h"
#include "cdp/nbd/export_target.h"

namespace cdp::ctl {

// An nbd::ExportTarget whose reads come from an image open on the journal-server; writes, trims
// and write-zeroes are refused (the NBD server is read-only anyway), a flush has nothing to do.
// An image the server closed (unused for 5 minutes, or a server restart) is opened again at
// the same point, once per read. Thread-safe: reads are serialized on the one connection.
class RemoteImageTarget : public nbd::ExportTarget {
 public:
  // Opens the image of `volume` at the point `at` resolves to (the server's refusals as they
  // are, see Restore).
  static Result<std::unique_ptr<RemoteImageTarget>> Open(const std::string& server,
                                                         const std::string& volume,
                                                         const AtSpec& at);

  ~RemoteImageTarget() override;  // closes the image on the server

  const v1::ConsistencyPoint& point() const { return point_; }
  uint64_t bytes_read() const { return bytes_read_.load(); }
  // Reads fail with Aborted once *cancel is true (a stopped restore stops its qemu-img).
  void set_cancel(const std::atomic<bool>* cancel) { cancel_ = cancel; }

  uint64_t size() const override { return size_; }
  uint32_t block_size() const override { return 512; }
  Status Read(uint64_t offset, std::span<char> buf) override;
  Status Write(uint64_t offset, SharedBytes data, bool fua) override;
  Status Trim(uint64_t offset, uint32_t length) override;
  Status WriteZeroes(uint64_t offset, uint32_t length, bool fua) override;
  Status Flush() override { return Status::Ok(); }

 private:
  RemoteImageTarget() = default;
  Status ReadOnce(uint64_t offset, std::span<char> buf);

  std::mutex mu_;
  std::unique_ptr<journal::ControlClient> client_;  // GUARDED_BY(mu_)
  std::string volume_;
  uint64_t image_id_ = 0;  // GUARDED_BY(mu_)
  uint64_t size_ = 0;
  v1::ConsistencyPoint point_;
  std::atomic<uint64_t> bytes_read_{0};
  const std::atomic<bool>* cancel_ = nullptr;
};

struct ExportOptions {
  std::string server;
  std::string volume;
  AtSpec at;
  std::string nbd;  // unix:PATH or tcp:HOST:PORT
};

// Serves the export until *stop is true (checked every 200 ms), then closes it (the unix socket
// file is removed). `ready` is called once it listens, with the point and the bound address.
// Errors: the server's refusals, the NBD server's (address syntax, busy port or socket).
Status ServeExport(const ExportOptions& options, const std::atomic<bool>* stop,
                   const std::function<void(const v1::ConsistencyPoint&, const std::string&)>& ready);

}  // namespace cdp::ctl
