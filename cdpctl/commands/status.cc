// cdpctl status, cdpctl wait-synced: the state of every volume, and waiting for one to converge.
#include <iostream>

#include "cdp/ctl/journal_views.h"
#include "command.h"

namespace cdp::ctl {
namespace {

ExitCode RunStatus(const Args& args) {
  auto client = ConnectToServer(args);
  if (client == nullptr) return ExitCode::kError;
  auto reply = client->Status(5000);
  if (!reply.ok()) return Fail("status", reply.status());
  std::cout << (args.json ? StatusJson(*reply) + "\n" : StatusTable(*reply));
  return ExitCode::kOk;
}

ExitCode RunWaitSynced(const Args& args) {
  if (args.volume.empty()) return Usage("wait-synced needs --volume NAME");
  Status s = journal::WaitSynced(args.server, args.volume, args.timeout, std::cerr);
  if (s.ok()) {
    std::cout << "volume " << args.volume << " is synced\n";
    return ExitCode::kOk;
  }
  Fail("wait-synced", s);
  return s.IsTimedOut() ? ExitCode::kTimedOut : ExitCode::kError;
}

}  // namespace

const Command kStatusCommand = {
    "status", true,
    "  cdpctl --server tcp://HOST:PORT status [--json]\n"
    "      per volume: captured, durable and applied LSN, lag in seconds, bytes received\n",
    RunStatus};

const Command kWaitSyncedCommand = {
    "wait-synced", true,
    "  cdpctl --server tcp://HOST:PORT wait-synced --volume NAME [--timeout SECONDS]\n"
    "      exit 0 once the replica has applied every write the agent captured and the agent has\n"
    "      nothing left to send; exit 3 on timeout (default 300 s) with the reason (a volume\n"
    "      that is not known yet is waited for, and named in the timeout message)\n",
    RunWaitSynced};

}  // namespace cdp::ctl
