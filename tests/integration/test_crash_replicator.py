#!/usr/bin/env python3
"""kill -9 of the replicator in the middle of a 256 MiB nbdcopy, then a restart: it resumes
from its durable cursor and the replica ends byte-identical."""
import time

import cdptest as t


def test(s):
    t.require_tools("nbdcopy", "cmp")
    s.start_all()
    rnd = s.random_file(256)
    copy = s.nbdcopy(rnd, background=True)
    s.wait_for(lambda: s.status()["applied_lsn"] > 10, 120, "replica applied some records")
    t.log(f"kill -9 replicator at applied LSN {s.status()['applied_lsn']}")
    s.procs["replicator"].kill9()
    time.sleep(1.0)
    s.start_replicator()
    assert copy.wait(600) == 0, copy.stdout.read()
    s.wait_synced()
    s.assert_identical()
    # And once more: a kill right after sync, restart, still identical and still synced.
    s.procs["replicator"].kill9()
    s.start_replicator()
    s.wait_synced()
    s.assert_identical()


t.run(test)
