#!/usr/bin/env python3
"""`cdpctl checkpoint --volume NAME [--label TEXT]` (docs/restore.md, section 7): the agent makes
an operator consistency point at once, relayed by the journal-server, and cdpctl prints its LSN
when it is durable. The point is listed with its label, restores to the source as it was, and a
second checkpoint with no write since returns the same LSN. An unknown volume and a volume whose
agent is stopped are refused with worded errors."""
import json
import os
import subprocess

import cdptest as t


def test(s):
    t.require_tools("qemu-io", "nbdcopy", "cmp")
    s.start_all()
    s.wait_synced()
    # nbdcopy without --flush sends no flush (qemu-io always flushes when it closes), so only
    # the checkpoint makes a point at these writes' LSN.
    s.nbdcopy(s.random_file(1))
    s.wait_for(lambda: s.status()["durable_lsn"] > s.status()["last_point_lsn"], 30,
               "the write to be journaled")
    r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "before deploy")
    lsn = int(r.stdout)
    assert lsn == s.status()["durable_lsn"], (r.stdout, s.status())
    assert f"checkpoint of volume {s.volume} at LSN {lsn} (" in r.stderr, r.stderr
    assert "operator, 'before deploy')" in r.stderr, r.stderr
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    assert {"lsn": lsn, "origin": "operator", "label": "before deploy"}.items() <= pts[-1].items(), \
        pts
    expected = os.path.join(s.dir, "expected.raw")
    subprocess.run(["cp", "--sparse=always", s.source, expected], check=True)
    s.qemu_io("write -P 0x6b 0 200k", "flush")  # the source moves on
    out = os.path.join(s.dir, "restored.raw")
    s.cdpctl("restore", "--volume", s.volume, "--at", str(lsn), "--output", out)
    c = subprocess.run(["cmp", out, expected], capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr
    again = int(s.cdpctl("checkpoint", "--volume", s.volume).stdout)
    flush_lsn = s.status()["durable_lsn"]
    assert again == flush_lsn, (again, flush_lsn)  # the flush point already sits there

    # Issue 15, item 12: a label given after a flush, where a point already sits, is kept: the
    # flush point stays what it is and carries it; a second label at the same LSN too.
    r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "after flush")
    assert int(r.stdout) == flush_lsn, r.stdout
    assert "flush, 'after flush')" in r.stderr, r.stderr
    r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "second look")
    assert "flush, 'after flush, second look')" in r.stderr, r.stderr
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    at = [p for p in pts if p["lsn"] == flush_lsn]
    assert len(at) == 1 and at[0]["origin"] == "flush" and \
        at[0]["operator_labels"] == ["after flush", "second look"], pts
    table = s.cdpctl("points", "--volume", s.volume).stdout
    assert "after flush, second look" in table, table
    out2 = os.path.join(s.dir, "restored-after-flush.raw")
    s.cdpctl("restore", "--volume", s.volume, "--at", str(flush_lsn), "--output", out2)
    c = subprocess.run(["cmp", out2, s.source], capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr

    r = s.cdpctl("checkpoint", "--volume", "nope", check=False)
    assert r.returncode == 1 and "no volume 'nope'" in r.stderr, r
    s.procs.pop("agent").term()  # a clean exit, not a failure of the scene
    s.wait_for(lambda: not s.status()["agent_connected"], 30, "the agent to be gone")
    r = s.cdpctl("checkpoint", "--volume", s.volume, check=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"cdpctl: checkpoint: journal-server: volume {s.volume}: no agent connected; a "
        "checkpoint is made by the volume's agent: start it, or restore a point that exists "
        "(cdpctl points)"), r.stderr
    t.log(f"checkpoint at LSN {lsn} listed, restored exactly; refusals worded")


t.run(test, size_mib=64)
