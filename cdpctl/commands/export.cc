// cdpctl export: serves the image of a volume at a consistency point read-only over NBD.
#include <cstdio>

#include "cdp/core/time_text.h"
#include "cdp/ctl/image_export.h"
#include "cdp/ctl/journal_views.h"
#include "cdp/ctl/restore.h"
#include "cdp/nbd/nbd_server.h"
#include "command.h"

namespace cdp::ctl {
namespace {

ExitCode RunExport(const Args& args) {
  if (args.volume.empty() || args.at.empty() || args.nbd.empty()) {
    return Usage(
        "export needs --volume NAME, --at TIME|LSN|group:ID and --nbd unix:PATH|tcp:HOST:PORT");
  }
  auto spec = ParseAt(args.at, NowNanos());
  if (!spec.ok()) return Usage(spec.status().message());
  if (auto address = nbd::ParseNbdListenAddress(args.nbd); !address.ok()) {
    return Usage(address.status().message());
  }
  std::atomic<bool>* cancel = CancelOnSignals();
  const std::string& volume = args.volume;
  ExportOptions options{args.server, volume, *spec, args.nbd};
  Status s =
      ServeExport(options, cancel, [&](const v1::ConsistencyPoint& p, const std::string& bound) {
        std::printf(
            "exporting volume %s at LSN %llu (%s, %s) read-only on %s, export name '%s'; "
            "stop with SIGINT or SIGTERM\n",
            volume.c_str(), static_cast<unsigned long long>(p.lsn()),
            FormatRfc3339(p.time_ns()).c_str(), OriginName(p.origin()).c_str(), bound.c_str(),
            volume.c_str());
        std::fflush(stdout);
      });
  if (!s.ok()) return Fail("export", s);
  std::printf("export of volume %s stopped\n", volume.c_str());
  return ExitCode::kOk;
}

}  // namespace

const Command kExportCommand = {
    "export", true,
    "  cdpctl --server tcp://HOST:PORT export --volume NAME --at TIME|LSN|group:ID\n"
    "                                         --nbd unix:PATH|tcp:HOST:PORT\n"
    "      serves the volume as it was at that point (chosen as for restore) read-only over NBD,\n"
    "      export name NAME, until SIGINT/SIGTERM: mount it (nbd-client, qemu-nbd), boot it or\n"
    "      copy it (qemu-img, nbdcopy) without restoring it first\n",
    RunExport};

}  // namespace cdp::ctl
