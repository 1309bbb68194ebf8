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
    st = s.finish_workload(covered=True)
    t.log(f"trace stats: {st['trace']}")
    assert st["trace"]["lost_events"] == 0, st
    assert st["trace"]["freezes"] >= 1, st
    assert st["gaps"] == 0, st


tt.run(test, fs="xfs", partition=True)
