// The readers of the QMP replies TargetSnapshot relies on (query-block, query-block-jobs,
// query-jobs): replies as QEMU 7.2 sends them, and replies of other shapes, which are a
// ProtocolMismatch naming the command and the field instead of a nlohmann::json exception
// (issue 15 item 9).
#include "cdp/failover/target_snapshot.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace cdp::failover {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::Pair;

// What qemu-system-x86_64 7.2 returned for `-drive if=none,id=disk0,file=...` after a
// blockdev-snapshot-sync, and for `-drive if=none,id=cd0` (no medium); fields trimmed.
const char kQueryBlock[] = R"([
  {"device": "disk0", "locked": false, "removable": true, "type": "unknown",
   "inserted": {"ro": false, "drv": "qcow2", "backing_file": "/tmp/qmpcap/disk0.raw",
                "backing_file_depth": 1, "node-name": "#block660",
                "file": "/tmp/qmpcap/delta.qcow2"}},
  {"device": "cd0", "locked": false, "removable": true, "type": "unknown"}
])";
// The same QEMU during a block-commit started with job-id commit-disk0.
const char kQueryBlockJobs[] = R"([
  {"auto-finalize": true, "io-status": "ok", "device": "commit-disk0", "auto-dismiss": false,
   "busy": false, "len": 0, "offset": 0, "status": "ready", "paused": false, "speed": 0,
   "ready": true, "type": "commit"}
])";
const char kQueryJobs[] = R"([
  {"current-progress": 0, "status": "ready", "total-progress": 0, "type": "commit",
   "id": "commit-disk0"}
])";

TEST(TargetSnapshotQmp, QueryBlockGivesTheFileOnTopOfEachDriveWithAMedium) {
  const Json reply = Json::parse(kQueryBlock);
  auto files = DriveFilesFromQueryBlock(reply, "qmp query-block");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_THAT(*files, ElementsAre(Pair("disk0", "/tmp/qmpcap/delta.qcow2")));
}

TEST(TargetSnapshotQmp, QueryBlockOfOtherShapesIsProtocolMismatch) {
  struct Case {
    std::string reply;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"({"device": "disk0"})",
       "qmp query-block: return: expected array, got object '{\"device\":\"disk0\"}'"},
      {R"([["disk0"]])", "qmp query-block: return[0]: expected object, got array '[\"disk0\"]'"},
      {R"([{"device": "disk0", "inserted": "/d/disk0.raw"}])",
       "qmp query-block: return[0].inserted: expected object, got string '\"/d/disk0.raw\"'"},
      {R"([{"device": "cd0"}, {"inserted": {"file": "/d/disk0.raw"}}])",
       "qmp query-block: return[1].device: expected string, got nothing (return[1] is "
       "'{\"inserted\":{\"file\":\"/d/disk0.raw\"}}')"},
      {R"([{"device": "disk0", "inserted": {"file": false}}])",
       "qmp query-block: return[0].inserted.file: expected string, got boolean 'false'"},
  };
  for (const Case& c : cases) {
    const Json reply = Json::parse(c.reply);
    auto files = DriveFilesFromQueryBlock(reply, "qmp query-block");
    ASSERT_FALSE(files.ok()) << c.reply;
    EXPECT_EQ(files.status().code(), StatusCode::kProtocolMismatch) << c.reply;
    EXPECT_EQ(files.status().message(), c.message);
  }
}

TEST(TargetSnapshotQmp, QueryBlockJobsFindsTheJobByDevice) {
  const Json reply = Json::parse(kQueryBlockJobs);
  auto listed = BlockJobListed(reply, "commit-disk0", "qmp query-block-jobs");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(*listed);
  auto other = BlockJobListed(reply, "commit-meta", "qmp query-block-jobs");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(*other);

  const Json numbered = Json::parse(R"([{"device": 0, "type": "commit"}])");
  auto bad = BlockJobListed(numbered, "commit-disk0", "qmp query-block-jobs");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(bad.status().message(),
            "qmp query-block-jobs: return[0].device: expected string, got number '0'");
}

TEST(TargetSnapshotQmp, QueryJobsGivesTheJobsStatusAndError) {
  const Json reply = Json::parse(kQueryJobs);
  auto ready = JobStateFromQueryJobs(reply, "commit-disk0", "qmp query-jobs");
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->status, "ready");
  EXPECT_EQ(ready->error, "");
  auto absent = JobStateFromQueryJobs(reply, "commit-meta", "qmp query-jobs");
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_EQ(absent->status, "absent");

  const Json failed = Json::parse(
      R"([{"id": "commit-disk0", "status": "concluded", "error": "No space left on device"}])");
  auto concluded = JobStateFromQueryJobs(failed, "commit-disk0", "qmp query-jobs");
  ASSERT_TRUE(concluded.ok()) << concluded.status();
  EXPECT_EQ(concluded->status, "concluded");
  EXPECT_EQ(concluded->error, "No space left on device");

  const Json error_object =
      Json::parse(R"([{"id": "commit-disk0", "status": "concluded", "error": {"errno": 28}}])");
  auto bad = JobStateFromQueryJobs(error_object, "commit-disk0", "qmp query-jobs");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kProtocolMismatch);
  EXPECT_EQ(bad.status().message(),
            "qmp query-jobs: return[0].error: expected string, got object '{\"errno\":28}'");
  const Json no_status = Json::parse(R"([{"id": "commit-disk0"}])");
  auto missing = JobStateFromQueryJobs(no_status, "commit-disk0", "qmp query-jobs");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "qmp query-jobs: return[0].status: expected string, got nothing (return[0] is "
            "'{\"id\":\"commit-disk0\"}')");
}

}  // namespace
}  // namespace cdp::failover
