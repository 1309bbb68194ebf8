// Tests of the pe-agent in-process: a PeAgent serving on loopback TCP over image files in a
// temporary directory under /var/tmp (--disk / --meta style), driven by PeClient and, for
// protocol edge cases, by a raw DEALER socket speaking cdp.v1.
#include "cdp/pe/pe_agent.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "cdp/core/record.h"
#include "cdp/core/testing/temp_dir.h"
#include "cdp/core/transport.h"
#include "cdp/core/wire.h"
#include "cdp/pe/pe_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "initramfs_test_util.h"

namespace cdp::pe {
namespace {

namespace v1 = wire::v1;
using ::testing::HasSubstr;

constexpr int kWaitMs = 10000;  // generous: only reached when something is broken
constexpr uint64_t kMiB = uint64_t{1} << 20;

const std::string kSda = "db01-sda";
constexpr uint64_t kSdaSize = 3 * kMiB;
const std::string kSdb = "db01-sdb";
constexpr uint64_t kSdbSize = 256 * 1024;
constexpr uint64_t kSdbDiskSize = 512 * 1024;  // larger than its volume

// Under /var/tmp, which takes O_DIRECT (/tmp may be a tmpfs); removed also when a test failed.
class VarTmpDir : public testing::TempDir {
 public:
  VarTmpDir() : TempDir("pe_agent_test", "/var/tmp") {}
};

std::string ReadWholeFile(const std::string& path) { return testing::TempDir::Read(path); }

void WriteWholeFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Writes `bytes` at `offset` of an existing file, as something outside the agent would.
void PatchFile(const std::string& path, uint64_t offset, const std::string& bytes) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
}

// A port of 127.0.0.1 that was free a moment ago (0 if none could be found).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// A batch of records with contiguous LSNs, and the image of the disk after it.
class Batch {
 public:
  Batch(uint64_t first_lsn, std::string* image) : next_lsn_(first_lsn), image_(image) {}

  Batch& Write(uint64_t offset, std::string data) {
    auto bytes = std::make_shared<const std::string>(std::move(data));
    ChangeRecord rec = MakeWriteRecord(next_lsn_++, NowNanos(), offset, bytes);
    if (image_ != nullptr) image_->replace(offset, bytes->size(), *bytes);
    items_.push_back(ApplyItem{rec, *bytes});
    return *this;
  }
  Batch& Discard(uint64_t offset, uint32_t length) {
    return Zero(RecordKind::kDiscard, offset, length);
  }
  Batch& WriteZeroes(uint64_t offset, uint32_t length) {
    return Zero(RecordKind::kWriteZeroes, offset, length);
  }

  std::vector<ApplyItem>& items() { return items_; }
  uint64_t last_lsn() const { return next_lsn_ - 1; }
  uint64_t payload_bytes() const {
    uint64_t n = 0;
    for (const auto& item : items_) n += item.payload.size();
    return n;
  }

 private:
  Batch& Zero(RecordKind kind, uint64_t offset, uint32_t length) {
    ChangeRecord rec;
    rec.lsn = next_lsn_++;
    rec.time_ns = NowNanos();
    rec.offset = offset;
    rec.length = length;
    rec.kind = kind;
    if (image_ != nullptr) image_->replace(offset, length, std::string(length, '\0'));
    items_.push_back(ApplyItem{rec, {}});
    return *this;
  }

  uint64_t next_lsn_;
  std::string* image_;
  std::vector<ApplyItem> items_;
};

// A PeAgent started and serving on its own thread; stopped and joined on destruction.
class RunningAgent {
 public:
  explicit RunningAgent(std::unique_ptr<PeAgent> agent) : agent_(std::move(agent)) {
    thread_ = std::thread([this] { run_status_ = agent_->Run(&stop_); });
  }
  ~RunningAgent() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    EXPECT_TRUE(run_status_.ok()) << run_status_;
  }
  RunningAgent(const RunningAgent&) = delete;
  RunningAgent& operator=(const RunningAgent&) = delete;

  PeAgent& agent() { return *agent_; }

  // Waits until Run() returned (after a takeover handed over; otherwise blocks).
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::unique_ptr<PeAgent> agent_;
  std::atomic<bool> stop_{false};
  Status run_status_;
  std::thread thread_;
};

class PeAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp under /var/tmp: " << std::strerror(errno);
    sda_path_ = dir_.File("sda.img");
    sdb_path_ = dir_.File("sdb.img");
    meta_path_ = dir_.File("meta.img");
    MakeZeroFile(sda_path_, kSdaSize);
    MakeZeroFile(sdb_path_, kSdbDiskSize);
    MakeZeroFile(meta_path_, kMiB);
    sda_image_.assign(kSdaSize, '\0');
  }

  void TearDown() override {
    raw_.reset();
    agent_.reset();
  }

  static void MakeZeroFile(const std::string& path, uint64_t size) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).close();
    std::filesystem::resize_file(path, size);
  }

  PeAgentOptions Options() const {
    PeAgentOptions o;
    o.volumes = {{kSda, kSdaSize}, {kSdb, kSdbSize}};
    o.disk_paths = {{kSda, sda_path_}, {kSdb, sdb_path_}};
    o.meta_path = meta_path_;
    return o;
  }

  // Starts an agent with `options` on a free port (retrying if another process takes it).
  void StartAgent(PeAgentOptions options) {
    agent_.reset();
    for (int attempt = 0; attempt < 5; ++attempt) {
      const int port = FreePort();
      ASSERT_NE(port, 0) << "no free port on 127.0.0.1";
      endpoint_ = "tcp://127.0.0.1:" + std::to_string(port);
      options.listen = endpoint_;
      auto agent = std::make_unique<PeAgent>(options);
      Status s = agent->Start();
      if (s.ok()) {
        agent_ = std::make_unique<RunningAgent>(std::move(agent));
        return;
      }
      ASSERT_THAT(s.message(), HasSubstr("already in use")) << s;
    }
    FAIL() << "could not bind a free port in 5 attempts";
  }
  void StartAgent() { StartAgent(Options()); }
  void StopAgent() { agent_.reset(); }

  std::unique_ptr<PeClient> ConnectReplicator(const std::string& volume = kSda,
                                              uint64_t size = kSdaSize) {
    auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, volume, size, kWaitMs);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(client).value() : nullptr;
  }
  std::unique_ptr<PeClient> ConnectControl() {
    auto client = PeClient::Connect(endpoint_, v1::ROLE_CONTROL, "", 0, kWaitMs);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(client).value() : nullptr;
  }
  std::unique_ptr<PeClient> StartAgentAndHold();

  // Sends `header` (+ payloads) on a raw DEALER and returns the first answer.
  Result<wire::Message> RawCall(const v1::Header& header,
                                std::vector<zmq::message_t> payloads = {}) {
    if (raw_ == nullptr) {
      auto s = Socket::Connect(raw_ctx_, endpoint_);
      if (!s.ok()) return s.status();
      raw_ = std::move(s).value();
    }
    CDP_RETURN_IF_ERROR(raw_->Send(header, std::move(payloads), kWaitMs));
    return raw_->Recv(kWaitMs);
  }

  static v1::Header HelloHeader(v1::Role role, const std::string& volume, uint64_t size) {
    v1::Header h;
    *h.mutable_hello() = wire::MakeHello(role, "pe_agent_test", volume);
    h.mutable_hello()->set_volume_size(size);
    return h;
  }

  // Checks that `msg` is an Error with `code`, `permanent`, and a message containing `parts`.
  static void ExpectErrorReply(const Result<wire::Message>& msg, StatusCode code, bool permanent,
                               const std::vector<std::string>& parts) {
    ASSERT_TRUE(msg.ok()) << msg.status();
    ASSERT_TRUE(msg->header.has_error()) << msg->header.DebugString();
    const v1::Error& e = msg->header.error();
    EXPECT_EQ(e.code(), static_cast<int32_t>(code)) << e.message();
    EXPECT_EQ(e.permanent(), permanent) << e.message();
    for (const auto& part : parts) EXPECT_THAT(e.message(), HasSubstr(part));
  }

  void ExpectSdaMatchesImage() {
    const std::string file = ReadWholeFile(sda_path_);
    ASSERT_EQ(file.size(), sda_image_.size());
    for (size_t i = 0; i < file.size(); ++i) {
      if (file[i] != sda_image_[i]) {
        FAIL() << "sda.img first differs from the expected image at offset " << i;
      }
    }
  }

  VarTmpDir dir_;
  std::string sda_path_, sdb_path_, meta_path_;
  std::string sda_image_;  // what sda.img must hold
  std::string endpoint_;
  std::unique_ptr<RunningAgent> agent_;
  zmq::context_t raw_ctx_{1};
  std::unique_ptr<Socket> raw_;
};

TEST_F(PeAgentTest, HelloOnFreshDisksAndApplyWritesExactlyTheBatch) {
  StartAgent();
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_READY);
  EXPECT_EQ(agent_->agent().error(), "");
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->hello_reply().applied_lsn(), 0u);
  EXPECT_EQ(client->hello_reply().version(), wire::kMaxVersion);
  EXPECT_EQ(client->hello_reply().volume_size(), kSdaSize);

  std::mt19937_64 rng(1);
  Batch batch(1, &sda_image_);
  batch.Write(0, RandomBytes(rng, 65536))
      .Write(131072, RandomBytes(rng, 4096))
      .Discard(8192, 16384)               // inside the first write
      .WriteZeroes(40960, 4096)           // inside the first write
      .Write(10000, RandomBytes(rng, 3))  // unaligned, into the discarded range
      .Write(kSdaSize - 4096, RandomBytes(rng, 4096))
      .Write(65535, RandomBytes(rng, 2));  // unaligned, across the first write's end
  bool permanent = true;
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 7u);
  EXPECT_FALSE(permanent);
  ExpectSdaMatchesImage();
  // The other volume's disk and everything outside the volumes are untouched.
  EXPECT_EQ(ReadWholeFile(sdb_path_), std::string(kSdbDiskSize, '\0'));

  Batch next(8, &sda_image_);
  next.Write(512, RandomBytes(rng, 1024)).Discard(131072, 512);
  applied = client->Apply(kSda, next.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 9u);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, AppliedLsnSurvivesARestart) {
  StartAgent();
  std::mt19937_64 rng(2);
  {
    auto client = ConnectReplicator();
    ASSERT_NE(client, nullptr);
    Batch batch(1, &sda_image_);
    batch.Write(0, RandomBytes(rng, 4096)).Write(8192, RandomBytes(rng, 100)).Discard(0, 512);
    auto applied = client->Apply(kSda, batch.items(), kWaitMs, nullptr);
    ASSERT_TRUE(applied.ok()) << applied.status();
    ASSERT_EQ(*applied, 3u);
  }
  StopAgent();

  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->hello_reply().applied_lsn(), 3u);
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->volumes_size(), 2);
  EXPECT_EQ(status->volumes(0).name(), kSda);
  EXPECT_EQ(status->volumes(0).boot_applied_lsn(), 3u);
  EXPECT_EQ(status->volumes(0).applied_lsn(), 3u);
  EXPECT_EQ(status->volumes(0).applied_bytes(), 0u);  // nothing applied by this agent yet
  EXPECT_EQ(status->volumes(1).name(), kSdb);
  EXPECT_EQ(status->volumes(1).boot_applied_lsn(), 0u);

  // The next batch continues from the restored cursor.
  Batch next(4, &sda_image_);
  next.Write(4096, RandomBytes(rng, 4096));
  auto applied = client->Apply(kSda, next.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 4u);
  ExpectSdaMatchesImage();
  // applied_records == applied_lsn - boot_applied_lsn: nothing was applied twice.
  status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->volumes(0).applied_lsn(), 4u);
  EXPECT_EQ(status->volumes(0).boot_applied_lsn(), 3u);
  EXPECT_EQ(status->volumes(0).applied_records(), 1u);
  EXPECT_EQ(status->volumes(0).applied_bytes(), 4096u);
}

TEST_F(PeAgentTest, ReplayedBatchIsAcknowledgedWithoutRewriting) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, &sda_image_);
  batch.Write(0, std::string(4096, 'A')).Write(4096, std::string(4096, 'B'));
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  ASSERT_EQ(*applied, 2u);

  // Someone else changes the disk under the agent; a replay must not write over it.
  PatchFile(sda_path_, 0, "Z");
  PatchFile(sda_path_, 4096, "Y");
  sda_image_[0] = 'Z';
  sda_image_[4096] = 'Y';
  bool permanent = true;
  applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 2u);
  ExpectSdaMatchesImage();

  // A batch that overlaps the applied LSN applies only what is new.
  Batch overlap(2, nullptr);
  overlap.Write(4096, std::string(4096, 'b'));  // LSN 2: already applied, skipped
  overlap.Write(8192, std::string(512, 'C'));   // LSN 3: new
  sda_image_.replace(8192, 512, std::string(512, 'C'));
  applied = client->Apply(kSda, overlap.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 3u);
  ExpectSdaMatchesImage();

  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->volumes(0).applied_records(), 3u);
  EXPECT_EQ(status->volumes(0).applied_bytes(), 4096u + 4096u + 512u);
}

TEST_F(PeAgentTest, BatchStartingPastTheAppliedLsnIsOutOfRange) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch gap(3, nullptr);
  gap.Write(0, std::string(512, 'x'));
  bool permanent = true;
  auto applied = client->Apply(kSda, gap.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kOutOfRange) << applied.status();
  EXPECT_THAT(applied.status().message(), HasSubstr("resend from 1"));
  EXPECT_THAT(applied.status().message(), HasSubstr("LSN 3"));
  EXPECT_FALSE(permanent);
  ExpectSdaMatchesImage();

  Batch first(1, &sda_image_);
  first.Write(0, std::string(512, 'a')).Write(512, std::string(512, 'b'));
  ASSERT_TRUE(client->Apply(kSda, first.items(), kWaitMs, nullptr).ok());
  Batch later(5, nullptr);
  later.Write(1024, std::string(512, 'c'));
  applied = client->Apply(kSda, later.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kOutOfRange) << applied.status();
  EXPECT_THAT(applied.status().message(), HasSubstr("resend from 3"));
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, RecordWithAWrongCrcIsRefusedAndNothingOfTheBatchIsWritten) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, nullptr);
  batch.Write(0, std::string(4096, 'g'))
      .Discard(4096, 4096)
      .Write(8192, std::string(4096, 'h'))
      .Write(16384, std::string(4096, 'i'));
  batch.items()[2].rec.crc32c ^= 1;  // LSN 3
  bool permanent = true;
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kCorruption) << applied.status();
  EXPECT_THAT(applied.status().message(), HasSubstr("volume " + kSda));
  EXPECT_THAT(applied.status().message(), HasSubstr("3"));
  ExpectSdaMatchesImage();  // still all zeroes: not even LSN 1 was written

  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->volumes(0).applied_lsn(), 0u);
  EXPECT_EQ(status->volumes(0).applied_bytes(), 0u);

  // A payload whose bytes were damaged in flight (CRC of the original) is refused the same way.
  Batch damaged(1, nullptr);
  damaged.Write(0, std::string(512, 'd'));
  std::string bad(512, 'd');
  bad[100] = 'e';
  damaged.items()[0].payload = bad;
  applied = client->Apply(kSda, damaged.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kCorruption) << applied.status();
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, RecordOutsideTheVolumeIsRefusedAndNothingIsWritten) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, nullptr);
  batch.Write(0, std::string(512, 'o')).Write(kSdaSize - 256, std::string(512, 'p'));
  bool permanent = false;
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kInvalidArgument) << applied.status();
  EXPECT_TRUE(permanent);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, NonContiguousBatchIsRefused) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, nullptr);
  batch.Write(0, std::string(512, 'a')).Write(512, std::string(512, 'b'));
  batch.items()[1].rec =
      MakeWriteRecord(5, NowNanos(), 512, std::make_shared<const std::string>(512, 'b'));
  bool permanent = false;
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_FALSE(applied.ok());
  EXPECT_EQ(applied.status().code(), StatusCode::kInvalidArgument) << applied.status();
  EXPECT_THAT(applied.status().message(), HasSubstr("not contiguous"));
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, BatchWithoutHelloIsFailedPrecondition) {
  StartAgent();
  v1::Header h;
  auto* batch = h.mutable_apply_batch();
  batch->set_volume(kSda);
  batch->set_first_lsn(1);
  batch->set_sequence(1);
  auto payload = std::make_shared<const std::string>(512, 'n');
  *batch->add_records() = wire::RecordToProto(MakeWriteRecord(1, NowNanos(), 0, payload));
  std::vector<zmq::message_t> frames;
  frames.emplace_back(payload->data(), payload->size());
  ExpectErrorReply(RawCall(h, std::move(frames)), StatusCode::kFailedPrecondition, false,
                   {"send Hello first", "'" + kSda + "'"});

  // A Hello as a control client, or for another volume, does not allow batches either.
  auto hello = RawCall(HelloHeader(v1::ROLE_CONTROL, "", 0));
  ASSERT_TRUE(hello.ok()) << hello.status();
  ASSERT_TRUE(hello->header.has_hello_reply()) << hello->header.DebugString();
  frames.clear();
  frames.emplace_back(payload->data(), payload->size());
  ExpectErrorReply(RawCall(h, std::move(frames)), StatusCode::kFailedPrecondition, false,
                   {"send Hello first"});
  hello = RawCall(HelloHeader(v1::ROLE_REPLICATOR, kSdb, kSdbSize));
  ASSERT_TRUE(hello.ok()) << hello.status();
  ASSERT_TRUE(hello->header.has_hello_reply()) << hello->header.DebugString();
  frames.clear();
  frames.emplace_back(payload->data(), payload->size());
  ExpectErrorReply(RawCall(h, std::move(frames)), StatusCode::kFailedPrecondition, false,
                   {"send Hello first"});
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, HelloForAnUnknownVolumeIsPermanentNotFound) {
  StartAgent();
  ExpectErrorReply(RawCall(HelloHeader(v1::ROLE_REPLICATOR, "db02-sdz", kSdaSize)),
                   StatusCode::kNotFound, true, {"'db02-sdz'", "it has: " + kSda + ", " + kSdb});
  auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, "db02-sdz", kSdaSize, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kNotFound) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("db02-sdz"));
}

TEST_F(PeAgentTest, HelloWithAnotherVersionRangeIsProtocolMismatch) {
  StartAgent();
  v1::Header h = HelloHeader(v1::ROLE_REPLICATOR, kSda, kSdaSize);
  h.mutable_hello()->set_min_version(99);
  h.mutable_hello()->set_max_version(99);
  ExpectErrorReply(
      RawCall(h), StatusCode::kProtocolMismatch, true,
      {"99..99", std::to_string(wire::kMinVersion) + ".." + std::to_string(wire::kMaxVersion)});
}

TEST_F(PeAgentTest, HelloWithAnotherVolumeSizeIsFailedPrecondition) {
  StartAgent();
  auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kSdaSize + 4096, kWaitMs);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kFailedPrecondition) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr(std::to_string(kSdaSize + 4096)));
  EXPECT_THAT(client.status().message(), HasSubstr(std::to_string(kSdaSize)));
  EXPECT_THAT(client.status().message(), HasSubstr(sda_path_));
  ExpectErrorReply(RawCall(HelloHeader(v1::ROLE_REPLICATOR, kSda, kSdaSize - 512)),
                   StatusCode::kFailedPrecondition, true, {std::to_string(kSdaSize - 512)});
}

TEST_F(PeAgentTest, DiskSmallerThanItsVolumePutsTheAgentInPeError) {
  // sda.img holds some earlier content and is smaller than the volume.
  std::string before(kSdaSize / 2, '\0');
  for (size_t i = 0; i < before.size(); ++i) before[i] = static_cast<char>(i * 31 + 1);
  WriteWholeFile(sda_path_, before);

  StartAgent();
  ASSERT_NE(agent_, nullptr);
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_ERROR);
  const std::string error = agent_->agent().error();
  EXPECT_THAT(error, HasSubstr(sda_path_));
  EXPECT_THAT(error, HasSubstr(std::to_string(kSdaSize / 2)));
  EXPECT_THAT(error, HasSubstr(std::to_string(kSdaSize)));

  auto replicator = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kSdaSize, kWaitMs);
  ASSERT_FALSE(replicator.ok());
  EXPECT_EQ(replicator.status().code(), StatusCode::kFailedPrecondition) << replicator.status();
  EXPECT_THAT(replicator.status().message(), HasSubstr(sda_path_));

  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->pe_state(), v1::PE_STATE_ERROR);
  EXPECT_EQ(status->error(), error);
  EXPECT_EQ(status->listen(), endpoint_);

  // A batch sent anyway is refused too.
  Batch batch(1, nullptr);
  batch.Write(0, std::string(512, 'w'));
  v1::Header h;
  h.mutable_apply_batch()->set_volume(kSda);
  h.mutable_apply_batch()->set_first_lsn(1);
  *h.mutable_apply_batch()->add_records() = wire::RecordToProto(batch.items()[0].rec);
  std::vector<zmq::message_t> frames;
  frames.emplace_back(batch.items()[0].payload.data(), batch.items()[0].payload.size());
  auto reply = RawCall(h, std::move(frames));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->header.has_error()) << reply->header.DebugString();

  StopAgent();
  EXPECT_EQ(ReadWholeFile(sda_path_), before);
  EXPECT_EQ(ReadWholeFile(sdb_path_), std::string(kSdbDiskSize, '\0'));
  EXPECT_EQ(ReadWholeFile(meta_path_), std::string(kMiB, '\0'));
}

TEST_F(PeAgentTest, ForeignMetadataDiskPutsTheAgentInPeErrorAndIsNotWritten) {
  std::string foreign(kMiB, '\0');
  foreign.replace(0, 12, "NOT-CDP-META");
  WriteWholeFile(meta_path_, foreign);
  StartAgent();
  ASSERT_NE(agent_, nullptr);
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_ERROR);
  EXPECT_THAT(agent_->agent().error(), HasSubstr(meta_path_));
  EXPECT_THAT(agent_->agent().error(), HasSubstr("not a cdp metadata disk"));
  auto replicator = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kSdaSize, kWaitMs);
  ASSERT_FALSE(replicator.ok());
  EXPECT_EQ(replicator.status().code(), StatusCode::kFailedPrecondition) << replicator.status();
  StopAgent();
  EXPECT_EQ(ReadWholeFile(meta_path_), foreign);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, RestartForAVolumeOfAnotherSizeIsPeError) {
  StartAgent();
  {
    auto client = ConnectReplicator();
    ASSERT_NE(client, nullptr);
    Batch batch(1, &sda_image_);
    batch.Write(0, std::string(512, 's'));
    ASSERT_TRUE(client->Apply(kSda, batch.items(), kWaitMs, nullptr).ok());
  }
  StopAgent();
  PeAgentOptions options = Options();
  options.volumes[0].size = kSdaSize - 4096;
  StartAgent(options);
  ASSERT_NE(agent_, nullptr);
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_ERROR);
  EXPECT_THAT(agent_->agent().error(), HasSubstr("cursor for volume " + kSda));
  EXPECT_THAT(agent_->agent().error(), HasSubstr(std::to_string(kSdaSize)));
  EXPECT_THAT(agent_->agent().error(), HasSubstr(std::to_string(kSdaSize - 4096)));
}

TEST_F(PeAgentTest, UnalignedDiscardAndWriteZeroesAreApplied) {
  // ValidateRecordRange accepts byte-granular ranges for every kind, so the agent must apply
  // them on its O_DIRECT disks (writes get a read-modify-write; zeroing must work too).
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch fill(1, &sda_image_);
  fill.Write(0, std::string(16384, 'u'));
  ASSERT_TRUE(client->Apply(kSda, fill.items(), kWaitMs, nullptr).ok());
  Batch batch(2, &sda_image_);
  batch.Discard(100, 200).WriteZeroes(4000, 1000);
  bool permanent = false;
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status() << (permanent ? " (permanent)" : "");
  EXPECT_EQ(*applied, 3u);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, ChecksumAtTheEndOfADiskWithAPartialSector) {
  // A volume that does not end on a 4 KiB boundary, on a disk image one partial sector larger.
  constexpr uint64_t kVolume = kSdbSize + 512;
  constexpr uint64_t kDisk = kVolume + 100;
  std::filesystem::resize_file(sdb_path_, kDisk);
  PeAgentOptions options = Options();
  options.volumes[1].size = kVolume;
  StartAgent(options);
  ASSERT_EQ(agent_->agent().state(), v1::PE_STATE_READY) << agent_->agent().error();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  std::vector<v1::Region> regions(2);
  regions[0].set_offset(0);
  regions[0].set_length(kVolume);
  regions[1].set_offset(kVolume - 1);
  regions[1].set_length(1);
  auto reply = control->Checksums(kSdb, regions, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_EQ(reply->xxh3_size(), 2);
  const std::string zeroes(kVolume, '\0');
  EXPECT_EQ(reply->xxh3(0), XXH3_64bits(zeroes.data(), kVolume));
  EXPECT_EQ(reply->xxh3(1), XXH3_64bits(zeroes.data(), 1));
}

TEST_F(PeAgentTest, StatusReportsVolumesAndProgress) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  std::mt19937_64 rng(3);
  Batch batch(1, &sda_image_);
  batch.Write(0, RandomBytes(rng, 8192))
      .Write(100000, RandomBytes(rng, 77))
      .Discard(0, 4096)
      .WriteZeroes(kMiB, 65536);
  ASSERT_TRUE(client->Apply(kSda, batch.items(), kWaitMs, nullptr).ok());
  Batch second(5, &sda_image_);
  second.Write(2 * kMiB, RandomBytes(rng, 513));
  ASSERT_TRUE(client->Apply(kSda, second.items(), kWaitMs, nullptr).ok());

  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->pe_state(), v1::PE_STATE_READY);
  EXPECT_EQ(status->error(), "");
  EXPECT_EQ(status->listen(), endpoint_);
  EXPECT_EQ(status->meta_device(), meta_path_);
  ASSERT_EQ(status->volumes_size(), 2);
  const v1::PeVolumeStatus& sda = status->volumes(0);
  EXPECT_EQ(sda.name(), kSda);
  EXPECT_EQ(sda.device(), sda_path_);
  EXPECT_EQ(sda.size_bytes(), kSdaSize);
  EXPECT_EQ(sda.disk_bytes(), kSdaSize);
  EXPECT_EQ(sda.applied_lsn(), 5u);
  EXPECT_EQ(sda.applied_bytes(), 8192u + 77u + 513u);
  EXPECT_EQ(sda.applied_records(), 5u);
  EXPECT_EQ(sda.boot_applied_lsn(), 0u);
  const v1::PeVolumeStatus& sdb = status->volumes(1);
  EXPECT_EQ(sdb.name(), kSdb);
  EXPECT_EQ(sdb.device(), sdb_path_);
  EXPECT_EQ(sdb.size_bytes(), kSdbSize);
  EXPECT_EQ(sdb.disk_bytes(), kSdbDiskSize);
  EXPECT_EQ(sdb.applied_lsn(), 0u);
  EXPECT_EQ(sdb.applied_bytes(), 0u);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, ChecksumsEqualXxh3OfTheDiskBytes) {
  StartAgent();
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  std::mt19937_64 rng(4);
  Batch batch(1, &sda_image_);
  batch.Write(0, RandomBytes(rng, 65536))
      .Write(kMiB - 4096, RandomBytes(rng, 12288))
      .Write(2 * kMiB + 1, RandomBytes(rng, 100001))
      .Write(kSdaSize - 8192, RandomBytes(rng, 8192));
  ASSERT_TRUE(client->Apply(kSda, batch.items(), kWaitMs, nullptr).ok());
  ExpectSdaMatchesImage();

  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 4096},
                                                             {1, 3},
                                                             {4095, 2},
                                                             {1000, 70000},
                                                             {0, kSdaSize},
                                                             {12345, 2 * kMiB + 777},
                                                             {kMiB - 1, 2},
                                                             {kSdaSize - 1, 1},
                                                             {kSdaSize - 5000, 5000},
                                                             {2 * kMiB, kMiB}};
  std::vector<v1::Region> regions;
  for (const auto& [offset, length] : ranges) {
    v1::Region r;
    r.set_offset(offset);
    r.set_length(length);
    regions.push_back(r);
  }
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto reply = control->Checksums(kSda, regions, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->volume(), kSda);
  EXPECT_EQ(reply->applied_lsn(), 4u);
  ASSERT_EQ(reply->xxh3_size(), static_cast<int>(ranges.size()));
  const std::string disk = ReadWholeFile(sda_path_);
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto [offset, length] = ranges[i];
    EXPECT_EQ(reply->xxh3(static_cast<int>(i)), XXH3_64bits(disk.data() + offset, length))
        << "region " << offset << "+" << length;
  }

  // A volume whose disk is larger than the volume: regions up to the volume's end.
  std::vector<v1::Region> sdb_regions(2);
  sdb_regions[0].set_offset(0);
  sdb_regions[0].set_length(kSdbSize);
  sdb_regions[1].set_offset(kSdbSize - 1);
  sdb_regions[1].set_length(1);
  auto sdb = control->Checksums(kSdb, sdb_regions, kWaitMs);
  ASSERT_TRUE(sdb.ok()) << sdb.status();
  ASSERT_EQ(sdb->xxh3_size(), 2);
  const std::string zeroes(kSdbSize, '\0');
  EXPECT_EQ(sdb->xxh3(0), XXH3_64bits(zeroes.data(), kSdbSize));
  EXPECT_EQ(sdb->xxh3(1), XXH3_64bits(zeroes.data(), 1));
}

TEST_F(PeAgentTest, ChecksumOfARegionOutsideTheVolumeIsInvalidArgument) {
  StartAgent();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  const std::vector<std::pair<uint64_t, uint64_t>> bad = {
      {kSdaSize, 1}, {kSdaSize - 512, 1024}, {0, kSdaSize + 1}, {100, 0}, {~uint64_t{0}, 2}};
  for (const auto& [offset, length] : bad) {
    SCOPED_TRACE(std::to_string(offset) + "+" + std::to_string(length));
    std::vector<v1::Region> regions(2);
    regions[0].set_offset(0);  // a good region first: the whole request is refused
    regions[0].set_length(4096);
    regions[1].set_offset(offset);
    regions[1].set_length(length);
    auto reply = control->Checksums(kSda, regions, kWaitMs);
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), StatusCode::kInvalidArgument) << reply.status();
    EXPECT_THAT(reply.status().message(), HasSubstr("volume " + kSda));
    EXPECT_THAT(reply.status().message(), HasSubstr(std::to_string(kSdaSize) + " bytes"));
  }
  auto unknown = control->Checksums("db02-sdz", {}, kWaitMs);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound) << unknown.status();
}

// ---- takeover ----

TEST_F(PeAgentTest, TakeoverOfAnUnknownVolumeIsRefusedAndBatchesGoOn) {
  StartAgent();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  v1::TakeoverRequest request;
  request.set_root_volume("db02-sdz");
  auto reply = control->Takeover(request, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->ok());
  EXPECT_THAT(reply->error(), HasSubstr("no volume 'db02-sdz' (it has: " + kSda + ", " + kSdb));
  ASSERT_EQ(reply->steps_size(), 1);
  EXPECT_EQ(reply->steps(0).name(), "check");
  EXPECT_EQ(reply->steps(0).result(), "failed: " + reply->error());
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_READY);

  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, &sda_image_);
  batch.Write(0, std::string(512, 't'));
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, TakeoverOnlyFromAControlSession) {
  StartAgent();
  auto replicator = ConnectReplicator();
  ASSERT_NE(replicator, nullptr);
  v1::TakeoverRequest request;
  request.set_root_volume(kSda);
  auto reply = replicator->Takeover(request, kWaitMs);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kFailedPrecondition) << reply.status();
  EXPECT_THAT(reply.status().message(), HasSubstr("not a control client"));
  // Without any Hello either.
  v1::Header h;
  h.mutable_takeover_request()->set_root_volume(kSda);
  ExpectErrorReply(RawCall(h), StatusCode::kFailedPrecondition, true, {"role CONTROL"});
}

TEST_F(PeAgentTest, HeldBatchesWaitUntilReleaseAndTheDiskStaysAtTheBoundary) {
  StartAgent();
  auto replicator = ConnectReplicator();
  auto control = ConnectControl();
  ASSERT_NE(replicator, nullptr);
  ASSERT_NE(control, nullptr);
  std::mt19937_64 rng(11);
  Batch first(1, &sda_image_);
  first.Write(0, RandomBytes(rng, 8192)).Write(65536, RandomBytes(rng, 4096));
  ASSERT_TRUE(replicator->Apply(kSda, first.items(), kWaitMs, nullptr).ok());
  const std::string after_first = sda_image_;

  auto held = control->Hold(true, 60000, kWaitMs);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(held->held());
  EXPECT_EQ(held->applied_lsn().at(kSda), 2u);
  EXPECT_EQ(held->applied_lsn().at(kSdb), 0u);

  Batch second(3, &sda_image_);
  second.Write(4096, RandomBytes(rng, 4096)).Write(kSdaSize - 512, RandomBytes(rng, 512));
  Result<uint64_t> applied = Status::Internal("not yet");
  std::thread sender([&] { applied = replicator->Apply(kSda, second.items(), kWaitMs, nullptr); });
  // The batch is queued, not applied: the disk and the cursor stay at LSN 2.
  for (int i = 0; i < 50; ++i) {
    auto again = control->Hold(true, 60000, kWaitMs);
    ASSERT_TRUE(again.ok()) << again.status();
    if (again->queued_batches() == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(ReadWholeFile(sda_path_), after_first);
  auto st = control->Status(kWaitMs);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->volumes(0).applied_lsn(), 2u);

  auto released = control->Hold(false, 0, kWaitMs);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_FALSE(released->held());
  EXPECT_EQ(released->queued_batches(), 1u);
  EXPECT_EQ(released->applied_lsn().at(kSda), 4u);
  sender.join();
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 4u);
  ExpectSdaMatchesImage();
}

TEST_F(PeAgentTest, HoldEndsByItselfAfterMaxMs) {
  StartAgent();
  auto replicator = ConnectReplicator();
  auto control = ConnectControl();
  ASSERT_NE(replicator, nullptr);
  ASSERT_NE(control, nullptr);
  auto held = control->Hold(true, 300, kWaitMs);
  ASSERT_TRUE(held.ok()) << held.status();
  Batch batch(1, &sda_image_);
  batch.Write(512, std::string(1024, 'h'));
  // Nobody releases: the control client could have died. The batch is applied all the same.
  auto applied = replicator->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 1u);
  ExpectSdaMatchesImage();
  auto status = control->Hold(false, 0, kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_FALSE(status->held());
  EXPECT_EQ(status->queued_batches(), 0u);
}

TEST_F(PeAgentTest, WrittenRegionsSinceTheMark) {
  StartAgent();
  auto replicator = ConnectReplicator();
  auto control = ConnectControl();
  ASSERT_NE(replicator, nullptr);
  ASSERT_NE(control, nullptr);
  Batch before(1, &sda_image_);
  before.Write(8 * 65536, std::string(512, 'b'));  // before the mark: not in the set
  ASSERT_TRUE(replicator->Apply(kSda, before.items(), kWaitMs, nullptr).ok());

  auto mark = control->WrittenRegions(kSda, 65536, true, kWaitMs);
  ASSERT_TRUE(mark.ok()) << mark.status();
  EXPECT_EQ(mark->mark_lsn(), 1u);
  EXPECT_EQ(mark->region_bytes(), 65536u);
  EXPECT_EQ(mark->regions_size(), 0);

  Batch after(2, &sda_image_);
  after.Write(0, std::string(4096, 'a'))
      .Write(130000, std::string(100, 'c'))  // inside region 1
      .Discard(196608, 131072)               // regions 3 and 4 exactly
      .WriteZeroes(65535, 2);                // the last byte of region 0, the first of 1
  ASSERT_TRUE(replicator->Apply(kSda, after.items(), kWaitMs, nullptr).ok());
  auto set = control->WrittenRegions(kSda, 0, false, kWaitMs);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->mark_lsn(), 1u);
  EXPECT_EQ(set->applied_lsn(), 5u);
  EXPECT_THAT(std::vector<uint64_t>(set->regions().begin(), set->regions().end()),
              ::testing::ElementsAre(0u, 1u, 3u, 4u));
  ExpectSdaMatchesImage();

  // The other volume has no mark; a bad granularity is refused.
  auto none = control->WrittenRegions(kSdb, 0, false, kWaitMs);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("volume " + kSdb + " has no written-regions mark"));
  auto bad = control->WrittenRegions(kSda, 1000, true, kWaitMs);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("region_bytes 1000 is not a positive multiple"));
  // The refused reset left the mark alone.
  set = control->WrittenRegions(kSda, 0, false, kWaitMs);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->regions_size(), 4);
}

TEST_F(PeAgentTest, HoldOnlyFromAControlSession) {
  StartAgent();
  auto replicator = ConnectReplicator();
  ASSERT_NE(replicator, nullptr);
  auto reply = replicator->Hold(true, 1000, kWaitMs);
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.status().code(), StatusCode::kFailedPrecondition) << reply.status();
  EXPECT_THAT(reply.status().message(), HasSubstr("apply hold request"));
  EXPECT_THAT(reply.status().message(), HasSubstr("not a control client"));
  Batch batch(1, &sda_image_);
  batch.Write(0, std::string(512, 'r'));
  auto applied = replicator->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  ExpectSdaMatchesImage();
}

// ---- Bounds of the apply hold's queue (issue 15, item 7) ----

// Starts the agent and holds its apply for 60 s; returns the control client that holds it
// (nullptr on a failure, reported).
std::unique_ptr<PeClient> PeAgentTest::StartAgentAndHold() {
  StartAgent();
  std::unique_ptr<PeClient> control = ConnectControl();
  if (control == nullptr) return nullptr;
  auto held = control->Hold(true, 60000, kWaitMs);
  EXPECT_TRUE(held.ok()) << held.status();
  return held.ok() ? std::move(control) : nullptr;
}

// An ApplyBatch of `records` writes of `record_bytes` each (all at offset 0, LSNs from
// `first_lsn`), whose payload frames share one buffer of `fill`.
struct RawBatch {
  v1::Header header;
  std::vector<zmq::message_t> frames;
};
RawBatch MakeRawBatch(uint64_t first_lsn, int records, size_t record_bytes, uint64_t sequence,
                      const SharedBytes& fill) {
  RawBatch b;
  auto* batch = b.header.mutable_apply_batch();
  batch->set_volume(kSda);
  batch->set_first_lsn(first_lsn);
  batch->set_sequence(sequence);
  SharedBytes payload = fill->size() == record_bytes
                            ? fill
                            : std::make_shared<const std::string>(fill->substr(0, record_bytes));
  for (int i = 0; i < records; ++i) {
    *batch->add_records() =
        wire::RecordToProto(MakeWriteRecord(first_lsn + i, NowNanos(), 0, payload));
    b.frames.push_back(wire::FrameFromShared(payload));
  }
  return b;
}

// While apply is held, batches from a peer without a replicator session are refused at once,
// as when not held, instead of being queued: 32 batches of 10 MiB leave the queue empty.
TEST_F(PeAgentTest, WhileHeldBatchesWithoutASessionAreRefusedNotQueued) {
  std::unique_ptr<PeClient> control = StartAgentAndHold();
  ASSERT_NE(control, nullptr);
  const auto fill = std::make_shared<const std::string>(2 * kMiB, 'x');
  auto raw = Socket::Connect(raw_ctx_, endpoint_);
  ASSERT_TRUE(raw.ok()) << raw.status();
  for (uint64_t i = 1; i <= 32; ++i) {
    RawBatch b = MakeRawBatch(1, 5, 2 * kMiB, i, fill);  // 10 MiB
    ASSERT_TRUE((*raw)->Send(b.header, std::move(b.frames), kWaitMs).ok());
    ExpectErrorReply((*raw)->Recv(2000), StatusCode::kFailedPrecondition, false,
                     {"send Hello first"});
  }
  auto again = control->Hold(true, 60000, kWaitMs);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->queued_batches(), 0u);
  auto released = control->Hold(false, 0, kWaitMs);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->queued_batches(), 0u);
  ExpectSdaMatchesImage();
}

// Replicator sessions get at most kMaxHeldBatchesPerPeer batches each and kMaxHeldBytes in all
// into the held queue; the others are refused with a non-permanent ResourceExhausted. After the
// hold the queued ones are applied in order and acked, and a replicator refused meanwhile
// applies its batch by sending it again.
TEST_F(PeAgentTest, TheHeldQueueIsBoundedAndAReplicatorRecoversAfterTheHold) {
  static_assert(PeAgent::kMaxHeldBatchesPerPeer == 2 && PeAgent::kMaxHeldBytes == 64 * kMiB,
                "the counts below assume these bounds");
  std::unique_ptr<PeClient> control = StartAgentAndHold();
  ASSERT_NE(control, nullptr);
  const auto fill = std::make_shared<const std::string>(2 * kMiB, 'q');
  sda_image_.replace(0, 2 * kMiB, *fill);

  // Five connections, each a replicator of kSda, each sending three batches of 10 MiB at once
  // (a replicator waits for each ack; these do not). The third of each connection is over the
  // per-connection bound; the 7th batch in all is over 64 MiB.
  std::vector<std::unique_ptr<Socket>> peers;
  size_t refused_per_peer = 0, refused_bytes = 0;
  for (int p = 0; p < 5; ++p) {
    auto raw = Socket::Connect(raw_ctx_, endpoint_);
    ASSERT_TRUE(raw.ok()) << raw.status();
    peers.push_back(std::move(*raw));
    Socket& peer = *peers.back();
    ASSERT_TRUE(peer.Send(HelloHeader(v1::ROLE_REPLICATOR, kSda, kSdaSize), {}, kWaitMs).ok());
    auto hello = peer.Recv(kWaitMs);
    ASSERT_TRUE(hello.ok()) << hello.status();
    ASSERT_TRUE(hello->header.has_hello_reply()) << hello->header.DebugString();
    for (uint64_t seq = 1; seq <= 3; ++seq) {
      RawBatch b = MakeRawBatch(1, 5, 2 * kMiB, seq, fill);
      ASSERT_TRUE(peer.Send(b.header, std::move(b.frames), kWaitMs).ok());
    }
    // The refusals of this connection come at once; its queued batches are not answered.
    const size_t expect_refused = p < 3 ? 1 : 3;
    for (size_t r = 0; r < expect_refused; ++r) {
      auto reply = peer.Recv(kWaitMs);
      ExpectErrorReply(reply, StatusCode::kResourceExhausted, false,
                       {"apply is held", "send the batch again after the hold"});
      if (!reply.ok() || !reply->header.has_error()) continue;
      const std::string& text = reply->header.error().message();
      if (text.find("wait already, 2 of this connection") != std::string::npos) {
        ++refused_per_peer;
      } else {
        ++refused_bytes;
      }
    }
    EXPECT_FALSE(peer.Readable(100)) << "connection " << p << " got more answers";
  }
  EXPECT_EQ(refused_per_peer, 3u);
  EXPECT_EQ(refused_bytes, 6u);
  auto again = control->Hold(true, 60000, kWaitMs);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->queued_batches(), 6u) << "3 connections x 2 batches = 60 MiB";
  EXPECT_EQ(ReadWholeFile(sda_path_), std::string(kSdaSize, '\0')) << "applied while held";

  // A real replicator during the hold: its 5 MiB would go over 64 MiB, so it is refused, not
  // queued, and told to send it again.
  auto replicator = ConnectReplicator();
  ASSERT_NE(replicator, nullptr);
  Batch mine(6, &sda_image_);
  std::mt19937_64 rng(7);
  for (uint64_t off : {0ul, kMiB, 2 * kMiB, 512 * 1024ul, kMiB + 4096}) {
    mine.Write(off, RandomBytes(rng, kMiB - (off == kMiB + 4096 ? 4096 : 0)));
  }
  bool permanent = true;
  auto refused = replicator->Apply(kSda, mine.items(), kWaitMs, &permanent);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted) << refused.status();
  EXPECT_FALSE(permanent);

  // The release applies the queue in order (the first batch writes LSNs 1-5, the others are
  // replays of them) and acks each batch on its connection.
  auto released = control->Hold(false, 0, kWaitMs);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->queued_batches(), 6u);
  EXPECT_EQ(released->applied_lsn().at(kSda), 5u);
  for (int p = 0; p < 3; ++p) {
    for (uint64_t seq = 1; seq <= 2; ++seq) {
      auto ack = peers[p]->Recv(kWaitMs);
      ASSERT_TRUE(ack.ok()) << ack.status();
      ASSERT_TRUE(ack->header.has_apply_ack()) << ack->header.DebugString();
      EXPECT_EQ(ack->header.apply_ack().sequence(), seq);
      EXPECT_EQ(ack->header.apply_ack().applied_lsn(), 5u);
    }
  }

  // The refused replicator sends its batch again, as the replicator does after reconnecting.
  auto applied = replicator->Apply(kSda, mine.items(), kWaitMs, &permanent);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 10u);
  ExpectSdaMatchesImage();
  auto st = control->Status(kWaitMs);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->volumes(0).applied_records(), 10u) << "records 1-5 once, then 6-10; no replay";
}

TEST_F(PeAgentTest, TakeoverOfAVolumeWithoutExt4IsRefused) {
  // Image files hold no filesystem: the mount step finds no ext4 and nothing is mounted.
  PeAgentOptions options = Options();
  options.newroot = dir_.File("newroot");
  options.takeover_file = dir_.File("cdp-takeover");
  StartAgent(options);
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  v1::TakeoverRequest request;
  request.set_root_volume(kSda);
  auto reply = control->Takeover(request, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->ok());
  EXPECT_THAT(reply->error(), HasSubstr("volume " + kSda + ": no ext4 filesystem on " + sda_path_));
  ASSERT_EQ(reply->steps_size(), 3);
  EXPECT_EQ(reply->steps(0).name(), "check");
  EXPECT_EQ(reply->steps(1).name(), "flush");
  EXPECT_EQ(reply->steps(2).name(), "mount");
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));
  // Batches are allowed again.
  auto client = ConnectReplicator();
  ASSERT_NE(client, nullptr);
  Batch batch(1, &sda_image_);
  batch.Write(4096, std::string(4096, 'u'));
  auto applied = client->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  ExpectSdaMatchesImage();
}

// ---- takeover on a real ext4 filesystem, through a loop device (root only) ----

// Runs `command` with sh; its stdout, or nullopt when it failed.
std::optional<std::string> Shell(const std::string& command) {
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  if (::pclose(p) != 0) return std::nullopt;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Why loop devices cannot be used here ("" when they can).
std::string LoopUnavailableReason() {
  if (::geteuid() != 0) return "not root";
  if (::access("/dev/loop-control", F_OK) != 0) return "no /dev/loop-control";
  if (!Shell("command -v losetup && command -v mkfs.ext4 && command -v sfdisk")) {
    return "losetup, mkfs.ext4 or sfdisk missing (util-linux, e2fsprogs, fdisk)";
  }
  return "";
}

// Skips the test where loop devices cannot be used, except under CI (env CI set): there it fails.
#define REQUIRE_LOOP_DEVICES()                                                             \
  do {                                                                                     \
    const std::string why = LoopUnavailableReason();                                       \
    if (!why.empty()) {                                                                    \
      if (std::getenv("CI") != nullptr) FAIL() << "loop devices needed under CI: " << why; \
      GTEST_SKIP() << "needs loop devices: " << why;                                       \
    }                                                                                      \
  } while (0)

// A loop device over an image file, detached on destruction (lazily when still open: the
// kernel frees it once the last user closes it).
class LoopDevice {
 public:
  LoopDevice(const std::string& image, bool partitions) {
    auto dev =
        Shell("losetup --find --show " + std::string(partitions ? "--partscan " : "") + image);
    if (dev) path_ = *dev;
  }
  ~LoopDevice() {
    if (!path_.empty()) (void)Shell("losetup -d " + path_);
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Unmounts `dir` on destruction if something is mounted there (a failed test, a handover).
class UnmountOnExit {
 public:
  explicit UnmountOnExit(std::string dir) : dir_(std::move(dir)) {}
  ~UnmountOnExit() {
    while (IsMounted(dir_)) {
      if (::umount2(dir_.c_str(), MNT_DETACH) != 0) break;
    }
  }
  UnmountOnExit(const UnmountOnExit&) = delete;
  UnmountOnExit& operator=(const UnmountOnExit&) = delete;

  static bool IsMounted(const std::string& dir) {
    struct stat st, parent;
    return ::stat(dir.c_str(), &st) == 0 && ::stat((dir + "/..").c_str(), &parent) == 0 &&
           st.st_dev != parent.st_dev;
  }

 private:
  std::string dir_;
};

class PeAgentTakeoverTest : public PeAgentTest {
 protected:
  static constexpr uint64_t kImageSize = 32 * kMiB;
  static constexpr const char* kRootUuid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
  static constexpr const char* kMac = "52:54:00:12:34:56";
  static constexpr const char* kNetConf = "iface 02:00:00:00:00:01 192.168.1.10/24\n";

  void SetUp() override {
    PeAgentTest::SetUp();
    struct utsname u;
    ASSERT_EQ(uname(&u), 0);
    kver_ = u.release;
    stage_ = dir_.File("stage");
    WriteStaged("etc/fstab", std::string("UUID=") + kRootUuid + " / ext4 defaults 0 1\n");
    WriteStaged("etc/cdp/net.conf", kNetConf);
    WriteStaged("boot/initrd.img-" + kver_ + ".modules",
                "virtio_blk.ko\nvirtio_pci.ko\n"
                "virtio_net.ko\n");
    WriteStaged("lib/modules/" + kver_ + "/modules.dep", "");
    WriteStaged("sbin/init", "#!/bin/sh\necho NEW ROOT UP\n");
    std::filesystem::permissions(stage_ + "/sbin/init", std::filesystem::perms(0755));
    WriteStaged("sys/class/net/eth0/address", std::string(kMac) + "\n", dir_.File(""));
    newroot_ = dir_.File("newroot");
  }

  void WriteStaged(const std::string& path, const std::string& content, std::string base = "") {
    const std::string full = (base.empty() ? stage_ + "/" : base) + path;
    std::filesystem::create_directories(std::filesystem::path(full).parent_path());
    WriteWholeFile(full, content);
  }

  // An ext4 image of the staging tree: the whole image, or partition 1 (at 1 MiB) of an MBR.
  std::string MakeImage(bool partitioned) {
    const std::string image = dir_.File("root.img");
    MakeZeroFile(image, kImageSize);
    std::string cmd;
    if (partitioned) {
      cmd = "echo 'start=2048, type=83' | sfdisk -q " + image +
            " && mkfs.ext4 -q -F -E offset=" + std::to_string(kMiB) + " -U " + kRootUuid + " -d " +
            stage_ + " " + image + " " + std::to_string((kImageSize - kMiB) / 1024) + "k";
    } else {
      cmd = "mkfs.ext4 -q -F -U " + std::string(kRootUuid) + " -d " + stage_ + " " + image;
    }
    EXPECT_TRUE(Shell(cmd + " 2>&1")) << cmd;
    return image;
  }

  PeAgentOptions TakeoverOptions(const std::string& root_disk) {
    PeAgentOptions o = Options();
    o.volumes[0].size = kImageSize;
    o.disk_paths[kSda] = root_disk;
    o.newroot = newroot_;
    o.takeover_file = dir_.File("cdp-takeover");
    o.sys_root = dir_.File("sys");
    return o;
  }

  static v1::TakeoverRequest Request(bool dry_run) {
    v1::TakeoverRequest r;
    r.set_root_volume(kSda);
    r.set_dry_run(dry_run);
    auto* nic = r.add_nics();
    nic->set_mac(kMac);
    nic->set_address("10.0.0.5/24");
    nic->set_gateway("10.0.0.1");
    return r;
  }

  static std::vector<std::string> StepNames(const v1::TakeoverReply& reply) {
    std::vector<std::string> names;
    for (const auto& s : reply.steps()) names.push_back(s.name());
    return names;
  }

  // The content of `path` inside the ext4 image, read by mounting it read-only.
  std::string ReadFromImage(const std::string& dev, const std::string& path) {
    const std::string mnt = dir_.File("check");
    std::filesystem::create_directories(mnt);
    UnmountOnExit unmount(mnt);
    if (::mount(dev.c_str(), mnt.c_str(), "ext4", MS_RDONLY, "noload") != 0) {
      ADD_FAILURE() << "mount " << dev << ": " << std::strerror(errno);
      return "";
    }
    return ReadWholeFile(mnt + "/" + path);
  }

  std::string kver_, stage_, newroot_;
};

TEST_F(PeAgentTakeoverTest, DryRunOnAnExt4ImageChecksEverythingAndChangesNothing) {
  REQUIRE_LOOP_DEVICES();
  const std::string image = MakeImage(false);
  LoopDevice loop(image, false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  const std::string before = ReadWholeFile(image);
  StartAgent(TakeoverOptions(loop.path()));
  ASSERT_EQ(agent_->agent().state(), v1::PE_STATE_READY) << agent_->agent().error();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto reply = control->Takeover(Request(true), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->ok()) << reply->error() << "\n" << reply->DebugString();
  EXPECT_EQ(reply->error(), "");
  EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check", "flush", "mount", "plan"));
  EXPECT_EQ(reply->root_device(), loop.path());
  EXPECT_EQ(reply->kernel_release(), kver_);
  ASSERT_EQ(reply->steps_size(), 4);
  EXPECT_THAT(reply->steps(2).result(),
              HasSubstr(loop.path() + " (ext4 UUID " + std::string(kRootUuid) + ") at " + newroot_ +
                        " read-only"));
  EXPECT_THAT(reply->steps(3).result(),
              HasSubstr("net.conf: would be rewritten with: iface 52:54:00:12:34:56 "
                        "10.0.0.5/24 10.0.0.1"));
  EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));
  StopAgent();
  // Not one byte of the replica changed (no journal replay, no net.conf, no superblock write).
  EXPECT_TRUE(ReadWholeFile(image) == before);
  EXPECT_EQ(ReadFromImage(loop.path(), "etc/cdp/net.conf"), kNetConf);
}

TEST_F(PeAgentTakeoverTest, WithoutModulesForThePeKernelItKexecsIntoItsOwnKernel) {
  REQUIRE_LOOP_DEVICES();
  // The migrated OS runs kernel 9.9.9-own only: no modules for the PE's (the host's) kernel.
  std::filesystem::remove_all(stage_ + "/lib/modules/" + kver_);
  WriteStaged("boot/vmlinuz-9.9.9-own", "not really a kernel");
  WriteStaged("boot/initrd.img-9.9.9-own", "initrd");
  WriteStaged("boot/initrd.img-9.9.9-own.modules", "virtio_blk.ko\nvirtio_pci.ko\nvirtio_net.ko\n");
  WriteStaged("lib/modules/9.9.9-own/modules.dep", "");
  const std::string image = MakeImage(false);
  LoopDevice loop(image, false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  StartAgent(TakeoverOptions(loop.path()));  // allow_kexec stays false: a test never reboots
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  v1::TakeoverRequest request = Request(true);
  request.set_kernel_args("console=ttyS0 rw");
  auto reply = control->Takeover(request, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->ok()) << reply->error();
  EXPECT_EQ(reply->boot_mode(), v1::BOOT_MODE_KEXEC);
  EXPECT_EQ(reply->kernel_release(), "9.9.9-own");
  EXPECT_THAT(StepNames(*reply),
              ::testing::ElementsAre("check", "flush", "mount", "kexec-load", "plan"));
  EXPECT_EQ(reply->steps(3).result(),
            "would kexec_file_load /boot/vmlinuz-9.9.9-own with /boot/initrd.img-9.9.9-own, "
            "command line 'root=UUID=" + std::string(kRootUuid) + " console=ttyS0 rw'");
  EXPECT_THAT(reply->steps(4).result(), HasSubstr("boot: kexec into its own kernel 9.9.9-own"));

  // For real: refused here (no --allow-kexec) before anything changed; the agent serves again.
  reply = control->Takeover(Request(false), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->ok());
  EXPECT_EQ(reply->error(),
            "pe-agent: kexec is not allowed in this run (only the PE's agent, started with "
            "--allow-kexec, may reboot the machine); ask for boot switch-root");
  EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check", "flush", "mount", "kexec-load"));
  EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
  EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));
  StopAgent();
  EXPECT_EQ(ReadFromImage(loop.path(), "etc/cdp/net.conf"), kNetConf);
}

TEST_F(PeAgentTakeoverTest, AfterAFailedKexecRebootTheNextAgentIsInPeError) {
  WriteWholeFile(dir_.File("cdp-takeover.kexec-failed"), "kexec reboot failed: Invalid argument");
  PeAgentOptions options = Options();
  options.takeover_file = dir_.File("cdp-takeover");
  StartAgent(options);
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_ERROR);
  EXPECT_EQ(agent_->agent().error(),
            "a kexec takeover in this boot failed (kexec reboot failed: Invalid argument); the "
            "migrated OS's root was adapted, so replication stays off: reboot the target VM into "
            "the PE, or start it again (cdpctl target stop, start)");
  auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kSdaSize, kWaitMs);
  EXPECT_FALSE(client.ok());
}

// A takeover that fails after the read-write mount (here: the takeover file cannot be written)
// leaves a replica that is no longer the journal's: the agent refuses replication from then on,
// and so does the next agent of this boot.
TEST_F(PeAgentTakeoverTest, AFailureAfterTheReadWriteMountPutsTheAgentInPeError) {
  REQUIRE_LOOP_DEVICES();
  LoopDevice loop(MakeImage(false), false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  std::filesystem::create_directories(dir_.File("cdp-takeover.tmp") + "/x");
  StartAgent(TakeoverOptions(loop.path()));
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto reply = control->Takeover(Request(false), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->ok());
  EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check", "flush", "mount", "plan",
                                                        "remount", "adapt", "handover"));
  EXPECT_THAT(reply->error(), ::testing::StartsWith("pe-agent: writing the takeover file: "));
  EXPECT_THAT(reply->error(),
              HasSubstr("; the migrated OS's root was mounted read-write before this failure"));
  EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
  auto status = control->Status(kWaitMs);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->pe_state(), v1::PE_STATE_ERROR);
  EXPECT_EQ(status->error(), reply->error());
  auto refused = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kImageSize, kWaitMs);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("pe-agent: the target is not ready: "));
  StopAgent();

  EXPECT_EQ(ReadWholeFile(dir_.File("cdp-takeover.root-written")),
            "the takeover of " + loop.path() + " mounted it read-write");
  StartAgent(TakeoverOptions(loop.path()));
  EXPECT_EQ(agent_->agent().state(), v1::PE_STATE_ERROR);
  EXPECT_EQ(agent_->agent().error(),
            "a takeover in this boot failed after the takeover of " + loop.path() +
                " mounted it read-write, so the target's disks are no longer a plain replica and "
                "replication stays off: start the target VM again (cdpctl target stop, start)");
}

TEST_F(PeAgentTakeoverTest, AnUnknownBootIsRefusedAtCheck) {
  StartAgent();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  v1::TakeoverRequest request = Request(true);
  request.set_boot_mode(static_cast<v1::BootMode>(7));  // from a newer client
  auto reply = control->Takeover(request, kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->ok());
  EXPECT_EQ(reply->error(), "pe-agent: boot mode 7 is not auto, switch-root or kexec");
  EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check"));
}

TEST_F(PeAgentTakeoverTest, FstabUuidOnNoDiskFailsAndBatchesAreAppliedAgain) {
  REQUIRE_LOOP_DEVICES();
  WriteStaged("etc/fstab",
              std::string("UUID=") + kRootUuid +
                  " / ext4 defaults 0 1\n"
                  "UUID=11111111-2222-3333-4444-555555555555 /data ext4 defaults 0 2\n");
  const std::string image = MakeImage(false);
  LoopDevice loop(image, false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  const std::string before = ReadWholeFile(image);
  StartAgent(TakeoverOptions(loop.path()));
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  for (bool dry_run : {true, false}) {
    SCOPED_TRACE(dry_run ? "dry run" : "takeover");
    auto reply = control->Takeover(Request(dry_run), kWaitMs);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_FALSE(reply->ok());
    EXPECT_EQ(reply->error(),
              "fstab line 2: UUID=11111111-2222-3333-4444-555555555555 (/data) is on no disk of "
              "this target; the migrated OS would not mount it");
    // Refused at the plan, on the read-only mount: not one byte of the replica was written,
    // so replication goes on over it.
    EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check", "flush", "mount", "plan"));
    EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
    EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover")));
    EXPECT_FALSE(std::filesystem::exists(dir_.File("cdp-takeover.root-written")));
    EXPECT_TRUE(ReadWholeFile(image) == before);
  }
  // Serving again: a batch lands (in the unused first sector of the filesystem).
  auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kImageSize, kWaitMs);
  ASSERT_TRUE(client.ok()) << client.status();
  Batch batch(1, nullptr);
  batch.Write(0, std::string(512, 'r'));
  auto applied = (*client)->Apply(kSda, batch.items(), kWaitMs, nullptr);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 1u);
  StopAgent();
  EXPECT_EQ(ReadFromImage(loop.path(), "etc/cdp/net.conf"), kNetConf);  // never rewritten
}

TEST_F(PeAgentTakeoverTest, TakeoverRewritesNetConfAndHandsOver) {
  REQUIRE_LOOP_DEVICES();
  LoopDevice loop(MakeImage(false), false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  StartAgent(TakeoverOptions(loop.path()));
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto reply = control->Takeover(Request(false), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->ok()) << reply->error();
  EXPECT_THAT(StepNames(*reply), ::testing::ElementsAre("check", "flush", "mount", "plan",
                                                        "remount", "adapt", "handover"));
  EXPECT_EQ(reply->root_device(), loop.path());
  EXPECT_THAT(reply->steps(3).result(),
              HasSubstr("net.conf: would be rewritten with: iface 52:54:00:12:34:56"));
  EXPECT_THAT(reply->steps(5).result(),
              HasSubstr("net.conf: rewritten with 1 line(s) (the previous one kept as "
                        "/etc/cdp/net.conf.pre-cutover)"));
  agent_->Join();  // Run() returns after the handover
  EXPECT_TRUE(agent_->agent().handed_over());
  // The new root stays mounted read-write for the PE's /init, with the new net.conf.
  EXPECT_TRUE(UnmountOnExit::IsMounted(newroot_));
  EXPECT_EQ(ReadWholeFile(newroot_ + "/etc/cdp/net.conf"),
            "# written by the cdp pe-agent at takeover; the previous file is "
            "net.conf.pre-cutover\n"
            "iface 52:54:00:12:34:56 10.0.0.5/24 10.0.0.1\n");
  EXPECT_EQ(ReadWholeFile(newroot_ + "/etc/cdp/net.conf.pre-cutover"), kNetConf);
  EXPECT_EQ(ReadWholeFile(dir_.File("cdp-takeover")), "root " + newroot_ + "\ninit /sbin/init\n");
  // The socket is closed: nothing answers any more.
  auto late = PeClient::Connect(endpoint_, v1::ROLE_CONTROL, "", 0, 500);
  EXPECT_FALSE(late.ok());
}

// Prepare boot end to end: a real overlay over the read-only replica, a real chroot (a static
// busybox plays the migrated OS's update-initramfs), then the takeover installs the image.
TEST_F(PeAgentTakeoverTest, PrepareBootRebuildsOverAnOverlayAndTheTakeoverInstallsIt) {
  REQUIRE_LOOP_DEVICES();
  if (!std::filesystem::exists("/usr/bin/busybox")) {
    if (std::getenv("CI") != nullptr) FAIL() << "needs a static /usr/bin/busybox under CI";
    GTEST_SKIP() << "needs a static /usr/bin/busybox";
  }
  const std::string ko = "usr/lib/modules/" + kver_ + "/kernel/drivers/";
  const std::string initrd = "boot/initrd.img-" + kver_;
  // No virtio_pci: the target's boot needs it, so the image is rebuilt, with virtio_scsi too.
  const std::string original = testdata::NewcArchive({ko + "virtio_blk.ko", ko + "virtio_net.ko"});
  WriteStaged(initrd + ".modules", "virtio_blk.ko\nvirtio_net.ko\n");  // as the image says
  const std::string rebuilt = testdata::NewcArchive(
      {ko + "virtio_blk.ko", ko + "virtio_scsi.ko", ko + "virtio_pci.ko", ko + "virtio_net.ko"});
  WriteStaged(initrd, original);
  WriteStaged("usr/share/cdp-test/rebuilt", rebuilt);
  std::filesystem::create_directories(stage_ + "/bin");
  std::filesystem::copy_file("/usr/bin/busybox", stage_ + "/bin/busybox");
  WriteStaged("usr/sbin/update-initramfs",
              "#!/bin/busybox sh\n"
              "/bin/busybox test -e /proc/self/status -a -c /dev/null || exit 9\n"
              "/bin/busybox cp /usr/share/cdp-test/rebuilt /boot/initrd.img-$3\n"
              "echo update-initramfs: Generating /boot/initrd.img-$3\n");
  std::filesystem::permissions(stage_ + "/usr/sbin/update-initramfs", std::filesystem::perms(0755));
  std::filesystem::permissions(stage_ + "/bin/busybox", std::filesystem::perms(0755));
  const std::string image = MakeImage(false);
  LoopDevice loop(image, false);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  UnmountOnExit unmount_scratch(dir_.File("scratch"));  // should the overlay stay mounted
  UnmountOnExit unmount_overlay(dir_.File("scratch") + "-root");
  const std::string before = ReadWholeFile(image);
  MakeZeroFile(meta_path_, PeMetadata::kKeptOffset + 4 * kMiB);  // with a kept area
  PeAgentOptions options = TakeoverOptions(loop.path());
  options.prepare_dir = dir_.File("prepared");
  options.prepare_scratch = dir_.File("scratch");
  StartAgent(options);
  ASSERT_EQ(agent_->agent().state(), v1::PE_STATE_READY) << agent_->agent().error();
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  v1::PrepareBootRequest prepare;
  prepare.set_root_volume(kSda);
  auto prepared = control->PrepareBoot(prepare, kWaitMs);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_TRUE(prepared->ok()) << prepared->error() << "\n" << prepared->DebugString();
  EXPECT_TRUE(prepared->rebuilt());
  ASSERT_EQ(prepared->steps_size(), 4);
  EXPECT_THAT(prepared->steps(2).result(),
              HasSubstr("/" + initrd +
                        " rebuilt with virtio_scsi, virtio_pci (/usr/sbin/update-initramfs -u -k " +
                        kver_ + ": update-initramfs: Generating /" + initrd + "); kept in " +
                        dir_.File("prepared") + "/" + kver_));
  EXPECT_EQ(prepared->steps(3).name(), "keep");
  EXPECT_THAT(prepared->steps(3).result(), HasSubstr(" bytes) kept on metadata disk " + meta_path_ +
                                                     " for the PE's next boots and drills"));
  // Nothing stays mounted and not one byte of the replica changed.
  EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
  EXPECT_FALSE(UnmountOnExit::IsMounted(dir_.File("scratch")));
  EXPECT_FALSE(UnmountOnExit::IsMounted(dir_.File("scratch") + "-root"));
  EXPECT_TRUE(ReadWholeFile(image) == before);
  EXPECT_EQ(ReadWholeFile(dir_.File("prepared") + "/" + kver_ + "/initrd"), rebuilt);

  // The PE boots again (its /run is empty): the image comes back from the metadata disk, and
  // prepare-boot has nothing to rebuild or to keep again.
  control.reset();
  StopAgent();
  std::filesystem::remove_all(dir_.File("prepared"));
  StartAgent(options);
  ASSERT_EQ(agent_->agent().state(), v1::PE_STATE_READY) << agent_->agent().error();
  EXPECT_EQ(ReadWholeFile(dir_.File("prepared") + "/" + kver_ + "/initrd"), rebuilt);
  control = ConnectControl();
  ASSERT_NE(control, nullptr);
  prepared = control->PrepareBoot(prepare, kWaitMs);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_TRUE(prepared->ok()) << prepared->error();
  ASSERT_EQ(prepared->steps_size(), 3) << prepared->DebugString();
  EXPECT_THAT(prepared->steps(2).result(), HasSubstr("nothing to rebuild"));

  auto reply = control->Takeover(Request(false), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->ok()) << reply->error();
  EXPECT_THAT(reply->steps(3).result(),
              HasSubstr("drivers: virtio_scsi, virtio_pci in the initramfs prepared for /" +
                        initrd + " at "));
  bool listed = false;
  for (const auto& c : reply->changes()) {
    listed =
        listed || (c.file() == "/" + initrd && c.kept_at() == "/" + initrd + ".cdp-pre-cutover");
  }
  EXPECT_TRUE(listed) << reply->DebugString();
  agent_->Join();
  EXPECT_EQ(ReadWholeFile(newroot_ + "/" + initrd), rebuilt);
  EXPECT_EQ(ReadWholeFile(newroot_ + "/" + initrd + ".cdp-pre-cutover"), original);
  EXPECT_THAT(
      ReadWholeFile(newroot_ + "/var/log/cdp-takeover.log"),
      HasSubstr("/" + initrd + ": rebuilt with virtio_scsi, virtio_pci by prepare-boot at "));
}

TEST_F(PeAgentTakeoverTest, PartitionTableWrittenAfterStartIsReadAgain) {
  // As in the PE: the disk was blank when the kernel scanned it; the replicator then wrote a
  // partition table and a root filesystem in partition 1. The takeover must re-read the table.
  REQUIRE_LOOP_DEVICES();
  const std::string content = ReadWholeFile(MakeImage(true));
  {
    LoopDevice probe(dir_.File("root.img"), true);
    ASSERT_FALSE(probe.path().empty());
    struct stat st;
    if (::stat((probe.path() + "p1").c_str(), &st) != 0) {
      GTEST_SKIP() << "this kernel does not parse MBR partition tables (CONFIG_MSDOS_PARTITION)";
    }
  }
  const std::string blank = dir_.File("blank.img");
  MakeZeroFile(blank, kImageSize);
  LoopDevice loop(blank, true);
  ASSERT_FALSE(loop.path().empty());
  UnmountOnExit unmount(newroot_);
  StartAgent(TakeoverOptions(loop.path()));
  {
    auto client = PeClient::Connect(endpoint_, v1::ROLE_REPLICATOR, kSda, kImageSize, kWaitMs);
    ASSERT_TRUE(client.ok()) << client.status();
    Batch batch(1, nullptr);
    for (uint64_t off = 0; off < 4 * kMiB; off += kMiB) batch.Write(off, content.substr(off, kMiB));
    ASSERT_TRUE((*client)->Apply(kSda, batch.items(), kWaitMs, nullptr).ok());
    Batch rest(5, nullptr);
    for (uint64_t off = 4 * kMiB; off < kImageSize; off += kMiB) {
      rest.Write(off, content.substr(off, kMiB));
    }
    ASSERT_TRUE((*client)->Apply(kSda, rest.items(), kWaitMs, nullptr).ok());
  }
  auto control = ConnectControl();
  ASSERT_NE(control, nullptr);
  auto reply = control->Takeover(Request(true), kWaitMs);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->ok()) << reply->error();
  EXPECT_EQ(reply->root_device(), loop.path() + "p1");
  EXPECT_FALSE(UnmountOnExit::IsMounted(newroot_));
}

}  // namespace
}  // namespace cdp::pe
