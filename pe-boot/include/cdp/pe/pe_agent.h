// PeAgent: the agent inside the semi-booted target VM. It finds the target's disks by serial,
// serves one ZeroMQ ROUTER socket on the replication network, applies ApplyBatches to the disks
// with O_DIRECT writes in LSN order, keeps each volume's applied LSN durable on the metadata
// disk, and answers status and region-checksum queries (docs/pe-agent.md).
//
// Durability order for every batch: records written -> disk flushed -> cursor saved on the
// metadata disk (write + flush) -> ApplyAck. So after any crash of the VM, the cursor on the
// metadata disk never claims data that is not on the volume's disk, and replaying from it is
// idempotent.
//
// When the disks do not match the volumes (a disk whose serial matches no volume, a disk
// smaller than its volume, no metadata disk), the agent still serves status — state
// PE_STATE_ERROR ("pe-error") with the reason — and refuses every replicator; nothing is written to
// any disk.
//
// Takeover (TakeoverRequest from a control client, docs/pe-agent.md §5): run by the Takeover
// (takeover.h, where its state graph is drawn): check -> flush (batches are refused from here
// on) -> mount -> [kexec-load] -> adapt -> handover, or a roll back to serving. After the ok
// reply the agent serves kHandoverGraceMs more (status only), closes the socket and returns
// from Run() with handed_over() true; the process then exits with kTakeoverExitStatus and the
// PE's /init switch_roots into the new root, or (boot kexec) Takeover::Finish reboots into the
// migrated OS's own kernel.
//
// Apply hold (ApplyHoldRequest from a control client, docs/pe-agent.md §6): batches that arrive
// while held are queued in order, not applied, so the disks stay at a batch boundary while the
// host snapshots them; a release (or the hold's max_ms running out, or a takeover) applies the
// queue in order and acks each batch then. Only a batch of a replicator session for its volume
// is queued (any other is refused at once, as when not held), and the queue is bounded
// (kMaxHeldBatches, kMaxHeldBatchesPerPeer, kMaxHeldBytes): a batch over a bound is refused with
// a non-permanent ResourceExhausted, which makes the replicator reconnect and send it again.
//
// Single-threaded: Run() serves everything on the calling thread.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "cdp/core/block_device.h"
#include "cdp/core/record_apply.h"
#include "cdp/core/transport.h"
#include "cdp/pe/disk_finder.h"
#include "cdp/pe/pe_metadata.h"
#include "cdp/pe/takeover.h"

namespace cdp::pe {

struct PeAgentOptions {
  std::string listen;  // tcp://IP:PORT on the replication network
  std::vector<VolumeSpec> volumes;
  std::string meta_serial = std::string(kDefaultMetaSerial);
  // Host-side runs (tests): explicit paths instead of discovery by serial.
  std::string meta_path;                          // overrides meta_serial
  std::map<std::string, std::string> disk_paths;  // volume -> path; overrides discovery
  std::string sys_root = "/sys";
  std::string dev_root = "/dev";
  IoEngine io_engine = IoEngine::kAuto;
  std::string console;  // also write the ready line and fatal errors here ("" = only the log)
  uint64_t max_checksum_bytes = 1ull << 30;  // per ChecksumRequest
  // Takeover: where the migrated OS's root filesystem is mounted (created when absent), and the
  // file that tells the PE's /init to switch_root into it (docs/pe-image.md §3). sys_root's
  // class/net lists the NICs a NIC mapping may name.
  std::string newroot = "/newroot";
  std::string takeover_file = "/run/cdp-takeover";
  // A takeover with boot kexec reboots this machine into the migrated OS's kernel: allowed only
  // for the PE's agent (pe-agent --allow-kexec, set by the PE's /init), never in tests.
  bool allow_kexec = false;
  // PrepareBoot (docs/pe-agent.md §5): where rebuilt initramfs images are kept, and the overlay's
  // scratch directory ("" = TakeoverConfig's defaults, /run/cdp-prepared and /run/cdp-prepare).
  std::string prepare_dir;
  std::string prepare_scratch;
};

class PeAgent {
 public:
  explicit PeAgent(PeAgentOptions options);
  ~PeAgent();

  // Binds the socket (an error here is fatal: nothing to serve on) and prepares the disks (an
  // error there puts the agent in PE_STATE_ERROR and is returned by error()).
  Status Start();

  // The exit status of a pe-agent process that handed the VM over to the migrated OS: the PE's
  // /init switch_roots when the agent exits with it and the takeover file exists.
  static constexpr int kTakeoverExitStatus = pe::kTakeoverExitStatus;
  // How long the agent keeps its socket open after the takeover reply, so ZeroMQ sends it.
  static constexpr int kHandoverGraceMs = 100;

  // Bounds of the queue of batches held by an apply hold. A replicator has one batch in
  // flight at a time (two for a moment after it reconnected), of at most 8 MiB by default
  // (one record of up to 32 MiB is sent alone); a batch is always queued when the queue is
  // empty, whatever its size.
  static constexpr size_t kMaxHeldBatches = 64;
  static constexpr size_t kMaxHeldBatchesPerPeer = 2;  // per connection
  static constexpr uint64_t kMaxHeldBytes = uint64_t{64} << 20;

  // Serves until *stop is true, or until a takeover handed over (then handed_over() is true).
  Status Run(const std::atomic<bool>* stop);

  // PE_STATE_READY or PE_STATE_ERROR (wire::PeStateName: "pe-ready", "pe-error").
  v1::PeState state() const { return state_; }
  const std::string& error() const { return error_; }

  // True once a takeover handed over: its reply was sent, the socket is closed, the new root
  // stays mounted at options.newroot and options.takeover_file is written. The process must
  // exit with kTakeoverExitStatus.
  bool handed_over() const { return handed_over_; }

 private:
  struct Volume {
    VolumeSpec spec;
    std::string device_path;
    std::unique_ptr<BlockDevice> device;
    bool direct = false;
    std::unique_ptr<RecordApplier> applier;
    uint64_t applied_lsn = 0;
    uint64_t boot_applied_lsn = 0;
    uint64_t applied_records = 0;
    uint64_t batches = 0;
    double verify_seconds = 0, write_seconds = 0, flush_seconds = 0, cursor_seconds = 0;
    // Written-regions mark (WrittenRegionsRequest): set when mark_region_bytes > 0.
    uint64_t mark_lsn = 0;
    uint64_t mark_region_bytes = 0;
    std::set<uint64_t> written_regions;
  };
  struct Session {
    v1::Role role = v1::ROLE_UNSPECIFIED;
    std::string volume;
    std::string identity;
  };

  Status PrepareDisks();
  Result<std::unique_ptr<BlockDevice>> OpenDisk(const std::string& path, bool* direct);
  void Handle(wire::Message& msg);
  void HandleHello(const wire::Message& msg);
  // OK when msg (an ApplyBatch) comes from a replicator session for the batch's volume, which
  // this target has; else the error to answer and whether it is permanent.
  Status CheckApplySession(const wire::Message& msg, bool* permanent) const;
  void HandleApply(const wire::Message& msg);
  // While held: queues msg if its session and the bounds allow, else refuses it.
  void HoldBatch(wire::Message& msg);
  void HandleStatus(const wire::Message& msg);
  void HandleChecksum(const wire::Message& msg);
  void HandleTakeover(const wire::Message& msg);
  void HandlePrepareBoot(const wire::Message& msg);
  // At start: the initramfs images an earlier boot of this PE (or of the target a drill VM
  // copies) prepared, from the metadata disk's kept area back into the prepare directory.
  void RestorePreparedImages();
  // After a prepare-boot: what the prepare directory holds now, saved in the kept area when it
  // changed. Returns what it did, for the reply's "keep" step ("" when nothing changed).
  std::string KeepPreparedImages();
  // For a takeover or a prepare-boot (`what`): true when msg comes from a control client and the
  // target is not handed over yet (else answers the error); ends an apply hold.
  bool MayWorkOnTheRoot(const wire::Message& msg, const std::string& what);
  std::vector<TakeoverDisk> TakeoverDisks();
  void HandleHold(const wire::Message& msg);
  void HandleWrittenRegions(const wire::Message& msg);
  // True when msg's session said Hello as a control client; else answers a permanent
  // FailedPrecondition naming `what` and returns false.
  bool FromControlClient(const wire::Message& msg, const std::string& what);
  // Ends a hold: applies the queued batches in order (each acked as usual). Returns how many.
  size_t ReleaseHold(const std::string& why);
  // Closes the socket (waiting up to 1 s for the reply to go out), sets handed_over_ and lets
  // the takeover finish (a kexec reboots here).
  void FinishHandover();
  Status ApplyBatch(const wire::Message& msg, Volume* volume);
  void SendError(const std::string& peer, const Status& status, bool permanent);
  void Announce(const std::string& line);
  std::string PeerName(const std::string& peer) const;

  PeAgentOptions options_;
  v1::PeState state_ = v1::PE_STATE_ERROR;
  std::string error_ = "not started";
  double ready_seconds_ = 0;
  std::string kernel_release_;
  std::string meta_device_;
  std::unique_ptr<PeMetadata> meta_;
  // CRC32C of what the metadata disk's kept area holds (of "" when nothing); unset when that is
  // unknown (a damaged area, a failed save), so the next keep writes it whatever it is.
  std::optional<uint32_t> kept_crc_;
  std::map<std::string, Volume> volumes_;
  std::map<std::string, Session> sessions_;  // by ZeroMQ routing id
  LinuxTakeoverSystem takeover_system_;
  std::unique_ptr<Takeover> takeover_;  // batches are refused while it says so
  // Set once the ok takeover reply was sent: Run() calls FinishHandover at this time.
  std::optional<std::chrono::steady_clock::time_point> handover_deadline_;
  bool handed_over_ = false;
  // Set while an apply hold is in force: when it ends by itself. Batches wait in held_batches_.
  std::optional<std::chrono::steady_clock::time_point> hold_until_;
  std::deque<wire::Message> held_batches_;
  uint64_t held_bytes_ = 0;                     // header and payload bytes of held_batches_
  std::map<std::string, size_t> held_by_peer_;  // batches in held_batches_ per routing id
  uint64_t held_refused_ = 0;                   // batches refused over the bounds in this hold
  zmq::context_t ctx_{1};
  std::unique_ptr<Socket> socket_;
};

}  // namespace cdp::pe
