#include "cdp/failover/source_control.h"

#include <utility>

#include "cdp/core/host_command.h"
#include "cdp/core/qmp_client.h"
#include "failover_timeouts.h"

namespace cdp::failover {

namespace {

// "CMD exited N: OUTPUT" unless the command ran and exited 0.
Status RunPlanCommand(const std::vector<std::string>& argv) {
  CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kPlanCommandMs));
  if (r.exit_code != 0) {
    return Status::FailedPrecondition(CommandLine(argv) + " exited " + std::to_string(r.exit_code) +
                                      ": " + r.output);
  }
  return Status::Ok();
}

class QmpSourceControl final : public SourceControl {
 public:
  QmpSourceControl(std::string socket, std::string where, bool fence_keeps_paused)
      : socket_(std::move(socket)),
        where_(std::move(where)),
        fence_keeps_paused_(fence_keeps_paused) {}

  Status CheckServing() override {
    CDP_ASSIGN_OR_RETURN(QmpClient * qmp, Monitor());
    CDP_ASSIGN_OR_RETURN(QmpRunState st, Checked(qmp->QueryStatus(kQmpCommandMs)));
    if (!st.running) {
      return Status::FailedPrecondition(
          "the source VM is not running (QMP status " + st.status + ")" +
          (st.status == "paused" ? "; a cutover stopped hard after its quiesce leaves it paused: "
                                   "resume it with QMP cont if it should serve"
                                 : ""));
    }
    return Status::Ok();
  }

  Result<std::string> Quiesce() override {
    CDP_RETURN_IF_ERROR(Execute("stop"));
    return std::string("source paused (QMP stop)");
  }

  Result<std::string> Resume() override {
    if (Status s = Execute("cont"); !s.ok()) return Status(s.code(), "QMP cont: " + s.message());
    return std::string("the source VM runs again (QMP cont)");
  }

  Result<std::string> Fence() override {
    if (fence_keeps_paused_) return std::string("source stays paused");
    CDP_RETURN_IF_ERROR(Execute("quit"));
    return std::string("source powered off (QMP quit)");
  }

  FenceEffect DescribeFence() const override {
    if (fence_keeps_paused_) return {true, "paused", ""};
    return {false, "powered off", "powered off at the fence (QMP quit)"};
  }

 private:
  // The held connection, made (again) when there is none or the monitor closed it.
  Result<QmpClient*> Monitor() {
    if (qmp_ == nullptr || !qmp_->connected()) {
      qmp_.reset();
      auto qmp = QmpClient::Connect(socket_, kQmpConnectMs);
      if (!qmp.ok()) return qmp.status().WithContext(where_ + ": " + socket_);
      qmp_ = std::move(*qmp);
    }
    return qmp_.get();
  }

  Status Execute(const std::string& command) {
    CDP_ASSIGN_OR_RETURN(QmpClient * qmp, Monitor());
    return Checked(qmp->Execute(command, nullptr, kQmpCommandMs)).status();
  }

  // A command that timed out leaves a late reply on the connection: the next call starts anew.
  template <typename T>
  Result<T> Checked(Result<T> r) {
    if (!r.ok() && r.status().code() == StatusCode::kTimedOut) qmp_.reset();
    return r;
  }

  std::string socket_;
  std::string where_;
  bool fence_keeps_paused_;
  std::unique_ptr<QmpClient> qmp_;
};

class CommandSourceControl final : public SourceControl {
 public:
  CommandSourceControl(std::vector<std::string> quiesce, std::vector<std::string> resume,
                       std::vector<std::string> fence)
      : quiesce_(std::move(quiesce)), resume_(std::move(resume)), fence_(std::move(fence)) {}

  Status CheckServing() override { return Status::Ok(); }

  Result<std::string> Quiesce() override {
    if (quiesce_.empty()) return Status::FailedPrecondition("the plan gives no quiesce command");
    CDP_RETURN_IF_ERROR(RunPlanCommand(quiesce_));
    return std::string("source quiesced");
  }

  Result<std::string> Resume() override {
    if (resume_.empty()) return Status::FailedPrecondition("no resume_command in the plan");
    auto r = RunHostCommand(resume_, kPlanCommandMs);
    if (!r.ok() || r->exit_code != 0) return Status::FailedPrecondition(CommandLine(resume_));
    return CommandLine(resume_);
  }

  Result<std::string> Fence() override {
    if (fence_.empty()) return Status::FailedPrecondition("the plan gives no fence command");
    CDP_RETURN_IF_ERROR(RunPlanCommand(fence_));
    return "fenced by " + CommandLine(fence_);
  }

  FenceEffect DescribeFence() const override {
    const std::string by = "fenced by " + CommandLine(fence_);
    return {false, by, by + ", which has no undo"};
  }

 private:
  std::vector<std::string> quiesce_, resume_, fence_;
};

// A plan's mix: one implementation quiesces and resumes, one fences, one checks. (The plan
// loader requires the QMP socket for the qmp- methods; without one the command side refuses.)
class PlanSourceControl final : public SourceControl {
 public:
  PlanSourceControl(std::unique_ptr<SourceControl> qmp, std::unique_ptr<SourceControl> command,
                    std::unique_ptr<SourceControl> agent, const CutoverPlan& plan)
      : qmp_(std::move(qmp)),
        command_(std::move(command)),
        agent_(std::move(agent)),
        quiesce_method_(plan.quiesce.method),
        quiesce_by_(agent_                                       ? agent_.get()
                    : plan.quiesce.method == "qmp-pause" && qmp_ ? qmp_.get()
                                                                 : command_.get()),
        fence_by_(plan.fence.method == "agent" && agent_            ? agent_.get()
                  : plan.fence.method.rfind("qmp-", 0) == 0 && qmp_ ? qmp_.get()
                                                                    : command_.get()) {}

  Status CheckServing() override {
    // The agent answers whether it can freeze; a QMP socket, whether the VM runs.
    if (agent_ != nullptr) CDP_RETURN_IF_ERROR(agent_->CheckServing());
    return qmp_ != nullptr ? qmp_->CheckServing() : command_->CheckServing();
  }
  Result<std::string> Quiesce() override {
    if (quiesce_method_ != "qmp-pause" && quiesce_method_ != "command" &&
        quiesce_method_ != "agent") {
      return Status::NotSupported("quiesce method " + quiesce_method_ + " is not built");
    }
    return quiesce_by_->Quiesce();
  }
  Result<std::string> Resume() override { return quiesce_by_->Resume(); }
  Result<std::string> Fence() override { return fence_by_->Fence(); }
  FenceEffect DescribeFence() const override { return fence_by_->DescribeFence(); }
  std::vector<std::pair<std::string, uint64_t>> FinalLsns() const override {
    return quiesce_by_->FinalLsns();
  }
  Status CheckQuiesced() override { return quiesce_by_->CheckQuiesced(); }
  double ServingSecondsOfQuiesce() const override { return quiesce_by_->ServingSecondsOfQuiesce(); }

 private:
  std::unique_ptr<SourceControl> qmp_;      // null when the plan names no QMP socket
  std::unique_ptr<SourceControl> command_;  // always: the plan's commands (maybe none)
  std::unique_ptr<SourceControl> agent_;    // quiesce method agent only
  std::string quiesce_method_;
  SourceControl* quiesce_by_;
  SourceControl* fence_by_;
};

}  // namespace

std::unique_ptr<SourceControl> MakeQmpSourceControl(std::string qmp_socket, std::string where,
                                                    bool fence_keeps_paused) {
  return std::make_unique<QmpSourceControl>(std::move(qmp_socket), std::move(where),
                                            fence_keeps_paused);
}

std::unique_ptr<SourceControl> MakeCommandSourceControl(std::vector<std::string> quiesce,
                                                        std::vector<std::string> resume,
                                                        std::vector<std::string> fence) {
  return std::make_unique<CommandSourceControl>(std::move(quiesce), std::move(resume),
                                                std::move(fence));
}

std::unique_ptr<SourceControl> MakeSourceControl(const CutoverPlan& plan,
                                                 std::shared_ptr<SourceAgentChannel> channel) {
  std::unique_ptr<SourceControl> qmp;
  if (!plan.source_qmp_socket.empty()) {
    qmp = MakeQmpSourceControl(plan.source_qmp_socket, plan.Where("source.qmp_socket"),
                               plan.fence.method == "qmp-pause");
  }
  auto command = MakeCommandSourceControl(plan.quiesce.command, plan.quiesce.resume_command,
                                          plan.fence.command);
  std::unique_ptr<SourceControl> agent;
  if (plan.quiesce.method == "agent") {
    if (channel == nullptr) channel = MakeSourceAgentChannel(plan.journal);
    agent = MakeAgentSourceControl(plan, std::move(channel));
  }
  return std::make_unique<PlanSourceControl>(std::move(qmp), std::move(command), std::move(agent),
                                             plan);
}

}  // namespace cdp::failover
