#include "cdp/failover/target_snapshot.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cdp/core/host_command.h"
#include "cdp/core/qmp_client.h"
#include "cdp/failover/target_agent.h"
#include "cdp/failover/target_vm.h"
#include "failover_timeouts.h"
#include "step_timeline.h"

namespace cdp::failover {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The file each drive id of a running QEMU has on top ("inserted" -> "file").
Result<std::map<std::string, std::string>> ActiveFiles(QmpClient* qmp) {
  CDP_ASSIGN_OR_RETURN(nlohmann::json blocks, qmp->Execute("query-block", nullptr, kQmpCommandMs));
  return DriveFilesFromQueryBlock(blocks, qmp->ReplyContext("query-block"));
}

Result<std::unique_ptr<QmpClient>> Qmp(const TargetConfig& t) {
  auto qmp = QmpClient::Connect(t.qmp_socket, kQmpConnectMs);
  if (!qmp.ok()) {
    return qmp.status().WithContext(t.file + ": the target VM's qmp_socket " + t.qmp_socket);
  }
  return qmp;
}

}  // namespace

Result<std::map<std::string, std::string>> DriveFilesFromQueryBlock(const nlohmann::json& reply,
                                                                    std::string_view context) {
  CDP_ASSIGN_OR_RETURN(auto blocks, QmpObject::ArrayFromReturn(reply, context));
  std::map<std::string, std::string> out;
  for (const QmpObject& block : blocks) {
    CDP_ASSIGN_OR_RETURN(auto inserted, block.OptionalObject("inserted"));
    if (!inserted) continue;
    CDP_ASSIGN_OR_RETURN(std::string device, block.String("device"));
    CDP_ASSIGN_OR_RETURN(out[device], inserted->String("file"));
  }
  return out;
}

Result<bool> BlockJobListed(const nlohmann::json& reply, const std::string& device,
                            std::string_view context) {
  CDP_ASSIGN_OR_RETURN(auto jobs, QmpObject::ArrayFromReturn(reply, context));
  for (const QmpObject& job : jobs) {
    CDP_ASSIGN_OR_RETURN(std::string listed, job.String("device"));
    if (listed == device) return true;
  }
  return false;
}

Result<JobState> JobStateFromQueryJobs(const nlohmann::json& reply, const std::string& id,
                                       std::string_view context) {
  CDP_ASSIGN_OR_RETURN(auto jobs, QmpObject::ArrayFromReturn(reply, context));
  JobState state{"absent", ""};
  for (const QmpObject& job : jobs) {
    CDP_ASSIGN_OR_RETURN(std::string listed, job.String("id"));
    if (listed != id) continue;
    CDP_ASSIGN_OR_RETURN(state.status, job.String("status"));
    CDP_ASSIGN_OR_RETURN(state.error, job.StringOr("error", ""));
  }
  return state;
}

TargetSnapshot::TargetSnapshot(const TargetConfig& target, const std::string& tag)
    : target_(target) {
  auto add = [&](const std::string& id, const std::string& base, const std::string& label) {
    drives_.push_back(
        {id, label, base, target.state_dir + "/" + target.name + "." + tag + "." + label + ".qcow2"});
  };
  for (size_t i = 0; i < target.disks.size(); ++i) {
    add(TargetDriveId(i), target.disks[i].path, target.disks[i].volume);
  }
  add(kTargetMetaDriveId, target.metadata_disk, "meta");
}

bool TargetSnapshot::DeltasExist() const {
  for (const auto& d : drives_) {
    if (fs::exists(d.delta)) return true;
  }
  return false;
}

Result<std::string> TargetSnapshot::Freeze(std::map<std::string, uint64_t>* lsn) {
  CDP_ASSIGN_OR_RETURN(auto qmp, Qmp(target_));
  CDP_ASSIGN_OR_RETURN(auto active, ActiveFiles(qmp.get()));
  for (const auto& d : drives_) {
    auto it = active.find(d.id);
    if (it == active.end()) {
      return Status::FailedPrecondition("target " + target_.name + " has no drive " + d.id +
                                        " (for " + d.base + "); was it started by cdpctl "
                                        "target start with " + target_.file + "?");
    }
    if (it->second != d.base) {
      return Status::FailedPrecondition("target " + target_.name + "'s drive " + d.id +
                                        " runs on " + it->second + ", not on " + d.base + " as " +
                                        target_.file + " says");
    }
  }
  auto pe = MakeTargetAgent(target_, "");
  // From before the connection (made by the first call): the hold is measured long, never short.
  const auto held_at = Clock::now();
  CDP_ASSIGN_OR_RETURN(auto held, pe->Hold(true, kHoldMs));
  nlohmann::json actions = nlohmann::json::array();
  for (const auto& d : drives_) {
    actions.push_back({{"type", "blockdev-snapshot-sync"},
                       {"data",
                        {{"device", d.id},
                         {"snapshot-file", d.delta},
                         {"format", "qcow2"},
                         {"mode", "absolute-paths"}}}});
  }
  // Well inside the hold: a transaction that outlived it could split a batch.
  const int transaction_ms = static_cast<int>(kHoldMs) / 2;
  auto snap = qmp->Execute("transaction", {{"actions", actions}}, transaction_ms);
  auto released = pe->Hold(false, 0);
  const double held_seconds = std::chrono::duration<double>(Clock::now() - held_at).count();
  if (!snap.ok()) {
    // A refused transaction is rolled back by QEMU; one that timed out may have run after all.
    // Delete only the deltas no drive uses; if any is in use, thaw it.
    auto again = Qmp(target_);
    auto active = again.ok() ? ActiveFiles(again->get())
                             : Result<std::map<std::string, std::string>>(again.status());
    if (!active.ok()) {
      return snap.status().WithContext(
          "snapshot of the target's disks (QMP transaction blockdev-snapshot-sync); whether it "
          "ran is unknown (" + active.status().message() + "): run again to clean up");
    }
    bool in_use = false;
    for (const auto& d : drives_) {
      if ((*active)[d.id] == d.delta) {
        in_use = true;
      } else {
        std::error_code ec;
        fs::remove(d.delta, ec);
      }
    }
    if (in_use) {
      std::vector<std::string> done;
      Status thawed = Thaw(&done);
      return snap.status().WithContext(
          "snapshot of the target's disks: the QMP transaction answered late; its deltas were " +
          std::string(thawed.ok() ? "committed back" : "NOT committed back: " + thawed.message()));
    }
    return snap.status().WithContext("snapshot of the target's disks (QMP transaction "
                                     "blockdev-snapshot-sync); nothing changed on the target");
  }
  if (held_seconds * 1000 >= kHoldMs) {
    std::vector<std::string> done;
    Status thawed = Thaw(&done);
    return Status::TimedOut("the snapshot took " + FormatFixed(held_seconds, 1) +
                            " s, longer than the pe-agent's apply hold; it may split a batch and "
                            "was undone" +
                            (thawed.ok() ? "" : " — NOT committed back: " + thawed.message()));
  }
  std::string lsns;
  for (const auto& [volume, applied] : held.applied_lsn()) {
    (*lsn)[volume] = applied;
    lsns += (lsns.empty() ? "" : ", ") + volume + " " + std::to_string(applied);
  }
  std::string out =
      "target disks frozen at LSN " + lsns + " (apply held " + FormatFixed(held_seconds, 2) + " s";
  if (released.ok()) {
    out += ", " + std::to_string(released->queued_batches()) + " batch(es) waited";
  } else {
    out += "; the release failed (" + released.status().message() +
           "), the hold ends by itself after " + std::to_string(kHoldMs / 1000) + " s";
  }
  return out + "); the target applies into " + std::to_string(drives_.size()) + " delta(s)";
}

Status TargetSnapshot::Thaw(std::vector<std::string>* done) {
  std::vector<const FrozenDrive*> present;
  for (const auto& d : drives_) {
    if (fs::exists(d.delta)) present.push_back(&d);
  }
  if (present.empty()) return Status::Ok();
  TargetVm target(target_);
  // An unknown state is not "stopped": committing offline beside a running QEMU is refused.
  CDP_ASSIGN_OR_RETURN(auto status, target.GetStatus());
  if (status.state == TargetState::kStopped) {
    // The target VM is down: commit offline, the same result. Deltas are deleted as soon as
    // they are committed (drives first, the metadata disk last: a cursor is never ahead of the
    // data it describes), so a delta that is still here was never committed.
    for (const FrozenDrive* d : present) {
      const std::vector<std::string> argv = {"qemu-img", "commit", "-q", d->delta};
      CDP_ASSIGN_OR_RETURN(auto r, RunHostCommand(argv, kCommitTimeoutMs));
      if (r.exit_code != 0) return Status::IOError(CommandLine(argv) + " failed: " + r.output);
      std::error_code ec;
      fs::remove(d->delta, ec);
    }
    done->push_back(std::to_string(present.size()) +
                    " delta(s) committed into the stopped target's disks (qemu-img commit)");
    return Status::Ok();
  }
  CDP_ASSIGN_OR_RETURN(auto qmp, Qmp(target_));
  size_t committed = 0;
  // One drive at a time, in config order: the volume disks, then the metadata disk (drives_
  // ends with it), each delta deleted as soon as its drive is back on its own file.
  for (const FrozenDrive* d : present) {
    CDP_ASSIGN_OR_RETURN(auto active, ActiveFiles(qmp.get()));
    if (active[d->id] != d->delta) {
      // Not in use: the drive is already back on its file (a thaw that died after the pivot)
      // or the target was restarted from its files. Either way the delta is stale.
      std::error_code ec;
      fs::remove(d->delta, ec);
      continue;
    }
    const std::string job = "commit-" + d->id;
    CDP_ASSIGN_OR_RETURN(auto jobs, qmp->Execute("query-block-jobs", nullptr, kQmpCommandMs));
    CDP_ASSIGN_OR_RETURN(bool running,
                         BlockJobListed(jobs, job, qmp->ReplyContext("query-block-jobs")));
    if (!running) {  // else a thaw that died left it: take it over
      nlohmann::json args = {
          {"device", d->id}, {"job-id", job}, {"base", d->base}, {"auto-dismiss", false}};
      CDP_RETURN_IF_ERROR(qmp->Execute("block-commit", args, kQmpCommandMs)
                              .status()
                              .WithContext("committing " + d->delta + " into " + d->base));
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(kCommitTimeoutMs);
    bool completing = false;
    while (true) {
      CDP_ASSIGN_OR_RETURN(auto list, qmp->Execute("query-jobs", nullptr, kQmpCommandMs));
      CDP_ASSIGN_OR_RETURN(JobState listed,
                           JobStateFromQueryJobs(list, job, qmp->ReplyContext("query-jobs")));
      const std::string& state = listed.status;
      const std::string& error = listed.error;
      if (state == "ready" && !completing) {
        CDP_RETURN_IF_ERROR(qmp->Execute("job-complete", {{"id", job}}, kQmpCommandMs).status());
        completing = true;
      } else if (state == "concluded") {
        (void)qmp->Execute("job-dismiss", {{"id", job}}, kQmpCommandMs);
        if (!error.empty()) {
          return Status::IOError("the commit of " + d->delta + " into " + d->base +
                                 " failed: " + error + "; the target keeps running on the delta");
        }
        break;
      } else if (state == "absent") {
        break;  // dismissed by someone else: the pivot check below decides
      }
      if (Clock::now() > deadline) {
        return Status::TimedOut("committing " + d->delta + " took more than " +
                                std::to_string(kCommitTimeoutMs / 1000) +
                                " s; the target keeps running on it (thaw again later)");
      }
      std::this_thread::sleep_for(kPollInterval);
    }
    CDP_ASSIGN_OR_RETURN(auto now, ActiveFiles(qmp.get()));
    if (now[d->id] != d->base) {
      return Status::IOError("drive " + d->id + " runs on " + now[d->id] + " after committing " +
                             d->delta + ", not on " + d->base);
    }
    std::error_code ec;
    fs::remove(d->delta, ec);
    ++committed;
  }
  done->push_back(std::to_string(committed) +
                  " delta(s) committed into the target's disks (QMP block-commit) and removed");
  return Status::Ok();
}

Result<std::unique_ptr<TargetLock>> TargetLock::Acquire(const TargetConfig& target,
                                                         const std::string& what) {
  std::error_code ec;
  fs::create_directories(target.state_dir, ec);
  const std::string path = target.state_dir + "/" + target.name + ".lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "opening " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char holder[256] = {0};
    const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
    ::close(fd);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "another cdpctl";
    while (!who.empty() && who.back() == '\n') who.pop_back();
    return Status::FailedPrecondition("target " + target.name + " is busy: " + who +
                                      " holds " + path + "; wait for it to finish");
  }
  const std::string me = what + " (pid " + std::to_string(::getpid()) + ")\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) < 0) {
    // The lock holds without the note; only the message of a waiting process is poorer.
  }
  return std::unique_ptr<TargetLock>(new TargetLock(fd));
}

TargetLock::~TargetLock() { ::close(fd_); }

Result<std::string> PutTargetOnOwnFiles(const TargetConfig& target) {
  std::vector<std::string> done;
  for (const std::string tag : {"drill-delta", "boot-delta"}) {
    TargetSnapshot snapshot(target, tag);
    if (snapshot.DeltasExist()) CDP_RETURN_IF_ERROR(snapshot.Thaw(&done));
  }
  TargetVm vm(target);
  CDP_ASSIGN_OR_RETURN(auto status, vm.GetStatus());
  if (status.state != TargetState::kStopped) {
    CDP_ASSIGN_OR_RETURN(auto qmp, Qmp(target));
    CDP_ASSIGN_OR_RETURN(auto active, ActiveFiles(qmp.get()));
    const TargetSnapshot drives(target, "check");
    for (const auto& d : drives.drives()) {
      if (active.count(d.id) != 0 && active[d.id] != d.base) {
        return Status::FailedPrecondition("target " + target.name + "'s drive " + d.id +
                                          " runs on " + active[d.id] + ", not on " + d.base +
                                          " as " + target.file + " says; commit it back first");
      }
    }
  }
  std::string out;
  for (const auto& d : done) out += (out.empty() ? "" : "; ") + d;
  return out;
}

}  // namespace cdp::failover
