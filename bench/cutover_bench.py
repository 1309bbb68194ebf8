#!/usr/bin/env python3
"""Cutover benchmark (issue 5): N consecutive cutovers in the lab, each on a fresh lab
(`deploy/lab/lab up`), each under a client in cdp-client that sends `PUT n` every 20 ms
(tests/integration/lab_client.py). Per cutover: the client-measured outage (the largest gap
between two acknowledged PUTs), the engine's downtime estimate (quiesce -> health check), the
per-step times, and whether every acknowledged PUT is on the target afterwards.

Reports p50/p95/max of the client-measured outage and a typical timeline into the
"Cutover" section of bench/RESULTS.md. Required: p95 <= 30 s; goal: p95 <= 5 s.
Run through bench/cutover.sh (root).
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import cdptest, driver_arguments, log, write_section

import labtest  # noqa: E402 - tests/integration, on the path through benchlib
from labtest import LAB, lab

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover.yaml")
PLAN_REAL = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover-real.yaml")
CLIENT = labtest.CLIENT
# How long the client waits for an `OK n` before it reconnects: the outage is measured to about
# this much (a request sent into the outage waits this long before the client tries again).
CLIENT_TIMEOUT = 0.25


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]


def in_client(*command, timeout=300):
    return labtest.pg_in_client(*command, timeout=timeout).stdout


def one_cutover(i, real):
    lab_dir = tempfile.mkdtemp(prefix="cdp-lab-bench-", dir="/var/tmp")
    os.environ["CDP_LAB_DIR"] = lab_dir
    work = tempfile.mkdtemp(prefix="cdp-cutover-bench-")
    acked = os.path.join(work, "acked.txt")
    client = bench = None
    try:
        if real:
            lab("up", "--source", "real", timeout=2400)
            in_client("psql", "-tAc", "CREATE TABLE ledger (n bigint PRIMARY KEY, "
                      "at timestamptz NOT NULL DEFAULT now())")
            in_client("pgbench", "-i", "-s", "2", "-q")
            client = labtest.start_pg_ledger(acked)
            bench = subprocess.Popen(["ip", "netns", "exec", "cdp-client"] + labtest.PG_ENV +
                                     ["pgbench", "-c", "4", "-j", "2", "-T", "1200", "-n"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(20)
        else:
            lab("up")
            client = subprocess.Popen(["ip", "netns", "exec", "cdp-client", sys.executable,
                                       CLIENT, "192.0.2.10", "7000", acked, "0.02",
                                       str(CLIENT_TIMEOUT)])
            time.sleep(3)
        r = subprocess.run([LAB, "exec", "lab", "--", cdptest.binary("cdpctl"),
                            "cutover", "--plan", PLAN_REAL if real else PLAN, "--json"],
                           capture_output=True, text=True, timeout=900)
        try:
            report = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"ok": False, "downtime_seconds": float("nan"), "steps": [],
                      "error": f"cdpctl cutover exited {r.returncode} without a report: "
                               f"{r.stderr.strip()[-300:]}"}
        if real:
            # The ledger client reconnects to the target: its acknowledgements there end the
            # outage it measures.
            deadline = time.time() + 120
            done = len(labtest.read_acked(acked))
            while len(labtest.read_acked(acked)) < done + 25 and time.time() < deadline:
                time.sleep(1)
        else:
            time.sleep(3)
        client.terminate()
        client.wait(10)
        client = None
        rows = labtest.read_acked(acked)
        try:
            lost = len(labtest.missing_ledger_rows([n for n, _ in rows]) if real else
                       labtest.missing_on_service(n for n, _ in rows))
        except (AssertionError, subprocess.CalledProcessError):
            lost = -1
        res = {"ok": report["ok"], "outage": labtest.outage_seconds(rows),
               "downtime_estimate": report["downtime_seconds"], "acked": len(rows), "lost": lost,
               "steps": {s["name"]: s["end"] - s["start"] for s in report["steps"]},
               "error": report.get("error", "")}
        log(f"cutover {i}: ok={res['ok']} client outage {res['outage']:.2f} s, estimate "
            f"{res['downtime_estimate']:.2f} s, {res['acked']} PUTs acked, lost {lost}")
        return res
    finally:
        for p in (client, bench):
            if p is not None and p.poll() is None:
                p.kill()
        d = subprocess.run([LAB, "down"], capture_output=True, text=True, timeout=300)
        if d.returncode != 0:
            log(f"lab down failed: {d.stdout}{d.stderr}")
        shutil.rmtree(work, ignore_errors=True)


def report(a, runs):
    ok = [r for r in runs if r["ok"]]
    outages = [r["outage"] for r in ok]
    typical = sorted(ok, key=lambda r: r["outage"])[len(ok) // 2] if ok else None
    if a.source == "real":
        lines = ["## Cutover of the real source (lab, pgbench, client-measured)", "",
                 f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, git {a.git}; {len(runs)} "
                 "consecutive cutovers of the Debian source (`cutover-real.yaml`: quiesce, fence "
                 "and verification through its agent), each on a fresh `deploy/lab/lab up "
                 "--source real` (QEMU TCG, 2 host cores), under pgbench (TPC-B, 4 clients) and "
                 "a ledger client in cdp-client (one autocommitted INSERT every 20 ms, "
                 "tests/integration/pg_ledger_client.py); outage = the largest gap between two "
                 "acknowledged INSERTs; lost = acknowledged INSERTs missing on the target.", "",
                 "| | p50 | p95 | max | target |", "|---|---|---|---|---|"]
    else:
        lines = ["## Cutover (lab, client-measured)", "",
                 f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, git {a.git}; {len(runs)} "
                 "consecutive cutovers, each on a fresh `deploy/lab/lab up` (QEMU TCG, 2 host "
                 "cores); a client in cdp-client sends `PUT n` every 20 ms; outage = the largest "
                 "gap between two acknowledged PUTs (the client gives a request "
                 f"{CLIENT_TIMEOUT} s before it reconnects, so the outage is measured to about "
                 f"{CLIENT_TIMEOUT} s; runs before 2026-11-26 15:30 used 1 s).", "",
                 "| | p50 | p95 | max | target |", "|---|---|---|---|---|"]
    if outages:
        lines.append(f"| client-measured outage (s) | {pct(outages, .5):.2f} | "
                     f"{pct(outages, .95):.2f} | {max(outages):.2f} | p95 <= 30 required, <= "
                     f"{10 if a.source == 'real' else 5} goal |")
        est = [r["downtime_estimate"] for r in ok]
        lines.append(f"| engine's estimate, freeze -> health (s) | {pct(est, .5):.2f} | "
                     f"{pct(est, .95):.2f} | {max(est):.2f} | |")
    what = "INSERTs" if a.source == "real" else "PUTs"
    unchecked = sum(1 for r in runs if r["lost"] < 0)
    lines += ["", f"Succeeded: {len(ok)} of {len(runs)}; acknowledged {what} lost: "
                  f"{sum(max(r['lost'], 0) for r in runs)} "
                  f"(of {sum(r['acked'] for r in runs)} acknowledged)" +
                  (f"; {unchecked} run(s) could not be checked" if unchecked else "") + ".", ""]
    if typical:
        lines += ["A typical cutover (the median one), seconds per step (`pre-verify` runs before "
                  "the quiesce, while the source still serves: it is not part of the outage):",
                  "",
                  "| " + " | ".join(typical["steps"]) + " |",
                  "|" + "---|" * len(typical["steps"]),
                  "| " + " | ".join(f"{v:.2f}" for v in typical["steps"].values()) + " |", ""]
    failed = [r for r in runs if not r["ok"]]
    for r in failed:
        lines.append(f"- failed: {r['error']}")
    if a.source == "real":
        lines += ["Reproduce: `bash bench/cutover-real.sh` (root).", ""]
        print(write_section(a.out, "cutover-real", "cutover-real.sh", lines))
    else:
        lines += ["Reproduce: `bash bench/cutover.sh` (root).", ""]
        print(write_section(a.out, "cutover", "cutover.sh", lines))


def main():
    ap = driver_arguments(__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--source", choices=("busybox", "real"), default="busybox")
    a = ap.parse_args()
    runs = [one_cutover(i + 1, a.source == "real") for i in range(a.runs)]
    report(a, runs)


if __name__ == "__main__":
    main()
