#!/usr/bin/env python3
"""Point-in-time restore, folding and journal size benchmark (issue 6). Run through
bench/restore.sh.

A 1 GiB volume filled with random data (the initial sync journals all of it), then 10 % churn:
16 rounds of 100 random 64 KiB writes, a flush point after each. Then, with the page cache
dropped before each copy:
- `cdpctl restore` of the middle point to raw and to qcow2, next to `qemu-img convert` of the
  source image (the same 1 GiB) to raw and to qcow2 in the same run;
- folding: retention folds history up to the middle point into the base image (the whole initial
  sync included); the journal-server's log gives records, bytes and seconds;
- journal bytes per byte written: `du` of the RocksDB directory against the bytes the client and
  the initial sync wrote, before folding.
Every figure is reported, none is asserted. Units: MB = 10^6 bytes, MiB = 2^20 bytes.
"""
import datetime
import json
import os
import random
import re
import subprocess
import time

from benchlib import MiB, driver_arguments, seconds_cold, write_section
from benchlib import cdptest as t

VOLUME_MIB = 1024
ROUNDS, WRITES, WRITE_KIB = 16, 100, 64


def du(path):
    return int(subprocess.run(["du", "-sb", path], check=True, capture_output=True,
                              text=True).stdout.split()[0])


def bench(s, out, git):
    with open(s.source, "r+b") as f:
        for _ in range(VOLUME_MIB):
            f.write(os.urandom(MiB))
    s.start_all()
    t0 = time.monotonic()
    s.wait_synced(timeout=900)
    sync_s = time.monotonic() - t0
    rng = random.Random(6)
    for r in range(ROUNDS):
        cmds = [f"write -P {rng.randrange(1, 255)} {rng.randrange(VOLUME_MIB * MiB // (WRITE_KIB << 10)) * (WRITE_KIB << 10)} {WRITE_KIB}k"
                for _ in range(WRITES)]
        s.qemu_io(*cmds, "flush")
        time.sleep(2)
    s.wait_synced()
    churn = ROUNDS * WRITES * WRITE_KIB * 1024
    written = VOLUME_MIB * MiB + churn
    journal_dir = os.path.join(s.dir, "journal", "journal")
    journal_disk = du(journal_dir)
    journal_logical = s.status()["journal_bytes"]
    pts = [p for p in json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
           if p["origin"] == "flush"]
    mid = pts[len(pts) // 2]

    size = VOLUME_MIB * MiB
    raw = os.path.join(s.dir, "restored.raw")
    qcow = os.path.join(s.dir, "restored.qcow2")
    restore = [t.binary("cdpctl"), "--server", s.server, "restore", "--volume", s.volume, "--at",
               str(mid["lsn"]), "--output"]
    cdp_raw = seconds_cold(restore + [raw])
    qi_raw = seconds_cold(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.source,
                           os.path.join(s.dir, "copy.raw")])
    cdp_qcow = seconds_cold(restore + [qcow])
    qi_qcow = seconds_cold(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.source,
                            os.path.join(s.dir, "copy.qcow2")])
    for f in ("restored.raw", "copy.raw", "restored.qcow2", "copy.qcow2"):
        os.unlink(os.path.join(s.dir, f))

    window = int(time.time() - t.parse_time(mid["time"]))
    s.cdpctl("retention", "--volume", s.volume, "--window", f"{window}s")
    s.wait_for(lambda: "folded LSN" in open(os.path.join(s.dir, "journal-server.log")).read(),
               600, "the fold")
    s.cdpctl("retention", "--volume", s.volume, "--window", "0")
    log = open(os.path.join(s.dir, "journal-server.log")).read()
    m = re.search(r"folded LSN (\d+)\.\.(\d+) \((\d+) records, (\d+) payload bytes\) into the "
                  r"base image in ([0-9.e+-]+) s", log)
    fold_records, fold_bytes, fold_s = int(m.group(3)), int(m.group(4)), float(m.group(5))

    mbps = lambda b, sec: b / sec / 1e6  # noqa: E731
    rows = [
        ("`cdpctl restore` → raw (point at LSN %d)" % mid["lsn"], cdp_raw, mbps(size, cdp_raw)),
        ("`qemu-img convert -O raw` of the source image", qi_raw, mbps(size, qi_raw)),
        ("`cdpctl restore` → qcow2", cdp_qcow, mbps(size, cdp_qcow)),
        ("`qemu-img convert -O qcow2` of the source image", qi_qcow, mbps(size, qi_qcow)),
    ]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Restore, folding and journal size (`bash bench/restore.sh`)",
        "",
        f"Run {now} at {git} on this machine (2 cores, TCG-only host, ext4 on virtio disk); page "
        "cache dropped before each copy. Volume: 1 GiB of random data (initial sync "
        f"{sync_s:.1f} s), then {ROUNDS} rounds of {WRITES} random {WRITE_KIB} KiB writes + flush "
        f"(10 % churn, {churn / MiB:.0f} MiB). The restored point is the middle flush point.",
        "",
        "| copy of the 1 GiB volume | seconds | MB/s |",
        "|---|---|---|",
    ] + [f"| {name} | {sec:.2f} | {rate:.0f} |" for name, sec, rate in rows] + [
        "",
        "| folding and size | value |",
        "|---|---|",
        f"| fold of the history up to the middle point | {fold_records} records, "
        f"{fold_bytes / MiB:.0f} MiB of payload in {fold_s:.2f} s = "
        f"**{mbps(fold_bytes, fold_s):.0f} MB/s** |",
        f"| journal on disk (`du -sb DATA_DIR/journal`) per byte written | "
        f"{journal_disk / MiB:.0f} MiB / {written / MiB:.0f} MiB = "
        f"**{journal_disk / written:.3f}** |",
        f"| journal bytes (payload + 64 B per record, `cdpctl status`) per byte written | "
        f"{journal_logical / written:.4f} |",
        "",
        "Reproduce: `bash bench/restore.sh` (root: it drops the page cache).",
        "",
    ]
    print(write_section(out, "restore", "restore.sh", lines))


def main():
    ap = driver_arguments(__doc__)
    a = ap.parse_args()
    t.run(lambda s: bench(s, a.out, a.git), size_mib=VOLUME_MIB)


if __name__ == "__main__":
    main()
