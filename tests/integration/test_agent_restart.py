#!/usr/bin/env python3
"""Agent restarts: SIGTERM + restart resumes without any full resync; kill -9 + restart records
a history gap and resyncs the device. Both end byte-identical."""
import cdptest as t


def test(s):
    t.require_tools("nbdcopy", "qemu-io", "cmp")
    s.start_all()
    rnd = s.random_file(32)
    s.nbdcopy(rnd)
    s.wait_synced()
    before = s.status()["bytes_received"]

    t.log("SIGTERM the agent and restart it")
    assert s.procs["agent"].term() == 0
    s.start_agent()
    s.qemu_io("write -P 0x31 40M 2M", "flush")
    s.wait_synced()
    s.assert_identical()
    after = s.status()["bytes_received"]
    t.log(f"clean restart sent {(after - before) >> 10} KiB")
    assert after - before < 8 << 20, f"clean restart resent {after - before} bytes"
    with open(s.procs["agent"].logpath) as f:
        log = f.read()
    assert "clean restart" in log, "agent did not resume from its clean state"

    t.log("kill -9 the agent mid-write and restart it")
    q = s.nbdcopy(rnd, background=True)
    s.procs["agent"].kill9()
    q.wait(60)
    s.start_agent()
    s.qemu_io("write -P 0x32 50M 1M", "flush")
    s.wait_synced()
    s.assert_identical()
    st = s.status()
    assert st["gaps"] >= 1, f"a crash restart must record a history gap: {st}"


t.run(test, size_mib=128)
