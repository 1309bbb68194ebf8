// Small whole-file helpers for state files (cursors, agent state, bitmaps) and for the files the
// pe-agent changes in a migrated OS.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

#include "cdp/core/status.h"

namespace cdp {

// Writes `data` to `path` atomically: path.tmp, fsync, rename, fsync of the directory. After a
// crash the file holds either the old or the new content, never a mix. The new file's mode is
// 0644 less the umask. On error path.tmp is removed and `path` is as it was.
Status WriteFileAtomic(const std::string& path, const std::string& data);

// As WriteFileAtomic, but the file gets exactly `mode` (the umask does not narrow it): for
// replacing a file whose mode must be kept.
Status WriteFileAtomicWithMode(const std::string& path, const std::string& data, mode_t mode);

// Makes the entries of directory `dir` durable (fsync of the directory): a file created, renamed
// or removed in it survives a crash. An IOError names the directory.
Status SyncDirectory(const std::string& dir);

// Reads a whole file; NotFound "PATH does not exist" when absent, IOError naming the path and
// the errno otherwise (a directory too).
Result<std::string> ReadWholeFile(const std::string& path);

// Reads the first `max_bytes` of a file (all of it when shorter): a superblock, a header. Errors
// as ReadWholeFile's.
Result<std::string> ReadFileHead(const std::string& path, size_t max_bytes);

}  // namespace cdp
