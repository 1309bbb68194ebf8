#include "cdp/failover/journal_view.h"

#include <mutex>
#include <utility>
#include <vector>

// The only file of cdp_failover that knows the journal-server's control client.
#include "cdp/failover/source_control.h"
#include "cdp/journal/control_client.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace {

class ControlJournalView final : public JournalView {
 public:
  explicit ControlJournalView(std::string endpoint) : endpoint_(std::move(endpoint)) {}

  Result<wire::v1::StatusReply> Status() override {
    if (client_ == nullptr) {
      CDP_ASSIGN_OR_RETURN(client_, journal::ControlClient::Connect(endpoint_, kJournalConnectMs));
    }
    auto reply = client_->Status(kJournalCallMs);
    // A reply that never came may still arrive: the next call starts on a new connection.
    if (reply.status().IsUnavailable() || reply.status().IsTimedOut()) {
      client_.reset();
    }
    return reply;
  }

 private:
  std::string endpoint_;
  std::unique_ptr<journal::ControlClient> client_;
};

class RelayedSourceAgentChannel final : public SourceAgentChannel {
 public:
  explicit RelayedSourceAgentChannel(std::string endpoint) : endpoint_(std::move(endpoint)) {}

  // Calls from several threads run at once, each on a connection of its own (an idle one taken
  // from the pool, or a new one): the relay matches replies by request id, and the agent serves
  // several requests of a volume at a time. A connection whose call failed is closed.
  Result<wire::v1::SourceReply> Call(const wire::v1::SourceRequest& request,
                                     int timeout_ms) override {
    std::unique_ptr<journal::ControlClient> client;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        client = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (client == nullptr) {
      CDP_ASSIGN_OR_RETURN(client, journal::ControlClient::Connect(endpoint_, kJournalConnectMs));
    }
    auto reply = client->Source(request, timeout_ms);
    // Only a connection that got its answer goes back to the pool: after an error a reply (or
    // an error about this call) may still arrive on it and would be taken for the next call's.
    if (reply.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      idle_.push_back(std::move(client));
    }
    return reply;
  }

 private:
  std::string endpoint_;
  std::mutex mu_;
  std::vector<std::unique_ptr<journal::ControlClient>> idle_;  // GUARDED_BY(mu_)
};

}  // namespace

std::shared_ptr<SourceAgentChannel> MakeSourceAgentChannel(std::string endpoint) {
  return std::make_shared<RelayedSourceAgentChannel>(std::move(endpoint));
}

std::unique_ptr<JournalView> MakeJournalView(std::string endpoint) {
  return std::make_unique<ControlJournalView>(std::move(endpoint));
}

}  // namespace cdp::failover
