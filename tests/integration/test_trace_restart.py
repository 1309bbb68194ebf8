#!/usr/bin/env python3
"""SIGTERM + restart of a trace-mode agent while the workload keeps writing: the stop leaves the
tracefs instance tracing, the restart resumes it (the writes made while no agent ran are in its
buffer) without any gap or resync, and the replica ends byte-identical with a clean fsck."""
import os
import time

import cdptest as t
import tracetest as tt

SECONDS = int(os.environ.get("CDP_TRACE_WORKLOAD_SECONDS", "60"))


def test(s):
    s.start_all()
    s.wait_synced()
    s.start_workload(SECONDS)
    time.sleep(SECONDS / 3)
    t.log("SIGTERM the agent mid-workload")
    assert s.procs["agent"].term() == 0
    assert tt.instance_exists(s.instance), "a clean stop must leave the trace instance enabled"
    assert not s.is_frozen(), "the filesystem stayed frozen after the agent stopped"
    time.sleep(3)  # the workload writes while no agent runs
    s.start_agent()
    st = s.finish_workload()
    tr = st["trace"]
    t.log(f"after the restart: {tr}, gaps {st['gaps']}")
    assert "resumed the trace of the last run" in s.agent_log()
    assert st["gaps"] == 0, f"a clean restart must not record a gap: {st}"
    assert tr["resync_read_bytes"] == 0, f"a clean restart must not resync: {tr}"


tt.run(test, fs="ext4")
