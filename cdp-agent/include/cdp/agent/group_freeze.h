// GroupFreeze: every filesystem of every volume one agent process protects, frozen at one instant
// (DESIGN.md §3, §7; issue 17 items 3 and 4). The seam between the agent's trace capture (which
// implements it: freeze all, read back each volume's residual writes, note each volume's LSN,
// thaw all) and what asks for a held freeze (the cutover's `quiesce: agent`, relayed by the
// journal-server), so that either side can be tested with a fake of the other.
//
// A held freeze ends in exactly one of three ways: Thaw() (a rollback, or the end of a drill),
// the hold limit passing (the thaw watchdog thaws even if this process is stuck or killed), or
// the process ending (its watchdog thaws). While held, the agent keeps shipping what it captured
// before the freeze; it captures nothing new, since the filesystems are frozen.
//
// The agent's implementation is GroupFreezeCycle (group_freeze_cycle.h), reached through
// AgentProcess::group_freeze(): its members are the process's trace-mode volumes with
// filesystems to freeze; each filesystem has its own thaw watchdog (FsFreezer), armed with the
// hold limit for a held freeze and moved by RenewHold (FsFreezer::ExtendHold).
//
// Thread-safety: implementations are thread-safe; at most one held freeze exists at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::agent {

// One protected volume at the instant of a group freeze.
struct FrozenVolume {
  std::string volume;  // the volume's name
  uint64_t lsn = 0;    // its last LSN: every write completed before the freeze is at or below it
};

class GroupFreeze {
 public:
  virtual ~GroupFreeze() = default;

  // Freezes every filesystem of every volume of this process together (pre-copy first, so the
  // freeze itself is short), captures each volume's residual writes, and returns each volume's
  // LSN at that instant. The freeze is recorded as one consistency point per volume, labelled
  // `label` and marked as one group point. The filesystems stay frozen until Thaw() or until
  // `hold_limit` has passed since the freeze (then the watchdog thaws them and no later call
  // can make the point consistent again: HeldFor() says so).
  // The LSNs returned are every member's last LSN at the freeze (a member unchanged since its
  // last point has that point's LSN, marked as its member of this group point).
  // Errors (nothing stays frozen after one): FailedPrecondition when a freeze is already held,
  // a filesystem is not mounted, a volume has a checksum resync pending or freezes nothing;
  // TimedOut when a freeze cycle in progress did not end within `freeze_budget`; Aborted when a
  // volume was not ready (its pre-copy could not get the dirty set small within 2 s) or the
  // freeze had to be abandoned (residual read over `freeze_budget`, lost trace events, send
  // buffer full) — retry; the freezer's error otherwise (e.g. FailedPrecondition "already
  // frozen (by someone else)"). Each names the volume or the mount point.
  virtual Result<std::vector<FrozenVolume>> FreezeAndHold(const std::string& label,
                                                          std::chrono::milliseconds freeze_budget,
                                                          std::chrono::milliseconds hold_limit) = 0;

  // Extends the held freeze's limit to `hold_limit` from now (a lease the cutover engine renews
  // while it drains and verifies). FailedPrecondition when no freeze is held (thawed already, by
  // Thaw or by the watchdog).
  virtual Status RenewHold(std::chrono::milliseconds hold_limit) = 0;

  // Thaws what FreezeAndHold froze. OK when nothing is frozen (thawed already). Returns the
  // thaw's error naming the mount point otherwise (the watchdog still thaws at the limit).
  virtual Status Thaw() = 0;

  // How long the current freeze has been held; zero when none is.
  virtual std::chrono::milliseconds HeldFor() const = 0;
};

}  // namespace cdp::agent
