// TargetAgent: what a cutover or a drill asks the pe-agent of a target VM in the PE — its
// status, written-region marks, region checksums, apply holds, the takeover — over one control
// connection held for the whole run.
//
// The cutover calls it at precheck and drain (Status), pre-verify and verify (WrittenRegions,
// Checksums) and promote (Takeover); the drill at precheck and replication (the target's
// Status) and, on a second agent for the drill VM, at promote (Takeover, inside the drill's
// network namespace); a TargetSnapshot holds the apply through it (Hold). The engines read the
// pe-agent's state only through PeReady/PeStateText. Not thread-safe: one engine thread calls
// it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cdp/core/status.h"
#include "cdp/core/wire.h"
#include "cdp/failover/target_config.h"
#include "cdp/failover/target_vm.h"

namespace cdp::failover {

class TargetAgent {
 public:
  virtual ~TargetAgent() = default;

  // The pe-agent's status (state, error, per volume the applied LSN). Unavailable when it does
  // not answer.
  virtual Result<wire::v1::PeStatusReply> Status() = 0;

  // The regions of `volume` written since its mark (reset=false), or a new mark (reset=true,
  // `region_bytes` the granularity) — docs/pe-agent.md §7. FailedPrecondition when there is no
  // mark (a restarted pe-agent) or the pe-agent keeps none (an older PE).
  virtual Result<wire::v1::WrittenRegionsReply> WrittenRegions(const std::string& volume,
                                                               uint64_t region_bytes,
                                                               bool reset) = 0;

  // XXH3-64 of [offset, offset + length) of `volume` in `chunk`-byte regions (the last one
  // shorter), computed by the pe-agent; length 0 = to the end of the volume. *applied_lsn (when
  // given) is the volume's applied LSN when the last region was read. The errors of
  // TargetVm::Checksums.
  virtual Result<std::vector<RegionChecksum>> Checksums(const std::string& volume, uint64_t offset,
                                                        uint64_t length, uint64_t chunk,
                                                        uint64_t* applied_lsn) = 0;

  // Holds (hold=true, for at most max_ms) or releases the apply of batches (docs/pe-agent.md
  // §6). When the reply comes, a hold is in force and the disks are at a batch boundary whose
  // LSNs it carries; a release has applied the queued batches.
  virtual Result<wire::v1::ApplyHoldReply> Hold(bool hold, uint32_t max_ms) = 0;

  // Sends the takeover (docs/pe-agent.md §5) and returns the pe-agent's reply (a refusal is a
  // reply with ok=false). *sent tells whether the request went out at all (false when the
  // pe-agent could not be reached). Unavailable after sending: the connection dropped before a
  // reply — what a takeover that went through looks like, since the pe-agent leaves right after
  // answering and ZeroMQ may drop that answer.
  virtual Result<wire::v1::TakeoverReply> Takeover(const wire::v1::TakeoverRequest& request,
                                                   bool* sent) = 0;

  // Prepares the boot of `root_volume` (docs/pe-agent.md, "Prepare boot": the initramfs rebuilt
  // with the virtio drivers in the PE, the replica untouched, kept for the takeover) and returns
  // the pe-agent's reply (a failure is a reply with ok=false). Takes minutes under TCG.
  virtual Result<wire::v1::PrepareBootReply> PrepareBoot(const std::string& root_volume) = 0;
};

// What a prepare-boot reply says it did, in one line: its "initramfs" step's result (the last
// step's when it has none), then its "keep" step's (the image kept on the metadata disk).
std::string PrepareBootSummary(const wire::v1::PrepareBootReply& reply);

// The pe-agent of `target` (its replication_endpoint), through a PeClient with role control:
// connects at the first call (so a caller inside another network namespace connects there) and
// keeps the connection; after an error the next call connects again. Connection errors name
// `where` when given (the plan's key for the target config, e.g. "plan.yaml:20:
// 'target.config': FILE").
std::unique_ptr<TargetAgent> MakeTargetAgent(const TargetConfig& target, std::string where);

// Whether the pe-agent says it is ready to replicate and to take over ("pe-ready").
bool PeReady(const wire::v1::PeStatusReply& status);
// The pe-agent's state as the reports print it ("pe-ready", "pe-error", ...).
std::string PeStateText(const wire::v1::PeStatusReply& status);

}  // namespace cdp::failover
