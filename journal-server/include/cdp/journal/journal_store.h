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

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
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
  // Retention (docs/retention.md).
  uint64_t base_lsn = 0;       // records <= base_lsn are folded into the base image
  uint64_t fold_target = 0;    // > base_lsn while a fold is unfinished
  uint64_t journal_bytes = 0;  // payload + kRecordOverhead per record, of the records kept
  std::optional<uint64_t> window_s;   // nullopt: the server's default
  std::optional<uint64_t> max_bytes;  // nullopt: the server's default
  uint64_t early_folds = 0;
  uint64_t early_fold_lsn = 0;
  uint64_t early_fold_time_ns = 0;
  // One writer per volume (docs/wire-protocol.md): the epoch granted last, to whom, when.
  uint64_t writer_epoch = 0;
  std::string writer_identity;
  uint64_t writer_since_ns = 0;
  uint64_t writer_instance_id = 0;  // the agent process it was granted to (Hello.instance_id)
  uint64_t writer_presented_epoch = 0;  // the epoch that process presented (its state dir's)
  bool writer_confirmed = false;        // it has used the grant (sent a batch or a report)
};

// Limits on what an agent may register (RegisterVolume): sizes are whole blocks of a power of
// two from 512 bytes to kMaxBlockSize, and at most kMaxVolumeBytes (offset + length arithmetic
// then never overflows, and no agent can make the journal-server create an absurd base image).
inline constexpr uint32_t kMaxBlockSize = 64 * 1024;
inline constexpr uint64_t kMaxVolumeBytes = uint64_t{1} << 50;  // 1 PiB

// OK when `size_bytes` and `block_size` are within the limits above; InvalidArgument naming the
// volume and the rule otherwise.
Status ValidateVolumeGeometry(const std::string& name, uint64_t size_bytes, uint32_t block_size);

// The point the journal keeps when `incoming` (with merge_labels) arrives at the LSN of
// `existing`: `existing` with incoming's labels added to its operator labels, or, when incoming
// is a POINT_SYNC_DONE point, incoming with existing's operator labels (and its label, when it
// was an operator point). Labels are kept once each; merge_labels is cleared. When incoming is
// a member of a group point (group_point_id != 0), the result carries incoming's group, group
// point id and members: the volume did not change since that point, so it is its member.
v1::ConsistencyPoint MergePoint(const v1::ConsistencyPoint& existing,
                                const v1::ConsistencyPoint& incoming);

// What one record costs the journal beyond its payload: two 12-byte keys and the 40-byte header.
inline constexpr uint64_t kRecordOverhead = 64;

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
    // The headers appended (payload null), contiguous from LSN last_lsn - size() + 1: a resend
    // is compared with them (JournalStore::StoredHeader).
    std::vector<ChangeRecord> headers;
  };
  std::map<uint32_t, Delta> deltas_;
  // Points appended in this group, by key: a later merge in the same group sees them.
  std::map<std::string, v1::ConsistencyPoint> points_;
};

class JournalStore {
 public:
  // Opens (creating when absent) the journal in `dir`. A directory that cannot be created or
  // written, or a RocksDB that does not open, is an error naming the directory.
  // `reserve_bytes`: Commit refuses groups while the filesystem of `dir` has less free space
  // than this (see Commit).
  static Result<std::unique_ptr<JournalStore>> Open(const std::string& dir,
                                                    uint64_t reserve_bytes = 0);
  ~JournalStore();

  // Registers a new volume, or checks an existing one: a different size is
  // FailedPrecondition naming both sizes. A new volume's geometry must pass
  // ValidateVolumeGeometry (InvalidArgument otherwise).
  Result<VolumeInfo> RegisterVolume(const std::string& name, uint64_t size_bytes,
                                    uint32_t block_size);
  // NotFound naming the volume and the known ones.
  Result<VolumeInfo> GetVolume(const std::string& name) const;
  std::vector<VolumeInfo> ListVolumes() const;

  // Highest LSN of `name` in the journal, counting `group`'s uncommitted appends.
  // REQUIRES: the volume exists.
  uint64_t LastLsn(const std::string& name, const WriteGroup& group) const;

  // The header of record `lsn` of `name` (payload null) as journaled, or as appended to `group`
  // and not committed yet. NotFound when it is in neither (never written, or folded away by
  // retention).
  Result<ChangeRecord> StoredHeader(const std::string& name, uint64_t lsn,
                                    const WriteGroup& group) const;

  // Appends one record. REQUIRES: rec.lsn == LastLsn(volume, group) + 1 and the payload
  // verified by the caller.
  void AppendRecord(WriteGroup* group, const VolumeInfo& volume, const ChangeRecord& rec,
                    std::string_view payload);
  // Readies `points` (in order, about to be appended to `group`) for AppendPoint: each one with
  // merge_labels becomes its merge (MergePoint) with the point already at its LSN — an earlier
  // one of `points`, one appended to `group`, or one in the journal — and loses the flag.
  // Reading the journal's point can fail (IOError, Corruption naming the LSN); then `points`
  // is unusable and nothing was appended, so a batch can be refused whole.
  Status PreparePoints(const WriteGroup& group, const VolumeInfo& volume,
                       std::vector<v1::ConsistencyPoint>* points) const;
  // Appends a consistency point as it is. REQUIRES: readied by PreparePoints when it may carry
  // merge_labels.
  void AppendPoint(WriteGroup* group, const VolumeInfo& volume, const v1::ConsistencyPoint& p);
  void AppendGap(WriteGroup* group, const VolumeInfo& volume, const v1::Gap& gap);

  // Writes the group with a synced WAL write; on OK the appends are durable and the in-memory
  // durable LSNs advance. On error nothing of the group is visible. A full disk: while the
  // journal's filesystem has less free space than the reserve, groups are refused with
  // ResourceExhausted before RocksDB sees them (RocksDB must never meet ENOSPC in its WAL: it
  // cannot recover from that), and taken again once space returns. After any other failed
  // write, later commits first resume RocksDB (DB::Resume, at most once a second).
  Status Commit(WriteGroup* group);

  // Free bytes on the journal's filesystem now (statvfs), and the reserve Commit keeps.
  Result<uint64_t> FreeBytes() const;
  uint64_t reserve_bytes() const { return reserve_bytes_; }

  // Reads records of `name` with LSN >= from_lsn in order, payloads included, until
  // max_bytes of payload or max_records. The payload total never exceeds max_bytes, except
  // that at least one record is returned even when its payload alone is larger. Corruption if
  // a stored record fails its checks.
  Status ReadRecords(const std::string& name, uint64_t from_lsn, uint64_t max_bytes,
                     size_t max_records, std::vector<ChangeRecord>* out) const;

  // Consistency points of `name` with from_lsn <= LSN <= to_lsn, in LSN order, at most
  // max_points of them (the first ones).
  Status ReadPoints(const std::string& name, uint64_t from_lsn, uint64_t to_lsn,
                    std::vector<v1::ConsistencyPoint>* out, size_t max_points = SIZE_MAX) const;

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

  // Sets the volume's retention (nullopt: the server's default); a synced write.
  Status SetRetention(const std::string& name, std::optional<uint64_t> window_s,
                      std::optional<uint64_t> max_bytes);

  // DATA_DIR/base/ID.img: the base image of the volume with that id.
  std::string BaseImagePath(uint32_t volume_id) const;

  // Records, with a synced write, that agent process `instance_id` (`identity`), presenting
  // epoch `presented`, was granted writer epoch `epoch` of `name` (docs/wire-protocol.md, "One
  // writer per volume"), not confirmed yet; the grant survives restarts.
  Status GrantWriter(const std::string& name, uint64_t epoch, const std::string& identity,
                     uint64_t instance_id, uint64_t presented);
  // Records, with a synced write, that the writer of `name` has used its grant.
  Status ConfirmWriter(const std::string& name);

  // Records, with a synced write, that a fold of `name` up to `target` begins: from then on the
  // base image may hold any state in (base_lsn, target]. REQUIRES: base_lsn < target <= durable.
  Status BeginFold(const std::string& name, uint64_t target);

  // Ends the fold begun by BeginFold, once the base image holds the state at fold_target and is
  // synced. One atomic synced write: base_lsn = fold_target; the records up to it and the points
  // before it deleted; every gap with after_lsn < fold_target replaced by `carried`.
  // `freed_bytes` leaves journal_bytes; `early` counts an early fold whose target record has
  // capture time `target_time_ns`. Takes the fold lock exclusively (see FoldLock).
  Status FinishFold(const std::string& name, const std::vector<v1::Gap>& carried,
                    uint64_t freed_bytes, bool early, uint64_t target_time_ns);

  // Compacts the records of volume `volume_id` below `lsn` away (after a fold), so their space
  // (blob files included) is given back now rather than at RocksDB's next compaction.
  Status CompactBefore(uint32_t volume_id, uint64_t lsn);

  // Held (shared) by readers of records that may be folded: FinishFold deletes records only
  // while no reader holds it, and readers see base_lsn change only between their holds.
  std::shared_lock<std::shared_mutex> FoldReadLock() const {
    return std::shared_lock<std::shared_mutex>(fold_mu_);
  }

  // Records the replica's applied LSN (not synced: it is a report, the replicator holds the
  // authoritative cursor).
  Status SetApplied(const std::string& name, uint64_t applied_lsn);

 private:
  JournalStore() = default;
  Status LoadVolumes();
  // The VolumeMeta of `v` as stored. REQUIRES: mu_ held.
  static v1::VolumeMeta MetaOf(const VolumeInfo& v);
  Status PutMeta(const VolumeInfo& v, rocksdb::WriteBatch* batch);
  // Applies `change` to the volume and stores its VolumeMeta with a synced write; the in-memory
  // copy changes only once that succeeded. `what` names the change in errors. Resumes RocksDB
  // first after a failed write, as Commit does.
  Status UpdateMeta(const std::string& name, const std::function<void(VolumeInfo*)>& change,
                    const std::string& what);
  // UpdateMeta's write. Takes mu_.
  Status UpdateMetaLocked(const std::string& name, const std::function<void(VolumeInfo*)>& change,
                          const std::string& what);
  // After a failed write RocksDB takes none until DB::Resume: tries it (at most once a second).
  // REQUIRES: commit_mu_ held, mu_ not.
  Status ResumeLocked();
  // Records a failed write (RocksDB may need Resume). REQUIRES: commit_mu_ held.
  void NoteWriteErrorLocked(const Status& s);

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
  // After a failed commit: RocksDB needs Resume() before it takes writes again.
  bool stopped_by_error_ = false;                       // GUARDED_BY(commit_mu_)
  uint64_t reserve_bytes_ = 0;
  bool below_reserve_ = false;                          // GUARDED_BY(commit_mu_)
  Status last_error_;                                   // GUARDED_BY(commit_mu_)
  std::chrono::steady_clock::time_point last_resume_;  // GUARDED_BY(commit_mu_)
  mutable std::shared_mutex fold_mu_;          // see FoldReadLock
};

// [volume id][lsn] big-endian.
std::string JournalKey(uint32_t volume_id, uint64_t lsn);

// OK when the journal has `volume`; NotFound naming it and the volumes the journal has otherwise
// (the answer to a request for an unknown volume).
Status CheckVolumeKnown(const JournalStore& store, const std::string& volume);

}  // namespace cdp::journal
