#include "service_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "cdp/core/host_command.h"
#include "cdp/core/units.h"
#include "cdp/failover/cutover.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

Result<std::string> AskService(const std::string& host, uint16_t port, const std::string& request,
                        int timeout_ms) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  auto wait = [&](short events) -> bool {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd p{fd, events, 0};
    return left > 0 && poll(&p, 1, static_cast<int>(left)) == 1 && !(p.revents & POLLERR);
  };
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
    return Status::Unavailable("connect: " + std::string(strerror(errno)));
  }
  if (!wait(POLLOUT)) return Status::Unavailable("no connection");
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return Status::Unavailable("connect: " + std::string(strerror(err)));
  if (request.empty()) return std::string();
  const std::string line = request + "\n";
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    return Status::Unavailable("send failed");
  }
  std::string reply;
  char buf[512];
  while (reply.find('\n') == std::string::npos) {
    if (!wait(POLLIN)) return Status::TimedOut("no reply");
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return Status::Unavailable("closed before a reply");
    reply.append(buf, n);
  }
  reply.resize(reply.find('\n'));
  if (!reply.empty() && reply.back() == '\r') reply.pop_back();
  return reply;
}


Result<std::string> WaitForService(const CutoverPlan& plan, double budget_seconds,
                                   const std::atomic<bool>* cancel) {
  const HealthCheck& h = plan.health;
  const std::string expect = plan.ExpectedReply();
  const auto deadline = Clock::now() + SecondsToMs(budget_seconds);
  std::string last = "no answer yet";
  while (Clock::now() < deadline) {
    if (cancel != nullptr && *cancel) {
      return Status::Aborted("stopped by a signal while waiting for " + h.host + ":" +
                             std::to_string(h.port) + " (" + last + ")");
    }
    auto reply = AskService(h.host, h.port, h.request, kServiceAskMs);
    if (reply.ok() && (expect.empty() || *reply == expect)) {
      const std::string answers =
          h.host + ":" + std::to_string(h.port) + " answers" +
          (h.request.empty() ? "" : " '" + h.request + "' with '" + *reply + "'");
      if (h.command.empty()) return answers;
      auto ran = RunHostCommand(h.command, static_cast<int>(h.command_timeout_seconds * 1000));
      if (!ran.ok()) return ran.status().WithContext("health_check.command");
      if (ran->exit_code == 0) return answers + "; " + CommandLine(h.command) + " exited 0";
      std::string out = ran->output;
      while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
      if (out.size() > 200) out = "..." + out.substr(out.size() - 200);
      last = answers + ", but " + CommandLine(h.command) +
             (ran->exit_code < 0 ? " timed out" : " exited " + std::to_string(ran->exit_code)) +
             (out.empty() ? "" : ": " + out);
    } else {
      last = reply.ok() ? "answered '" + *reply + "', expected '" + expect + "'"
                        : reply.status().message();
    }
    std::this_thread::sleep_for(SecondsToMs(h.interval_seconds));
  }
  return Status::TimedOut("the service at " + h.host + ":" + std::to_string(h.port) +
                          " did not answer as expected within " + FormatFixed(budget_seconds, 0) +
                          " s: " + last);
}

namespace {

v1::TakeoverRequest TakeoverRequestOf(const CutoverPlan& plan) {
  v1::TakeoverRequest req;
  req.set_root_volume(plan.root_volume);
  req.set_boot_mode(plan.takeover_boot);
  req.set_kernel_args(plan.takeover_kernel_args);
  for (const auto& n : plan.network) {
    auto* m = req.add_nics();
    m->set_mac(n.target_mac);
    m->set_address(n.address);
    m->set_gateway(n.gateway);
    m->set_source_mac(n.source_mac);
    m->set_source_name(n.source_name);
  }
  return req;
}

Result<v1::TakeoverReply> DryRunTakeoverReply(TargetAgent& agent, const CutoverPlan& plan,
                                              bool preload_kexec) {
  v1::TakeoverRequest req = TakeoverRequestOf(plan);
  req.set_dry_run(true);
  req.set_preload_kexec(preload_kexec);
  bool sent = false;
  return agent.Takeover(req, &sent);
}

}  // namespace

Result<std::string> DryRunTakeover(TargetAgent& agent, const CutoverPlan& plan) {
  // A kexec boot's kernel is loaded now, so the promotion does not load it in the outage.
  CDP_ASSIGN_OR_RETURN(auto reply, DryRunTakeoverReply(agent, plan, /*preload_kexec=*/true));
  if (!reply.ok()) {
    return Status::FailedPrecondition("the target's takeover dry run refuses: " + reply.error());
  }
  return "takeover dry run passed (" + std::to_string(reply.changes_size()) +
         " change(s) to the migrated OS planned" +
         (reply.boot_mode() == v1::BOOT_MODE_KEXEC
              ? "; kexec into " + reply.kernel_release() + ", its kernel loaded now"
              : "") +
         ")";
}

Result<std::string> RequestTakeover(TargetAgent& agent, const CutoverPlan& plan, bool* sent) {
  bool went_out = false;
  if (sent == nullptr) sent = &went_out;
  const v1::TakeoverRequest req = TakeoverRequestOf(plan);
  auto taken = agent.Takeover(req, sent);
  if (!taken.ok() && *sent && taken.status().IsUnavailable()) {
    // The pe-agent exits right after replying and ZeroMQ may drop that last reply
    // (docs/pe-agent.md §5): the connection dropping is what a takeover looks like from here.
    // The health check decides.
    return "the pe-agent left without its reply (" + taken.status().message() +
           "); the health check decides";
  }
  CDP_ASSIGN_OR_RETURN(auto reply, std::move(taken));
  std::string steps;
  for (const auto& s : reply.steps()) {
    steps += (steps.empty() ? "" : ", ") + s.name() + " " + FormatFixed(s.seconds(), 2) + " s";
  }
  if (!reply.ok()) {
    return Status::FailedPrecondition("the pe-agent refused the takeover: " + reply.error() +
                                      " (" + steps + ")");
  }
  if (reply.boot_mode() == v1::BOOT_MODE_KEXEC) {
    return "kexec into the migrated OS's own kernel " + reply.kernel_release() + " on " +
           reply.root_device() + " (" + steps + ")";
  }
  return "switch_root into the migrated OS on " + reply.root_device() + " (" + steps + ")";
}

ServiceWait PlanHealthCheck(const CutoverPlan& plan) {
  return [plan](double budget_seconds, const std::atomic<bool>* cancel) {
    return WaitForService(plan, budget_seconds, cancel);
  };
}

std::unique_ptr<TargetAgent> PlanTargetAgent(const CutoverPlan& plan) {
  return MakeTargetAgent(plan.target, plan.Where("target.config") + ": " + plan.target_config);
}

Result<v1::TakeoverReply> PlanTakeover(const CutoverPlan& plan) {
  auto agent = PlanTargetAgent(plan);
  return DryRunTakeoverReply(*agent, plan, /*preload_kexec=*/false);
}

}  // namespace cdp::failover
