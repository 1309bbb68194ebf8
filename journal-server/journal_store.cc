#include "cdp/journal/journal_store.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "cdp/core/logging.h"

namespace cdp::journal {

namespace {

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  if (s.IsNotFound()) return Status::NotFound(what + ": " + s.ToString());
  if (s.IsNoSpace()) return Status::ResourceExhausted(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

// The record header an `index` iterator points at, checked against its key's LSN.
Result<ChangeRecord> DecodeIndexEntry(const rocksdb::Iterator& ix, const std::string& where) {
  CDP_ASSIGN_OR_RETURN(
      ChangeRecord rec,
      DecodeRecordHeader(std::string_view(ix.value().data(), ix.value().size()), where));
  const uint64_t key_lsn = GetBigEndian64(ix.key().data() + 4);
  if (rec.lsn != key_lsn) {
    return Status::Corruption(where + ": index key LSN " + std::to_string(key_lsn) +
                              " holds record LSN " + std::to_string(rec.lsn));
  }
  return rec;
}

const char* kCfNames[] = {"default", "volumes", "index", "payload", "points", "gaps", "replicas"};

}  // namespace

std::string JournalKey(uint32_t volume_id, uint64_t lsn) {
  std::string key;
  key.reserve(12);
  PutBigEndian32(&key, volume_id);
  PutBigEndian64(&key, lsn);
  return key;
}

Result<std::unique_ptr<JournalStore>> JournalStore::Open(const std::string& dir,
                                                         uint64_t reserve_bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return Status::IOError("data dir " + dir + " cannot be created: " + ec.message() +
                           "; pick a writable --data-dir");
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status::FromErrno(errno, "data dir " + dir + " is not writable");
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.IncreaseParallelism(2);
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  // WAL files live until every column family with data in them is flushed; bound them so the
  // free-space reserve (Commit) bounds what a full disk can take.
  db_options.max_total_wal_size = 128ull << 20;

  rocksdb::ColumnFamilyOptions index;
  index.write_buffer_size = 32 << 20;
  rocksdb::ColumnFamilyOptions payload;
  payload.write_buffer_size = 64 << 20;
  payload.compression = rocksdb::kNoCompression;
  payload.enable_blob_files = true;
  payload.min_blob_size = 4096;
  payload.blob_file_size = 256ull << 20;
  payload.blob_compression_type = rocksdb::kNoCompression;
  payload.enable_blob_garbage_collection = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const char* name : kCfNames) {
    const std::string n(name);
    if (n == "index" || n == "points" || n == "gaps")
      cfs.emplace_back(n, index);
    else if (n == "payload")
      cfs.emplace_back(n, payload);
    else
      cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
  }

  std::unique_ptr<JournalStore> store(new JournalStore());
  store->dir_ = dir;
  store->reserve_bytes_ = reserve_bytes;
  rocksdb::DB* raw = nullptr;
  const std::string db_path = dir + "/journal";
  rocksdb::Status s = rocksdb::DB::Open(db_options, db_path, cfs, &store->handles_, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return Status::Unavailable("journal " + db_path +
                                 " is locked: another journal-server "
                                 "uses this --data-dir (" +
                                 s.ToString() + ")");
    }
    return FromRocks(s, "cannot open journal " + db_path);
  }
  store->db_.reset(raw);
  store->volumes_cf_ = store->handles_[1];
  store->index_cf_ = store->handles_[2];
  store->payload_cf_ = store->handles_[3];
  store->points_cf_ = store->handles_[4];
  store->gaps_cf_ = store->handles_[5];
  store->replicas_cf_ = store->handles_[6];
  CDP_RETURN_IF_ERROR(store->LoadVolumes());
  return store;
}

JournalStore::~JournalStore() {
  if (db_) {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    handles_.clear();
    db_->Close();
  }
}

Status JournalStore::LoadVolumes() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), volumes_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::VolumeMeta meta;
    const std::string name = it->key().ToString();
    if (!meta.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return Status::Corruption("journal " + dir_ + ": volume record '" + name +
                                "' does not parse");
    }
    VolumeInfo v;
    v.name = name;
    v.id = meta.id();
    v.size_bytes = meta.size_bytes();
    v.block_size = meta.block_size();
    v.created_ns = meta.created_ns();
    v.base_lsn = meta.base_lsn();
    v.fold_target = std::max(meta.fold_target(), meta.base_lsn());
    if (meta.has_retention_window_s()) v.window_s = meta.retention_window_s();
    if (meta.has_retention_max_bytes()) v.max_bytes = meta.retention_max_bytes();
    v.early_folds = meta.early_folds();
    v.early_fold_lsn = meta.early_fold_lsn();
    v.early_fold_time_ns = meta.early_fold_time_ns();
    v.writer_epoch = meta.writer_epoch();
    v.writer_identity = meta.writer_identity();
    v.writer_since_ns = meta.writer_since_ns();
    v.writer_instance_id = meta.writer_instance_id();
    v.writer_presented_epoch = meta.writer_presented_epoch();
    v.writer_confirmed = meta.writer_confirmed();

    // Durable LSN = the last index key of this volume.
    std::unique_ptr<rocksdb::Iterator> ix(db_->NewIterator(rocksdb::ReadOptions(), index_cf_));
    ix->SeekForPrev(JournalKey(v.id, UINT64_MAX));
    if (ix->Valid() && ix->key().size() == 12 && GetBigEndian32(ix->key().data()) == v.id) {
      v.durable_lsn = GetBigEndian64(ix->key().data() + 4);
    }
    // Every record may have been folded: the base image then holds the history.
    v.durable_lsn = std::max(v.durable_lsn, v.base_lsn);
    std::unique_ptr<rocksdb::Iterator> px(db_->NewIterator(rocksdb::ReadOptions(), points_cf_));
    px->SeekForPrev(JournalKey(v.id, UINT64_MAX));
    if (px->Valid() && px->key().size() == 12 && GetBigEndian32(px->key().data()) == v.id) {
      v.last_point_lsn = GetBigEndian64(px->key().data() + 4);
    }
    std::string progress;
    if (db_->Get(rocksdb::ReadOptions(), replicas_cf_, name, &progress).ok()) {
      v1::ReplicaProgress p;
      if (p.ParseFromString(progress)) v.applied_lsn = p.applied_lsn();
    }
    names_[v.id] = name;
    volumes_[name] = std::move(v);
  }
  CDP_RETURN_IF_ERROR(FromRocks(it->status(), "journal " + dir_ + ": reading volumes"));
  // What the kept records cost, for the size cap: one pass over their headers, reading the kind
  // and length fields without checking them (a damaged record is reported when it is read, not
  // here: it must not keep the server from starting).
  for (auto& [name, v] : volumes_) {
    uint64_t bytes = 0;
    rocksdb::ReadOptions ro;
    const std::string upper = JournalKey(v.id + 1, 0);
    rocksdb::Slice upper_slice(upper);
    ro.iterate_upper_bound = &upper_slice;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> ix(db_->NewIterator(ro, index_cf_));
    for (ix->Seek(JournalKey(v.id, v.base_lsn + 1)); ix->Valid(); ix->Next()) {
      bytes += kRecordOverhead;
      const rocksdb::Slice h = ix->value();
      if (h.size() == kRecordHeaderSize && h[1] == static_cast<char>(RecordKind::kWrite)) {
        bytes += GetBigEndian32(h.data() + 28);
      }
    }
    CDP_RETURN_IF_ERROR(FromRocks(ix->status(), "journal " + dir_ + ": volume " + name));
    v.journal_bytes = bytes;
    CDP_LOG(info) << "journal: volume " << name << " (id " << v.id << ", " << v.size_bytes
                  << " bytes): durable LSN " << v.durable_lsn << ", applied LSN " << v.applied_lsn
                  << ", base LSN " << v.base_lsn << ", " << bytes << " journal bytes"
                  << (v.fold_target > v.base_lsn
                          ? ", unfinished fold to LSN " + std::to_string(v.fold_target)
                          : std::string());
  }
  return Status::Ok();
}

v1::VolumeMeta JournalStore::MetaOf(const VolumeInfo& v) {
  v1::VolumeMeta meta;
  meta.set_id(v.id);
  meta.set_size_bytes(v.size_bytes);
  meta.set_block_size(v.block_size);
  meta.set_created_ns(v.created_ns);
  meta.set_base_lsn(v.base_lsn);
  meta.set_fold_target(v.fold_target);
  if (v.window_s) meta.set_retention_window_s(*v.window_s);
  if (v.max_bytes) meta.set_retention_max_bytes(*v.max_bytes);
  meta.set_early_folds(v.early_folds);
  meta.set_early_fold_lsn(v.early_fold_lsn);
  meta.set_early_fold_time_ns(v.early_fold_time_ns);
  meta.set_writer_epoch(v.writer_epoch);
  meta.set_writer_identity(v.writer_identity);
  meta.set_writer_since_ns(v.writer_since_ns);
  meta.set_writer_instance_id(v.writer_instance_id);
  meta.set_writer_presented_epoch(v.writer_presented_epoch);
  meta.set_writer_confirmed(v.writer_confirmed);
  return meta;
}

Status JournalStore::PutMeta(const VolumeInfo& v, rocksdb::WriteBatch* batch) {
  return FromRocks(batch->Put(volumes_cf_, v.name, MetaOf(v).SerializeAsString()),
                   "journal " + dir_ + ": volume " + v.name);
}

Status JournalStore::CompactBefore(uint32_t volume_id, uint64_t lsn) {
  const std::string first = JournalKey(volume_id, 0);
  const std::string past = JournalKey(volume_id, lsn);
  rocksdb::Slice begin(first), end(past);
  rocksdb::CompactRangeOptions options;
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (auto* cf : {index_cf_, payload_cf_}) {
    CDP_RETURN_IF_ERROR(FromRocks(db_->CompactRange(options, cf, &begin, &end),
                                  "journal " + dir_ + ": compacting folded records"));
  }
  return Status::Ok();
}

std::string JournalStore::BaseImagePath(uint32_t volume_id) const {
  return dir_ + "/base/" + std::to_string(volume_id) + ".img";
}

Status JournalStore::UpdateMeta(const std::string& name,
                                const std::function<void(VolumeInfo*)>& change,
                                const std::string& what) {
  {
    // The same recovery as Commit's after a failed write (a full disk): a metadata write is
    // often the first after it (a restarted agent's grant). commit_mu_ is never taken under mu_.
    std::lock_guard<std::mutex> commit_lock(commit_mu_);
    CDP_RETURN_IF_ERROR(ResumeLocked());
  }
  Status written = UpdateMetaLocked(name, change, what);
  if (!written.ok() && !written.IsNotFound()) {
    std::lock_guard<std::mutex> commit_lock(commit_mu_);
    NoteWriteErrorLocked(written);
  }
  return written;
}

Status JournalStore::UpdateMetaLocked(const std::string& name,
                                      const std::function<void(VolumeInfo*)>& change,
                                      const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("journal: no volume " + name);
  VolumeInfo v = it->second;
  change(&v);
  rocksdb::WriteBatch batch;
  CDP_RETURN_IF_ERROR(PutMeta(v, &batch));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CDP_RETURN_IF_ERROR(
      FromRocks(db_->Write(wo, &batch), "journal " + dir_ + ": " + what + " of " + name));
  it->second = v;
  return Status::Ok();
}

Status JournalStore::SetRetention(const std::string& name, std::optional<uint64_t> window_s,
                                  std::optional<uint64_t> max_bytes) {
  return UpdateMeta(
      name,
      [&](VolumeInfo* v) {
        v->window_s = window_s;
        v->max_bytes = max_bytes;
      },
      "retention");
}

Status JournalStore::GrantWriter(const std::string& name, uint64_t epoch,
                                 const std::string& identity, uint64_t instance_id,
                                 uint64_t presented) {
  return UpdateMeta(
      name,
      [&](VolumeInfo* v) {
        if (v->writer_epoch != epoch) v->writer_since_ns = NowNanos();
        v->writer_epoch = epoch;
        v->writer_identity = identity;
        v->writer_instance_id = instance_id;
        v->writer_presented_epoch = presented;
        v->writer_confirmed = false;
      },
      "writer epoch");
}

Status JournalStore::ConfirmWriter(const std::string& name) {
  return UpdateMeta(
      name, [](VolumeInfo* v) { v->writer_confirmed = true; }, "writer epoch");
}

Status JournalStore::BeginFold(const std::string& name, uint64_t target) {
  return UpdateMeta(name, [&](VolumeInfo* v) { v->fold_target = target; }, "fold");
}

Status JournalStore::FinishFold(const std::string& name, const std::vector<v1::Gap>& carried,
                                uint64_t freed_bytes, bool early, uint64_t target_time_ns) {
  std::unique_lock<std::shared_mutex> fold_lock(fold_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("journal: no volume " + name);
  VolumeInfo v = it->second;
  const uint64_t target = v.fold_target;
  v.base_lsn = target;
  if (early) {
    v.early_folds++;
    v.early_fold_lsn = target;
    v.early_fold_time_ns = target_time_ns;
  }
  rocksdb::WriteBatch batch;
  CDP_RETURN_IF_ERROR(PutMeta(v, &batch));
  const std::string first = JournalKey(v.id, 0);
  const std::string past = JournalKey(v.id, target + 1);
  const std::string at = JournalKey(v.id, target);
  const std::string where = "journal " + dir_ + ": fold of " + name;
  CDP_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(index_cf_, first, past), where));
  CDP_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(payload_cf_, first, past), where));
  CDP_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(points_cf_, first, at), where));
  CDP_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(gaps_cf_, first, at), where));
  for (const auto& g : carried) {
    CDP_RETURN_IF_ERROR(FromRocks(
        batch.Put(gaps_cf_, JournalKey(v.id, g.after_lsn()), g.SerializeAsString()), where));
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CDP_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), where));
  v.journal_bytes -= std::min(v.journal_bytes, freed_bytes);
  it->second = v;
  return Status::Ok();
}

Status ValidateVolumeGeometry(const std::string& name, uint64_t size_bytes, uint32_t block_size) {
  if (block_size < 512 || block_size > kMaxBlockSize || (block_size & (block_size - 1)) != 0) {
    return Status::InvalidArgument("volume " + name + ": block size " + std::to_string(block_size) +
                                   " bytes is not a power of two from 512 to " +
                                   std::to_string(kMaxBlockSize));
  }
  if (size_bytes == 0 || size_bytes > kMaxVolumeBytes || size_bytes % block_size != 0) {
    return Status::InvalidArgument("volume " + name + ": size " + std::to_string(size_bytes) +
                                   " bytes is not a non-zero multiple of its " +
                                   std::to_string(block_size) + "-byte blocks of at most " +
                                   std::to_string(kMaxVolumeBytes >> 40) +
                                   " TiB; protect a device of a supported size");
  }
  return Status::Ok();
}

Result<VolumeInfo> JournalStore::RegisterVolume(const std::string& name, uint64_t size_bytes,
                                                uint32_t block_size) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(name);
  if (it != volumes_.end()) {
    if (it->second.size_bytes != size_bytes) {
      return Status::FailedPrecondition(
          "volume " + name + " is journaled with size " + std::to_string(it->second.size_bytes) +
          " bytes but the agent reports " + std::to_string(size_bytes) +
          "; resizing is not supported: protect the device under a new volume name");
    }
    return it->second;
  }
  CDP_RETURN_IF_ERROR(ValidateVolumeGeometry(name, size_bytes, block_size));
  VolumeInfo v;
  v.name = name;
  v.id = names_.empty() ? 1 : names_.rbegin()->first + 1;
  v.size_bytes = size_bytes;
  v.block_size = block_size;
  v.created_ns = NowNanos();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CDP_RETURN_IF_ERROR(FromRocks(db_->Put(wo, volumes_cf_, name, MetaOf(v).SerializeAsString()),
                                "journal " + dir_ + ": registering volume " + name));
  names_[v.id] = name;
  volumes_[name] = v;
  CDP_LOG(info) << "journal: registered volume " << name << " (id " << v.id << ", " << size_bytes
                << " bytes)";
  return v;
}

Result<VolumeInfo> JournalStore::GetVolume(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) {
    std::string known;
    for (const auto& [n, v] : volumes_) known += (known.empty() ? "" : ", ") + n;
    return Status::NotFound("unknown volume '" + name +
                            "' (known: " + (known.empty() ? std::string("none yet") : known) +
                            "); start its cdp-agent first");
  }
  return it->second;
}

std::vector<VolumeInfo> JournalStore::ListVolumes() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<VolumeInfo> out;
  for (const auto& [n, v] : volumes_) out.push_back(v);
  return out;
}

Status CheckVolumeKnown(const JournalStore& store, const std::string& volume) {
  std::string known;
  for (const auto& v : store.ListVolumes()) {
    if (v.name == volume) return Status::Ok();
    known += (known.empty() ? "" : ", ") + v.name;
  }
  return Status::NotFound("journal-server: no volume '" + volume + "' (it has: " +
                          (known.empty() ? "none" : known) + ")");
}

uint64_t JournalStore::LastLsn(const std::string& name, const WriteGroup& group) const {
  std::lock_guard<std::mutex> lock(mu_);
  const VolumeInfo& v = volumes_.at(name);
  auto d = group.deltas_.find(v.id);
  if (d != group.deltas_.end() && d->second.last_lsn > v.durable_lsn) return d->second.last_lsn;
  return v.durable_lsn;
}

void JournalStore::AppendRecord(WriteGroup* group, const VolumeInfo& volume,
                                const ChangeRecord& rec, std::string_view payload) {
  const std::string key = JournalKey(volume.id, rec.lsn);
  group->batch_.Put(index_cf_, key, EncodeRecordHeader(rec));
  if (rec.has_payload()) group->batch_.Put(payload_cf_, key, rocksdb::Slice(payload));
  auto& d = group->deltas_[volume.id];
  d.headers.push_back(rec);
  d.headers.back().payload = nullptr;
  d.last_lsn = std::max(d.last_lsn, rec.lsn);
  d.records++;
  d.bytes += payload.size();
}

v1::ConsistencyPoint MergePoint(const v1::ConsistencyPoint& existing,
                                const v1::ConsistencyPoint& incoming) {
  std::vector<std::string> labels(existing.operator_labels().begin(),
                                  existing.operator_labels().end());
  auto add = [&](const std::string& label) {
    if (!label.empty() && std::find(labels.begin(), labels.end(), label) == labels.end()) {
      labels.push_back(label);
    }
  };
  v1::ConsistencyPoint out;
  if (incoming.origin() == v1::POINT_SYNC_DONE) {
    // It ends a history gap or the initial sync: it takes the key, and keeps what an operator
    // called the point it replaces.
    out = incoming;
    if (existing.origin() == v1::POINT_OPERATOR) add(existing.label());
  } else {
    out = existing;
    add(incoming.label());
  }
  for (const auto& l : incoming.operator_labels()) add(l);
  if (incoming.group_point_id() != 0) {
    // A group freeze found this volume unchanged since its last point: that point is also the
    // volume's member of the group point (the newest group point it belongs to).
    out.set_group(incoming.group());
    out.set_group_point_id(incoming.group_point_id());
    *out.mutable_group_members() = incoming.group_members();
  }
  out.clear_operator_labels();
  for (const auto& l : labels) {
    if (l != out.label()) out.add_operator_labels(l);
  }
  out.clear_merge_labels();
  return out;
}

Status JournalStore::PreparePoints(const WriteGroup& group, const VolumeInfo& volume,
                                   std::vector<v1::ConsistencyPoint>* points) const {
  for (size_t i = 0; i < points->size(); ++i) {
    v1::ConsistencyPoint& p = (*points)[i];
    if (!p.merge_labels()) continue;
    std::optional<v1::ConsistencyPoint> existing;
    for (size_t j = i; j-- > 0;) {
      if ((*points)[j].lsn() == p.lsn()) {
        existing = (*points)[j];
        break;
      }
    }
    const std::string key = JournalKey(volume.id, p.lsn());
    if (!existing) {
      auto pending = group.points_.find(key);
      if (pending != group.points_.end()) existing = pending->second;
    }
    if (!existing) {
      std::string value;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), points_cf_, key, &value);
      if (s.ok()) {
        v1::ConsistencyPoint e;
        if (!e.ParseFromString(value)) {
          return Status::Corruption("journal volume " + volume.name + ": the point at LSN " +
                                    std::to_string(p.lsn()) + " does not parse");
        }
        existing = std::move(e);
      } else if (!s.IsNotFound()) {
        return FromRocks(s, "journal volume " + volume.name + ": reading the point at LSN " +
                                std::to_string(p.lsn()));
      }
    }
    if (existing) {
      p = MergePoint(*existing, p);
    } else {
      p.clear_merge_labels();
    }
  }
  return Status::Ok();
}

void JournalStore::AppendPoint(WriteGroup* group, const VolumeInfo& volume,
                               const v1::ConsistencyPoint& p) {
  const std::string key = JournalKey(volume.id, p.lsn());
  v1::ConsistencyPoint stored = p;
  stored.clear_merge_labels();
  group->batch_.Put(points_cf_, key, stored.SerializeAsString());
  group->points_[key] = std::move(stored);
  auto& d = group->deltas_[volume.id];
  d.last_point_lsn = std::max(d.last_point_lsn, p.lsn());
}

void JournalStore::AppendGap(WriteGroup* group, const VolumeInfo& volume, const v1::Gap& gap) {
  group->batch_.Put(gaps_cf_, JournalKey(volume.id, gap.after_lsn()), gap.SerializeAsString());
  group->deltas_[volume.id].gaps++;
}

Result<uint64_t> JournalStore::FreeBytes() const {
  struct statvfs fs;
  if (statvfs(dir_.c_str(), &fs) != 0) return Status::FromErrno(errno, "statvfs " + dir_);
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

Status JournalStore::ResumeLocked() {
  if (!stopped_by_error_) return Status::Ok();
  // A failed WAL write (a full disk) stops RocksDB's writes until it is resumed; try that at
  // most once a second, and refuse writes until it works.
  const auto now = std::chrono::steady_clock::now();
  if (now - last_resume_ < std::chrono::seconds(1)) return last_error_;
  last_resume_ = now;
  Status resumed =
      FromRocks(db_->Resume(), "journal " + dir_ + ": resuming after " + last_error_.message());
  if (!resumed.ok()) return resumed;
  CDP_LOG(warning) << "journal " << dir_ << ": writes resumed after: " << last_error_.message();
  stopped_by_error_ = false;
  return Status::Ok();
}

void JournalStore::NoteWriteErrorLocked(const Status& s) {
  stopped_by_error_ = true;
  last_error_ = s;
  last_resume_ = std::chrono::steady_clock::now();
}

Status JournalStore::Commit(WriteGroup* group) {
  if (group->empty()) return Status::Ok();
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  if (reserve_bytes_ > 0) {
    struct statvfs fs;
    if (statvfs(dir_.c_str(), &fs) == 0) {
      const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
      const bool below = free_bytes < reserve_bytes_ + group->byte_size();
      if (below != below_reserve_) {
        below_reserve_ = below;
        if (below) {
          CDP_LOG(error) << "journal " << dir_ << ": its filesystem has " << (free_bytes >> 20)
                         << " MiB free, under the reserve of " << (reserve_bytes_ >> 20)
                         << " MiB: journaling stops (nothing is acked; agents fall back to their "
                            "dirty bitmaps) until space is freed";
        } else {
          CDP_LOG(warning) << "journal " << dir_ << ": " << (free_bytes >> 20)
                           << " MiB free again: journaling resumes";
        }
      }
      if (below) {
        return Status::ResourceExhausted(
            "journal " + dir_ + ": its filesystem has " + std::to_string(free_bytes >> 20) +
            " MiB free, under the reserve of " + std::to_string(reserve_bytes_ >> 20) +
            " MiB (journal-server --reserve-bytes); free space or set retention");
      }
    }
  }
  CDP_RETURN_IF_ERROR(ResumeLocked());
  rocksdb::WriteOptions wo;
  wo.sync = true;
  Status s = FromRocks(db_->Write(wo, &group->batch_), "journal " + dir_ + ": commit");
  if (!s.ok()) {
    NoteWriteErrorLocked(s);
    return s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, d] : group->deltas_) {
    auto name = names_.find(id);
    if (name == names_.end()) continue;
    VolumeInfo& v = volumes_[name->second];
    v.durable_lsn = std::max(v.durable_lsn, d.last_lsn);
    v.journal_bytes += d.bytes + d.records * kRecordOverhead;
    v.records += d.records;
    v.bytes_received += d.bytes;
    v.last_point_lsn = std::max(v.last_point_lsn, d.last_point_lsn);
    v.gaps += d.gaps;
  }
  return Status::Ok();
}

Status JournalStore::ReadRecords(const std::string& name, uint64_t from_lsn, uint64_t max_bytes,
                                 size_t max_records, std::vector<ChangeRecord>* out) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  const std::string where = "journal volume " + name;
  rocksdb::ReadOptions ro;
  const std::string upper = JournalKey(v.id + 1, 0);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> ix(db_->NewIterator(ro, index_cf_));
  uint64_t bytes = 0;
  for (ix->Seek(JournalKey(v.id, from_lsn)); ix->Valid(); ix->Next()) {
    if (out->size() >= max_records || (bytes >= max_bytes && !out->empty())) break;
    CDP_ASSIGN_OR_RETURN(ChangeRecord rec, DecodeIndexEntry(*ix, where));
    // The payload total stays within max_bytes; only a first record may exceed it alone.
    if (rec.has_payload() && !out->empty() && bytes + rec.length > max_bytes) break;
    if (rec.has_payload()) {
      auto payload = std::make_shared<std::string>();
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), payload_cf_, ix->key(), payload.get());
      if (!s.ok()) {
        return Status::Corruption(where + ": payload of LSN " + std::to_string(rec.lsn) +
                                  " is missing: " + s.ToString());
      }
      CDP_RETURN_IF_ERROR(VerifyRecordPayload(rec, *payload).WithContext(where));
      bytes += payload->size();
      rec.payload = std::move(payload);
    }
    out->push_back(std::move(rec));
  }
  return FromRocks(ix->status(), where + ": reading records");
}

Status JournalStore::ReadPoints(const std::string& name, uint64_t from_lsn, uint64_t to_lsn,
                                std::vector<v1::ConsistencyPoint>* out, size_t max_points) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  rocksdb::ReadOptions ro;
  const std::string upper = JournalKey(v.id + 1, 0);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, points_cf_));
  const std::string end = JournalKey(v.id, to_lsn);
  size_t taken = 0;
  for (it->Seek(JournalKey(v.id, from_lsn)); it->Valid() && taken < max_points; it->Next()) {
    if (it->key().compare(end) > 0) break;
    ++taken;
    v1::ConsistencyPoint p;
    if (!p.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return Status::Corruption("journal volume " + name + ": consistency point does not parse");
    }
    out->push_back(std::move(p));
  }
  return FromRocks(it->status(), "journal volume " + name + ": reading points");
}

Status JournalStore::ReadGaps(const std::string& name, std::vector<v1::Gap>* out) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  rocksdb::ReadOptions ro;
  const std::string upper = JournalKey(v.id + 1, 0);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, gaps_cf_));
  for (it->Seek(JournalKey(v.id, 0)); it->Valid(); it->Next()) {
    v1::Gap g;
    if (!g.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return Status::Corruption("journal volume " + name + ": history gap record does not parse");
    }
    out->push_back(std::move(g));
  }
  return FromRocks(it->status(), "journal volume " + name + ": reading gaps");
}

Status JournalStore::ScanRecordHeaders(const std::string& name, uint64_t from_lsn,
                                       uint64_t to_lsn,
                                       const std::function<Status(const ChangeRecord&)>& fn) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  const std::string where = "journal volume " + name;
  rocksdb::ReadOptions ro;
  const std::string upper = to_lsn == UINT64_MAX ? JournalKey(v.id + 1, 0) : JournalKey(v.id, to_lsn + 1);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  ro.fill_cache = false;  // one pass over old history must not evict the tails' blocks
  std::unique_ptr<rocksdb::Iterator> ix(db_->NewIterator(ro, index_cf_));
  for (ix->Seek(JournalKey(v.id, from_lsn)); ix->Valid(); ix->Next()) {
    CDP_ASSIGN_OR_RETURN(ChangeRecord rec, DecodeIndexEntry(*ix, where));
    CDP_RETURN_IF_ERROR(fn(rec));
  }
  return FromRocks(ix->status(), where + ": reading record headers");
}

Result<SharedBytes> JournalStore::ReadPayload(const std::string& name,
                                              const ChangeRecord& header) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  const std::string where = "journal volume " + name;
  auto payload = std::make_shared<std::string>();
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  rocksdb::Status s = db_->Get(ro, payload_cf_, JournalKey(v.id, header.lsn), payload.get());
  if (!s.ok()) {
    return Status::Corruption(where + ": payload of LSN " + std::to_string(header.lsn) +
                              " is missing: " + s.ToString());
  }
  CDP_RETURN_IF_ERROR(VerifyRecordPayload(header, *payload).WithContext(where));
  return SharedBytes(std::move(payload));
}

Result<ChangeRecord> JournalStore::StoredHeader(const std::string& name, uint64_t lsn,
                                                const WriteGroup& group) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  auto d = group.deltas_.find(v.id);
  if (d != group.deltas_.end() && lsn <= d->second.last_lsn &&
      d->second.last_lsn - lsn < d->second.headers.size()) {
    const auto& headers = d->second.headers;
    return headers[headers.size() - 1 - (d->second.last_lsn - lsn)];
  }
  const std::string key = JournalKey(v.id, lsn);
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), index_cf_, key, &value);
  const std::string where = "journal volume " + name;
  if (s.IsNotFound())
    return Status::NotFound(where + ": LSN " + std::to_string(lsn) + " not journaled");
  CDP_RETURN_IF_ERROR(FromRocks(s, where));
  return DecodeRecordHeader(value, where);
}

Result<uint64_t> JournalStore::RecordTime(const std::string& name, uint64_t lsn) const {
  CDP_ASSIGN_OR_RETURN(VolumeInfo v, GetVolume(name));
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), index_cf_, JournalKey(v.id, lsn), &value);
  if (s.IsNotFound()) return Status::NotFound("LSN " + std::to_string(lsn) + " not journaled");
  CDP_RETURN_IF_ERROR(FromRocks(s, "journal volume " + name));
  CDP_ASSIGN_OR_RETURN(ChangeRecord rec, DecodeRecordHeader(value, "journal volume " + name));
  return rec.time_ns;
}

Status JournalStore::SetApplied(const std::string& name, uint64_t applied_lsn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Status::NotFound("unknown volume '" + name + "'");
    if (it->second.applied_lsn == applied_lsn) return Status::Ok();
    it->second.applied_lsn = applied_lsn;
  }
  v1::ReplicaProgress p;
  p.set_applied_lsn(applied_lsn);
  p.set_time_ns(NowNanos());
  return FromRocks(db_->Put(rocksdb::WriteOptions(), replicas_cf_, name, p.SerializeAsString()),
                   "journal volume " + name + ": saving applied LSN");
}

}  // namespace cdp::journal
