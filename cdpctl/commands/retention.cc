// cdpctl retention: sets and shows how much history the journal keeps for a volume.
#include <iostream>

#include "cdp/core/units.h"
#include "cdp/ctl/journal_views.h"
#include "command.h"

namespace cdp::ctl {
namespace {

ExitCode RunRetention(const Args& args) {
  if (args.volume.empty()) return Usage("retention needs --volume NAME");
  std::optional<uint64_t> window_s, max;
  if (args.window) {
    auto w = ParseDuration(*args.window);
    if (!w.ok()) return Usage("--window " + w.status().message());
    window_s = *w;
  }
  if (args.max_bytes) {
    if (*args.max_bytes == "0") {
      max = 0;
    } else {
      auto m = ParseSize(*args.max_bytes);
      if (!m.ok()) return Usage("--max-bytes " + m.status().message() + " (or 0 for no cap)");
      max = *m;
    }
  }
  auto client = ConnectToServer(args);
  if (client == nullptr) return ExitCode::kError;
  auto r = client->Retention(args.volume, window_s, max, 10000);
  if (!r.ok()) return Fail("retention", r.status());
  std::cout << (args.json ? RetentionJson(*r) + "\n" : RetentionText(*r));
  return ExitCode::kOk;
}

}  // namespace

const Command kRetentionCommand = {
    "retention", true,
    "  cdpctl --server tcp://HOST:PORT retention --volume NAME [--window DURATION]\n"
    "                                            [--max-bytes SIZE] [--json]\n"
    "      sets (when given) and shows the volume's retention: history older than the window\n"
    "      (90s, 15m, 2h, 7d; 0 = keep everything) is folded into its base image; over\n"
    "      max-bytes (512M, 10G; 0 = no cap) the oldest history is folded early, and reported\n"
    "      (docs/retention.md)\n",
    RunRetention};

}  // namespace cdp::ctl
