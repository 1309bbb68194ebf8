#!/usr/bin/env python3
"""Trace mode on a mounted ext4 (loop device): a minute of real workload (fio --verify, tar
extraction, renames, deletes, fsync-heavy small files) while the agent captures from the block
tracepoints and freezes every second; then the replica equals the device byte for byte, e2fsck -n
of the replica is clean, and the agent took consistency points without losing an event."""
import os

import cdptest as t
import tracetest as tt

SECONDS = int(os.environ.get("CDP_TRACE_WORKLOAD_SECONDS", "60"))


def test(s):
    s.start_all()
    s.start_workload(SECONDS)
    s.wait_workload()
    # Once the load stops, the agent's own freezes must cover every write with a point (how many
    # points it took during the load depends on the machine: busy cycles are skipped).
    s.wait_for(lambda: s.status()["last_point_lsn"] == s.status()["captured_lsn"], 120,
               "a consistency point covering the last write")
    s.assert_identical()
    s.fsck_target()
    st = s.status()
    tr = st["trace"]
    t.log(f"trace stats: {tr}")
    assert st["capture_mode"] == "trace", st
    assert tr["lost_events"] == 0, f"events lost without a forced overrun: {tr}"
    assert tr["freezes"] >= 1, f"no consistency point: {tr}"
    assert st["last_point_lsn"] > 0, st
    assert st["gaps"] == 0, f"no gap expected: {st}"


tt.run(test, fs="ext4")
