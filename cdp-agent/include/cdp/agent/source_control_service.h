// SourceControlService: the agent's side of the cutover's source control (issue 17 item 4;
// docs/wire-protocol.md, "Source control"; docs/cutover.md). The journal-server relays a
// SourceRequest from the failover engine; the Sender hands it here (Sender::SetSourceCallback)
// on a thread of its own and sends the SourceReply back.
//
//   status    the volumes this agent protects, their mount points, whether it can freeze and
//             whether a freeze is held
//   quiesce   the pre-freeze hooks in order (hook_runner.h), then GroupFreeze::FreezeAndHold of
//             every filesystem, held under a lease (hold_ms); the reply has each volume's final
//             LSN, every hook's output and time, and the freeze's time. Nothing stays frozen
//             after an error, which names the step: the hook (its exit status and output, or its
//             timeout), or the mount point that did not freeze
//   hold      renews the lease (GroupFreeze::RenewHold). Not renewed in time (the engine died,
//             the link was cut), the freeze's own watchdog thaws: the source serves again
//   release   thaws (the rollback)
//   fence     remove-addresses: the service addresses off every NIC, read back (address_fence.h);
//             the freeze stays held until its lease passes. poweroff: the reply is sent first;
//             kPowerOffDelay later the OS is powered off at once (systemctl poweroff --force
//             --force), with the filesystems still frozen: a frozen filesystem hangs an orderly
//             shutdown, and a thaw first would let the source commit writes after the final LSN
//             that the target never gets. The freeze has put every filesystem's data on disk.
//   hashes    XXH3-64 of regions of a volume's device (the pe-agent's checksum), read with
//             O_DIRECT past the page cache; at most kMaxHashRegions regions and kMaxHashBytes
//
// Thread-safety: Handle may run on several threads at once (a hold while hashes are read);
// quiesce, release and fence are serialized.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cdp.pb.h"
#include "cdp/agent/address_fence.h"
#include "cdp/agent/group_freeze.h"

namespace cdp::agent {

inline constexpr uint64_t kMaxHashBytes = 256ull << 20;
inline constexpr int kMaxHashRegions = 4096;
inline constexpr std::chrono::milliseconds kPowerOffDelay{1000};

// One volume this agent protects.
struct ControlledVolume {
  std::string volume;
  std::string device;                     // what `hashes` reads
  std::vector<std::string> mount_points;  // what a group freeze freezes for it
};

struct SourceControlDeps {
  std::vector<ControlledVolume> volumes;
  // The group freeze; null when this agent cannot hold one (then quiesce is refused, saying why).
  GroupFreeze* freeze = nullptr;
  std::string no_freeze_reason;       // why freeze is null, for that refusal
  AddressTable* addresses = nullptr;  // REQUIRED
  // Powers the OS off now. Production: PowerOffNow.
  std::function<Status()> power_off;
};

// `systemctl poweroff --force --force` (the kernel's power-off at once, no orderly shutdown),
// `poweroff -f` where there is no systemctl.
Status PowerOffNow();

class SourceControlService {
 public:
  // REQUIRES: deps.freeze (when set) and deps.addresses outlive the service.
  explicit SourceControlService(SourceControlDeps deps) : deps_(std::move(deps)) {}
  // Waits for a scheduled power-off (kPowerOffDelay) to run.
  ~SourceControlService();

  // Serves one request: the reply (request_id and volume copied), with error and error_code
  // set when it failed.
  v1::SourceReply Handle(const v1::SourceRequest& request);

 private:
  Status Quiesce(const v1::SourceQuiesce& q, v1::SourceReply* reply);
  Status Hold(const v1::SourceHold& h, v1::SourceReply* reply);
  Status Release(v1::SourceReply* reply);
  Status Fence(const v1::SourceFence& f, v1::SourceReply* reply);
  Status Hashes(const v1::SourceHashes& h, v1::SourceReply* reply);
  void Describe(v1::SourceReply* reply);
  const ControlledVolume* Find(const std::string& volume) const;
  std::string VolumeNames() const;

  const SourceControlDeps deps_;
  std::mutex step_mu_;  // serializes quiesce, release and fence
  std::thread power_off_;
};

}  // namespace cdp::agent
