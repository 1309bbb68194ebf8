// Root-relative paths: files of the migrated OS, mounted at a directory (/newroot in the PE, a
// temporary directory in tests), found as the migrated OS itself would find them, so that an
// absolute symlink (/sbin/init -> /lib/systemd/systemd) or a merged /lib -> usr/lib stays
// inside it and never reaches the PE's own files.
//
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <string_view>

#include "cdp/core/status.h"

namespace cdp::pe {

// The host path of `path` inside the tree at `root`, following symlinks as if `root` were `/`
// (an absolute link target restarts at `root`; ".." never leaves it). Components that do not
// exist are appended as they are, so the result of a missing file is a path that does not
// exist. InvalidArgument for a symlink loop (more than 40 links); IOError for a symlink that
// cannot be read.
Result<std::string> ResolveInRoot(const std::string& root, std::string_view path);

}  // namespace cdp::pe
