// Process-wide set-up shared by the daemons' main() functions.
#pragma once

namespace cdp {

// Keeps large buffers (payload frames of up to tens of MiB) on the heap instead of a fresh
// mmap per allocation: without it every 1 MiB message costs 256 page faults to map and unmap,
// which dominated the replicator's CPU time in the benchmark. `trim_threshold` bounds how much
// freed memory stays mapped (the agent keeps it small: its RSS is a promise to the source host).
// Call once, early in main().
void TuneAllocatorForLargeBuffers(int mmap_threshold = 64 << 20, int trim_threshold = 256 << 20);

}  // namespace cdp
