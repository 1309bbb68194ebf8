#!/usr/bin/env python3
"""Retention (docs/retention.md): history older than the window is folded into the volume's
base image, crash-safe, and every point still kept restores byte for byte.

A recorded workload writes pattern k at step k (a fresh region, an overwrite of a shared one)
and flushes, and the source is copied as the expected image of that point. Every point restores
exactly before any folding. Then:
1. `cdpctl retention --window` folds the older points: the base LSN lands on a restorable point,
   every point from it on restores exactly (the base point itself included), older ones are
   refused as before the history kept, and `--window 0` stops further folding.
2. More steps with a slow fold (`--fold-mbps 2`): the journal-server is killed with SIGKILL in
   the middle of a fold and restarted; it finishes the fold, and every point kept restores
   exactly; the replica stays identical to the source.
3. A size cap below the journal's size folds early: status reports it (`early_folds`,
   `history_lost_before`), ingest goes on, and the points kept still restore exactly.
"""
import json
import os
import subprocess
import time

import cdptest as t


def points(s):
    return json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)


def retention(s, *args):
    return json.loads(s.cdpctl("retention", "--volume", s.volume, *args, "--json").stdout)


def restore_and_compare(s, point, expected):
    out = os.path.join(s.dir, "restored.raw")
    r = s.cdpctl("restore", "--volume", s.volume, "--at", str(point["lsn"]), "--output", out,
                 "--force")
    assert f"at LSN {point['lsn']} " in r.stdout, r.stdout
    c = subprocess.run(["cmp", out, expected], capture_output=True, text=True)
    assert c.returncode == 0, f"point LSN {point['lsn']}: {c.stdout}{c.stderr}"


def step(s, k, mib):
    s.qemu_io(f"write -P {k % 200 + 20} {(k % 14) * 4}M {mib}M",
              f"write -P {k % 200 + 30} 57M 96k", "flush")
    s.wait_synced()
    point = points(s)[-1]
    assert point["origin"] == "flush", point
    path = os.path.join(s.dir, f"expected-{k}.raw")
    subprocess.run(["cp", "--sparse=always", s.source, path], check=True)
    return point, path


def check_kept(s, recorded, what):
    base = s.status()["base_lsn"]
    kept = [(p, e) for p, e in recorded if p["lsn"] >= base]
    for p, e in kept:
        restore_and_compare(s, p, e)
    gone = [p for p, _ in recorded if p["lsn"] < base]
    for p in gone:
        r = s.cdpctl("restore", "--volume", s.volume, "--at", str(p["lsn"]), "--output",
                     os.path.join(s.dir, "gone.raw"), check=False)
        assert r.returncode == 1 and "no consistency point at or before" in r.stderr and \
            "the oldest kept is LSN" in r.stderr, r.stderr
    t.log(f"{what}: base LSN {base}: {len(kept)} points kept restore exactly, {len(gone)} "
          "folded ones refused")
    return kept


def journal_log(s):
    with open(os.path.join(s.dir, "journal-server.log"), errors="replace") as f:
        return f.read()


def test(s):
    t.require_tools("qemu-io", "cmp")
    with open(s.source, "r+b") as f:
        f.write(os.urandom(2 << 20))
    s.start_all()
    s.wait_synced()
    recorded = []
    for k in range(1, 7):
        recorded.append(step(s, k, 1))
        time.sleep(1.2)
    for p, e in recorded:
        restore_and_compare(s, p, e)
    t.log(f"{len(recorded)} points restore exactly before any folding")

    # 1. The window folds the older points.
    window = int(time.time() - t.parse_time(recorded[3][0]["time"])) + 1
    r = retention(s, "--window", f"{window}s")
    assert r["window_s"] == window and not r["window_default"], r
    s.wait_for(lambda: s.status()["base_lsn"] > 0, 30, "the first fold")
    retention(s, "--window", "0")
    base = s.status()["base_lsn"]
    assert base in [p["lsn"] for p, _ in recorded[:4]], (base, recorded)
    kept = check_kept(s, recorded, "window fold")
    assert len(kept) >= 2, kept
    text = s.cdpctl("retention", "--volume", s.volume).stdout
    assert f"(base image holds LSN {base})" in text and "window:        keep everything" in text, \
        text

    # 2. SIGKILL in the middle of a slow fold.
    for k in range(7, 12):
        recorded.append(step(s, k, 4))
        time.sleep(1.2)
    s.procs["journal"].term()
    s.journal_args = ["--fold-mbps", "2"]
    s.start_journal()
    s.wait_for(lambda: s.volume_status() is not None, 30, "the journal-server back")
    window = int(time.time() - t.parse_time(recorded[-2][0]["time"])) + 1
    retention(s, "--window", f"{window}s")
    s.wait_for(lambda: "folding LSN" in journal_log(s), 30, "a fold to start")
    time.sleep(2)
    assert "folded LSN" not in journal_log(s).split("folding LSN")[-1], \
        "the fold finished before the kill; slow it down"
    s.procs["journal"].kill9()
    t.log("journal-server killed in the middle of a fold")
    s.journal_args = []
    s.start_journal()
    s.wait_for(lambda: "an earlier run left" in journal_log(s), 30, "the unfinished fold resumed")
    s.wait_for(lambda: s.volume_status() is not None and s.status()["base_lsn"] > base, 60,
               "the resumed fold to finish")
    retention(s, "--window", "0")
    base = s.status()["base_lsn"]
    check_kept(s, recorded, "after SIGKILL during a fold")
    s.wait_synced()
    s.assert_identical()

    # 3. A size cap below the journal's size folds early, and says so.
    before = retention(s)
    cap = before["journal_bytes"] // 2
    retention(s, "--max-bytes", str(cap))
    s.wait_for(lambda: s.status()["early_folds"] >= 1, 60, "an early fold at the size cap")
    st = s.status()
    assert st["journal_bytes"] <= cap, st
    assert st["history_lost_before"].endswith("Z"), st
    assert "was folded before its window ended" in journal_log(s)
    text = s.cdpctl("retention", "--volume", s.volume).stdout
    assert "early folds:   1 (the size cap folded history inside the window" in text, text
    recorded.append(step(s, 12, 1))  # ingest goes on
    retention(s, "--max-bytes", "0")
    check_kept(s, recorded, "after an early fold at the size cap")
    s.wait_synced()
    s.assert_identical()


t.run(test, size_mib=64)
