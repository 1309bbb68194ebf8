#!/usr/bin/env python3
"""Trace mode on a mounted ext4 (loop device): a minute of real workload (fio --verify, tar
extraction, renames, deletes, fsync-heavy small files) while the agent captures from the block
tracepoints and freezes every second; then the replica equals the device byte for byte, e2fsck -n
of the replica is clean, and the agent took consistency points without losing an event.
`cdpctl checkpoint` then makes a freeze point at once, carrying its label."""
import json
import os

import cdptest as t
import tracetest as tt

SECONDS = int(os.environ.get("CDP_TRACE_WORKLOAD_SECONDS", "60"))


def test(s):
    s.start_all()
    s.start_workload(SECONDS)
    st = s.finish_workload(covered=True)
    tr = st["trace"]
    t.log(f"trace stats: {tr}")
    assert st["capture_mode"] == "trace", st
    assert tr["lost_events"] == 0, f"events lost without a forced overrun: {tr}"
    assert tr["freezes"] >= 1, f"no consistency point: {tr}"
    assert st["last_point_lsn"] > 0, st
    assert st["gaps"] == 0, f"no gap expected: {st}"

    # A checkpoint right after a write: a freeze now, its point labelled. When the agent's own
    # freeze took the write first, that point gets the label (issue 15, item 12: never dropped).
    with open(os.path.join(s.mnt, "checkpoint-0"), "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "before deploy")
    lsn = int(r.stdout)

    def labels(p):
        return [p["label"]] + p["operator_labels"]

    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    point = next(p for p in pts if p["lsn"] == lsn)
    assert point["origin"] == "freeze" and "before deploy" in labels(point), pts[-5:]
    assert "operator" not in r.stderr and "before deploy" in r.stderr, r.stderr
    # At once again: the same freeze point when nothing reached the disk since (the label is
    # added to it), or a new one (ext4 may have written its journal): labelled either way.
    r = s.cdpctl("checkpoint", "--volume", s.volume, "--label", "second look")
    again = int(r.stdout)
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    point = next(p for p in pts if p["lsn"] == again)
    assert "second look" in labels(point), point
    if again == lsn:
        assert "before deploy" in labels(point), point
    t.log(f"trace checkpoint: {point}")


tt.run(test, fs="ext4")
