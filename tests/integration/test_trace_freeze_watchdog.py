#!/usr/bin/env python3
"""The application is never held frozen by the agent:
  1. an agent killed (kill -9) while it holds a freeze: its watchdog process thaws at once;
  2. an agent stuck in a freeze (test hook CDP_AGENT_TEST_FREEZE_HOLD_MS) past its limit: the
     watchdog thaws at twice the limit, the freeze is counted as abandoned and makes no point.
The test hook only makes the agent sleep while frozen; everything else is the real agent."""
import threading
import time

import cdptest as t
import tracetest as tt


def wait_frozen(s, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if s.is_frozen(wait=0.5):
            return
    raise AssertionError(f"the agent did not freeze {s.mnt} within {timeout}s")


def write_in_background(path, text):
    """Writes `path` on a thread of its own: the agent may already hold the filesystem frozen (its
    first freeze can start right after the initial sync), and then the write blocks until a thaw.
    Returns the thread; join it to see the application's write go through."""
    th = threading.Thread(target=lambda: open(path, "w").write(text), daemon=True)
    th.start()
    return th


def test(s):
    s.start_journal()
    s.start_replicator()

    t.log("1. agent holds its freeze for 10 min (limit 60 s); kill -9 it while frozen")
    s.start_agent(extra=["--freeze-limit-ms", "60000", "--checkpoint-interval", "0.2"],
                  env={"CDP_AGENT_TEST_FREEZE_HOLD_MS": "600000"})
    s.wait_for(lambda: s.volume_status() is not None, 60, "volume registered")
    writer = write_in_background(f"{s.mnt}/dirty", "x")  # something to checkpoint
    wait_frozen(s, 60)
    t0 = time.time()
    s.procs["agent"].kill9()
    s.wait_for(lambda: not s.is_frozen(wait=0.5), 10, "the watchdog to thaw after the kill")
    t.log(f"thawed {time.time() - t0:.1f}s after the kill")
    writer.join(10)
    assert not writer.is_alive(), "the application's write is still blocked after the thaw"

    t.log("2. agent stuck in its freeze (hold 8 s, limit 200 ms): the watchdog thaws at 400 ms")
    s.start_agent(extra=["--freeze-limit-ms", "200"],
                  env={"CDP_AGENT_TEST_FREEZE_HOLD_MS": "8000"}, wait=False)
    s.wait_for(lambda: s.agent_log().count("tracing ") >= 2, 30, "the second agent tracing")
    writer = write_in_background(f"{s.mnt}/dirty2", "y")
    s.wait_for(lambda: "held it frozen past its limit" in s.agent_log(), 90,
               "the watchdog to thaw a freeze the agent holds too long")
    t0 = time.time()
    assert not s.is_frozen(wait=2.0), "still frozen after the watchdog said it thawed"
    t.log(f"writable {time.time() - t0:.1f}s after the watchdog's thaw, agent still holding")
    assert "cut short" not in s.agent_log().split("held it frozen past its limit")[-1], \
        "the agent's hold ended before the write went through: the test proves nothing"
    s.wait_for(lambda: s.trace_stats().get("freezes_abandoned", 0) >= 1, 30,
               "the agent to count the freeze as abandoned")
    st = s.status()
    assert st["trace"]["freezes"] == 0, f"a freeze cut short by the watchdog made a point: {st}"
    assert "cut short" in s.agent_log(), "the agent did not report the watchdog's thaw"
    writer.join(10)
    assert not writer.is_alive(), "the application's write is still blocked after the thaw"


# The hold is a test hook: only the test build (-DCDP_TEST_HOOKS=ON, deploy/build.sh) reads it.
with open(t.binary("cdp-agent"), "rb") as f:
    if b"CDP_AGENT_TEST_FREEZE_HOLD_MS" not in f.read():
        raise SystemExit(f"FAIL: {t.binary('cdp-agent')} is built without test hooks; this test "
                         "needs the test build (-DCDP_TEST_HOOKS=ON, as deploy/build.sh makes)")
tt.run(test, fs="ext4", size_mib=256)
