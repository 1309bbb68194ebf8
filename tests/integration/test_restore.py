#!/usr/bin/env python3
"""`cdpctl restore --volume NAME --at TIME|LSN --output PATH [--force]` (docs/restore.md).

A recorded workload with known content at known points: at step k the client writes pattern k
(a fresh region, an overwrite of a shared region, a discard at step 3, write-zeroes at step 4)
and flushes, and the source file is copied as the expected image of that point. Restoring every
point, by LSN and by time, gives exactly that image, byte for byte (raw with `cmp`, qcow2 with
`qemu-img compare`), sparse. Then the agent is killed and restarted slowly, so a flush lands
inside the crash's history gap: restoring it is refused naming the nearest restorable points,
and the point that ends the gap restores to the source.

Bad input: an existing output (refused without --force, replaced with it), an unparsable time,
a time in the future, a time before the oldest point, an LSN never journaled, an unknown volume,
a missing output directory, and an output on a full filesystem: each a worded error, and nothing
left under the output's name or beside it.
"""
import datetime
import json
import os
import re
import subprocess
import tempfile
import time

import cdptest as t

STEPS = 5


def points(s):
    return json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)


def restore(s, at, output, *extra, check=True):
    return s.cdpctl("restore", "--volume", s.volume, "--at", str(at), "--output", output,
                    *extra, check=check)


def restored_lsn(r):
    m = re.search(r"^restored volume \S+ at LSN (\d+) ", r.stdout, re.M)
    assert m, r.stdout
    return int(m.group(1))


def cmp(a, b):
    r = subprocess.run(["cmp", a, b], capture_output=True, text=True)
    assert r.returncode == 0, f"{a} differs from {b}: {r.stdout}{r.stderr}"


def snapshot(s, name):
    path = os.path.join(s.dir, name)
    subprocess.run(["cp", "--sparse=always", s.source, path], check=True)
    return path


def leftovers(directory, stem):
    return [n for n in os.listdir(directory) if stem in n]


def record_workload(s):
    """Returns [(point, expected image path)], one per step."""
    recorded = []
    for k in range(1, STEPS + 1):
        cmds = [f"write -P {0x40 + k} {4 * k}M 256k",      # a fresh region per step
                f"write -P {0x60 + k} 1536k 72k",           # the same region, overwritten
                f"write -P {0x70 + k} {4 * k + 1}M 3k"]     # an unaligned tail
        if k == 3:
            cmds.append("discard 1536k 8k")
        if k == 4:
            cmds.append("write -z 4M 64k")
        s.qemu_io(*cmds, "flush")
        s.wait_synced()
        point = points(s)[-1]
        assert point["origin"] == "flush" and point["lsn"] == s.status()["durable_lsn"], point
        recorded.append((point, snapshot(s, f"expected-{k}.raw")))
    return recorded


def check_points(s, recorded):
    out = os.path.join(s.dir, "restored.raw")
    for k, (point, expected) in enumerate(recorded, 1):
        r = restore(s, point["lsn"], out, "--force")
        assert restored_lsn(r) == point["lsn"], (r.stdout, point)
        cmp(out, expected)
        allocated = os.stat(out).st_blocks * 512
        assert allocated < 24 << 20, f"restore is not sparse: {allocated} bytes allocated"
        # By time: the point's own time and a moment later both give this point.
        r = restore(s, point["time"], out, "--force")
        assert restored_lsn(r) == point["lsn"], (r.stdout, point)
        cmp(out, expected)
        t.log(f"point {k} (LSN {point['lsn']}) restored byte-exact, {allocated >> 10} KiB "
              "allocated")
    # An LSN between two points gives the earlier one.
    (p2, e2), (p3, _) = recorded[1], recorded[2]
    assert p3["lsn"] - p2["lsn"] > 1, (p2, p3)
    r = restore(s, p3["lsn"] - 1, out, "--force")
    assert restored_lsn(r) == p2["lsn"], r.stdout
    cmp(out, e2)
    # qcow2 by the extension.
    q = os.path.join(s.dir, "restored.qcow2")
    r = restore(s, recorded[3][0]["lsn"], q)
    assert ": qcow2, " in r.stdout, r.stdout
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", q], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 << 20, info
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", q, recorded[3][1]],
                   check=True, capture_output=True)
    assert leftovers(s.dir, ".restore-") == [], os.listdir(s.dir)


def check_bad_input(s, recorded):
    out = os.path.join(s.dir, "exists.raw")
    with open(out, "wb") as f:
        f.write(b"keep me")
    newest = recorded[-1][0]

    def refused(at, output, expect, code=1, volume=None):
        args = ["restore", "--volume", volume or s.volume, "--at", str(at), "--output", output]
        r = s.cdpctl(*args, check=False)
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        assert expect in r.stderr, (args, expect, r.stderr)
        return r.stderr

    refused(newest["lsn"], out, f"output {out} exists; pass --force to replace it "
                                "(nothing was written)")
    with open(out, "rb") as f:
        assert f.read() == b"keep me"
    fresh = os.path.join(s.dir, "fresh.raw")
    refused("yesterday", fresh, "'yesterday' is not an RFC 3339 time", code=2)
    refused("-5x", fresh, "--at -5x is not a relative time", code=2)
    refused(0, fresh, "--at 0: LSNs start at 1", code=2)
    future = (datetime.datetime.now(datetime.timezone.utc) +
              datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused(future, fresh, f"volume {s.volume}: {future[:-1]}.000000000Z is in the future")
    msg = refused("2000-01-01T00:00:00Z", fresh,
                  f"volume {s.volume}: no consistency point at or before "
                  "2000-01-01T00:00:00.000000000Z; the oldest kept is LSN")
    refused("-1d", fresh, "no consistency point at or before")
    durable = s.status()["durable_lsn"]
    refused(durable + 1000, fresh, f"volume {s.volume}: LSN {durable + 1000} was never "
                                   f"journaled (the newest is LSN {durable})")
    refused(newest["lsn"], fresh, "journal-server: no volume 'nope' (it has: " + s.volume + ")",
            volume="nope")
    refused(newest["lsn"], os.path.join(s.dir, "no-such-dir", "x.raw"),
            f"output directory {s.dir}/no-such-dir does not exist")
    assert not os.path.exists(fresh)

    # A full filesystem: the write fails, nothing is left under the name or beside it.
    small = tempfile.mkdtemp(prefix="cdp-restore-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        target = os.path.join(small, "full.raw")
        err = refused(newest["lsn"], target, "No space left on device")
        assert os.listdir(small) == [], os.listdir(small)
        t.log(f"full disk: {err.strip()}")
    finally:
        subprocess.run(["umount", small], check=False)
        os.rmdir(small)

    # --force replaces the existing file with the complete image.
    r = restore(s, newest["lsn"], out, "--force")
    assert restored_lsn(r) == newest["lsn"]
    cmp(out, recorded[-1][1])
    t.log(f"bad input refused; e.g. {msg.strip()}")


def check_gap(s, recorded):
    """A flush during the full resync after an agent crash is inside the crash's gap."""
    s.procs["agent"].kill9()
    # 16 MiB of data through a 4 MiB buffer at 2 MB/s: the resync takes ~8 s, so the flush below
    # lands inside it.
    s.agent_args = ["--bandwidth-limit", "2", "--buffer-mib", "4"]
    s.start_agent()
    s.wait_for(lambda: s.status()["resync_active"] or not s.status()["initial_sync_done"], 20,
               "the full resync after the crash")
    s.qemu_io("write -P 0x99 40M 64k", "flush")
    # The flush point reaches the journal behind the resync's records sent before it.
    newer = lambda: [p for p in points(s) if p["lsn"] > recorded[-1][0]["lsn"]]  # noqa: E731
    s.wait_for(lambda: newer(), 60, "the flush point made during the resync")
    inside = newer()[0]
    assert inside["origin"] == "flush", newer()
    s.wait_synced()
    s.qemu_io("write -P 0x9a 41M 64k", "flush")
    s.wait_synced()
    syncs = [p for p in points(s) if p["lsn"] > inside["lsn"] and p["origin"] == "sync"]
    r = restore(s, inside["lsn"], os.path.join(s.dir, "gap.raw"), check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    before = recorded[-1][0]
    assert (f"LSN {inside['lsn']} ({inside['time']}), is inside a history gap") in r.stderr, \
        r.stderr
    # The window ends at the full sync's point, or (when the small buffer also sent writes to
    # the dirty bitmap) at the resync's: either way a sync point is the nearest one after.
    m = re.search(r"nearest restorable points: LSN (\d+) \(\S+\) before, LSN (\d+) \((\S+)\) "
                  r"after", r.stderr)
    assert m and int(m.group(1)) == before["lsn"], (r.stderr, before)
    assert int(m.group(2)) in [p["lsn"] for p in syncs], (r.stderr, syncs)
    assert not os.path.exists(os.path.join(s.dir, "gap.raw"))
    # The newest point, after the gap, restores to the source as it is now.
    latest = points(s)[-1]
    out = os.path.join(s.dir, "latest.raw")
    assert restored_lsn(restore(s, latest["lsn"], out)) == latest["lsn"]
    cmp(out, s.source)
    t.log(f"gap: {r.stderr.strip()}")


def test(s):
    t.require_tools("qemu-io", "qemu-img", "cmp")
    with open(s.source, "r+b") as f:  # data for the initial sync: it ends at an LSN
        f.write(os.urandom(16 << 20))
    s.start_all()
    s.wait_synced()
    recorded = record_workload(s)
    t0 = time.time()
    check_points(s, recorded)
    t.log(f"restored {STEPS} points twice and one as qcow2 in {time.time() - t0:.1f}s")
    check_bad_input(s, recorded)
    check_gap(s, recorded)


t.run(test, size_mib=64)
