#!/usr/bin/env python3
"""A forced trace-buffer overrun (4 KiB per-CPU buffer under a busy workload): the agent sees the
kernel's overrun counter, records a history gap, runs a checksum resync, and the replica still
equals the device byte for byte, with a clean fsck."""
import os

import cdptest as t
import tracetest as tt

SECONDS = int(os.environ.get("CDP_TRACE_WORKLOAD_SECONDS", "60"))


def test(s):
    s.start_all()
    s.start_workload(SECONDS, fio_rate="8m")
    st = s.finish_workload()
    t.log(f"trace stats: {st['trace']}, gaps {st['gaps']}")
    assert st["trace"]["lost_events"] > 0, f"the tiny buffer did not overrun: {st['trace']}"
    assert st["gaps"] >= 1, f"an overrun must record a history gap: {st}"
    assert "trace buffer overrun" in s.agent_log()


tt.run(test, fs="ext4", agent_args=["--trace-buffer-kb", "4"])
