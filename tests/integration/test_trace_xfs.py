#!/usr/bin/env python3
"""Trace mode on a mounted xfs in a partition (loopNp1: its requests reach the tracepoint as the
whole disk's sectors): a minute of real workload, then the replica equals the partition byte for
byte and xfs_repair -n of the replica is clean."""
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
    t.log(f"trace stats: {st['trace']}")
    assert st["trace"]["lost_events"] == 0, st
    assert st["trace"]["freezes"] >= 1, st
    assert st["gaps"] == 0, st


tt.run(test, fs="xfs", partition=True)
