#include "cdp/journal/agent_relay.h"

namespace cdp::journal {

std::string AgentRelay::Within(std::chrono::milliseconds timeout) {
  return timeout.count() % 1000 == 0 ? std::to_string(timeout.count() / 1000) + " s"
                                     : std::to_string(timeout.count()) + " ms";
}

std::string AgentRelay::LiveWriterOrAnswer(const std::string& client, const std::string& volume,
                                           const std::string& hint) {
  Status known = CheckVolumeKnown(*store_, volume);
  if (!known.ok()) {
    (void)outbox_->SendError(client, known, true);
    return "";
  }
  std::string agent = agents_->WriterOf(volume);
  if (agent.empty() || !agents_->WriterAlive(volume)) {
    (void)outbox_->SendError(
        client,
        Status::Unavailable("journal-server: volume " + volume + ": no agent connected; " + hint),
        false);
    return "";
  }
  return agent;
}

}  // namespace cdp::journal
