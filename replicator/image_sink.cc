#include "cdp/replicator/image_sink.h"

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "cdp/core/atomic_file.h"

namespace cdp::replicator {

Result<std::unique_ptr<ImageSink>> ImageSink::Open(const std::string& path, uint64_t volume_size,
                                                   IoEngine engine) {
  BlockDeviceOptions opts;
  opts.writable = true;
  opts.create_size = volume_size;
  opts.engine = engine;
  auto dev = OpenBlockDevice(path, opts);
  if (!dev.ok()) return dev.status().WithContext("--target");
  if ((*dev)->size() < volume_size) {
    return Status::FailedPrecondition("--target " + path + " has " +
                                      std::to_string((*dev)->size()) +
                                      " bytes but the volume has " + std::to_string(volume_size) +
                                      "; grow it or point --target at a new file");
  }
  return std::unique_ptr<ImageSink>(new ImageSink(std::move(*dev)));
}

Status ImageSink::Apply(const std::vector<ApplyItem>& items) {
  std::vector<WriteOp> run;
  std::map<uint64_t, uint64_t> run_ranges;  // start -> end of writes in `run`
  auto overlaps = [&](uint64_t start, uint64_t end) {
    auto it = run_ranges.upper_bound(start);
    if (it != run_ranges.end() && it->first < end) return true;
    if (it != run_ranges.begin() && std::prev(it)->second > start) return true;
    return false;
  };
  auto flush_run = [&]() -> Status {
    if (run.empty()) return Status::Ok();
    Status s = device_->WriteBatch(run);
    run.clear();
    run_ranges.clear();
    return s;
  };
  for (const auto& item : items) {
    const ChangeRecord& rec = item.rec;
    const uint64_t end = rec.offset + rec.length;
    switch (rec.kind) {
      case RecordKind::kWrite:
        if (overlaps(rec.offset, end)) CDP_RETURN_IF_ERROR(flush_run());
        run.push_back(
            WriteOp{rec.offset, std::span<const char>(item.payload.data(), item.payload.size())});
        run_ranges[rec.offset] = std::max(run_ranges[rec.offset], end);
        break;
      case RecordKind::kDiscard:
        CDP_RETURN_IF_ERROR(flush_run());
        CDP_RETURN_IF_ERROR(device_->Discard(rec.offset, rec.length));
        break;
      case RecordKind::kWriteZeroes:
        CDP_RETURN_IF_ERROR(flush_run());
        CDP_RETURN_IF_ERROR(device_->WriteZeroes(rec.offset, rec.length));
        break;
      default:
        return Status::InvalidArgument("record LSN " + std::to_string(rec.lsn) +
                                       " has unknown kind " + RecordKindName(rec.kind));
    }
  }
  return flush_run();
}

Status ImageSink::Flush() { return device_->Flush(); }

ReplicaCursor::ReplicaCursor(std::string state_dir, std::string volume, std::string target)
    : state_dir_(std::move(state_dir)), volume_(std::move(volume)), target_(std::move(target)) {}

std::string ReplicaCursor::path() const { return state_dir_ + "/replica-" + volume_ + ".json"; }

Result<uint64_t> ReplicaCursor::Load() const {
  auto text = ReadWholeFile(path());
  if (!text.ok()) {
    if (text.status().IsNotFound()) return uint64_t{0};
    return text.status();
  }
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", 0) != 1) {
    return Status::Corruption("replica cursor " + path() + " does not parse");
  }
  const std::string target = j.value("target", "");
  if (target != std::filesystem::absolute(target_).string()) {
    return Status::FailedPrecondition("replica cursor " + path() + " is for target " + target +
                                      ", not " + target_ +
                                      "; use another --state-dir or remove the cursor");
  }
  return j.value("applied_lsn", uint64_t{0});
}

Status ReplicaCursor::Save(uint64_t applied_lsn) const {
  nlohmann::json j = {{"format", 1},
                      {"volume", volume_},
                      {"target", std::filesystem::absolute(target_).string()},
                      {"applied_lsn", applied_lsn}};
  return WriteFileAtomic(path(), j.dump() + "\n");
}

}  // namespace cdp::replicator
