#!/usr/bin/env python3
"""The agent survives a journal-server outage in async mode: with a small buffer it never
stalls the client, falls back to its dirty bitmap, and after the server is back resyncs just
those regions; the replica ends byte-identical."""
import time

import cdptest as t


def test(s):
    t.require_tools("nbdcopy", "qemu-io", "cmp")
    s.start_all()
    s.qemu_io("write -P 0x5a 0 8M", "flush")
    s.wait_synced()
    t.log("stop the journal-server (SIGTERM), then write 64 MiB with no journal")
    s.procs["journal"].term()
    rnd = s.random_file(64)
    t0 = time.time()
    s.nbdcopy(rnd)  # must complete: async mode never stalls the source
    t.log(f"nbdcopy without journal took {time.time() - t0:.1f}s")
    s.qemu_io("write -P 0x77 100M 1M", "flush")
    s.start_journal()
    s.wait_synced()
    s.assert_identical()
    st = s.status()
    # The outage was covered by a resync of dirty regions, not a full resync of 256 MiB.
    assert st["bytes_received"] < 200 << 20, st
    with open(s.procs["agent"].logpath) as f:
        agent_log = f.read()
    assert "resync of dirty regions" in agent_log, "expected the dirty-bitmap resync"
    assert st["gaps"] >= 1, f"the outage must be recorded as a history gap: {st}"
    t.log(f"after outage: {st}")


t.run(test, size_mib=256, agent_args=["--buffer-mib", "4"])
