#!/usr/bin/env python3
"""kill -9 of the journal-server in the middle of a 256 MiB nbdcopy, then a restart: nothing
acked is lost, the agent resends, and the replica ends byte-identical."""
import time

import cdptest as t


def test(s):
    t.require_tools("nbdcopy", "cmp")
    s.start_all()
    rnd = s.random_file(256)
    copy = s.nbdcopy(rnd, background=True)
    s.wait_for(lambda: s.status()["durable_lsn"] > 20, 120, "some records durable")
    t.log(f"kill -9 journal-server at {s.status()['durable_lsn']} durable")
    s.procs["journal"].kill9()
    time.sleep(1.0)
    s.start_journal()
    assert copy.wait(600) == 0, copy.stdout.read()
    s.wait_synced()
    s.assert_identical()


t.run(test)
