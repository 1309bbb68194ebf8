// The pe-agent sink: batches go to the pe-agent in the target VM, which applies them and keeps
// the cursor on its metadata disk.
#include <chrono>

#include "cdp/core/logging.h"
#include "cdp/pe/pe_client.h"
#include "cdp/replicator/replica_sink.h"

namespace cdp::replicator {

namespace v1 = wire::v1;

namespace {

class PeSink : public ReplicaSink {
 public:
  PeSink(std::string volume, std::string endpoint, int timeout_ms)
      : volume_(std::move(volume)), endpoint_(std::move(endpoint)), timeout_ms_(timeout_ms) {}

  Result<uint64_t> Open(uint64_t volume_size, bool* permanent) override {
    *permanent = false;
    client_.reset();
    auto client = pe::PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, volume_, volume_size, 3000);
    if (!client.ok()) {
      const StatusCode code = client.status().code();
      *permanent = code == StatusCode::kProtocolMismatch || code == StatusCode::kNotFound ||
                   code == StatusCode::kFailedPrecondition || code == StatusCode::kInvalidArgument;
      return client.status().IsUnavailable() ? client.status()
                                             : client.status().WithContext(Describe());
    }
    client_ = std::move(*client);
    return client_->hello_reply().applied_lsn();
  }

  Status ApplyDurably(const std::vector<ApplyItem>& items, bool* permanent) override {
    *permanent = false;
    if (!client_) return Status::Unavailable("not connected to " + Describe());
    auto applied = client_->Apply(volume_, items, timeout_ms_, permanent);
    if (!applied.ok()) {
      client_.reset();  // a fresh session after any error; the cursor comes from Open again
      return applied.status().WithContext(Describe());
    }
    if (*applied < items.back().rec.lsn) {
      client_.reset();
      return Status::Internal("pe-agent acknowledged LSN " + std::to_string(*applied) +
                              " for a batch ending at " + std::to_string(items.back().rec.lsn));
    }
    return Status::Ok();
  }

  std::string Describe() const override { return "pe-agent " + endpoint_; }

 private:
  std::string volume_;
  std::string endpoint_;
  int timeout_ms_;
  std::unique_ptr<pe::PeClient> client_;
};

}  // namespace

std::unique_ptr<ReplicaSink> MakePeSink(const SinkOptions& options) {
  return std::make_unique<PeSink>(options.volume, options.target.substr(3), options.pe_timeout_ms);
}

}  // namespace cdp::replicator
