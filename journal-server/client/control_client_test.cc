#include "cdp/journal/control_client.h"

#include <cerrno>
#include <cstring>
#include <sstream>

#include "cdp/core/testing/temp_dir.h"
#include "cdp/journal/testing/running_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp::journal {
namespace {

namespace v1 = wire::v1;
using ::testing::HasSubstr;

class ControlClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    options_ = testing::ServerOptionsIn(dir_);
    options_.server_id = "test-journal";
    ASSERT_TRUE(server_.Start(options_).ok());
  }

  void TearDown() override { EXPECT_TRUE(server_.Stop().ok()); }

  std::unique_ptr<ControlClient> Connect() {
    auto client = ControlClient::Connect(options_.listen, 5000);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  cdp::testing::TempDir dir_{"control_client_test"};
  ServerOptions options_;
  testing::RunningServer server_;
};

TEST_F(ControlClientTest, StatusOfAServerWithoutVolumes) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  auto reply = client->Status(5000);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->server_id(), "test-journal");
  EXPECT_EQ(reply->volumes_size(), 0);
}

TEST_F(ControlClientTest, PointsOfAnUnknownVolumeIsTheServersNotFound) {
  auto client = Connect();
  ASSERT_NE(client, nullptr);
  auto points = client->Points("nope", 5000);
  ASSERT_FALSE(points.ok());
  EXPECT_EQ(points.status().code(), StatusCode::kNotFound) << points.status();
  EXPECT_THAT(points.status().message(), HasSubstr("'nope'"));
}

TEST_F(ControlClientTest, WaitSyncedOnAVolumeThatNeverAppearsTimesOutNamingIt) {
  std::ostringstream progress;
  const Status s = WaitSynced(options_.listen, "vol0", 0.3, progress);
  EXPECT_EQ(s.code(), StatusCode::kTimedOut) << s;
  EXPECT_THAT(s.message(), HasSubstr("volume vol0 not synced after 0 s: unknown volume 'vol0' "
                                     "(known: none); is its cdp-agent running?"));
}

TEST(ControlClient, ConnectWithoutAServerIsUnavailableNamingTheEndpoint) {
  cdp::testing::TempDir dir("control_client_test");
  ASSERT_TRUE(dir.ok());
  const std::string endpoint = "ipc://" + dir.File("nobody.sock");
  auto client = ControlClient::Connect(endpoint, 300);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable) << client.status();
  EXPECT_THAT(client.status().message(),
              HasSubstr("journal-server at " + endpoint + " does not answer ("));
  EXPECT_THAT(client.status().message(), HasSubstr("); is it running?"));
}

TEST(NotSyncedReason, NamesTheFirstThingStillMissing) {
  v1::VolumeStatus v;
  EXPECT_EQ(NotSyncedReason(v, 0), "agent not connected");
  v.set_agent_connected(true);
  v.set_report_sequence(4);
  EXPECT_EQ(NotSyncedReason(v, 5), "waiting for a fresh agent report");
  EXPECT_EQ(NotSyncedReason(v, 4), "initial sync running");
  v.set_initial_sync_done(true);
  v.set_dirty_bytes(4096);
  EXPECT_EQ(NotSyncedReason(v, 4), "resync of 4096 dirty bytes");
  v.set_dirty_bytes(0);
  v.set_captured_lsn(9);
  v.set_durable_lsn(9);
  v.set_applied_lsn(7);
  EXPECT_EQ(NotSyncedReason(v, 4), "replicator not connected; replica at LSN 7 of 9");
  v.set_replicator_connected(true);
  EXPECT_EQ(NotSyncedReason(v, 4), "replica at LSN 7 of 9");
  v.set_applied_lsn(9);
  EXPECT_EQ(NotSyncedReason(v, 4), "");
}

}  // namespace
}  // namespace cdp::journal
