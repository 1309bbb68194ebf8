// Process-wide set-up shared by the daemons' main() functions.
#pragma once

#include <atomic>
#include <string>

#include "cdp/core/logging.h"

namespace cdp {

// Keeps large buffers (payload frames of up to tens of MiB) on the heap instead of a fresh
// mmap per allocation: without it every 1 MiB message costs 256 page faults to map and unmap,
// which dominated the replicator's CPU time in the benchmark. `trim_threshold` bounds how much
// freed memory stays mapped (the agent keeps it small: its RSS is a promise to the source host).
// Call once, early in main().
void TuneAllocatorForLargeBuffers(int mmap_threshold = 64 << 20, int trim_threshold = 256 << 20);

// The set-up of a daemon whose work loop runs until a stop flag (journal-server, replicator,
// pe-agent): logs as `program` at `level` (InitLogging), makes SIGTERM and SIGINT set the
// returned flag (the handler does nothing else), ignores SIGPIPE (a peer gone away is an error
// on the write, not a death) and calls TuneAllocatorForLargeBuffers with its defaults. Call once,
// from main(), once the flags are checked. The flag lives as long as the process.
const std::atomic<bool>* StartDaemon(const std::string& program, LogLevel level);

// For a daemon that waits for its stop signal on the main thread (cdp-agent): blocks SIGTERM and
// SIGINT in the calling thread and ignores SIGPIPE. Call from main() before any other thread
// starts, so that every thread inherits the mask and none is interrupted by them.
void BlockStopSignals();

// Waits until SIGTERM or SIGINT arrives and returns it. REQUIRES: BlockStopSignals() was called.
int WaitForStopSignal();

}  // namespace cdp
