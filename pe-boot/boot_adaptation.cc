#include "cdp/pe/boot_adaptation.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace cdp::pe {

namespace {

namespace fs = std::filesystem;

// Decompressed initramfs images larger than this are refused: the PE has little memory.
constexpr size_t kMaxInitramfsBytes = size_t{1} << 30;
const char* const kVirtioDrivers[] = {"virtio_blk", "virtio_pci", "virtio_net"};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += item;
  }
  return out;
}

uint16_t Le16(std::string_view b, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[at]) |
                               (static_cast<uint8_t>(b[at + 1]) << 8));
}

// "0a1b2c3d-..." of 16 bytes.
std::string FormatUuid(std::string_view b) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[static_cast<uint8_t>(b[i]) >> 4];
    out += kHex[static_cast<uint8_t>(b[i]) & 15];
  }
  return out;
}

Result<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound(path + " does not exist");
    return Status::FromErrno(errno, "cannot open " + path);
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Status::FromErrno(errno, "cannot read " + path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::vector<std::string> Lines(std::string_view text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::vector<std::string> Fields(std::string_view line) {
  std::vector<std::string> fields;
  std::istringstream in{std::string(line)};
  std::string f;
  while (in >> f) fields.push_back(f);
  return fields;
}

// Writes `data` to `path` durably and atomically: PATH.cdp-tmp, fsync, rename, fsync of the
// directory.
Status WriteFileDurably(const std::string& path, const std::string& data, mode_t mode) {
  const std::string tmp = path + ".cdp-tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, "cannot create " + tmp);
  auto fail = [&](std::string_view what) {
    Status s = Status::FromErrno(errno, std::string(what) + " " + tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd, mode) != 0) return fail("cannot chmod");
  if (::fsync(fd) != 0) return fail("cannot fsync");
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = Status::FromErrno(errno, "cannot rename " + tmp + " to " + path);
    ::unlink(tmp.c_str());
    return s;
  }
  const std::string dir = fs::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return Status::FromErrno(errno, "cannot open " + dir + " to fsync it");
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) return Status::FromErrno(err, "cannot fsync " + dir);
  return Status::Ok();
}

bool ValidMac(const std::string& mac) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < mac.size(); ++i) {
    if (i % 3 == 2) {
      if (mac[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(mac[i]))) {
      return false;
    }
  }
  return true;
}

// AF_INET or AF_INET6 for a plain IP address, 0 when it is none.
int AddressFamily(const std::string& ip) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1) return AF_INET;
  if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) return AF_INET6;
  return 0;
}

// The family of "ADDR/PREFIX", 0 when malformed.
int PrefixFamily(const std::string& address) {
  const size_t slash = address.find('/');
  if (slash == std::string::npos) return 0;
  const std::string prefix = address.substr(slash + 1);
  if (prefix.empty() || prefix.size() > 3 ||
      !std::all_of(prefix.begin(), prefix.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  const int family = AddressFamily(address.substr(0, slash));
  const int bits = std::stoi(prefix);
  if (family == AF_INET && bits <= 32) return family;
  if (family == AF_INET6 && bits <= 128) return family;
  return 0;
}

// ---- initramfs ----

uint32_t Hex8(std::string_view s, size_t at, bool* ok) {
  uint32_t v = 0;
  for (size_t i = 0; i < 8; ++i) {
    const char c = s[at + i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      *ok = false;
      return 0;
    }
    v = v << 4 | static_cast<uint32_t>(d);
  }
  return v;
}

size_t Align4(size_t n) { return (n + 3) & ~size_t{3}; }

// Lists one newc archive starting at *pos, up to and including its trailer; *pos is left after
// it.
Status ListNewc(std::string_view data, size_t* pos, std::vector<std::string>* names) {
  constexpr size_t kHeader = 110;
  while (true) {
    const size_t at = *pos;
    if (data.size() - at < kHeader) {
      return Status::Corruption("cpio archive truncated at offset " + std::to_string(at) +
                                " (no trailer)");
    }
    if (data.substr(at, 6) != "070701" && data.substr(at, 6) != "070702") {
      return Status::Corruption("cpio entry at offset " + std::to_string(at) +
                                " has no newc magic 070701");
    }
    bool ok = true;
    const uint32_t filesize = Hex8(data, at + 6 + 6 * 8, &ok);
    const uint32_t namesize = Hex8(data, at + 6 + 11 * 8, &ok);
    if (!ok || namesize == 0) {
      return Status::Corruption("cpio entry at offset " + std::to_string(at) +
                                " has a malformed header");
    }
    if (data.size() - at - kHeader < namesize) {
      return Status::Corruption("cpio entry at offset " + std::to_string(at) +
                                " is truncated in its name");
    }
    std::string name(data.substr(at + kHeader, namesize - 1));
    const size_t data_at = Align4(at + kHeader + namesize);
    if (data_at > data.size() || data.size() - data_at < filesize) {
      return Status::Corruption("cpio entry '" + name + "' at offset " + std::to_string(at) +
                                " is truncated in its data");
    }
    *pos = std::min(data.size(), Align4(data_at + filesize));
    if (name == "TRAILER!!!") return Status::Ok();
    names->push_back(std::move(name));
  }
}

bool IsGzip(std::string_view d, size_t at) {
  return d.size() - at >= 2 && static_cast<uint8_t>(d[at]) == 0x1f &&
         static_cast<uint8_t>(d[at + 1]) == 0x8b;
}
bool IsZstd(std::string_view d, size_t at) {
  return d.size() - at >= 4 && d.substr(at, 4) == std::string_view("\x28\xb5\x2f\xfd", 4);
}

// Decompresses consecutive gzip members starting at `at`; *consumed is the compressed length.
Result<std::string> Gunzip(std::string_view in, size_t at, size_t* consumed) {
  std::string out;
  size_t pos = at;
  while (IsGzip(in, pos)) {
    z_stream zs{};
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return Status::Internal("inflateInit2 failed");
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + pos));
    zs.avail_in = static_cast<uInt>(std::min<size_t>(in.size() - pos, UINT32_MAX));
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
      const size_t old = out.size();
      out.resize(old + (1 << 20));
      zs.next_out = reinterpret_cast<Bytef*>(out.data() + old);
      zs.avail_out = 1 << 20;
      rc = inflate(&zs, Z_NO_FLUSH);
      out.resize(out.size() - zs.avail_out);
      if (rc != Z_OK && rc != Z_STREAM_END) {
        const std::string msg = zs.msg ? zs.msg : "truncated";
        inflateEnd(&zs);
        return Status::Corruption("gzip data at offset " + std::to_string(pos) +
                                  " does not decompress: " + msg);
      }
      if (out.size() > kMaxInitramfsBytes) {
        inflateEnd(&zs);
        return Status::ResourceExhausted("decompresses to more than " +
                                         std::to_string(kMaxInitramfsBytes >> 20) + " MiB");
      }
    }
    pos += zs.total_in;
    inflateEnd(&zs);
  }
  *consumed = pos - at;
  return out;
}

// Decompresses consecutive zstd frames starting at `at`; *consumed is the compressed length.
Result<std::string> Unzstd(std::string_view in, size_t at, size_t* consumed) {
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  if (dctx == nullptr) return Status::Internal("ZSTD_createDCtx failed");
  std::string out;
  ZSTD_inBuffer input{in.data() + at, in.size() - at, 0};
  size_t rc = 1;  // 0 once a frame is decoded and flushed
  Status status;
  while (rc != 0 || (input.pos < input.size && IsZstd(in, at + input.pos))) {
    const size_t old = out.size();
    out.resize(old + ZSTD_DStreamOutSize());
    ZSTD_outBuffer output{out.data() + old, out.size() - old, 0};
    rc = ZSTD_decompressStream(dctx, &output, &input);
    out.resize(old + output.pos);
    if (ZSTD_isError(rc)) {
      status = Status::Corruption("zstd data at offset " + std::to_string(at) +
                                  " does not decompress: " + ZSTD_getErrorName(rc));
      break;
    }
    if (rc != 0 && input.pos == input.size && output.pos == 0) {
      status = Status::Corruption("zstd data at offset " + std::to_string(at) + " ends early");
      break;
    }
    if (out.size() > kMaxInitramfsBytes) {
      status = Status::ResourceExhausted("decompresses to more than " +
                                         std::to_string(kMaxInitramfsBytes >> 20) + " MiB");
      break;
    }
  }
  ZSTD_freeDCtx(dctx);
  if (!status.ok()) return status;
  *consumed = input.pos;
  return out;
}

std::string CompressionName(std::string_view d, size_t at) {
  auto starts = [&](std::string_view magic) { return d.substr(at, magic.size()) == magic; };
  if (starts(std::string_view("\xfd"
                              "7zXZ\0",
                              6)))
    return "xz";
  if (starts(std::string_view("\x02\x21\x4c\x18", 4))) return "lz4";
  if (starts("BZh")) return "bzip2";
  if (starts(std::string_view("\x5d\x00\x00", 3))) return "lzma";
  if (starts(std::string_view("\x89LZO", 4))) return "lzo";
  return "an unknown format";
}

Status ListSegments(std::string_view data, int depth, std::vector<std::string>* names) {
  size_t pos = 0;
  while (pos < data.size()) {
    if (data[pos] == '\0') {
      ++pos;  // padding between archives
      continue;
    }
    if (data.substr(pos, 4) == "0707") {
      CDP_RETURN_IF_ERROR(ListNewc(data, &pos, names));
      continue;
    }
    if (depth > 2) {
      return Status::Corruption("compressed data nested in compressed data at offset " +
                                std::to_string(pos));
    }
    size_t consumed = 0;
    Result<std::string> inner = Status::Internal("unset");
    if (IsGzip(data, pos)) {
      inner = Gunzip(data, pos, &consumed);
    } else if (IsZstd(data, pos)) {
      inner = Unzstd(data, pos, &consumed);
    } else {
      char first[8];
      std::snprintf(first, sizeof(first), "0x%02x", static_cast<uint8_t>(data[pos]));
      return Status::NotSupported("data at offset " + std::to_string(pos) + " is compressed with " +
                                  CompressionName(data, pos) + " (first byte " + first +
                                  "), which the pe-agent does not read (it reads gzip and zstd)");
    }
    if (!inner.ok()) return inner.status();
    CDP_RETURN_IF_ERROR(ListSegments(*inner, depth + 1, names));
    pos += consumed;
  }
  return Status::Ok();
}

std::string InitrdName(const std::string& kver) { return "/boot/initrd.img-" + kver; }

}  // namespace

// ---- filesystems ----

Result<FsId> IdentifyFilesystem(std::string_view head) {
  if (head.size() >= 2048 && Le16(head, 1024 + 0x38) == 0xEF53) {
    return FsId{"ext4", FormatUuid(head.substr(1024 + 0x68, 16))};
  }
  if (head.size() >= 48 && head.substr(0, 4) == "XFSB") {
    return FsId{"xfs", FormatUuid(head.substr(32, 16))};
  }
  if (head.size() >= 4096 && head.substr(4086, 10) == "SWAPSPACE2") {
    return FsId{"swap", FormatUuid(head.substr(1024 + 12, 16))};
  }
  if (head.size() >= 512 && static_cast<uint8_t>(head[510]) == 0x55 &&
      static_cast<uint8_t>(head[511]) == 0xAA && Le16(head, 11) >= 512) {
    // FAT: FAT32 when the 16-bit FAT size is 0; the serial follows the extended boot signature.
    const bool fat32 = Le16(head, 22) == 0;
    const size_t sig = fat32 ? 66 : 38;
    if (static_cast<uint8_t>(head[sig]) == 0x29) {
      const uint32_t serial = static_cast<uint32_t>(Le16(head, sig + 1)) |
                              static_cast<uint32_t>(Le16(head, sig + 3)) << 16;
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%04x-%04x", serial >> 16, serial & 0xffff);
      return FsId{"vfat", buf};
    }
  }
  return Status::NotFound("no ext4, xfs, swap or FAT superblock");
}

Result<FsId> ReadFsId(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot open " + path);
  std::string head(4096, '\0');
  size_t done = 0;
  while (done < head.size()) {
    const ssize_t n = ::pread(fd, head.data() + done, head.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Status::FromErrno(errno, "cannot read " + path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  head.resize(done);
  auto id = IdentifyFilesystem(head);
  if (!id.ok()) return id.status().WithContext(path);
  return id;
}

// ---- paths ----

Result<std::string> ResolveInRoot(const std::string& root, std::string_view path) {
  std::vector<std::string> todo;  // components still to walk, the next one last
  auto push_path = [&todo](std::string_view p) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find('/', start);
      if (end == std::string_view::npos) end = p.size();
      if (end > start) parts.emplace_back(p.substr(start, end - start));
      start = end + 1;
    }
    todo.insert(todo.end(), parts.rbegin(), parts.rend());
  };
  push_path(path);
  std::vector<std::string> done;
  auto host_path = [&root, &done]() {
    std::string p = root;
    for (const auto& c : done) p += "/" + c;
    return p;
  };
  int links = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.back());
    todo.pop_back();
    if (c == ".") continue;
    if (c == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    const std::string candidate = host_path() + "/" + c;
    struct stat st;
    if (::lstat(candidate.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) {
      done.push_back(std::move(c));
      continue;
    }
    if (++links > 40) {
      return Status::InvalidArgument("too many symlinks resolving " + std::string(path) + " in " +
                                     root);
    }
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = ::readlink(candidate.c_str(), target.data(), target.size());
    if (n < 0) return Status::FromErrno(errno, "cannot read the symlink " + candidate);
    target.resize(static_cast<size_t>(n));
    if (!target.empty() && target[0] == '/') done.clear();
    push_path(target);
  }
  return host_path();
}

// ---- fstab ----

std::vector<FstabEntry> ParseFstab(std::string_view text) {
  std::vector<FstabEntry> entries;
  const auto lines = Lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto fields = Fields(lines[i]);
    if (fields.size() < 3 || fields[0][0] == '#') continue;
    FstabEntry e;
    e.line = static_cast<int>(i + 1);
    e.spec = fields[0];
    e.spec.erase(std::remove(e.spec.begin(), e.spec.end(), '"'), e.spec.end());
    e.mount_point = fields[1];
    e.type = fields[2];
    entries.push_back(std::move(e));
  }
  return entries;
}

void CheckFstab(const std::string& root, const UuidMap& on_disks, const std::string& root_uuid,
                std::vector<std::string>* errors, std::vector<std::string>* notes) {
  auto path = ResolveInRoot(root, "/etc/fstab");
  if (!path.ok()) {
    errors->push_back("cannot resolve /etc/fstab: " + path.status().message());
    return;
  }
  auto text = ReadFile(*path);
  if (!text.ok()) {
    if (text.status().IsNotFound()) {
      errors->push_back(
          "the migrated OS has no /etc/fstab; is root_volume the volume of its root filesystem?");
    } else {
      errors->push_back("cannot read the migrated OS's /etc/fstab: " + text.status().message());
    }
    return;
  }
  std::vector<std::string> found;
  for (const FstabEntry& e : ParseFstab(*text)) {
    const bool swap = e.type == "swap";
    if (!swap && (e.mount_point == "none" || e.mount_point.empty())) continue;
    const std::string where = "fstab line " + std::to_string(e.line) + ": " + e.spec + " (" +
                              (swap ? std::string("swap") : e.mount_point) + ")";
    if (e.spec.rfind("UUID=", 0) != 0) {
      if (e.spec.rfind("/dev/", 0) == 0 || e.spec.find('=') != std::string::npos) {
        notes->push_back(where + " is not by UUID; not checked");
      }
      continue;
    }
    const std::string uuid = Lower(e.spec.substr(5));
    auto it = on_disks.find(uuid);
    if (it == on_disks.end()) {
      errors->push_back(where +
                        " is on no disk of this target; the migrated OS would not mount it");
      continue;
    }
    if (e.mount_point == "/" && !root_uuid.empty() && uuid != Lower(root_uuid)) {
      errors->push_back(where + " is not the root filesystem the takeover mounted (UUID " +
                        Lower(root_uuid) +
                        "); the migrated OS would mount another root: check root_volume");
      continue;
    }
    found.push_back((swap ? std::string("swap") : e.mount_point) + " on " + it->second);
  }
  notes->push_back("fstab: " +
                   (found.empty() ? std::string("no UUID entries") : Join(found, ", ")));
}

// ---- network ----

Result<std::map<std::string, std::string>> ListNics(const std::string& sys_class_net) {
  std::map<std::string, std::string> nics;
  std::error_code ec;
  fs::directory_iterator it(sys_class_net, ec);
  if (ec) return Status::IOError("cannot list " + sys_class_net + ": " + ec.message());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name == "lo") continue;
    std::ifstream in(entry.path() / "address");
    std::string mac;
    if (!(in >> mac)) continue;
    mac = Lower(mac);
    if (mac == "00:00:00:00:00:00" || !ValidMac(mac)) continue;
    nics.emplace(mac, name);
  }
  return nics;
}

void ValidateNics(std::vector<NicConfig>* nics, const std::map<std::string, std::string>& present,
                  std::vector<std::string>* errors) {
  std::set<std::string> seen;
  for (size_t i = 0; i < nics->size(); ++i) {
    NicConfig& n = (*nics)[i];
    const std::string which = "NIC mapping " + std::to_string(i + 1);
    n.mac = Lower(n.mac);
    if (!ValidMac(n.mac)) {
      errors->push_back(which + ": MAC '" + n.mac + "' is not of the form aa:bb:cc:dd:ee:ff");
      continue;
    }
    if (!seen.insert(n.mac).second) {
      errors->push_back(which + ": MAC " + n.mac + " is mapped twice");
      continue;
    }
    if (!present.count(n.mac)) {
      std::vector<std::string> have;
      for (const auto& [mac, ifname] : present) have.push_back(ifname + " " + mac);
      errors->push_back(which + ": MAC " + n.mac + " is not a NIC of this target (it has: " +
                        (have.empty() ? std::string("none") : Join(have, ", ")) +
                        "); fix the NIC mapping or give the target VM that NIC");
      continue;
    }
    const int family = PrefixFamily(n.address);
    if (family == 0) {
      errors->push_back(which + " (MAC " + n.mac + "): address '" + n.address +
                        "' is not ADDR/PREFIX, e.g. 10.0.0.5/24");
      continue;
    }
    if (!n.gateway.empty() && AddressFamily(n.gateway) != family) {
      errors->push_back(which + " (MAC " + n.mac + "): gateway '" + n.gateway +
                        "' is not an address of the same family as " + n.address);
    }
  }
}

std::string FormatNetConf(const std::vector<NicConfig>& nics) {
  std::string out =
      "# written by the cdp pe-agent at takeover; the previous file is net.conf.pre-cutover\n";
  for (const auto& n : nics) {
    out += "iface " + n.mac + " " + n.address;
    if (!n.gateway.empty()) out += " " + n.gateway;
    out += "\n";
  }
  return out;
}

Result<std::string> RewriteNetConf(const std::string& root, const std::vector<NicConfig>& nics) {
  CDP_ASSIGN_OR_RETURN(const std::string path, ResolveInRoot(root, "/etc/cdp/net.conf"));
  const std::string content = FormatNetConf(nics);
  const std::string lines = std::to_string(nics.size()) + " line(s)";
  mode_t mode = 0644;
  auto old = ReadFile(path);
  if (old.ok()) {
    if (*old == content) return "net.conf: already as requested (" + lines + "); unchanged";
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) mode = st.st_mode & 07777;
    CDP_RETURN_IF_ERROR(WriteFileDurably(path + ".pre-cutover", *old, mode)
                            .WithContext("keeping the previous net.conf"));
    CDP_RETURN_IF_ERROR(WriteFileDurably(path, content, mode));
    return "net.conf: rewritten with " + lines +
           " (the previous one kept as /etc/cdp/net.conf.pre-cutover)";
  }
  if (!old.status().IsNotFound()) return old.status();
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) {
    return Status::IOError("cannot create " + fs::path(path).parent_path().string() + ": " +
                           ec.message());
  }
  CDP_RETURN_IF_ERROR(WriteFileDurably(path, content, mode));
  return "net.conf: created with " + lines + " (there was none)";
}

// ---- drivers and kernel ----

std::string ModuleNameOf(std::string_view path) {
  std::string_view name =
      path.substr(path.rfind('/') == std::string_view::npos ? 0 : path.rfind('/') + 1);
  static const std::string_view kSuffixes[] = {".ko", ".ko.gz", ".ko.xz", ".ko.zst"};
  bool module = false;
  for (const auto suffix : kSuffixes) {
    if (name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix) {
      name.remove_suffix(suffix.size());
      module = true;
      break;
    }
  }
  if (!module) return "";
  std::string out(name);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

Result<std::vector<std::string>> ListInitramfs(std::string_view image) {
  std::vector<std::string> names;
  CDP_RETURN_IF_ERROR(ListSegments(image, 0, &names));
  return names;
}

Result<std::set<std::string>> InitramfsModules(const std::string& root, const std::string& kver) {
  std::set<std::string> modules;
  CDP_ASSIGN_OR_RETURN(const std::string list, ResolveInRoot(root, InitrdName(kver) + ".modules"));
  auto text = ReadFile(list);
  if (text.ok()) {
    for (const auto& line : Lines(*text)) {
      const auto fields = Fields(line);
      if (fields.empty() || fields[0][0] == '#') continue;
      std::string name = ModuleNameOf(fields[0]);
      if (name.empty() && fields[0].find_first_of("/.") == std::string::npos) {
        name = fields[0];  // a bare module name
        std::replace(name.begin(), name.end(), '-', '_');
      }
      if (!name.empty()) modules.insert(name);
    }
    return modules;
  }
  if (!text.status().IsNotFound()) return text.status();
  CDP_ASSIGN_OR_RETURN(const std::string image_path, ResolveInRoot(root, InitrdName(kver)));
  CDP_ASSIGN_OR_RETURN(const std::string image, ReadFile(image_path));
  CDP_ASSIGN_OR_RETURN(const auto names, ListInitramfs(image));
  for (const auto& n : names) {
    std::string m = ModuleNameOf(n);
    if (!m.empty()) modules.insert(std::move(m));
  }
  return modules;
}

std::set<std::string> BuiltinModules(const std::string& root, const std::string& kver) {
  std::set<std::string> modules;
  auto path = ResolveInRoot(root, "/lib/modules/" + kver + "/modules.builtin");
  if (!path.ok()) return modules;
  auto text = ReadFile(*path);
  if (!text.ok()) return modules;
  for (const auto& line : Lines(*text)) {
    std::string m = ModuleNameOf(line);
    if (!m.empty()) modules.insert(std::move(m));
  }
  return modules;
}

void CheckInitramfsDrivers(const std::string& root, const std::string& kver,
                           std::vector<std::string>* errors, std::vector<std::string>* notes) {
  const std::set<std::string> builtin = BuiltinModules(root, kver);
  std::vector<std::string> needed, builtin_used;
  for (const char* d : kVirtioDrivers) (builtin.count(d) ? builtin_used : needed).push_back(d);
  const std::string initrd = InitrdName(kver);
  const std::string in_kernel =
      builtin_used.empty() ? "" : " (built into " + kver + ": " + Join(builtin_used, ", ") + ")";
  if (needed.empty()) {
    notes->push_back("drivers: virtio_blk, virtio_pci, virtio_net built into kernel " + kver);
    return;
  }
  auto modules = InitramfsModules(root, kver);
  if (!modules.ok()) {
    if (modules.status().IsNotFound()) {
      errors->push_back("the migrated OS has no initramfs " + initrd + " and its kernel " + kver +
                        " does not build in " + Join(needed, ", ") +
                        "; it would not find its disk on the target: build one with virtio "
                        "drivers (update-initramfs -c -k " +
                        kver + ") before the cutover");
    } else {
      errors->push_back("the migrated OS's initramfs " + initrd +
                        " cannot be listed: " + modules.status().message() +
                        "; write the list of its modules to " + initrd + ".modules (lsinitramfs " +
                        initrd + " | grep '\\.ko') on the source before the cutover");
    }
    return;
  }
  std::vector<std::string> missing;
  for (const auto& d : needed) {
    if (!modules->count(d)) missing.push_back(d);
  }
  if (missing.empty()) {
    notes->push_back("drivers: " + Join(needed, ", ") + " in " + initrd + in_kernel);
    return;
  }
  const bool disk = std::any_of(missing.begin(), missing.end(),
                                [](const std::string& m) { return m != "virtio_net"; });
  errors->push_back("the migrated OS's initramfs " + initrd + " has no " + Join(missing, ", ") +
                    (disk ? "; it would not find its disk on the target"
                          : "; it would have no network on the target") +
                    ": rebuild it with virtio drivers (update-initramfs) before the cutover");
}

bool CheckKernelModules(const std::string& root, const std::string& kver,
                        std::vector<std::string>* errors) {
  auto dir = ResolveInRoot(root, "/lib/modules/" + kver);
  std::error_code ec;
  if (dir.ok() && fs::is_directory(*dir, ec)) return true;
  std::vector<std::string> have;
  auto modules = ResolveInRoot(root, "/lib/modules");
  if (modules.ok()) {
    for (const auto& entry : fs::directory_iterator(*modules, ec)) {
      if (entry.is_directory(ec)) have.push_back(entry.path().filename().string());
    }
  }
  std::sort(have.begin(), have.end());
  errors->push_back("the PE runs kernel " + kver +
                    " but the migrated OS has no modules for it (it has: " +
                    (have.empty() ? std::string("none") : Join(have, ", ")) +
                    "); rebuild the PE from the replica's /boot and /lib/modules "
                    "(build-pe-image --kernel-from)");
  return false;
}

Result<std::string> ChooseOwnKernel(const std::string& root) {
  std::vector<std::string> found, usable;
  std::error_code ec;
  auto boot = ResolveInRoot(root, "/boot");
  if (boot.ok()) {
    for (const auto& entry : fs::directory_iterator(*boot, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("vmlinuz-", 0) != 0 || !entry.is_regular_file(ec)) continue;
      found.push_back(name);
      const std::string kver = name.substr(8);
      auto initrd = ResolveInRoot(root, InitrdName(kver));
      auto modules = ResolveInRoot(root, "/lib/modules/" + kver);
      if (initrd.ok() && fs::is_regular_file(*initrd, ec) && modules.ok() &&
          fs::is_directory(*modules, ec)) {
        usable.push_back(kver);
      }
    }
  }
  if (usable.empty()) {
    std::sort(found.begin(), found.end());
    return Status::NotFound(
        "the migrated OS has no kernel to kexec into: no /boot/vmlinuz-KVER with its "
        "/boot/initrd.img-KVER and /lib/modules/KVER (it has: " +
        (found.empty() ? std::string("none") : Join(found, ", ")) + ")");
  }
  return *std::max_element(usable.begin(), usable.end(), [](const auto& a, const auto& b) {
    return strverscmp(a.c_str(), b.c_str()) < 0;
  });
}

void CheckInit(const std::string& root, const std::string& init, std::vector<std::string>* errors) {
  if (init.empty() || init[0] != '/' || std::any_of(init.begin(), init.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) != 0;
      })) {
    errors->push_back("init '" + init + "' is not an absolute path without spaces");
    return;
  }
  auto path = ResolveInRoot(root, init);
  struct stat st;
  if (!path.ok() || ::stat(path->c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      (st.st_mode & 0111) == 0) {
    errors->push_back("the migrated OS has no executable " + init +
                      "; switch_root would fail: check root_volume and the takeover's init");
  }
}

// ---- the whole step ----

Result<std::vector<std::string>> AdaptRoot(AdaptRequest request) {
  std::vector<std::string> errors, notes;
  const bool kernel_ok = CheckKernelModules(request.root, request.kernel_release, &errors);
  CheckInit(request.root, request.init, &errors);
  CheckFstab(request.root, request.disk_uuids, request.root_uuid, &errors, &notes);
  ValidateNics(&request.nics, request.present_nics, &errors);
  // The initramfs of a kernel without modules in the migrated OS is beside the point.
  if (kernel_ok) CheckInitramfsDrivers(request.root, request.kernel_release, &errors, &notes);
  if (!errors.empty()) return Status::FailedPrecondition(Join(errors, "; "));
  if (kernel_ok) notes.push_back("kernel " + request.kernel_release + ": modules present");
  if (request.nics.empty()) {
    notes.push_back("net.conf: no NIC mappings in the request; left as it is");
  } else if (request.dry_run) {
    std::vector<std::string> lines;
    for (const auto& line : Lines(FormatNetConf(request.nics))) {
      if (!line.empty() && line[0] != '#') lines.push_back(line);
    }
    notes.push_back("net.conf: would be rewritten with: " + Join(lines, " | "));
  } else {
    CDP_ASSIGN_OR_RETURN(std::string note, RewriteNetConf(request.root, request.nics));
    notes.push_back(std::move(note));
  }
  return notes;
}

}  // namespace cdp::pe
