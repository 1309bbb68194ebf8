// Small whole-file helpers for state files (cursors, agent state, bitmaps).
#pragma once

#include <string>

#include "cdp/core/status.h"

namespace cdp {

// Writes `data` to `path` atomically: path.tmp, fsync, rename, fsync of the directory. After a
// crash the file holds either the old or the new content, never a mix.
Status WriteFileAtomic(const std::string& path, const std::string& data);

// Makes the entries of directory `dir` durable (fsync of the directory): a file created, renamed
// or removed in it survives a crash. An IOError names the directory.
Status SyncDirectory(const std::string& dir);

// Reads a whole file; NotFound when absent.
Result<std::string> ReadWholeFile(const std::string& path);

}  // namespace cdp
