#include "cdp/failover/target_agent.h"

#include <algorithm>
#include <utility>

#include "cdp/pe/pe_client.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace v1 = wire::v1;

namespace {

class PeTargetAgent final : public TargetAgent {
 public:
  PeTargetAgent(const TargetConfig& target, std::string where)
      : target_(target), where_(std::move(where)) {}

  Result<v1::PeStatusReply> Status() override {
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    return Checked(client->Status(kPeCallMs));
  }

  Result<v1::WrittenRegionsReply> WrittenRegions(const std::string& volume, uint64_t region_bytes,
                                                 bool reset) override {
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    return Checked(client->WrittenRegions(volume, region_bytes, reset, kPeCallMs));
  }

  Result<std::vector<RegionChecksum>> Checksums(const std::string& volume, uint64_t offset,
                                                uint64_t length, uint64_t chunk,
                                                uint64_t* applied_lsn) override {
    const TargetDisk* disk = nullptr;
    for (const auto& d : target_.disks) {
      if (d.volume == volume) disk = &d;
    }
    if (disk == nullptr) {
      return ::cdp::Status::NotFound("target " + target_.name + " has no volume '" + volume +
                                     "' (" + target_.file + ")");
    }
    if (length == 0 && offset < disk->size) length = disk->size - offset;
    if (chunk == 0 || offset >= disk->size || length == 0 || length > disk->size - offset) {
      return ::cdp::Status::InvalidArgument(
          "range " + std::to_string(offset) + "+" + std::to_string(length) + " (chunk " +
          std::to_string(chunk) + ") is not inside volume " + volume + " of " +
          std::to_string(disk->size) + " bytes");
    }
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    std::vector<RegionChecksum> out;
    std::vector<v1::Region> batch;
    uint64_t batch_bytes = 0;
    auto send = [&]() -> cdp::Status {
      if (batch.empty()) return ::cdp::Status::Ok();
      CDP_ASSIGN_OR_RETURN(auto reply, Checked(client->Checksums(volume, batch, kPeChecksumsMs)));
      if (reply.xxh3_size() != static_cast<int>(batch.size())) {
        return ::cdp::Status::Internal("the pe-agent answered " +
                                       std::to_string(reply.xxh3_size()) + " checksums for " +
                                       std::to_string(batch.size()) + " regions");
      }
      for (size_t i = 0; i < batch.size(); ++i) {
        out.push_back({batch[i].offset(), batch[i].length(), reply.xxh3(static_cast<int>(i))});
      }
      if (applied_lsn != nullptr) *applied_lsn = reply.applied_lsn();
      batch.clear();
      batch_bytes = 0;
      return ::cdp::Status::Ok();
    };
    for (uint64_t pos = offset; pos < offset + length; pos += chunk) {
      v1::Region r;
      r.set_offset(pos);
      r.set_length(std::min(chunk, offset + length - pos));
      if (batch_bytes + r.length() > kChecksumRequestBytes) CDP_RETURN_IF_ERROR(send());
      batch_bytes += r.length();
      batch.push_back(r);
    }
    CDP_RETURN_IF_ERROR(send());
    return out;
  }

  Result<v1::ApplyHoldReply> Hold(bool hold, uint32_t max_ms) override {
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    return Checked(client->Hold(hold, max_ms, kPeCallMs));
  }

  Result<v1::PrepareBootReply> PrepareBoot(const std::string& root_volume) override {
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    v1::PrepareBootRequest request;
    request.set_root_volume(root_volume);
    return Checked(client->PrepareBoot(request, kPePrepareBootMs));
  }

  Result<v1::TakeoverReply> Takeover(const v1::TakeoverRequest& request, bool* sent) override {
    *sent = false;
    CDP_ASSIGN_OR_RETURN(pe::PeClient * client, Client());
    *sent = true;
    return Checked(client->Takeover(request, kPeTakeoverMs));
  }

 private:
  // The held connection, made when there is none.
  Result<pe::PeClient*> Client() {
    if (client_ == nullptr) {
      auto client = pe::PeClient::Connect(target_.replication_endpoint, v1::ROLE_CONTROL, "", 0,
                                          kPeConnectMs);
      if (!client.ok()) {
        return where_.empty() ? client.status() : client.status().WithContext(where_);
      }
      client_ = std::move(*client);
    }
    return client_.get();
  }

  // After a lost connection or a reply that may still come, the next call starts on a new
  // connection; the pe-agent's own errors leave it in place.
  template <typename T>
  Result<T> Checked(Result<T> r) {
    if (r.status().IsUnavailable() || r.status().IsTimedOut()) client_.reset();
    return r;
  }

  const TargetConfig target_;
  std::string where_;
  std::unique_ptr<pe::PeClient> client_;
};

}  // namespace

std::unique_ptr<TargetAgent> MakeTargetAgent(const TargetConfig& target, std::string where) {
  return std::make_unique<PeTargetAgent>(target, std::move(where));
}

bool PeReady(const v1::PeStatusReply& status) { return status.pe_state() == v1::PE_STATE_READY; }

std::string PeStateText(const v1::PeStatusReply& status) {
  return wire::PeStateName(status.pe_state());
}

std::string PrepareBootSummary(const wire::v1::PrepareBootReply& reply) {
  std::string main, keep;
  for (const auto& step : reply.steps()) {
    if (step.name() == "initramfs") main = step.result();
    if (step.name() == "keep") keep = step.result();
  }
  if (main.empty() && reply.steps_size() > 0) {
    const auto& last = reply.steps(reply.steps_size() - 1);
    if (last.name() != "keep") main = last.result();
  }
  if (main.empty()) main = reply.initramfs() + " prepared";
  return keep.empty() ? main : main + "; " + keep;
}

}  // namespace cdp::failover
