// ImageSink: applies change records to a raw image file (or block device) in LSN order, through
// the shared RecordApplier (core/record_apply.h). Thread-compatible (one thread at a time).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"
#include "cdp/core/record_apply.h"

namespace cdp::replicator {

using ::cdp::ApplyItem;

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
  explicit ImageSink(std::unique_ptr<BlockDevice> device)
      : device_(std::move(device)), applier_(device_.get(), /*direct=*/false) {}
  std::unique_ptr<BlockDevice> device_;
  RecordApplier applier_;
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
