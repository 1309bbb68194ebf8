#include "cdp/pe/initramfs.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

namespace cdp::pe {

namespace {

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

}  // namespace

Result<std::vector<std::string>> ListInitramfs(std::string_view image) {
  std::vector<std::string> names;
  CDP_RETURN_IF_ERROR(ListSegments(image, 0, &names));
  return names;
}

}  // namespace cdp::pe
