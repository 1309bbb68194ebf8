#!/usr/bin/env python3
"""Trace-mode benchmark: cdp-agent --trace --freeze protecting a mounted ext4 on a loop device
while fio writes 4 KiB random blocks into a 1 GiB file at a steady rate (10 and 50 MB/s).

Per rate, on a freshly (re)started agent: agent CPU (utime+stime over the load window, % of one
core), peak RSS (VmHWM), freeze duration p50/p99/max (the agent's trace stats in status:
FIFREEZE to FITHAW), freezes abandoned, replication lag p50/p99/max (`cdpctl status --json`
every 100 ms), and the drain time after the load. Baseline in the same run: blktrace (the
standard block tracer) on the same device at the same load, CPU only — it traces, while the
agent also reads back and ships. Ends with a byte comparison of the device and the replica.

Run through bench/trace.sh (root; it also cleans up on failure; it sets CDP_BIN_DIR to its
copies of the binaries). Standard library only.
Nothing is asserted; the targets are printed next to the figures.
"""
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from benchlib import (CLK_TCK, MiB, Children, cdptest, driver_arguments, fmt, log, nan,
                      proc_status_kib, volume_in_status, write_section)
from benchlib import proc_cpu_seconds as cpu_seconds


def pct(values, p):
    """The value at rank floor(p * n) of the sorted values (p in 0..1); nan when empty."""
    if not values:
        return nan
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def thread_cpu(pid):
    """CPU seconds per thread name (threads of the same name summed)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            name = head.split("(", 1)[1]
            fields = rest.split()
            out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError):
            pass
    return out


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.children = Children(a.pidfile)
        self.procs = {}
        self.loop = None
        self.mnt = os.path.join(self.work, "mnt")
        self.volume = "tracebench"
        self.port = 7000 + os.getpid() % 2000
        self.server = f"tcp://127.0.0.1:{self.port}"
        self.target = os.path.join(self.work, "replica.img")

    # --- set-up -------------------------------------------------------------------------------
    def sh(self, *args, **kw):
        return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)

    def spawn(self, name, args):
        self.procs[name] = self.children.spawn(args, os.path.join(self.work, f"{name}.log"))
        return self.procs[name]

    def stop(self, name, sig=signal.SIGTERM):
        # The process alone, not its session: the agent's thaw watchdog exits on its own.
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            p.wait(60)
        if p:
            self.children.forget(p)

    def cdpctl(self, *args):
        return subprocess.run([cdptest.binary("cdpctl"), "--server", self.server] + list(args),
                              capture_output=True, text=True, timeout=900)

    def status(self):
        r = self.cdpctl("status", "--json")
        return volume_in_status(r.stdout, self.volume) if r.returncode == 0 else None

    def wait_synced(self):
        t0 = time.time()
        r = self.cdpctl("wait-synced", "--volume", self.volume, "--timeout", "900")
        if r.returncode != 0:
            raise RuntimeError(f"wait-synced: {r.stdout}{r.stderr}")
        return time.time() - t0

    def setup(self):
        disk = os.path.join(self.work, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(self.a.disk_mib * MiB)
        # Direct I/O to the backing file, like a real disk: a flush does not have to write
        # back the host page cache first.
        self.loop = self.sh("losetup", "--find", "--show", "--direct-io=on", disk).stdout.strip()
        with open(self.a.state_file, "a") as f:
            f.write(f"loop {self.loop}\nmnt {self.mnt}\ninstance cdp-agent.{self.volume}\n")
        self.sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                self.loop)
        os.makedirs(self.mnt)
        self.sh("mount", self.loop, self.mnt)
        log(f"ext4 on {self.loop} ({self.a.disk_mib} MiB) at {self.mnt}")
        log("laying out the 1 GiB fio file")
        self.sh("fio", "--name=layout", f"--filename={self.mnt}/bench.dat",
                f"--size={self.a.file_mib}m", "--rw=write", "--bs=1m", "--end_fsync=1")
        self.spawn("journal-server", [cdptest.binary("journal-server"), "--data-dir",
                                      os.path.join(self.work, "journal"), "--listen",
                                      self.server])
        self.start_agent()
        self.spawn("replicator", [cdptest.binary("replicator"), "--server", self.server, "--volume",
                                  self.volume, "--target", self.target, "--state-dir",
                                  os.path.join(self.work, "replica-state")])
        t = self.wait_synced()
        log(f"initial sync done ({t:.1f} s)")

    def agent_log_path(self):
        return os.path.join(self.work, "cdp-agent.log")

    def start_agent(self):
        before = os.path.getsize(self.agent_log_path()) if os.path.exists(
            self.agent_log_path()) else 0
        self.spawn("cdp-agent", [cdptest.binary("cdp-agent"), "--server", self.server, "--volume",
                                 self.volume, "--device", self.loop, "--trace", "--freeze",
                                 self.mnt, "--state-dir", os.path.join(self.work, "agent")] +
                   os.environ.get("CDP_BENCH_AGENT_ARGS", "").split())
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(self.agent_log_path(), errors="replace") as f:
                f.seek(before)
                if "tracing " in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError("agent did not start")

    # --- phases ---------------------------------------------------------------------------
    def fio(self, rate_mb, seconds):
        return subprocess.Popen(
            ["fio", "--name=rand", f"--filename={self.mnt}/bench.dat",
             f"--size={self.a.file_mib}m", "--rw=randwrite", "--bs=4k", "--ioengine=psync",
             f"--rate={rate_mb}m", "--time_based", f"--runtime={seconds}",
             "--randrepeat=0", "--output-format=json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def phase(self, rate_mb):
        log(f"phase {rate_mb} MB/s: restarting the agent (SIGTERM + start: fresh figures)")
        self.stop("cdp-agent")
        self.start_agent()
        self.wait_synced()
        pid = self.procs["cdp-agent"].pid
        log_start = os.path.getsize(self.agent_log_path())
        lags, stop = [], threading.Event()

        def sampler():
            while not stop.is_set():
                st = self.status()
                if st:
                    lags.append(st["lag_seconds"])
                stop.wait(0.1)

        th = threading.Thread(target=sampler)
        cpu0, t0, th0 = cpu_seconds(pid), time.time(), thread_cpu(pid)
        th.start()
        perf = None
        if os.environ.get("CDP_BENCH_PERF"):  # profiling aid: perf record of the agent
            perf = subprocess.Popen(["perf", "record", "-g", "-o",
                                     f"{os.environ['CDP_BENCH_PERF']}/perf-{rate_mb}.data",
                                     "-p", str(pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        f = self.fio(rate_mb, self.a.seconds)
        out, _ = f.communicate()
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        t1 = time.time()
        cpu1, th1 = cpu_seconds(pid), thread_cpu(pid)
        threads = {k: round(100 * (v - th0.get(k, 0)) / (t1 - t0), 2) for k, v in th1.items()}
        stop.set()
        th.join()
        drain = self.wait_synced()
        hwm = proc_status_kib(pid, "VmHWM") or 0
        written = 0
        try:
            doc = json.loads(out[out.index("{"):])
            written = doc["jobs"][0]["write"]["io_bytes"]
        except (ValueError, KeyError, IndexError):
            pass
        with open(self.agent_log_path(), errors="replace") as fh:
            fh.seek(log_start)
            text = fh.read()
        abandoned = len(re.findall(r"freeze abandoned after", text))
        st = self.status() or {}
        tr = st.get("trace", {})
        r = {"rate": rate_mb, "seconds": t1 - t0, "written_mb": written / 1e6,
             "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mib": hwm / 1024,
             "freezes": tr.get("freezes", 0), "abandoned": tr.get("freezes_abandoned", 0),
             "freeze_p50": tr.get("freeze_p50_ms", nan), "freeze_p99": tr.get("freeze_p99_ms", nan),
             "freeze_max": tr.get("freeze_max_ms", nan),
             "ioctl_p50": tr.get("fifreeze_p50_ms", nan),
             "ioctl_p99": tr.get("fifreeze_p99_ms", nan),
             "lag_p50": pct(lags, 0.5), "lag_p99": pct(lags, 0.99),
             "lag_max": max(lags) if lags else float("nan"), "samples": len(lags),
             "drain": drain, "events": tr.get("events", 0),
             "readback_mb": tr.get("readback_bytes", 0) / 1e6,
             "lost": tr.get("lost_events", 0), "threads": threads}
        log(f"phase {rate_mb} MB/s: {r}")
        return r

    def blktrace_phase(self, rate_mb):
        log(f"baseline {rate_mb} MB/s: blktrace -d {self.loop} (writes+discards) to /dev/null")
        bt = subprocess.Popen(["blktrace", "-d", self.loop, "-a", "write", "-a", "discard",
                               "-o", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
        time.sleep(1)
        cpu0, t0 = cpu_seconds(bt.pid), time.time()
        f = self.fio(rate_mb, self.a.seconds)
        f.communicate()
        t1 = time.time()
        cpu1 = cpu_seconds(bt.pid)
        hwm = proc_status_kib(bt.pid, "VmHWM") or 0
        bt.send_signal(signal.SIGINT)
        bt.wait(30)
        r = {"rate": rate_mb, "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mib": hwm / 1024}
        log(f"baseline {rate_mb} MB/s: {r}")
        return r

    def verify(self):
        subprocess.run(["fsfreeze", "--freeze", self.mnt], check=True)
        try:
            self.wait_synced()
            snap = os.path.join(self.work, "snap.img")
            self.sh("dd", f"if={self.loop}", f"of={snap}", "bs=1M", "iflag=direct",
                    "status=none")
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", self.mnt])
        same = subprocess.run(["cmp", "-s", snap, self.target]).returncode == 0
        os.unlink(snap)
        return same

    def close(self):
        for name in list(self.procs):
            self.stop(name, signal.SIGKILL)


def write_report(a, phases, baselines, identical, started):
    ok = lambda good: "✅" if good else "❌ missed"  # noqa: E731
    lines = [
        "## Trace mode (`bash bench/trace.sh`)",
        "",
        f"Generated by `bench/trace.sh` (driver `bench/trace_bench.py`) on "
        f"{started:%Y-%m-%dT%H:%M:%SZ}, code {a.git}. cdp-agent `--trace --freeze` protects a "
        f"mounted ext4 on a {a.disk_mib} MiB loop device (sparse file under /tmp) while `fio "
        f"--rw=randwrite --bs=4k --ioengine=psync --rate=R` writes into a {a.file_mib} MiB "
        f"file for {a.seconds} s (buffered; the agent's 1 s freezes flush it). journal-server "
        f"and replicator run on the same 2-core machine. Each rate runs on a freshly restarted "
        f"agent (clean restart, no resync). CPU = agent utime+stime over the load window / "
        f"wall time; RSS = VmHWM; freeze = FIFREEZE→FITHAW over the phase's freezes (status `trace`); lag = `lag_seconds` of `cdpctl status --json` sampled every 100 ms. Baseline: "
        f"`blktrace -d LOOP -a write -a discard -o - >/dev/null` at the same load (it only "
        f"traces; the agent also reads back and ships). Nothing is asserted.",
        "",
        "| Figure | " + " | ".join(f"{p['rate']} MB/s" for p in phases) + " | Target |",
        "|---|" + "---|" * len(phases) + "---|",
    ]

    t10 = next((p for p in phases if p["rate"] == 10), None)

    def at_10(key, limit, text):
        return f"{text} at 10 MB/s {ok(t10[key] <= limit)}" if t10 else ""

    def every_rate(key, limit, text):
        return f"{text} " + " / ".join(ok(p[key] <= limit) for p in phases)

    # (figure, key in a phase, decimals, target)
    figures = [
        ("fio written (MB)", "written_mb", 0, ""),
        ("Agent CPU, % of one core", "cpu_pct", 1, at_10("cpu_pct", 3, "≤ 3 %")),
        ("Agent peak RSS (MiB)", "rss_mib", 1, at_10("rss_mib", 64, "≤ 64 MiB")),
        ("Freezes that made a point", "freezes", 0, ""), ("Freezes abandoned", "abandoned", 0, ""),
        ("Freeze p50 (ms)", "freeze_p50", 1, ""),
        ("Freeze p99 (ms)", "freeze_p99", 1, every_rate("freeze_p99", 50, "≤ 50 ms")),
        ("Freeze max (ms)", "freeze_max", 1, ""),
        ("FIFREEZE ioctl alone p50 (ms)", "ioctl_p50", 1, ""),
        ("FIFREEZE ioctl alone p99 (ms)", "ioctl_p99", 1, ""), ("Lag p50 (s)", "lag_p50", 3, ""),
        ("Lag p99 (s)", "lag_p99", 3, every_rate("lag_p99", 1, "≤ 1 s")),
        ("Lag max (s)", "lag_max", 3, ""), ("Drain after the load (s)", "drain", 2, ""),
        ("Block events received", "events", 0, ""), ("Read back (MB)", "readback_mb", 0, ""),
        ("Events lost", "lost", 0, ""),
    ]
    for name, key, d, target in figures:
        lines.append(f"| {name} | " + " | ".join(fmt(p[key], d) for p in phases) +
                     f" | {target} |")
    if baselines:
        lines.append("| blktrace CPU, % of one core (baseline) | " +
                     " | ".join(fmt(b["cpu_pct"], 1) for b in baselines) + " | |")
        lines.append("| blktrace peak RSS (MiB) | " +
                     " | ".join(fmt(b["rss_mib"], 1) for b in baselines) + " | |")
    lines += ["", "Agent CPU per thread (% of one core): " + "; ".join(
        f"{p['rate']} MB/s: " + ", ".join(f"{k} {v}" for k, v in sorted(
            p["threads"].items(), key=lambda kv: -kv[1])) for p in phases) + "."]
    lines += ["", f"Replica == device after the run (fsfreeze, wait-synced, dd iflag=direct, "
                  f"cmp): **{'yes' if identical else 'NO'}**.", ""]
    write_section(a.out, "trace", "trace.sh", lines)


def main():
    ap = driver_arguments(__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--state-file", required=True)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rates", default="10,50")
    ap.add_argument("--disk-mib", type=int, default=2048)
    ap.add_argument("--file-mib", type=int, default=1024)
    a = ap.parse_args()
    started = datetime.datetime.utcnow()
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        b.setup()
        rates = [int(r) for r in a.rates.split(",")]
        phases = [b.phase(r) for r in rates]
        identical = b.verify()
        log(f"replica == device: {identical}")
        b.stop("cdp-agent")  # blktrace baseline without the agent
        baselines = [b.blktrace_phase(r) for r in rates] if subprocess.run(
            ["which", "blktrace"], capture_output=True).returncode == 0 else []
        write_report(a, phases, baselines, identical, started)
    finally:
        b.close()


if __name__ == "__main__":
    main()
