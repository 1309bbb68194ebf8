// Small whole-file helpers for state files (cursors, agent state, bitmaps).
#pragma once

#include <string>

#include "cdp/core/status.h"

namespace cdp {

// Writes `data` to `path` atomically: path.tmp, fsync, rename, fsync of the directory. After a
// crash the file holds either the old or the new content, never a mix.
Status WriteFileAtomic(const std::string& path, const std::string& data);

// Reads a whole file; NotFound when absent.
Result<std::string> ReadWholeFile(const std::string& path);

}  // namespace cdp
