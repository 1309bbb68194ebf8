#!/usr/bin/env python3
"""--ack sync and a journal that loses records it had acknowledged (issue 15, item 5).

A sync-mode write waits while the journal-server is away; meanwhile the journal is wiped. When
the server comes back the agent rebases its LSN sequence on the empty journal and resyncs the
whole device. The waiting write's LSN is handed out again, to the resync's records: it used to
be acknowledged as soon as those became durable, before its own data was in the journal. It
fails now (the client sees an I/O error), and the replica still ends equal to the source.
"""
import os
import shutil
import subprocess
import time

import cdptest as t


def test(s):
    t.require_tools("qemu-io", "nbdcopy", "cmp")
    s.start_all()
    s.nbdcopy(s.random_file(8))
    s.wait_synced()
    s.procs["journal"].term()
    s.procs["replicator"].term()
    q = subprocess.Popen(["qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x55 40M 64k"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    assert q.poll() is None, "a sync-mode write completed with no journal-server"
    t.log("wipe the journal and the replica while the write waits")
    shutil.rmtree(os.path.join(s.dir, "journal"))
    shutil.rmtree(os.path.join(s.dir, "replica-state"))
    os.unlink(s.target)
    s.start_journal()
    out = q.communicate(timeout=120)[0]
    t.log(f"qemu-io said: {out.strip()}")
    assert "wrote" not in out and ("error" in out.lower() or "failed" in out.lower()), \
        f"the write was acknowledged although its LSN went to other records: {out}"
    s.start_replicator()
    s.wait_synced()
    s.assert_identical()
    with open(s.procs["agent"].logpath) as f:
        log = f.read()
    assert "journal reset or restored" in log, "agent did not detect the journal loss"


t.run(test, ack="sync", size_mib=64)
