// cdpctl points, cdpctl checkpoint: a volume's consistency points, and asking for one now.
#include <iostream>

#include "cdp/core/time_text.h"
#include "cdp/ctl/journal_views.h"
#include "command.h"

namespace cdp::ctl {
namespace {

ExitCode RunPoints(const Args& args) {
  if (args.volume.empty()) return Usage("points needs --volume NAME");
  auto client = ConnectToServer(args);
  if (client == nullptr) return ExitCode::kError;
  auto points = client->Points(args.volume, 10000);
  if (!points.ok()) return Fail("points", points.status());
  std::cout << (args.json ? PointsJson(*points) + "\n" : PointsTable(*points));
  return ExitCode::kOk;
}

ExitCode RunCheckpoint(const Args& args) {
  if (args.volume.empty()) return Usage("checkpoint needs --volume NAME");
  auto client = ConnectToServer(args);
  if (client == nullptr) return ExitCode::kError;
  auto point = client->Checkpoint(args.volume, args.label, 15000);
  if (!point.ok()) {
    Fail("checkpoint", point.status());
    return point.status().IsTimedOut() ? ExitCode::kTimedOut : ExitCode::kError;
  }
  // The point may have been there already (a flush at that LSN): it carries the label now.
  const std::string labels = PointLabels(*point);
  std::cerr << "checkpoint of volume " << args.volume << " at LSN " << point->lsn() << " ("
            << FormatRfc3339(point->time_ns()) << ", " << OriginName(point->origin())
            << (labels.empty() ? "" : ", '" + labels + "'") << ")\n";
  std::cout << point->lsn() << "\n";
  return ExitCode::kOk;
}

}  // namespace

const Command kPointsCommand = {
    "points", true,
    "  cdpctl --server tcp://HOST:PORT points --volume NAME [--json]\n"
    "      the volume's consistency points, oldest first: LSN, time (UTC), origin (flush,\n"
    "      freeze, operator, cutover, sync) and labels, and for a member of a group point (one\n"
    "      freeze of every volume of an agent's group) [group NAME point ID: VOLUME@LSN ...];\n"
    "      --json: [{\"lsn\", \"time\", \"origin\", \"label\", \"operator_labels\"}], with\n"
    "      \"group\", \"group_point_id\", \"group_members\": [{\"volume\", \"lsn\"}] for a "
    "member\n",
    RunPoints};

const Command kCheckpointCommand = {
    "checkpoint", true,
    "  cdpctl --server tcp://HOST:PORT checkpoint --volume NAME [--label TEXT]\n"
    "      asks the volume's agent for a consistency point now and prints its LSN once it is\n"
    "      durable in the journal: origin operator in NBD mode, a filesystem freeze in trace\n"
    "      mode (with --freeze); a point already at the last LSN (a flush) stays what it is and\n"
    "      gets the label among its operator_labels\n",
    RunCheckpoint};

}  // namespace cdp::ctl
