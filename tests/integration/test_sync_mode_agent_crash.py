#!/usr/bin/env python3
"""--ack sync: every write that qemu-io saw complete is in the journal after kill -9 of the
agent. The replicator then applies the journal and every completed write is in the replica."""
import re
import subprocess
import time

import cdptest as t

K = 64 * 1024


def test(s):
    t.require_tools("qemu-io", "cmp")
    s.start_all()
    # 400 writes of 64 KiB, each with its own pattern, at distinct offsets.
    cmds = []
    for i in range(400):
        cmds += ["-c", f"write -P {i % 250 + 1} {i * K} 64k"]
    # stdbuf: qemu-io prints each completion as it happens, not at exit.
    q = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-f", "raw", s.uri] + cmds,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    completed = []
    for line in q.stdout:
        m = re.match(r"wrote (\d+)/(\d+) bytes at offset (\d+)", line)
        if m:
            completed.append(int(m.group(3)))
        if len(completed) == 150:
            t.log("kill -9 cdp-agent after 150 writes completed")
            s.procs["agent"].kill9()
            break
    for line in q.stdout:  # writes still reported complete before the client saw the kill
        m = re.match(r"wrote (\d+)/(\d+) bytes at offset (\d+)", line)
        if m:
            completed.append(int(m.group(3)))
    q.wait(60)
    t.log(f"qemu-io saw {len(completed)} writes complete")
    assert len(completed) >= 150
    # Let the replicator apply everything the journal holds.
    s.wait_for(lambda: (lambda st: st["applied_lsn"] == st["durable_lsn"] > 0)(s.status()),
               120, "replica caught up with the journal")
    st = s.status()
    t.log(f"journal durable LSN {st['durable_lsn']}, applied {st['applied_lsn']}")
    assert st["durable_lsn"] >= len(completed), st
    with open(s.target, "rb") as f:
        for off in completed:
            f.seek(off)
            pat = (off // K) % 250 + 1
            data = f.read(K)
            assert data == bytes([pat]) * K, f"write at {off} (pattern {pat}) acked but lost"
    t.log(f"all {len(completed)} acknowledged writes are in the journal and the replica")


t.run(test, ack="sync", size_mib=64)
