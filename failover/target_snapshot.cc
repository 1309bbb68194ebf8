#include "cdp/failover/target_snapshot.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cdp/core/qmp_client.h"
#include "cdp/failover/host_command.h"
#include "cdp/failover/target_vm.h"
#include "cdp/pe/pe_client.h"
#include "step_timeline.h"

namespace cdp::failover {

namespace fs = std::filesystem;
namespace v1 = wire::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kHoldMs = 10000;  // the pe-agent lets go by itself after this
constexpr int kCommitTimeoutMs = 300000;

// The file each drive id of a running QEMU has on top ("inserted" -> "file").
Result<std::map<std::string, std::string>> ActiveFiles(QmpClient* qmp) {
  CDP_ASSIGN_OR_RETURN(nlohmann::json blocks, qmp->Execute("query-block", nullptr, 10000));
  std::map<std::string, std::string> out;
  for (const auto& b : blocks) {
    if (b.contains("inserted")) out[b.value("device", "")] = b["inserted"].value("file", "");
  }
  return out;
}

Result<std::unique_ptr<QmpClient>> Qmp(const TargetConfig& t) {
  auto qmp = QmpClient::Connect(t.qmp_socket, 5000);
  if (!qmp.ok()) {
    return qmp.status().WithContext(t.file + ": the target VM's qmp_socket " + t.qmp_socket);
  }
  return qmp;
}

}  // namespace

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
  CDP_ASSIGN_OR_RETURN(auto pe, pe::PeClient::Connect(target_.replication_endpoint,
                                                      v1::ROLE_CONTROL, "", 0, 3000));
  const auto held_at = Clock::now();
  CDP_ASSIGN_OR_RETURN(auto held, pe->Hold(true, kHoldMs, 5000));
  nlohmann::json actions = nlohmann::json::array();
  for (const auto& d : drives_) {
    actions.push_back({{"type", "blockdev-snapshot-sync"},
                       {"data",
                        {{"device", d.id},
                         {"snapshot-file", d.delta},
                         {"format", "qcow2"},
                         {"mode", "absolute-paths"}}}});
  }
  auto snap = qmp->Execute("transaction", {{"actions", actions}}, 30000);
  auto released = pe->Hold(false, 0, 5000);
  const double held_seconds = std::chrono::duration<double>(Clock::now() - held_at).count();
  if (!snap.ok()) {
    for (const auto& d : drives_) {
      std::error_code ec;
      fs::remove(d.delta, ec);  // QEMU rolled the transaction back: nothing uses them
    }
    return snap.status().WithContext("snapshot of the target's disks (QMP transaction "
                                     "blockdev-snapshot-sync); nothing changed on the target");
  }
  std::string lsns;
  for (const auto& [volume, applied] : held.applied_lsn()) {
    (*lsn)[volume] = applied;
    lsns += (lsns.empty() ? "" : ", ") + volume + " " + std::to_string(applied);
  }
  std::string out = "target disks frozen at LSN " + lsns + " (apply held " +
                    FixedSeconds(held_seconds, 2) + " s";
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
  auto status = target.GetStatus();
  const bool running = status.ok() && status->state != "stopped";
  if (!running) {
    // The target VM is down: commit offline, the same result.
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
  CDP_ASSIGN_OR_RETURN(auto active, ActiveFiles(qmp.get()));
  std::vector<const FrozenDrive*> jobs;
  for (const FrozenDrive* d : present) {
    if (active[d->id] != d->delta) continue;  // not in use (a restarted target): just delete
    nlohmann::json args = {{"device", d->id}, {"job-id", "commit-" + d->id}};
    CDP_RETURN_IF_ERROR(qmp->Execute("block-commit", args, 10000).status().WithContext(
        "committing " + d->delta + " into " + d->base));
    jobs.push_back(d);
  }
  const auto deadline = Clock::now() + std::chrono::milliseconds(kCommitTimeoutMs);
  std::set<std::string> completing;
  while (completing.size() < jobs.size()) {
    CDP_ASSIGN_OR_RETURN(auto list, qmp->Execute("query-block-jobs", nullptr, 10000));
    std::set<std::string> listed;
    for (const auto& j : list) {
      const std::string id = j.value("device", "");
      listed.insert(id);
      if (j.value("ready", false) && completing.count(id) == 0) {
        CDP_RETURN_IF_ERROR(qmp->Execute("block-job-complete", {{"device", id}}, 10000).status());
        completing.insert(id);
      }
    }
    for (const FrozenDrive* d : jobs) {
      const std::string id = "commit-" + d->id;
      if (listed.count(id) == 0 && completing.count(id) == 0) {
        return Status::IOError("the commit of " + d->delta + " into " + d->base +
                               " ended without becoming ready (see the target's QMP events); "
                               "the target keeps running on the delta");
      }
    }
    if (Clock::now() > deadline) {
      return Status::TimedOut("committing the deltas took more than " +
                              std::to_string(kCommitTimeoutMs / 1000) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Completed jobs pivot the drive back onto its base file.
  while (true) {
    CDP_ASSIGN_OR_RETURN(auto now, ActiveFiles(qmp.get()));
    bool all = true;
    for (const FrozenDrive* d : jobs) all = all && now[d->id] == d->base;
    if (all) break;
    if (Clock::now() > deadline) {
      return Status::TimedOut("the target's drives did not return to their own files");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (const FrozenDrive* d : present) {
    std::error_code ec;
    fs::remove(d->delta, ec);
  }
  done->push_back(std::to_string(jobs.size()) +
                  " delta(s) committed into the target's disks (QMP block-commit) and removed");
  return Status::Ok();
}

}  // namespace cdp::failover
