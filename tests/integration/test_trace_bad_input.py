#!/usr/bin/env python3
"""Trace-mode bad input: a device that does not exist, one that is not a block device, a tracefs
path that is not tracefs, a --freeze path that is not a mount of the device, and conflicting
flags. Each gets one clear line and a non-zero exit, leaves nothing enabled in tracefs and
nothing frozen."""
import os
import subprocess

import cdptest as t
import tracetest as tt


def agent(s, *args):
    state = os.path.join(s.dir, "bad-state")
    cmd = [t.binary("cdp-agent"), "--server", s.server, "--volume", s.volume,
           "--state-dir", state] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


def expect(s, args, *needles, code=None):
    rc, out = agent(s, *args)
    t.log(f"{' '.join(args)} -> {rc}: {out.splitlines()[-1] if out else ''}")
    assert rc != 0, f"expected failure for {args}: {out}"
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}: {out}"
    last = out.splitlines()[-1]
    for n in needles:
        assert n in last, f"{n!r} missing from the error line: {last!r}"
    assert not tt.instance_exists(s.instance), f"{args} left a tracefs instance behind"
    assert not s.is_frozen(), f"{args} left {s.mnt} frozen"


def test(s):
    s.start_journal()
    regular = os.path.join(s.dir, "regular.img")
    open(regular, "wb").truncate(1 << 20)
    expect(s, ["--device", "/dev/does-not-exist", "--trace"], "/dev/does-not-exist",
           "does not exist")
    expect(s, ["--device", regular, "--trace"], regular, "not a block device")
    expect(s, ["--device", s.source, "--trace", "--freeze", "/proc"], "--freeze /proc",
           "not on " + s.source)
    expect(s, ["--device", s.source, "--trace", "--freeze", "/nonexistent-mnt"],
           "/nonexistent-mnt", "does not exist")
    notfs = os.path.join(s.dir, "not-tracefs")
    os.makedirs(notfs)
    expect(s, ["--device", s.source, "--trace", "--freeze", s.mnt, "--tracefs", notfs],
           notfs, "tracefs")
    expect(s, ["--device", s.source, "--trace", "--nbd", "unix:/tmp/x.sock"],
           "--nbd and --trace", code=1)
    expect(s, ["--device", s.source, "--freeze", s.mnt, "--nbd", "unix:/tmp/x.sock"],
           "need --trace", code=2)
    expect(s, ["--device", s.source, "--trace", "--checkpoint-interval", "0"],
           "--checkpoint-interval", code=2)
    # A second agent for a volume that a running agent traces is refused (the tracefs instance
    # is per volume), whatever its state dir; the running agent keeps tracing.
    s.start_agent()
    rc, out = agent(s, "--device", s.source, "--trace")
    t.log(f"second agent -> {rc}: {out.splitlines()[-1]}")
    assert rc != 0 and "already protected by a running cdp-agent" in out, out
    assert s.procs["agent"].alive(), "the running agent died"
    assert tt.instance_exists(s.instance), "the second agent removed the running agent's trace"

tt.run(test, fs="ext4", size_mib=128)
