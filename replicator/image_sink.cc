#include "cdp/replicator/image_sink.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "cdp/core/atomic_file.h"
#include "cdp/core/logging.h"
#include "cdp/core/transport.h"
#include "cdp/replicator/replica_sink.h"

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

Status ImageSink::Apply(const std::vector<ApplyItem>& items) { return applier_.Apply(items); }

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
  const Status unparsed = Status::Corruption("replica cursor " + path() + " does not parse");
  if (j.is_discarded() || !j.is_object()) return unparsed;
  std::string target;
  uint64_t applied = 0;
  try {  // a field of the wrong type (a hand-edited file) is a cursor that does not parse
    if (j.value("format", 0) != 1) return unparsed;
    target = j.value("target", "");
    applied = j.value("applied_lsn", uint64_t{0});
  } catch (const nlohmann::json::exception&) {
    return unparsed;
  }
  if (target != std::filesystem::absolute(target_).string()) {
    return Status::FailedPrecondition("replica cursor " + path() + " is for target " + target +
                                      ", not " + target_ +
                                      "; use another --state-dir or remove the cursor");
  }
  return applied;
}

Status ReplicaCursor::Save(uint64_t applied_lsn) const {
  nlohmann::json j = {{"format", 1},
                      {"volume", volume_},
                      {"target", std::filesystem::absolute(target_).string()},
                      {"applied_lsn", applied_lsn}};
  return WriteFileAtomic(path(), j.dump() + "\n");
}

}  // namespace cdp::replicator

namespace cdp::replicator {

namespace {

// The image-file sink: ImageSink for the data, ReplicaCursor for the cursor.
class ImageFileSink : public ReplicaSink {
 public:
  explicit ImageFileSink(const SinkOptions& options)
      : options_(options), cursor_(options.state_dir, options.volume, options.target) {}

  Result<uint64_t> Open(uint64_t volume_size, bool* permanent) override {
    *permanent = true;  // a target too small, a cursor that does not parse or is another's
    if (!image_) {
      CDP_ASSIGN_OR_RETURN(image_,
                           ImageSink::Open(options_.target, volume_size, options_.io_engine));
      CDP_LOG(info) << "replicator: target " << options_.target << " open (" << volume_size
                    << " bytes, " << image_->engine_name() << "), cursor " << cursor_.path();
    }
    return cursor_.Load();
  }

  Status ApplyDurably(const std::vector<ApplyItem>& items, bool* permanent) override {
    *permanent = false;
    CDP_RETURN_IF_ERROR(image_->Apply(items));
    CDP_RETURN_IF_ERROR(image_->Flush());
    return cursor_.Save(items.back().rec.lsn);
  }

  std::string Describe() const override { return "image " + options_.target; }

 private:
  SinkOptions options_;
  ReplicaCursor cursor_;
  std::unique_ptr<ImageSink> image_;
};

}  // namespace

std::unique_ptr<ReplicaSink> MakePeSink(const SinkOptions& options);

bool IsPeTarget(const std::string& target) { return target.rfind("pe:", 0) == 0; }

Status ValidateTarget(const std::string& target) {
  if (target.empty()) return Status::InvalidArgument("--target is empty");
  if (!IsPeTarget(target)) return Status::Ok();
  const std::string endpoint = target.substr(3);
  if (endpoint.rfind("tcp://", 0) != 0 || !ValidateEndpoint(endpoint).ok()) {
    return Status::InvalidArgument("--target '" + target +
                                   "': a pe-agent target is pe:tcp://HOST:PORT (for example "
                                   "pe:tcp://127.0.0.1:7800)");
  }
  return Status::Ok();
}

std::unique_ptr<ReplicaSink> MakeReplicaSink(const SinkOptions& options) {
  if (IsPeTarget(options.target)) return MakePeSink(options);
  return std::make_unique<ImageFileSink>(options);
}

}  // namespace cdp::replicator
