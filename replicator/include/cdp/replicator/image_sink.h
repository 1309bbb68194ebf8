// ImageSink: applies change records to a raw image file (or block device) in LSN order.
//
// Records of one Apply call are applied as the journal ordered them: consecutive writes that do
// not overlap go to the device together (io_uring/libaio WriteBatch); an overlapping write, a
// discard or a write-zeroes first waits for everything before it. Thread-compatible (one
// thread at a time).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"

namespace cdp::replicator {

// A record plus a view of its payload (which the caller keeps alive during Apply).
struct ApplyItem {
  ChangeRecord rec;
  std::string_view payload;
};

class ImageSink {
 public:
  // Opens `path`, creating a sparse file of volume_size bytes when it does not exist. A target
  // smaller than the volume is FailedPrecondition naming both sizes.
  static Result<std::unique_ptr<ImageSink>> Open(const std::string& path, uint64_t volume_size,
                                                 IoEngine engine);

  // Applies the items in order. REQUIRES: payloads verified by the caller.
  Status Apply(const std::vector<ApplyItem>& items);
  // Makes everything applied so far stable (fdatasync).
  Status Flush();

  const std::string& path() const { return device_->path(); }
  std::string_view engine_name() const { return device_->engine_name(); }

 private:
  explicit ImageSink(std::unique_ptr<BlockDevice> device) : device_(std::move(device)) {}
  std::unique_ptr<BlockDevice> device_;
};

// The replica's cursor: the last LSN whose data is stable on the target.
// File: STATE_DIR/replica-VOLUME.json {"format":1,"volume","target","applied_lsn"}.
class ReplicaCursor {
 public:
  ReplicaCursor(std::string state_dir, std::string volume, std::string target);
  // 0 when no cursor was saved yet; Corruption naming the file when it does not parse;
  // FailedPrecondition when it belongs to another target.
  Result<uint64_t> Load() const;
  // Saves atomically. REQUIRES: the data up to applied_lsn is already stable.
  Status Save(uint64_t applied_lsn) const;
  std::string path() const;

 private:
  std::string state_dir_, volume_, target_;
};

}  // namespace cdp::replicator
