#!/usr/bin/env python3
"""Agent overhead inside the real source (issue 17): what the cdp-agent costs the Debian server
it protects while PostgreSQL works. On a fresh `deploy/lab/lab up --source real` (QEMU TCG, the
source has one vCPU): pgbench (TPC-B, scale 2, 4 clients) from cdp-client for SECONDS with the
agent protecting both disks (trace mode, group freezes), then `systemctl stop cdp-agent@lab`
and pgbench again for SECONDS. Reports pgbench's TPS with and without the agent (goal: ratio
>= 0.9), the agent's CPU over the first run (the unit's cgroup CPUUsageNSec: the agent and its
thaw watchdog; goal <= 3 % of one core) and its memory (VmHWM of its processes, VmRSS at the
end; goal <= 64 MiB). A warm-up run comes first; the order (with, then without) favours the
run without the agent slightly, as PostgreSQL's tables grow. Writes the "agent-overhead"
section of bench/RESULTS.md (or --out FILE). Run through bench/agent-overhead.sh (root).
"""
import datetime
import os
import re
import shutil
import tempfile
import time

from benchlib import driver_arguments, log, write_section

import labtest  # noqa: E402 - tests/integration, on the path through benchlib

UNIT = "cdp-agent@lab"


def pgbench(seconds):
    """TPS of one pgbench run (TPC-B, 4 clients, 2 threads) from cdp-client."""
    out = labtest.pg_in_client("pgbench", "-c", "4", "-j", "2", "-T", str(seconds), "-n",
                               timeout=seconds + 300).stdout
    m = re.search(r"^tps = ([0-9.]+)", out, re.M)
    assert m, f"pgbench printed no tps: {out}"
    return float(m.group(1))


def unit_cpu_ns(lab_dir):
    return int(labtest.in_source(lab_dir, f"systemctl show -p CPUUsageNSec --value {UNIT}"))


def unit_memory_kib(lab_dir):
    """(sum of VmHWM, sum of VmRSS) in KiB over the unit's processes (agent, thaw watchdog)."""
    out = labtest.in_source(
        lab_dir, f"for p in $(cat /sys/fs/cgroup$(systemctl show -p ControlGroup --value {UNIT})"
        "/cgroup.procs); do grep -h '^Vm\\(HWM\\|RSS\\)' /proc/$p/status; done")
    hwm = sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmHWM"))
    rss = sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS"))
    assert hwm > 0, f"no process of {UNIT} found: {out!r}"
    return hwm, rss


def measure(seconds):
    lab_dir = tempfile.mkdtemp(prefix="cdp-lab-overhead-", dir="/var/tmp")
    os.environ["CDP_LAB_DIR"] = lab_dir
    try:
        labtest.lab("up", "--source", "real", timeout=2400)
        labtest.pg_in_client("pgbench", "-i", "-s", "2", "-q")
        log("warm-up")
        pgbench(20)
        cpu0, t0 = unit_cpu_ns(lab_dir), time.monotonic()
        with_agent = pgbench(seconds)
        cpu1, t1 = unit_cpu_ns(lab_dir), time.monotonic()
        hwm, rss = unit_memory_kib(lab_dir)
        cpu = (cpu1 - cpu0) / 1e9 / (t1 - t0) * 100
        log(f"with the agent: {with_agent:.1f} tps; agent CPU {cpu:.2f} % of one core, "
            f"VmHWM {hwm / 1024:.1f} MiB, VmRSS {rss / 1024:.1f} MiB")
        labtest.in_source(lab_dir, f"systemctl stop {UNIT}", timeout=120)
        without = pgbench(seconds)
        log(f"without the agent: {without:.1f} tps")
        return {"with": with_agent, "without": without, "cpu": cpu, "hwm": hwm, "rss": rss}
    finally:
        d = labtest.lab("down", check=False, timeout=300)
        if d.returncode != 0:
            log(f"lab down failed: {d.stdout}{d.stderr}")
        shutil.rmtree(lab_dir, ignore_errors=True)


def main():
    ap = driver_arguments(__doc__)
    ap.add_argument("--seconds", type=int, default=60, help="length of each pgbench run")
    a = ap.parse_args()
    r = measure(a.seconds)
    ratio = r["with"] / r["without"]
    lines = ["## Agent overhead inside the real source (lab, pgbench)", "",
             f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, git {a.git}; a fresh "
             "`deploy/lab/lab up --source real` (QEMU TCG, the source has one vCPU, 2 host cores "
             "shared with the target VM in the PE); pgbench (TPC-B, scale 2, 4 clients, "
             f"{a.seconds} s) from cdp-client with cdp-agent@lab protecting both disks (trace "
             "mode, group freezes), then after `systemctl stop cdp-agent@lab`. CPU: the unit's "
             "cgroup (agent and thaw watchdog) over the first run; memory: VmHWM and VmRSS of "
             "its processes.", "",
             "| | measured | goal |", "|---|---|---|",
             f"| pgbench TPS with the agent | {r['with']:.1f} | |",
             f"| pgbench TPS without the agent | {r['without']:.1f} | |",
             f"| ratio | {ratio:.2f} | >= 0.9 |",
             f"| agent CPU (% of one core) | {r['cpu']:.2f} | <= 3 |",
             f"| agent memory, peak (VmHWM, MiB) | {r['hwm'] / 1024:.1f} | <= 64 |",
             f"| agent memory at the end (VmRSS, MiB) | {r['rss'] / 1024:.1f} | |", "",
             "Reproduce: `bash bench/agent-overhead.sh` (root).", ""]
    print(write_section(a.out, "agent-overhead", "agent-overhead.sh", lines))


if __name__ == "__main__":
    main()
