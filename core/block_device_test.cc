// Tests of BlockDevice on real files in a temporary directory, run once per I/O engine.
#include "cdp/core/block_device.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cdp/core/testing/temp_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cdp {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Every test file names its own temp dirs.
class TempDir : public cdp::testing::TempDir {
 public:
  TempDir() : cdp::testing::TempDir("block_device_test") {}
};

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::string EngineName(IoEngine engine) {
  switch (engine) {
    case IoEngine::kAuto:
      return "auto";
    case IoEngine::kIoUring:
      return "io_uring";
    case IoEngine::kLibaio:
      return "libaio";
  }
  return "unknown";
}

// Runs each test on one engine. For io_uring, checks first that the kernel lets this process
// use it: when it does not, the test is skipped, or fails when $CI is set (CI machines must
// exercise both engines).
class BlockDeviceTest : public ::testing::TestWithParam<IoEngine> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    if (GetParam() != IoEngine::kIoUring) return;
    BlockDeviceOptions probe_options = Options();
    probe_options.create_size = 4096;
    Result<std::unique_ptr<BlockDevice>> probe =
        OpenBlockDevice(dir_.File("io_uring_probe"), probe_options);
    if (probe.ok()) return;
    if (std::getenv("CI") != nullptr) {
      FAIL() << "io_uring is unusable on this CI machine: " << probe.status().ToString();
    }
    GTEST_SKIP() << "io_uring is unusable here: " << probe.status().ToString();
  }

  // Options for a writable device on the engine under test.
  BlockDeviceOptions Options(uint64_t create_size = 0) const {
    BlockDeviceOptions options;
    options.writable = true;
    options.create_size = create_size;
    options.engine = GetParam();
    return options;
  }

  // Opens (creating if asked) `name` in the temp dir; fails the test on error.
  std::unique_ptr<BlockDevice> Open(const std::string& name, const BlockDeviceOptions& options) {
    Result<std::unique_ptr<BlockDevice>> device = OpenBlockDevice(dir_.File(name), options);
    EXPECT_TRUE(device.ok()) << device.status().ToString();
    if (!device.ok()) return nullptr;
    EXPECT_EQ((*device)->engine_name(), EngineName(GetParam()));
    return std::move(device).value();
  }

  // A device of `size` bytes filled with random bytes; `contents` receives them.
  std::unique_ptr<BlockDevice> OpenFilled(const std::string& name, uint64_t size,
                                          std::string* contents) {
    std::unique_ptr<BlockDevice> device = Open(name, Options(size));
    if (device == nullptr) return nullptr;
    std::mt19937_64 rng(size);
    *contents = RandomBytes(rng, size);
    Status s = device->WriteAt(0, *contents);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return device;
  }

  static std::string ReadAll(BlockDevice& device) {
    std::string out(device.size(), '\0');
    Status s = device.ReadAt(0, out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }

  TempDir dir_;
};

TEST_P(BlockDeviceTest, WriteThenReadRoundTrips) {
  auto device = Open("disk", Options(kMiB));
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size(), kMiB);
  EXPECT_EQ(device->logical_block_size(), 512u);
  EXPECT_FALSE(device->is_block_device());
  EXPECT_EQ(device->path(), dir_.File("disk"));

  std::mt19937_64 rng(1);
  const std::string data = RandomBytes(rng, 12345);
  ASSERT_TRUE(device->WriteAt(777, data).ok());
  ASSERT_TRUE(device->Flush().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE(device->ReadAt(777, back).ok());
  EXPECT_EQ(back, data);

  // The bytes are in the file, not just in the device object.
  auto reopened = Open("disk", Options());
  ASSERT_NE(reopened, nullptr);
  std::string again(data.size(), '\0');
  ASSERT_TRUE(reopened->ReadAt(777, again).ok());
  EXPECT_EQ(again, data);
}

TEST_P(BlockDeviceTest, WriteBatchOf200RandomOpsReadsBack) {
  std::mt19937_64 rng(200);
  struct Placed {
    uint64_t offset;
    std::string data;
  };
  std::vector<Placed> placed;
  uint64_t end = 0;
  for (int i = 0; i < 200; ++i) {
    end += std::uniform_int_distribution<uint64_t>(0, 8192)(rng);  // gap between ops
    const size_t size = std::uniform_int_distribution<size_t>(4096, 65536)(rng);
    placed.push_back({end, RandomBytes(rng, size)});
    end += size;
  }
  // Submit in a shuffled order so completion order differs from file order.
  std::shuffle(placed.begin(), placed.end(), rng);
  std::vector<WriteOp> ops;
  for (const Placed& p : placed) ops.push_back({p.offset, p.data});

  for (unsigned depth : {1u, 8u, 64u}) {
    SCOPED_TRACE("queue_depth " + std::to_string(depth));
    BlockDeviceOptions options = Options(end);
    options.queue_depth = depth;
    auto device = Open("batch" + std::to_string(depth), options);
    ASSERT_NE(device, nullptr);
    Status s = device->WriteBatch(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    const std::string all = ReadAll(*device);
    for (const Placed& p : placed) {
      ASSERT_EQ(all.substr(p.offset, p.data.size()), p.data) << "op at offset " << p.offset;
    }
  }
}

TEST_P(BlockDeviceTest, ReadBatchFillsEveryBufferAndRefusesABadOpUpFront) {
  std::mt19937_64 rng(201);
  const uint64_t size = 4 * kMiB;
  auto device = Open("readbatch", Options(size));
  ASSERT_NE(device, nullptr);
  const std::string content = RandomBytes(rng, size);
  ASSERT_TRUE(device->WriteAt(0, content).ok());
  // 150 reads of 1..16 blocks at random block offsets (overlapping each other is fine).
  std::vector<std::string> bufs;
  std::vector<uint64_t> offsets;
  for (int i = 0; i < 150; ++i) {
    const uint64_t blocks = std::uniform_int_distribution<uint64_t>(1, 16)(rng);
    offsets.push_back(std::uniform_int_distribution<uint64_t>(0, size / 512 - blocks)(rng) * 512);
    bufs.emplace_back(blocks * 512, '\0');
  }
  std::vector<ReadOp> ops;
  for (size_t i = 0; i < bufs.size(); ++i) ops.push_back({offsets[i], bufs[i]});
  Status s = device->ReadBatch(ops);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (size_t i = 0; i < bufs.size(); ++i) {
    ASSERT_EQ(bufs[i], content.substr(offsets[i], bufs[i].size())) << "read " << i;
  }
  std::string past(4096, 'x');
  const std::vector<ReadOp> bad = {{0, bufs[0]}, {size - 100, past}};
  s = device->ReadBatch(bad);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  EXPECT_EQ(past, std::string(4096, 'x'));  // nothing was read into it
}

TEST_P(BlockDeviceTest, WriteBatchWithOneBadOpWritesNothing) {
  auto device = Open("disk", Options(64 * 1024));
  ASSERT_NE(device, nullptr);
  const std::string data(4096, 'x');
  const std::vector<WriteOp> ops = {{0, data}, {64 * 1024 - 100, data}};
  Status s = device->WriteBatch(ops);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  EXPECT_EQ(ReadAll(*device), std::string(64 * 1024, '\0'));
}

TEST_P(BlockDeviceTest, DirectIoWithAlignedBuffer) {
  BlockDeviceOptions options = Options(kMiB);
  options.direct = true;
  Result<std::unique_ptr<BlockDevice>> opened = OpenBlockDevice(dir_.File("direct"), options);
  if (!opened.ok() && opened.status().code() == StatusCode::kInvalidArgument) {
    GTEST_SKIP() << "no O_DIRECT on this filesystem: " << opened.status().ToString();
  }
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockDevice& device = **opened;

  AlignedBuffer out(64 * 1024);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(out.data()) % 4096, 0u);
  std::mt19937_64 rng(3);
  const std::string data = RandomBytes(rng, out.size());
  std::memcpy(out.data(), data.data(), data.size());
  ASSERT_TRUE(device.WriteAt(3 * 4096, out.span()).ok());
  ASSERT_TRUE(device.Flush().ok());

  AlignedBuffer in(out.size());
  std::memset(in.data(), 0, in.size());
  ASSERT_TRUE(device.ReadAt(3 * 4096, in.span()).ok());
  EXPECT_EQ(std::string(in.data(), in.size()), data);

  // Misalignment is refused up front, naming what is misaligned.
  Status s = device.ReadAt(100, in.span());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("offset is not a multiple of 512"));
  s = device.WriteAt(0, std::span<const char>(out.data() + 1, 512));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("buffer address"));

  // Zeroing keeps working on an O_DIRECT descriptor.
  ASSERT_TRUE(device.WriteZeroes(4 * 4096, 4096).ok());
  ASSERT_TRUE(device.ReadAt(3 * 4096, in.span()).ok());
  std::string expected = data;
  std::fill(expected.begin() + 4096, expected.begin() + 8192, '\0');
  EXPECT_EQ(std::string(in.data(), in.size()), expected);
}

TEST_P(BlockDeviceTest, WriteZeroesZeroesOnlyTheRange) {
  std::string contents;
  auto device = OpenFilled("disk", kMiB, &contents);
  ASSERT_NE(device, nullptr);
  // Deliberately not block aligned at either end.
  const uint64_t offset = 4096 + 100;
  const uint64_t length = 3 * 4096 + 17;
  Status s = device->WriteZeroes(offset, length);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::fill_n(contents.begin() + offset, length, '\0');
  EXPECT_EQ(ReadAll(*device), contents);
  EXPECT_EQ(device->size(), kMiB);
}

TEST_P(BlockDeviceTest, DiscardZeroesOnlyTheRange) {
  std::string contents;
  auto device = OpenFilled("disk", kMiB, &contents);
  ASSERT_NE(device, nullptr);
  const uint64_t offset = 64 * 1024 - 1;
  const uint64_t length = 128 * 1024 + 2;
  Status s = device->Discard(offset, length);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::fill_n(contents.begin() + offset, length, '\0');
  EXPECT_EQ(ReadAll(*device), contents);

  // The file keeps its size even when the discarded range reaches its end.
  ASSERT_TRUE(device->Discard(kMiB - 4096, 4096).ok());
  struct stat st {};
  ASSERT_EQ(stat(dir_.File("disk").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kMiB);
}

TEST_P(BlockDeviceTest, OutOfRangeNamesOffsetLengthAndSize) {
  auto device = Open("disk", Options(kMiB));
  ASSERT_NE(device, nullptr);
  std::string buf(4096, 'a');

  Status s = device->ReadAt(kMiB - 100, buf);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("4096 bytes at offset 1048476"));
  EXPECT_THAT(s.message(), HasSubstr("1048576 bytes"));
  EXPECT_THAT(s.message(), HasSubstr(dir_.File("disk")));

  s = device->WriteAt(2 * kMiB, buf);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("4096 bytes at offset 2097152"));
  EXPECT_THAT(s.message(), HasSubstr("1048576 bytes"));

  s = device->WriteZeroes(kMiB, 1);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("1 bytes at offset 1048576"));

  s = device->Discard(0, kMiB + 1);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("1048577 bytes at offset 0"));

  // An offset near 2^64 must not wrap around the bounds check.
  s = device->ReadAt(UINT64_MAX - 10, buf);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);

  // Reading the exact end is fine; one byte more is not zero-filled but refused.
  std::string tail(100, '\0');
  EXPECT_TRUE(device->ReadAt(kMiB - 100, tail).ok());
  std::string past(101, '\0');
  EXPECT_EQ(device->ReadAt(kMiB - 100, past).code(), StatusCode::kOutOfRange);
}

TEST_P(BlockDeviceTest, MissingPathIsNotFound) {
  BlockDeviceOptions options = Options();
  Result<std::unique_ptr<BlockDevice>> device = OpenBlockDevice(dir_.File("missing"), options);
  ASSERT_FALSE(device.ok());
  EXPECT_TRUE(device.status().IsNotFound()) << device.status().ToString();
  EXPECT_THAT(device.status().message(),
              HasSubstr("device " + dir_.File("missing") + " does not exist"));
  EXPECT_FALSE(std::filesystem::exists(dir_.File("missing")));
}

TEST_P(BlockDeviceTest, CreateSizeCreatesSparseFile) {
  const uint64_t size = 64 * kMiB;
  auto device = Open("new", Options(size));
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size(), size);
  struct stat st {};
  ASSERT_EQ(stat(dir_.File("new").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, size) << "file is not sparse";
  std::string head(4096, 'x');
  ASSERT_TRUE(device->ReadAt(size - 4096, head).ok());
  EXPECT_EQ(head, std::string(4096, '\0'));

  // create_size does not touch an existing file.
  auto again = Open("new", Options(size * 2));
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->size(), size);
}

TEST_P(BlockDeviceTest, NextDataOffsetFindsTheDataBlock) {
  const uint64_t size = 16 * kMiB;
  const uint64_t data_at = 8 * kMiB;
  auto device = Open("sparse", Options(size));
  ASSERT_NE(device, nullptr);
  ASSERT_TRUE(device->WriteAt(data_at, std::string(4096, 'd')).ok());
  ASSERT_TRUE(device->Flush().ok());

  Result<uint64_t> next = device->NextDataOffset(0);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  if (*next == 0) GTEST_SKIP() << "the filesystem under $TMPDIR does not report holes";
  EXPECT_EQ(*next, data_at);
  EXPECT_EQ(*device->NextDataOffset(data_at + 100), data_at + 100);  // inside the data
  EXPECT_EQ(*device->NextDataOffset(data_at + 4096), size);          // only a hole after it
  EXPECT_EQ(*device->NextDataOffset(size), size);
  EXPECT_EQ(*device->NextDataOffset(size + 12345), size);
}

TEST_P(BlockDeviceTest, ReadOnlyDeviceRefusesWrites) {
  ASSERT_NE(Open("disk", Options(kMiB)), nullptr);
  BlockDeviceOptions options = Options();
  options.writable = false;
  auto device = Open("disk", options);
  ASSERT_NE(device, nullptr);
  std::string buf(512, 'r');
  EXPECT_EQ(device->WriteAt(0, buf).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(device->WriteZeroes(0, 512).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(device->Discard(0, 512).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(device->ReadAt(0, buf).ok());
  EXPECT_EQ(buf, std::string(512, '\0'));
}

TEST_P(BlockDeviceTest, ReadOfFileShrunkAfterOpenFails) {
  auto device = Open("disk", Options(kMiB));
  ASSERT_NE(device, nullptr);
  ASSERT_EQ(truncate(dir_.File("disk").c_str(), kMiB / 2), 0);
  std::string buf(kMiB / 2 + 4096, '\0');
  Status s = device->ReadAt(0, buf);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("end of file"));
}

INSTANTIATE_TEST_SUITE_P(Engines, BlockDeviceTest,
                         ::testing::Values(IoEngine::kIoUring, IoEngine::kLibaio),
                         [](const ::testing::TestParamInfo<IoEngine>& info) {
                           return info.param == IoEngine::kIoUring ? "IoUring" : "Libaio";
                         });

TEST(BlockDeviceOpen, AutoPicksAWorkingEngine) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  BlockDeviceOptions options;
  options.writable = true;
  options.create_size = 8192;
  Result<std::unique_ptr<BlockDevice>> device = OpenBlockDevice(dir.File("auto"), options);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  const std::string_view engine = (*device)->engine_name();
  EXPECT_TRUE(engine == "io_uring" || engine == "libaio") << engine;
  ASSERT_TRUE((*device)->WriteAt(4096, std::string(4096, 'z')).ok());
  std::string back(4096, '\0');
  ASSERT_TRUE((*device)->ReadAt(4096, back).ok());
  EXPECT_EQ(back, std::string(4096, 'z'));
}

TEST(BlockDeviceOpen, DirectoryAndCharDeviceAreInvalidArgument) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(std::filesystem::create_directory(dir.File("subdir")));
  for (const std::string& path : {dir.File("subdir"), std::string("/dev/null")}) {
    SCOPED_TRACE(path);
    for (bool writable : {false, true}) {
      BlockDeviceOptions options;
      options.writable = writable;
      options.engine = IoEngine::kLibaio;
      Result<std::unique_ptr<BlockDevice>> device = OpenBlockDevice(path, options);
      ASSERT_FALSE(device.ok());
      EXPECT_EQ(device.status().code(), StatusCode::kInvalidArgument);
      EXPECT_THAT(device.status().message(),
                  HasSubstr(path + " is not a regular file or block device"));
    }
  }
}

TEST(BlockDeviceOpen, QueueDepthOutOfRangeIsInvalidArgument) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  for (unsigned depth : {0u, 100000u}) {
    BlockDeviceOptions options;
    options.create_size = 4096;
    options.queue_depth = depth;
    Result<std::unique_ptr<BlockDevice>> device = OpenBlockDevice(dir.File("q"), options);
    ASSERT_FALSE(device.ok());
    EXPECT_EQ(device.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(device.status().message(), HasSubstr("queue_depth " + std::to_string(depth)));
  }
}

TEST(ParseIoEngine, KnownNames) {
  EXPECT_EQ(*ParseIoEngine("auto"), IoEngine::kAuto);
  EXPECT_EQ(*ParseIoEngine("io_uring"), IoEngine::kIoUring);
  EXPECT_EQ(*ParseIoEngine("libaio"), IoEngine::kLibaio);
}

TEST(ParseIoEngine, BadValueIsInvalidArgumentNamingIt) {
  for (std::string_view bad : {"uring", "", "LIBAIO", "io_uring "}) {
    Result<IoEngine> engine = ParseIoEngine(bad);
    ASSERT_FALSE(engine.ok()) << bad;
    EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(engine.status().message(), HasSubstr(std::string("'").append(bad) + "'"));
  }
}

TEST(AlignedBuffer, IsAlignedAndMovable) {
  AlignedBuffer empty;
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.size(), 0u);

  AlignedBuffer a(10000);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 4096, 0u);
  EXPECT_EQ(a.size(), 10000u);
  std::memset(a.data(), 'q', a.size());

  char* const storage = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), storage);
  EXPECT_EQ(b.size(), 10000u);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is defined
  EXPECT_EQ(a.size(), 0u);

  AlignedBuffer c(4096);
  c = std::move(b);
  EXPECT_EQ(c.data(), storage);
  EXPECT_EQ(c.span().size(), 10000u);
  EXPECT_EQ(c.span()[9999], 'q');
}

}  // namespace
}  // namespace cdp
