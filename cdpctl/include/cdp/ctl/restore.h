// cdpctl restore: writes the image of a volume as it was at a consistency point to a file
// (docs/restore.md). The journal-server chooses the point and reads the image from the journal
// (ImageOpen/ImageRead, docs/wire-protocol.md §7); this side writes it sparse, raw or qcow2,
// under a temporary name that becomes the output's name only once it is complete and synced.
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include "cdp.pb.h"
#include "cdp/core/status.h"

namespace cdp::journal {
class ControlClient;
}  // namespace cdp::journal

namespace cdp::ctl {

// What --at asks for: an LSN (nonzero), a wall-clock time in ns since the Unix epoch, or a
// group point (its id: the volume's member of that group point).
struct AtSpec {
  uint64_t lsn = 0;
  uint64_t time_ns = 0;
  uint64_t group_point_id = 0;
};

// "1234" (an LSN), "-90s" / "-15m" / "-2h" / "-1d" (that long before now_ns), an RFC 3339
// time, or "group:ID" (a group point's id, as `cdpctl points` shows it). InvalidArgument naming
// `text` and the accepted forms otherwise; "0" is refused (LSNs start at 1).
Result<AtSpec> ParseAt(std::string_view text, uint64_t now_ns);

// `at` with a group point turned into the LSN of `volume`'s member of it, from the volume's
// points on the journal-server at `client`; `at` unchanged otherwise. NotFound, one line, when
// the volume has no point of that group point (naming `cdpctl points`).
Result<AtSpec> ResolveGroupPoint(journal::ControlClient* client, const std::string& volume,
                                 const AtSpec& at);

enum class ImageFormat { kRaw, kQcow2 };

// kQcow2 for a path ending in ".qcow2", kRaw for any other.
ImageFormat FormatForPath(const std::string& path);

struct RestoreOptions {
  std::string server;  // tcp://HOST:PORT
  std::string volume;
  AtSpec at;
  std::string output;
  bool force = false;  // replace an existing output file
  // Polled between reads; when it turns true the restore stops with Aborted.
  const std::atomic<bool>* cancel = nullptr;
};

struct RestoreResult {
  v1::ConsistencyPoint point;  // the point the image is at
  uint64_t size_bytes = 0;
  uint64_t data_bytes = 0;  // bytes written (ranges that are not zero)
  double seconds = 0;
  ImageFormat format = ImageFormat::kRaw;
};

// Writes the image. Before anything is written: AlreadyExists when the output exists and
// !force, InvalidArgument when it exists and is not a regular file or its directory is missing.
// Then the server's refusals (unknown volume, LSN never journaled, time in the future or before
// the history kept, point inside a history gap), IOError naming the file on a write error (a
// full disk included), Aborted when cancelled. On every error the temporary file is removed and
// the output (if it existed) is untouched. Progress goes to `progress` (a bar redrawn in place
// when `progress_tty`, else a line every 5 s).
Result<RestoreResult> Restore(const RestoreOptions& options, std::ostream& progress,
                              bool progress_tty);

}  // namespace cdp::ctl
