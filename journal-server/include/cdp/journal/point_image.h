// PointImage: the content of one volume as it was at one LSN, read straight from the journal
// (docs/restore.md, section 3). Nothing is copied up front: an extent map built from the record
// headers after the volume's base LSN up to that LSN says, for every byte of the volume, which
// record wrote it last; a read takes those bytes from the records' payloads, and the rest from
// the base image (docs/retention.md), or zeroes while nothing was folded (a discard or
// write-zeroes record also reads as zeroes, as on the replica).
//
// Retention may fold records up to this LSN into the base image while the image is open (never
// past it: the caller pins the LSN, see RetentionWorker::Pin). A read that finds the base LSN
// moved rebuilds the map from the new base first.
//
// The map costs about 100 bytes per extent (at most two per record); building it reads every
// record header up to the LSN once, payloads not included.
//
// Thread-compatible: one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "cdp/core/block_device.h"
#include "cdp/core/record.h"
#include "cdp/core/status.h"
#include "cdp/journal/journal_store.h"

namespace cdp::journal {

class PointImage {
 public:
  // The image of `volume` at `lsn`. REQUIRES: `store` outlives the image; lsn <= the volume's
  // durable LSN. NotFound for an unknown volume; FailedPrecondition when lsn is below the base
  // LSN (folded); Corruption when a stored header fails its checks; IOError when the base image
  // cannot be opened.
  static Result<std::unique_ptr<PointImage>> Build(const JournalStore* store,
                                                   const std::string& volume, uint64_t lsn);

  uint64_t size_bytes() const { return size_bytes_; }
  uint64_t lsn() const { return lsn_; }
  size_t extent_count() const { return extents_.size(); }

  // Fills `buf` with the bytes [offset, offset + buf.size()) of the image. InvalidArgument when
  // the range leaves the volume; Corruption when a payload is missing or fails its CRC.
  Status Read(uint64_t offset, std::span<char> buf);

 private:
  // Bytes [start, end) of the volume were last written by record `lsn`, which covers
  // [record_offset, record_offset + record_length).
  struct Extent {
    uint64_t end = 0;
    uint64_t lsn = 0;
    uint64_t record_offset = 0;
    uint32_t record_length = 0;
    uint32_t crc32c = 0;
    RecordKind kind = RecordKind::kWrite;
  };

  PointImage(const JournalStore* store, std::string volume, uint64_t size_bytes, uint64_t lsn)
      : store_(store), volume_(std::move(volume)), size_bytes_(size_bytes), lsn_(lsn) {}

  // Makes `rec` the last writer of its range, splitting or dropping what it covers.
  void Overwrite(const ChangeRecord& rec);
  // (Re)builds the map from the current base LSN. REQUIRES: the store's FoldReadLock held.
  Status Load();

  const JournalStore* store_;
  const std::string volume_;
  const uint64_t size_bytes_;
  const uint64_t lsn_;
  std::map<uint64_t, Extent> extents_;  // by start offset; never overlapping
  uint64_t base_lsn_ = 0;               // the base LSN the map was built from
  std::unique_ptr<BlockDevice> base_;   // the base image, when base_lsn_ > 0
};

}  // namespace cdp::journal
