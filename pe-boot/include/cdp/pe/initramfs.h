// Initramfs reading: the names of the entries of an initramfs image, read as the kernel
// unpacks it, so the takeover can tell whether the migrated OS's initramfs carries the virtio
// drivers (docs/pe-agent.md §5, step adapt). Only listing: nothing is extracted.
//
// Thread-safety: reentrant.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::pe {

// Decompressed initramfs images larger than this are refused (ResourceExhausted): the PE has
// little memory.
inline constexpr size_t kMaxInitramfsBytes = size_t{1} << 30;

// The names of every entry of an initramfs image: concatenated newc ("070701"/"070702") cpio
// archives, each optionally compressed with gzip or zstd, as the kernel unpacks them (zero
// padding between archives skipped). Corruption for a truncated or malformed archive;
// NotSupported naming the compression for other compressions (xz, lz4, bzip2, lzma, lzo).
Result<std::vector<std::string>> ListInitramfs(std::string_view image);

}  // namespace cdp::pe
