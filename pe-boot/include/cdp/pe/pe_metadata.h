// PeMetadata: the target's durable replication cursors, kept on a small metadata disk attached
// to the target VM (serial "cdp-pe-meta"), because the PE itself has no persistent root.
//
// Layout (docs/pe-agent.md §3): block 0 is a label; then one slot per volume, each slot two
// 4 KiB copies. A save writes the older copy with generation + 1 and then flushes, so a write
// torn by a crash leaves the other copy valid: the cursor found after any crash is one that
// was saved, never garbage. Loading picks, per slot, the valid copy with the highest
// generation.
//
// From kKeptOffset on (a disk larger than that), the kept area holds one blob that the PE keeps
// across its boots (the prepared initramfs images, docs/pe-agent.md §3 and §5): a header block
// and the blob. A save zeroes the header and flushes, writes the blob and flushes, then writes
// the header (length, CRC32C of the blob) and flushes, so a crash leaves the new blob or none,
// never a torn one.
//
// Thread-compatible: one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/block_device.h"
#include "cdp/core/status.h"

namespace cdp::pe {

struct VolumeCursor {
  std::string volume;
  uint64_t volume_size = 0;
  uint64_t applied_lsn = 0;  // every record up to here is stable on the volume's disk
  uint64_t generation = 0;
  uint64_t time_ns = 0;  // when it was saved
};

class PeMetadata {
 public:
  static constexpr uint64_t kBlock = 4096;
  static constexpr uint64_t kMinSize = 1 << 20;  // 1 MiB: 127 volumes
  static constexpr size_t kMaxNameBytes = 64;

  // Takes `device` (opened writable, O_DIRECT or not: every I/O is 4 KiB aligned) and reads
  // every slot.
  // InvalidArgument when the device is smaller than kMinSize. A device never written (all
  // zeroes) is an empty metadata area; a label that is neither zero nor ours is Corruption
  // naming the device (it is not a metadata disk: nothing is written to it).
  static Result<std::unique_ptr<PeMetadata>> Open(std::unique_ptr<BlockDevice> device);

  // The saved cursor of `volume`, or a cursor with applied_lsn 0 when none was saved.
  VolumeCursor Get(const std::string& volume) const;

  // Saves volume's cursor durably (write + flush). ResourceExhausted when every slot is taken
  // by other volumes. REQUIRES: the data up to applied_lsn is already stable.
  Status Save(const std::string& volume, uint64_t volume_size, uint64_t applied_lsn);

  const std::string& path() const { return device_->path(); }

  // ---- the kept area ----
  static constexpr uint64_t kKeptOffset = 4 << 20;  // past the largest slot area (255 slots)

  // The bytes a kept blob can have: 0 on a disk of at most kKeptOffset + kBlock bytes (the 4 MiB
  // metadata disks cdpctl created before the kept area existed).
  uint64_t kept_capacity() const;

  // Replaces the kept blob durably (see above); an empty blob removes it (nothing is written on
  // a disk without a kept area). ResourceExhausted naming the sizes when it is larger than
  // kept_capacity(); the device's errors.
  Status SaveKept(std::string_view blob);

  // The kept blob. NotFound when none is kept (or the disk has no kept area); Corruption when
  // the header is damaged or the blob does not match its CRC (a torn or damaged save: save
  // again).
  Result<std::string> LoadKept();

  // Encodes/decodes one slot copy (exposed for tests). Decode returns NotFound for an all-zero
  // copy and Corruption for a bad magic, format or CRC.
  static std::string EncodeCopy(const VolumeCursor& cursor);
  static Result<VolumeCursor> DecodeCopy(const char* data);

 private:
  struct Slot {
    VolumeCursor cursor;  // the newest valid copy
    bool used = false;
  };
  explicit PeMetadata(std::unique_ptr<BlockDevice> device) : device_(std::move(device)) {}
  Status Load();
  Status WriteBlock(uint64_t offset, const std::string& data);
  Status WriteLabel();

  std::unique_ptr<BlockDevice> device_;
  bool labelled_ = false;
  std::vector<Slot> slots_;
  std::map<std::string, size_t> index_;  // volume -> slot
};

}  // namespace cdp::pe
