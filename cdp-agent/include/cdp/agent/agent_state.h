// AgentState: what the agent keeps in its state directory between runs (docs/agent-state.md).
//
//   STATE_DIR/agent-state.json  {"format": 1, "volume", "size_bytes", "clean_shutdown",
//                                "initial_sync_done", "sync_cursor", "skip_zero",
//                                "capture_mode", "resync_pending", "trace_lost_events",
//                                "boot_id", "writer_epoch"}
//   STATE_DIR/dirty.bitmap      DirtyBitmap::Save format, written on clean shutdown
//   STATE_DIR/block-hashes      trace mode: BlockHashStore (block_hashes.h)
//   STATE_DIR/lock              flock'ed by the running agent: one agent per state dir
//
// clean_shutdown is false while the agent runs; a start that finds it false knows the last run
// crashed (writes may have been acked locally but not journaled) and resyncs the whole device.
#pragma once

#include <cstdint>
#include <string>

#include "cdp/core/status.h"

namespace cdp::agent {

struct AgentState {
  std::string volume;
  uint64_t size_bytes = 0;
  bool clean_shutdown = false;
  bool initial_sync_done = false;
  uint64_t sync_cursor = 0;  // the full sync has captured [0, sync_cursor)
  bool skip_zero = false;    // the full sync may skip zero regions (the journal started empty)
  std::string capture_mode = "nbd";  // "nbd" or "trace"
  bool resync_pending = false;       // trace: a checksum resync runs from sync_cursor
  uint64_t trace_lost_events = 0;    // trace: the instance's lost-event counter at the stop
  std::string boot_id;               // the kernel boot the state was written in
  // The volume's writer epoch the journal-server granted this agent last (0: none yet); the
  // next start presents it (docs/wire-protocol.md, "One writer per volume").
  uint64_t writer_epoch = 0;
};

// The running kernel's boot id (/proc/sys/kernel/random/boot_id), or "" when unreadable.
std::string CurrentBootId();

// Loads STATE_DIR/agent-state.json. NotFound when there is none; Corruption naming the file
// when it does not parse.
Result<AgentState> LoadAgentState(const std::string& state_dir);
// Saves it atomically.
Status SaveAgentState(const std::string& state_dir, const AgentState& state);

}  // namespace cdp::agent
