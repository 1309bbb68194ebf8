// Internal to cdp_failover: every wait of the target VM, the cutover and the drill that is not
// a plan budget (docs/cutover-plan.md "budgets" holds those an operator sets). Milliseconds
// unless the name says otherwise. The long ones are sized for TCG emulation on a busy host.
#pragma once

#include <chrono>
#include <cstdint>

namespace cdp::failover {

// QMP (the source VM's and the target VM's monitors).
inline constexpr int kQmpConnectMs = 5000;
inline constexpr int kQmpCommandMs = 10000;  // stop, quit, query-block, block jobs
// Probes that must not hold up a status or a stop: is a monitor there at all.
inline constexpr int kQmpProbeMs = 2000;
inline constexpr int kQmpLeftoverProbeMs = 1000;  // a socket a dead QEMU left: nobody answers
inline constexpr int kQmpStopConnectMs = 3000;
inline constexpr int kQmpQuitMs = 5000;

// A target snapshot: the pe-agent's apply hold (it lets go by itself after this), and a
// block-commit of a large delta back into its file under TCG.
inline constexpr uint32_t kHoldMs = 10000;
inline constexpr int kCommitTimeoutMs = 300000;

// The journal-server's control connection.
inline constexpr int kJournalConnectMs = 5000;
inline constexpr int kJournalCallMs = 5000;

// The pe-agent's control connection.
inline constexpr int kPeConnectMs = 3000;
inline constexpr int kPeCallMs = 5000;  // status, written regions, hold
// While a VM boots, its pe-agent is asked often: a short connect and status.
inline constexpr int kPeProbeConnectMs = 1000;
inline constexpr int kPeStatusProbeConnectMs = 1500;
inline constexpr int kPeProbeCallMs = 3000;
// One checksum request covers up to kChecksumRequestBytes; reading that under TCG takes long.
inline constexpr int kPeChecksumsMs = 600000;
inline constexpr uint64_t kChecksumRequestBytes = 256ull << 20;  // under the pe-agent's 1 GiB
// The takeover's steps (flush, mount, adaptation, kexec load) take seconds under TCG.
inline constexpr int kPeTakeoverMs = 120000;
// Prepare boot: update-initramfs in a chroot inside the PE, 70-155 s under TCG here.
inline constexpr int kPePrepareBootMs = 900000;

// Commands on this host: the plan's quiesce/resume/fence commands, qemu-img create/info,
// umount; `ip` is quick; copies out of a replica are large.
inline constexpr int kPlanCommandMs = 60000;
inline constexpr int kHostCommandMs = 60000;
inline constexpr int kQemuImgInfoMs = 30000;
inline constexpr int kIpCommandMs = 30000;
inline constexpr int kCopyCommandMs = 600000;
inline constexpr int kImageConvertMs = 3600000;

// How often a wait asks again: the journal (quiesce) and the pe-agent (drain) are cheap to ask
// over a held connection; a booting pe-agent is not.
inline constexpr std::chrono::milliseconds kPollInterval{50};
inline constexpr std::chrono::milliseconds kBootPollInterval{200};

// The health check: one connection attempt and its reply line.
inline constexpr int kServiceAskMs = 1000;

// A drill VM is stopped with QMP quit, then SIGKILL after this long; after a SIGKILL a VM's
// exit is awaited for this many kPollIntervals.
inline constexpr double kDrillVmStopSeconds = 15;
inline constexpr int kKillWaitPolls = 100;

// Seconds and fractions as the waits' deadlines take them.
inline std::chrono::milliseconds SecondsToMs(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

}  // namespace cdp::failover
