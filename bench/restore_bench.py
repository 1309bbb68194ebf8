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
import argparse
import datetime
import json
import os
import random
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import cdptest as t  # noqa: E402

MiB = 1 << 20
VOLUME_MIB = 1024
ROUNDS, WRITES, WRITE_KIB = 16, 100, 64


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(args):
    drop_caches()
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    return time.monotonic() - t0


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
    cdp_raw = timed([t.binary("cdpctl"), "--server", s.server, "restore", "--volume", s.volume,
                     "--at", str(mid["lsn"]), "--output", raw])
    qi_raw = timed(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.source,
                    os.path.join(s.dir, "copy.raw")])
    cdp_qcow = timed([t.binary("cdpctl"), "--server", s.server, "restore", "--volume", s.volume,
                      "--at", str(mid["lsn"]), "--output", qcow])
    qi_qcow = timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.source,
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
    section = "\n".join(lines)
    text = open(out).read() if os.path.exists(out) else "# Benchmark results\n"
    start = text.find("## Restore, folding and journal size")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(out, "w") as f:
        f.write(text)
    print(section)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--git", default="unknown")
    a = ap.parse_args()
    t.run(lambda s: bench(s, a.out, a.git), size_mib=VOLUME_MIB)


if __name__ == "__main__":
    main()
