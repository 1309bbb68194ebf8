#include "cdp/agent/block_hashes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cdp/core/crc32c.h"
#include "cdp/core/region_hash.h"
#include "cdp/core/record.h"

namespace cdp::agent {

namespace {

constexpr char kMagic[8] = {'C', 'D', 'P', 'H', 'A', 'S', 'H', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 64;

std::string EncodeHeader(uint64_t device_size) {
  std::string h(kMagic, sizeof(kMagic));
  PutBigEndian32(&h, kVersion);
  PutBigEndian32(&h, BlockHashStore::kBlockSize);
  PutBigEndian64(&h, device_size);
  PutBigEndian32(&h, crc32c::Value(h.data(), h.size()));
  h.resize(kHeaderBytes, '\0');
  return h;
}

Status PwriteAll(int fd, const char* data, size_t length, uint64_t offset,
                 const std::string& path) {
  while (length > 0) {
    const ssize_t n = ::pwrite(fd, data, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path);
    }
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status PreadAll(int fd, char* data, size_t length, uint64_t offset, const std::string& path) {
  while (length > 0) {
    const ssize_t n = ::pread(fd, data, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) {  // a short file reads as unknown entries
      std::memset(data, 0, length);
      return Status::Ok();
    }
    data += n;
    length -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// (Re)creates the file as header + sparse, all-unknown entries.
Status Initialize(int fd, uint64_t device_size, uint64_t blocks, const std::string& path) {
  if (::ftruncate(fd, 0) != 0) return Status::FromErrno(errno, "truncate " + path);
  const std::string header = EncodeHeader(device_size);
  CDP_RETURN_IF_ERROR(PwriteAll(fd, header.data(), header.size(), 0, path));
  if (::ftruncate(fd, static_cast<off_t>(kHeaderBytes + blocks * 8)) != 0) {
    return Status::FromErrno(errno, "extend " + path);
  }
  if (::fdatasync(fd) != 0) return Status::FromErrno(errno, "fdatasync " + path);
  return Status::Ok();
}

}  // namespace

BlockHashStore::BlockHashStore(std::string path, int fd, uint64_t device_size)
    : path_(std::move(path)),
      fd_(fd),
      device_size_(device_size),
      blocks_((device_size + kBlockSize - 1) / kBlockSize) {}

BlockHashStore::~BlockHashStore() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  ::close(fd_);
}

Status BlockHashStore::Map() {
  map_bytes_ = kHeaderBytes + blocks_ * 8;
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    map_ = nullptr;
    return Status::FromErrno(errno, "mmap " + path_);
  }
  map_ = static_cast<char*>(p);
  return Status::Ok();
}

void BlockHashStore::TrimResident() {
  // Drops this process's page-table references; the pages stay in the page cache (dirty ones
  // stay dirty) and fault back in on the next access.
  if (map_ != nullptr) ::madvise(map_, map_bytes_, MADV_DONTNEED);
}

Result<std::unique_ptr<BlockHashStore>> BlockHashStore::Open(const std::string& path,
                                                             uint64_t device_size, bool* reset) {
  *reset = false;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "open block hash file " + path);
  std::unique_ptr<BlockHashStore> store(new BlockHashStore(path, fd, device_size));
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  const std::string want = EncodeHeader(device_size);
  std::string have(kHeaderBytes, '\0');
  bool valid = false;
  if (static_cast<uint64_t>(st.st_size) >= kHeaderBytes) {
    CDP_RETURN_IF_ERROR(PreadAll(fd, have.data(), have.size(), 0, path));
    valid = have == want;
  }
  if (!valid) {
    *reset = st.st_size != 0;
    CDP_RETURN_IF_ERROR(Initialize(fd, device_size, store->blocks_, path));
  } else if (static_cast<uint64_t>(st.st_size) < kHeaderBytes + store->blocks_ * 8) {
    if (::ftruncate(fd, static_cast<off_t>(kHeaderBytes + store->blocks_ * 8)) != 0) {
      return Status::FromErrno(errno, "extend " + path);
    }
  }
  CDP_RETURN_IF_ERROR(store->Map());
  return store;
}

uint64_t BlockHashStore::Hash(const char* data, size_t length) {
  // A scan meets mostly zero blocks (a disk's unused space): a zero scan costs a fraction of a
  // hash (core/region_hash.h), and gives XXH3's own value.
  const uint64_t h = ZeroAwareXxh3(std::span<const char>(data, length));
  return h == kUnknown ? 1 : h;
}

Status BlockHashStore::CheckRange(uint64_t first_block, size_t count) const {
  if (first_block > blocks_ || count > blocks_ - first_block) {
    return Status::OutOfRange(path_ + ": blocks " + std::to_string(first_block) + "+" +
                              std::to_string(count) + " past the end (" +
                              std::to_string(blocks_) + " blocks)");
  }
  return Status::Ok();
}

Status BlockHashStore::Invalidate(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= device_size_) return Status::Ok();
  const uint64_t first = offset / kBlockSize;
  const uint64_t last = std::min((offset + length + kBlockSize - 1) / kBlockSize, blocks_);
  // Only entries that are not unknown yet are stored (see Set: a store dirties the page).
  char* p = map_ + kHeaderBytes + first * 8;
  static constexpr char kZero[8] = {};
  for (uint64_t i = 0; i < last - first; ++i) {
    if (std::memcmp(p + i * 8, kZero, 8) != 0) std::memset(p + i * 8, 0, 8);
  }
  return Status::Ok();
}

Status BlockHashStore::InvalidateAll() {
  // A hole reads as zeroes through the mapping too; a file system without hole punching gets
  // the zeroes written.
  if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(kHeaderBytes),
                  static_cast<off_t>(blocks_ * 8)) != 0) {
    std::memset(map_ + kHeaderBytes, 0, blocks_ * 8);
  }
  return Sync();
}

Status BlockHashStore::Set(uint64_t first_block, std::span<const uint64_t> hashes) {
  CDP_RETURN_IF_ERROR(CheckRange(first_block, hashes.size()));
  char* p = map_ + kHeaderBytes + first_block * 8;
  for (size_t i = 0; i < hashes.size(); ++i) {
    char entry[8];
    for (int b = 0; b < 8; ++b) entry[b] = static_cast<char>(hashes[i] >> (8 * b));
    // An unchanged entry is not stored: a store dirties the page, which the filesystem then
    // writes — and the agent, tracing that filesystem, would journal its own write.
    if (std::memcmp(p + i * 8, entry, 8) != 0) std::memcpy(p + i * 8, entry, 8);
  }
  return Status::Ok();
}

Status BlockHashStore::Get(uint64_t first_block, std::span<uint64_t> out) const {
  CDP_RETURN_IF_ERROR(CheckRange(first_block, out.size()));
  const auto* p = reinterpret_cast<const unsigned char*>(map_ + kHeaderBytes + first_block * 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; --b) v = (v << 8) | p[i * 8 + b];
    out[i] = v;
  }
  return Status::Ok();
}

Status BlockHashStore::Sync() {
  if (::msync(map_, map_bytes_, MS_SYNC) != 0) return Status::FromErrno(errno, "msync " + path_);
  if (::fdatasync(fd_) != 0) return Status::FromErrno(errno, "fdatasync " + path_);
  return Status::Ok();
}

}  // namespace cdp::agent
