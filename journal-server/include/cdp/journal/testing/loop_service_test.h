// Test support for the services on the journal-server's loop thread (TailService,
// CheckpointRelay): an Outbox that records what a service sends, so it can be driven without a
// socket, and a fixture with a real JournalStore in a temporary directory holding one volume.
// Header-only; for tests only.
#pragma once

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "cdp/journal/agent_relay.h"
#include "cdp/journal/journal_store.h"
#include "cdp/journal/outbox.h"
#include "gtest/gtest.h"

namespace cdp::journal::testing {

// The volume LoopServiceTest registers.
inline constexpr char kVolume[] = "db01-sda";

class RecordingOutbox : public Outbox {
 public:
  struct Sent {
    std::string peer;
    wire::v1::Header header;
    std::vector<std::string> frames;  // the payload frames' bytes
  };

  Status SendTo(const std::string& peer, const wire::v1::Header& header,
                std::vector<zmq::message_t> frames) override {
    if (!refuse_.ok()) return refuse_;
    Sent sent{peer, header, {}};
    for (const auto& f : frames)
      sent.frames.emplace_back(static_cast<const char*>(f.data()), f.size());
    sent_.push_back(std::move(sent));
    return Status::Ok();
  }
  std::string PeerName(const std::string& peer) override { return "peer " + peer; }

  // The one Error sent since the last Take, which must have gone to `peer` (a test failure and
  // an empty Error otherwise).
  wire::v1::Error TakeOneError(const std::string& peer) {
    auto sent = Take();
    if (sent.size() != 1 || sent[0].peer != peer || !sent[0].header.has_error()) {
      ADD_FAILURE() << "no single Error to " << peer << " (" << sent.size() << " messages)";
      return {};
    }
    return sent[0].header.error();
  }

  // Every later SendTo fails with `status` (OK again: they succeed).
  void RefuseWith(Status status) { refuse_ = std::move(status); }

  // The messages sent since the last Take, in order.
  std::vector<Sent> Take() { return std::exchange(sent_, {}); }

 private:
  std::vector<Sent> sent_;
  Status refuse_;
};

// The writers a relay (agent_relay.h) sees: set by the test.
class FakeAgents : public AgentRelay::Agents {
 public:
  std::string WriterOf(const std::string& volume) override {
    auto it = writers_.find(volume);
    return it == writers_.end() ? std::string() : it->second;
  }
  bool WriterAlive(const std::string&) override { return alive_; }

  std::map<std::string, std::string> writers_;
  bool alive_ = true;
};

// A journal in a temporary directory (removed after the test) with volume kVolume registered
// (1 MiB, 512-byte blocks), and a RecordingOutbox for the service under test.
class LoopServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    auto opened = JournalStore::Open(dir_.File("data"));
    ASSERT_TRUE(opened.ok()) << opened.status();
    store_ = std::move(*opened);
    auto v = store_->RegisterVolume(kVolume, 1 << 20, 512);
    ASSERT_TRUE(v.ok()) << v.status();
  }

  cdp::testing::TempDir dir_{"loop_service_test"};
  std::unique_ptr<JournalStore> store_;
  RecordingOutbox outbox_;
};

}  // namespace cdp::journal::testing
