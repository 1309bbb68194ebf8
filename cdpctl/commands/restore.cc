// cdpctl restore: writes the image of a volume at a consistency point to a file.
#include "cdp/ctl/restore.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cdp/core/time_text.h"
#include "cdp/ctl/journal_views.h"
#include "command.h"

namespace cdp::ctl {
namespace {

ExitCode RunRestore(const Args& args) {
  if (args.volume.empty() || args.at.empty() || args.output.empty()) {
    return Usage("restore needs --volume NAME, --at TIME|LSN|group:ID and --output PATH");
  }
  auto spec = ParseAt(args.at, NowNanos());
  if (!spec.ok()) return Usage(spec.status().message());
  std::atomic<bool>* cancel = CancelOnSignals();
  RestoreOptions options{args.server, args.volume, *spec, args.output, args.force, cancel};
  auto result = Restore(options, std::cerr, isatty(STDERR_FILENO) == 1);
  if (!result.ok()) return Fail("restore", result.status());
  const auto& r = *result;
  std::printf(
      "restored volume %s at LSN %llu (%s, %s) to %s: %s, %llu bytes, %llu bytes of data, "
      "%.2f s\n",
      args.volume.c_str(), static_cast<unsigned long long>(r.point.lsn()),
      FormatRfc3339(r.point.time_ns()).c_str(), OriginName(r.point.origin()).c_str(),
      args.output.c_str(), r.format == ImageFormat::kQcow2 ? "qcow2" : "raw",
      static_cast<unsigned long long>(r.size_bytes), static_cast<unsigned long long>(r.data_bytes),
      r.seconds);
  return ExitCode::kOk;
}

}  // namespace

const Command kRestoreCommand = {
    "restore", true,
    "  cdpctl --server tcp://HOST:PORT restore --volume NAME --at TIME|LSN|group:ID --output PATH\n"
    "                                          [--force]\n"
    "      writes the volume as it was at the latest consistency point at or before TIME or LSN\n"
    "      (an integer is an LSN; TIME is RFC 3339, e.g. 2026-11-26T17:39:40Z, or relative:\n"
    "      -90s, -15m, -2h, -1d), or at the volume's member of a group point (--at group:ID,\n"
    "      the id `cdpctl points` shows) to PATH: qcow2 when PATH ends in .qcow2, raw otherwise,\n"
    "      sparse, with progress on stderr. An existing PATH is refused without --force. A point "
    "inside\n"
    "      a history gap is refused, naming the nearest restorable points. The file appears\n"
    "      under PATH only once complete and synced (docs/restore.md)\n",
    RunRestore};

}  // namespace cdp::ctl
