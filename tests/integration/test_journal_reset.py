#!/usr/bin/env python3
"""The journal is wiped under a running agent (an operator error, or a restore of an older
journal): the agent notices that acknowledged records are gone, records a history gap and
resyncs the whole device instead of looping; a fresh replica converges to the source."""
import os
import shutil

import cdptest as t


def test(s):
    t.require_tools("qemu-io", "nbdcopy", "cmp")
    s.start_all()
    s.nbdcopy(s.random_file(16))
    s.wait_synced()
    t.log("wipe the journal and the replica")
    s.procs["journal"].term()
    s.procs["replicator"].term()
    shutil.rmtree(os.path.join(s.dir, "journal"))
    shutil.rmtree(os.path.join(s.dir, "replica-state"))
    os.unlink(s.target)
    s.start_journal()
    s.start_replicator()
    s.qemu_io("write -P 0x44 20M 1M", "flush")
    s.wait_synced()
    s.assert_identical()
    with open(s.procs["agent"].logpath) as f:
        assert "journal reset or restored" in f.read(), "agent did not detect the journal loss"
    st = s.status()
    assert st["gaps"] >= 1, st


t.run(test, size_mib=64)
