#!/usr/bin/env python3
"""--ack sync, a full send buffer and a journal-server restart (issue 15, item 1).

With a 2 MiB buffer, several clients write 1 MiB at a time while the journal-server is away, so
the buffer fills and writes wait for room. When the server comes back the agent's sender thread
handshakes — which used to block on the capture lock that a waiting writer held, while only the
sender could free room: every write then hung until SIGTERM. Now every write completes once the
server is back, and the replica equals the source.
"""
import subprocess
import time

import cdptest as t


def test(s):
    t.require_tools("qemu-io", "cmp")
    s.start_all()
    s.qemu_io("write -P 0x11 0 1M", "flush")
    s.wait_synced()
    s.procs["journal"].term()
    writers = [subprocess.Popen(["qemu-io", "-f", "raw", s.uri, "-c",
                                 f"write -P 0x{0x20 + i:x} {2 + 2 * i}M 1M", "-c", "flush"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(4)]
    time.sleep(2)
    waiting = [w for w in writers if w.poll() is None]
    assert waiting, "every sync-mode write completed with no journal-server"
    t.log(f"{len(waiting)} of {len(writers)} writers wait for the journal-server")
    s.start_journal()
    for i, w in enumerate(writers):
        try:
            out = w.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"writer {i} still hangs 60 s after the journal-server came "
                                 "back (sync-mode writes deadlocked with the sender)")
        assert w.returncode == 0 and "wrote" in out and "error" not in out.lower(), out
    s.wait_synced()
    s.assert_identical()
    t.log("every write completed after the restart; replica identical")


t.run(test, ack="sync", size_mib=32, agent_args=["--buffer-mib", "2"])
