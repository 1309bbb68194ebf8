#!/usr/bin/env python3
"""--ack sync with the journal-server gone: a client write blocks (it cannot be durable), and
SIGTERM of the agent still stops it cleanly within the drain time; the write fails rather than
being acknowledged, and after everything restarts the replica equals the source."""
import subprocess
import time

import cdptest as t


def test(s):
    t.require_tools("qemu-io", "cmp")
    s.start_all()
    s.qemu_io("write -P 0x11 0 1M", "flush")
    s.wait_synced()
    s.procs["journal"].kill9()
    q = subprocess.Popen(["qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x22 1M 64k"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    assert q.poll() is None, "a sync-mode write completed with no journal-server"
    t0 = time.time()
    rc = s.procs["agent"].term(timeout=30)
    took = time.time() - t0
    out = q.communicate(timeout=30)[0]
    t.log(f"agent stopped in {took:.1f}s with rc {rc}; qemu-io said: {out.strip()}")
    assert rc == 0, f"agent exit code {rc}"
    assert "wrote" not in out, f"the write must not be acknowledged: {out}"
    s.start_journal()
    s.start_agent()
    s.wait_synced()
    s.assert_identical()


t.run(test, ack="sync", size_mib=64, agent_args=["--drain-seconds", "2"])
