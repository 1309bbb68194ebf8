#!/usr/bin/env python3
"""kill -9 of a trace-mode agent in the middle of a workload: its watchdog leaves the filesystem
thawed, the restart records a history gap and runs a checksum resync that re-reads the device but
sends far less than the device size, and the replica ends byte-identical with a clean fsck."""
import os
import time

import cdptest as t
import tracetest as tt

SECONDS = int(os.environ.get("CDP_TRACE_WORKLOAD_SECONDS", "60"))
SIZE_MIB = 2048


def test(s):
    s.start_all()
    s.wait_synced()  # the initial sync is done; the crash resync is compared against it
    s.start_workload(SECONDS)
    time.sleep(SECONDS / 3)
    t.log("kill -9 the agent mid-workload")
    s.procs["agent"].kill9()
    time.sleep(3)
    assert not s.is_frozen(), "the filesystem stayed frozen after the agent was killed"
    s.start_agent()
    st = s.finish_workload()
    tr = st["trace"]
    t.log(f"after the crash: {tr}, gaps {st['gaps']}")
    assert st["gaps"] >= 1, f"a crash restart must record a history gap: {st}"
    assert tr["resync_read_bytes"] >= SIZE_MIB << 20, f"the resync did not re-read the device: {tr}"
    assert tr["resync_sent_bytes"] < (SIZE_MIB << 20) // 8, \
        f"the crash resync sent {tr['resync_sent_bytes']} bytes of a {SIZE_MIB} MiB device"


tt.run(test, fs="ext4", size_mib=SIZE_MIB)
