// JournalStore: the durable, RocksDB-indexed journal of change records (docs/journal-format.md).
//
// Column families: "volumes" (name -> VolumeMeta), "index" ([volume id][LSN] -> encoded record
// header), "payload" ([volume id][LSN] -> payload bytes, in blob files when >= 4 KiB),
// "points" ([volume id][LSN] -> ConsistencyPoint), "gaps" ([volume id][LSN] -> Gap),
// "replicas" (name -> ReplicaProgress). Keys are big-endian so they sort by LSN.
//
// Writes go through a WriteGroup committed with one synced WAL write (group commit): when
// Commit returns OK every record in the group is on stable storage.
//
// Thread-safety: all methods are thread-safe; commits are serialized internally.
#pragma once

#include <rocksdb/db.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cdp.pb.h"
#include "cdp/core/record.h"
#include "cdp/core/status.h"

namespace cdp::journal {

struct VolumeInfo {
  std::string name;
  uint32_t id = 0;
  uint64_t size_bytes = 0;
  uint32_t block_size = 0;
  uint64_t created_ns = 0;
  uint64_t durable_lsn = 0;  // highest LSN committed (records are contiguous from 1)
  uint64_t applied_lsn = 0;  // last applied LSN reported by a replicator
  uint64_t last_point_lsn = 0;
  uint64_t gaps = 0;
  uint64_t records = 0;         // records committed since the server started
  uint64_t bytes_received = 0;  // payload bytes committed since the server started
};

// A set of appends that commit together.
class WriteGroup {
 public:
  bool empty() const { return batch_.Count() == 0; }
  size_t byte_size() const { return batch_.GetDataSize(); }

 private:
  friend class JournalStore;
  rocksdb::WriteBatch batch_;
  // Per volume id: highest LSN appended in this group, records, bytes.
  struct Delta {
    uint64_t last_lsn = 0;
    uint64_t records = 0;
    uint64_t bytes = 0;
    uint64_t last_point_lsn = 0;
    uint64_t gaps = 0;
  };
  std::map<uint32_t, Delta> deltas_;
};

class JournalStore {
 public:
  // Opens (creating when absent) the journal in `dir`. A directory that cannot be created or
  // written, or a RocksDB that does not open, is an error naming the directory.
  static Result<std::unique_ptr<JournalStore>> Open(const std::string& dir);
  ~JournalStore();

  // Registers a new volume, or checks an existing one: a different size is
  // FailedPrecondition naming both sizes.
  Result<VolumeInfo> RegisterVolume(const std::string& name, uint64_t size_bytes,
                                    uint32_t block_size);
  // NotFound naming the volume and the known ones.
  Result<VolumeInfo> GetVolume(const std::string& name) const;
  std::vector<VolumeInfo> ListVolumes() const;

  // Highest LSN of `name` in the journal, counting `group`'s uncommitted appends.
  // REQUIRES: the volume exists.
  uint64_t LastLsn(const std::string& name, const WriteGroup& group) const;

  // Appends one record. REQUIRES: rec.lsn == LastLsn(volume, group) + 1 and the payload
  // verified by the caller.
  void AppendRecord(WriteGroup* group, const VolumeInfo& volume, const ChangeRecord& rec,
                    std::string_view payload);
  void AppendPoint(WriteGroup* group, const VolumeInfo& volume, const v1::ConsistencyPoint& p);
  void AppendGap(WriteGroup* group, const VolumeInfo& volume, const v1::Gap& gap);

  // Writes the group with a synced WAL write; on OK the appends are durable and the in-memory
  // durable LSNs advance. On error nothing of the group is visible.
  Status Commit(WriteGroup* group);

  // Reads records of `name` with LSN >= from_lsn in order, payloads included, until
  // max_bytes of payload or max_records. The payload total never exceeds max_bytes, except
  // that at least one record is returned even when its payload alone is larger. Corruption if
  // a stored record fails its checks.
  Status ReadRecords(const std::string& name, uint64_t from_lsn, uint64_t max_bytes,
                     size_t max_records, std::vector<ChangeRecord>* out) const;

  // Consistency points of `name` with from_lsn <= LSN <= to_lsn.
  Status ReadPoints(const std::string& name, uint64_t from_lsn, uint64_t to_lsn,
                    std::vector<v1::ConsistencyPoint>* out) const;

  // Every history gap of `name`, by after_lsn.
  Status ReadGaps(const std::string& name, std::vector<v1::Gap>* out) const;

  // Calls `fn` with the header of each record of `name` with from_lsn <= LSN <= to_lsn, in LSN
  // order, payloads not read (rec.payload stays null). Stops at the first error `fn` returns.
  // Corruption if a stored header fails its checks.
  Status ScanRecordHeaders(const std::string& name, uint64_t from_lsn, uint64_t to_lsn,
                           const std::function<Status(const ChangeRecord&)>& fn) const;

  // The payload of the write record `header` (as ScanRecordHeaders gave it), checked against
  // the header's length and CRC. Corruption when it is missing or does not match.
  Result<SharedBytes> ReadPayload(const std::string& name, const ChangeRecord& header) const;

  // Capture time of record `lsn` (NotFound if it is not in the journal).
  Result<uint64_t> RecordTime(const std::string& name, uint64_t lsn) const;

  // Records the replica's applied LSN (not synced: it is a report, the replicator holds the
  // authoritative cursor).
  Status SetApplied(const std::string& name, uint64_t applied_lsn);

 private:
  JournalStore() = default;
  Status LoadVolumes();

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* volumes_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* index_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* payload_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* points_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* gaps_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* replicas_cf_ = nullptr;
  std::string dir_;

  mutable std::mutex mu_;
  std::map<std::string, VolumeInfo> volumes_;  // GUARDED_BY(mu_)
  std::map<uint32_t, std::string> names_;      // id -> name, GUARDED_BY(mu_)
  std::mutex commit_mu_;                       // serializes Commit
};

// [volume id][lsn] big-endian.
std::string JournalKey(uint32_t volume_id, uint64_t lsn);

}  // namespace cdp::journal
