#!/usr/bin/env python3
"""Trace mode on a mounted ext4 (loop device): a minute of real workload (fio --verify, tar
extraction, renames, deletes, fsync-heavy small files) while the agent captures from the block
tracepoints and freezes every second; then the replica equals the device byte for byte, e2fsck -n
of the replica is clean, and the agent took consistency points without losing an event.
`cdpctl checkpoint` then makes a freeze point at once, carrying its label."""
import json
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

    # A checkpoint right after a write: a freeze now, its point labelled. (When the agent's own
    # freeze took the write first, the answer is that unlabelled point: write and ask again.)
    for attempt in range(5):
        with open(os.path.join(s.mnt, f"checkpoint-{attempt}"), "wb") as f:
            f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
        r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "before deploy")
        lsn = int(r.stdout)
        pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
        point = next(p for p in pts if p["lsn"] == lsn)
        assert point["origin"] == "freeze", point
        if point["label"] == "before deploy":
            break
    assert point["label"] == "before deploy", pts[-5:]
    assert "operator" not in r.stderr and "freeze, 'before deploy')" in r.stderr, r.stderr
    t.log(f"trace checkpoint: {point}")


tt.run(test, fs="ext4")
