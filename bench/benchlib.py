"""What the benchmark drivers in bench/ share: tracked child processes, CPU/RSS/IO readings from
/proc, a status sampler, percentiles and number formats, the appliance (journal-server +
cdp-agent + replicator) as a tests/integration/cdptest.Scene whose processes are tracked, the
baselines of standard tools (qemu-nbd + nbdcopy, qemu-img convert), and the writer of a driver's
section of bench/RESULTS.md. Standard library only.

Units: MB = 10^6 bytes, MiB = 2^20 bytes.
"""
import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import cdptest  # noqa: E402
from cdptest import log  # noqa: E402

MiB = 1 << 20
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
nan = float("nan")


# --- process bookkeeping --------------------------------------------------------------------------
class Children:
    """Children started in their own sessions. `pidfile` always lists those not yet reaped, so
    a shell trap can kill them even if this process hangs; close() kills whatever still runs.

    A SIGTERM/SIGINT handler that would kill the children must check `spawning` and, when set,
    store itself in `on_deferred_term`: it then runs right after the child is recorded, so no
    child escapes clean-up. (Masking the signals instead would be inherited by the child.)"""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.live = []
        self.spawning = False
        self.on_deferred_term = None

    @contextlib.contextmanager
    def recording(self):
        """Wraps the fork of a child that the body passes to track()."""
        self.spawning = True
        try:
            yield
        finally:
            self.spawning = False
        if self.on_deferred_term:
            self.on_deferred_term()

    def track(self, p):
        self.live.append(p)
        self._write_pidfile()

    def spawn(self, args, logpath=None, **kw):
        """Starts args in a new session, output to logpath (appended) or discarded."""
        out = open(logpath, "ab") if logpath else subprocess.DEVNULL
        try:
            with self.recording():
                p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if logpath else
                                     subprocess.DEVNULL, start_new_session=True, **kw)
                self.track(p)
        finally:
            if logpath:
                out.close()
        return p

    def _write_pidfile(self):
        # Only children not yet reaped: their pids cannot have been reused.
        tmp = self.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(f"{p.pid}\n" for p in self.live)
        os.replace(tmp, self.pidfile)

    def forget(self, p):
        """Stops listing a child that has been reaped."""
        if p in self.live:
            self.live.remove(p)
            self._write_pidfile()

    def stop(self, p, timeout=15):
        """SIGTERM to the child's session, then SIGKILL after timeout; returns the exit code."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ({p.args[0]}) ignored SIGTERM for {timeout}s; SIGKILL")
                with_suppress(os.killpg, p.pid, signal.SIGKILL)
                p.wait()
        # The session may hold children of its own.
        with_suppress(os.killpg, p.pid, signal.SIGKILL)
        self.forget(p)
        return p.returncode

    def run(self, args):
        """Runs a client (nbdcopy) to completion as a tracked child; raises on failure.
        Returns the CPU seconds (user + system) it used."""
        p = self.spawn(args)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.forget(p)
        if p.returncode != 0:
            raise RuntimeError(f"{sh_quote(args)} exited with {p.returncode}")
        return ru.ru_utime + ru.ru_stime

    def close(self):
        for p in list(self.live):
            with_suppress(os.killpg, p.pid, signal.SIGKILL)
            with_suppress(p.wait, 10)
        self.live.clear()
        with_suppress(self._write_pidfile)


def with_suppress(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - best-effort clean-up
        return None


def wait_for(pred, timeout, what, procs=()):
    """Polls pred() until true; raises when `timeout` s pass or one of `procs` (Popen) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while waiting for "
                                   f"{what}")
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


# --- /proc readers --------------------------------------------------------------------------------
def proc_cpu_seconds(pid):
    """utime + stime of a live process, in seconds (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def thread_cpu(pid):
    """{tid: (label, seconds on CPU, seconds runnable but waiting for a CPU)} for the threads
    alive now, from /proc/PID/task/TID/schedstat (falls back to utime+stime, wait 0). The main
    thread is labelled "main"; io_uring workers (iou-wrk-N) are merged under "iou-wrk"."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/stat") as f:
                raw = f.read()
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            try:
                with open(f"{base}/schedstat") as f:
                    run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
                on_cpu, waiting = run_ns / 1e9, wait_ns / 1e9
            except (OSError, ValueError):
                rest = raw.rsplit(")", 1)[1].split()
                on_cpu, waiting = (int(rest[11]) + int(rest[12])) / CLK_TCK, 0.0
        except (OSError, ValueError):
            continue
        label = "main" if tid == str(pid) else ("iou-wrk" if name.startswith("iou-wrk")
                                                  else name)
        out[tid] = (label, on_cpu, waiting)
    return out


def proc_status_kib(pid, key):
    """A kB field of /proc/PID/status (VmHWM, VmRSS), or None."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_io(pid):
    """write_bytes / read_bytes that reached the block layer (may be unavailable)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            d = dict(line.split(": ") for line in f.read().splitlines())
        return {k: int(v) for k, v in d.items()}
    except OSError:
        return None


def host_cpu():
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Meter:
    """CPU accounting over one phase: each named live process (from /proc), this python
    process, reaped children (nbdcopy, cdpctl, sync), and the whole host, so the CPU used by
    other people's work on the machine can be reported next to ours."""

    def __init__(self, procs):
        self.procs = dict(procs)  # name -> pid
        self.t0 = time.monotonic()
        self.cpu0 = {n: proc_cpu_seconds(p) for n, p in self.procs.items()}
        self.threads0 = {n: thread_cpu(p) for n, p in self.procs.items()}
        self.io0 = {n: proc_io(p) for n, p in self.procs.items()}
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        self.kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.host0 = host_cpu()
        self.load0 = loadavg()

    def stop(self):
        wall = time.monotonic() - self.t0
        cpu = {n: proc_cpu_seconds(p) - self.cpu0[n] for n, p in self.procs.items()}
        threads = {}
        for n, p in self.procs.items():
            agg = {}
            before = self.threads0[n]
            for tid, (label, on_cpu, waiting) in thread_cpu(p).items():
                _, c0, w0 = before.get(tid, (label, 0.0, 0.0))
                c, w = agg.get(label, (0.0, 0.0))
                agg[label] = (c + on_cpu - c0, w + waiting - w0)
            threads[n] = dict(sorted(agg.items(), key=lambda kv: -kv[1][0]))
        io = {}
        for n, p in self.procs.items():
            a, b = self.io0[n], proc_io(p)
            io[n] = (b["write_bytes"] - a["write_bytes"]) if a and b else None
        s1 = resource.getrusage(resource.RUSAGE_SELF)
        k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["bench.py"] = (s1.ru_utime + s1.ru_stime) - (self.self0.ru_utime + self.self0.ru_stime)
        cpu["reaped children"] = ((k1.ru_utime + k1.ru_stime) -
                                  (self.kids0.ru_utime + self.kids0.ru_stime))
        b1, t1 = host_cpu()
        ncpu = os.cpu_count() or 1
        host_busy = (b1 - self.host0[0]) / CLK_TCK  # CPU-seconds busy on the whole host
        ours = sum(cpu.values())
        return {
            "wall": wall,
            "cpu": cpu,
            "threads": threads,
            "io_write_bytes": io,
            "host_busy_cores": host_busy / wall if wall > 0 else 0,
            "others_cores": max(0.0, host_busy - ours) / wall if wall > 0 else 0,
            "ncpu": ncpu,
            "load_before": self.load0,
            "load_after": loadavg(),
        }


# --- the appliance --------------------------------------------------------------------------------
def volume_in_status(status_json, volume):
    """The volume's entry in the text of `cdpctl status --json`, or None."""
    for v in json.loads(status_json)["volumes"]:
        if v["name"] == volume:
            return v
    return None


class BenchScene(cdptest.Scene):
    """cdptest.Scene (journal-server + cdp-agent --ack async over NBD + replicator for one
    volume) in a new directory `name`-XXXXXX under `work`, whose daemons are tracked by
    `children` (a Children) so a signal or a shell trap can kill them. close() kills them and
    removes the directory."""

    def __init__(self, children, work, name, size_bytes, volume="bench0"):
        super().__init__(volume=volume, size_mib=size_bytes // MiB, parent_dir=work,
                         prefix=name + "-")
        self.children = children

    def spawn(self, key, args):
        with self.children.recording():
            proc = super().spawn(key, args)
            self.children.track(proc.p)
        return proc

    def pids(self):
        """{"journal-server": pid, "cdp-agent": pid, "replicator": pid} of the running daemons."""
        return {p.name: p.p.pid for p in self.procs.values()}

    def commands(self):
        """The daemons' command lines, shell-quoted, in the order they started."""
        return [sh_quote(p.args) for p in self.procs.values()]

    def check_alive(self):
        for p in self.procs.values():
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.p.returncode}; see {p.logpath}")

    def replica_identical(self):
        """(True, "") when the replica equals the source, else (False, what cmp said)."""
        r = subprocess.run(["cmp", self.source, self.target], capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def journal_bytes(self):
        """Bytes allocated on disk under the journal's data dir."""
        total = 0
        for root, _, files in os.walk(os.path.join(self.dir, "journal")):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def close(self, failed=False):
        super().close(failed)
        for p in self.procs.values():
            self.children.forget(p.p)


class Sampler(threading.Thread):
    """Starts `cdpctl status --json` every `period` seconds on a fixed schedule, without
    waiting for the previous one (cdpctl alone takes ~60-100 ms to start and answer here), at
    most `max_inflight` at a time. Keeps (monotonic time, volume dict), the time being the
    middle of the cdpctl run."""

    def __init__(self, scene, period=0.1, max_inflight=4, probe=None):
        super().__init__(daemon=True)
        self.scene, self.period, self.max_inflight = scene, period, max_inflight
        self.probe = probe  # optional callable(now) -> float|None, run on every tick
        self.probes = []    # (monotonic time, value)
        self.samples = []
        self.failures = 0
        self.skipped = 0
        self.launched = 0
        self.halt = threading.Event()
        self.inflight = []
        self.args = [cdptest.binary("cdpctl"), "--server", scene.server, "status", "--json"]

    def _collect(self, block=False):
        keep = []
        for p in self.inflight:
            if block:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.poll() is None:
                keep.append(p)
                continue
            # The server built the answer somewhere between launch and exit: take the middle.
            t = (p.launched_at + time.monotonic()) / 2
            out = p.stdout.read()
            p.stdout.close()
            v = None
            if p.returncode == 0:
                try:
                    v = volume_in_status(out, self.scene.volume)
                except ValueError:
                    pass
            if v is None:
                self.failures += 1
            else:
                self.samples.append((t, v))
        self.inflight = keep

    def run(self):
        nxt = time.monotonic()
        while not self.halt.is_set():
            self._collect()
            now = time.monotonic()
            if now >= nxt:
                if len(self.inflight) < self.max_inflight:
                    p = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)
                    p.launched_at = now
                    self.inflight.append(p)
                    self.launched += 1
                else:
                    self.skipped += 1
                if self.probe:
                    v = self.probe(now)
                    if v is not None:
                        self.probes.append((now, v))
                nxt += self.period
                if nxt < now:
                    nxt = now + self.period
            self.halt.wait(0.005)
        self._collect(block=True)

    def finish(self):
        self.halt.set()
        self.join(30)
        self.samples.sort(key=lambda s: s[0])
        return self.samples


def first_time(samples, pred):
    """The time of the first (time, value) sample whose value satisfies pred, or None."""
    for t, v in samples:
        if pred(v):
            return t
    return None


# --- numbers --------------------------------------------------------------------------------------
def pct(values, p):
    """The p-th percentile (0..100), linear between the closest ranks; nan when empty."""
    if not values:
        return nan
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(xs):
    return statistics.median(xs) if xs else nan


def fmt(v, d=1):
    """v with d decimals; "n/a" for None or nan."""
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:.{d}f}"


def fmt_bytes(b):
    return f"{b / MiB:.1f} MiB" if b >= MiB else f"{b / 1024:.0f} KiB"


def sh_quote(args):
    return " ".join(shlex.quote(a) for a in args)


def make_random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


# --- the disk under the work dir, with fsync ------------------------------------------------------
def disk_probe(work, mib):
    """Sequential 1 MiB writes + one fdatasync (MB/s), and the latency of a 4 KiB and a 1 MiB
    append each followed by fdatasync (what a group commit or a replica flush costs)."""
    path = os.path.join(work, "disk-probe.bin")
    buf = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.monotonic()
        for _ in range(mib):
            os.write(fd, buf)
        os.fdatasync(fd)
        seq = mib * MiB / (time.monotonic() - t0) / MB
        lat = {}
        for n in (4096, MiB):
            xs = []
            for _ in range(20):
                t = time.monotonic()
                os.write(fd, buf[:n])
                os.fdatasync(fd)
                xs.append((time.monotonic() - t) * 1000)
            lat[n] = (pct(xs, 50), pct(xs, 90))
    finally:
        os.close(fd)
        os.unlink(path)
    return {"seq_mb_s": seq, "mib": mib, "lat4k": lat[4096], "lat1m": lat[MiB]}



# --- baselines: the standard tools doing the same job ---------------------------------------------
def run_qemu_copy(children, work, rep, data, size, commands):
    """nbdcopy of the file `data` into `qemu-nbd -f raw -t` serving a fresh sparse file of
    `size` bytes, timed until nbdcopy exits plus `sync FILE`. Records the commands under
    commands["qemu"] the first time. Returns copy_s, sync_s, total_s, nbdcopy_cpu, mb_s, meter."""
    d = os.path.join(work, f"qemu-{rep}")
    os.makedirs(d)
    img, sock = os.path.join(d, "disk.img"), os.path.join(d, "qemu.sock")
    with open(img, "wb") as f:
        f.truncate(size)
    qargs = ["qemu-nbd", "-f", "raw", "-t", "-k", sock, img]
    q = children.spawn(qargs, os.path.join(d, "qemu-nbd.log"))
    try:
        wait_for(lambda: cdptest.unix_accepts(sock), 30, "qemu-nbd socket", [q])
        uri = f"nbd+unix:///?socket={sock}"
        copy_args = ["nbdcopy", data, uri]
        meter = Meter({"qemu-nbd": q.pid})
        t0 = time.monotonic()
        nbdcopy_cpu = children.run(copy_args)
        t1 = time.monotonic()
        subprocess.run(["sync", img], check=True, timeout=900)
        t2 = time.monotonic()
        m = meter.stop()
        commands.setdefault("qemu", [sh_quote(qargs), sh_quote(copy_args),
                                     sh_quote(["sync", img])])
        return {"copy_s": t1 - t0, "sync_s": t2 - t1, "total_s": t2 - t0,
                "nbdcopy_cpu": nbdcopy_cpu,
                "mb_s": os.path.getsize(data) / (t2 - t0) / MB, "meter": m}
    finally:
        children.stop(q)
        shutil.rmtree(d, ignore_errors=True)


def drop_caches():
    """sync, then drop the page cache (root)."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def seconds_cold(args):
    """Wall seconds of running args (raises on failure) right after drop_caches()."""
    drop_caches()
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    return time.monotonic() - t0


def qemu_img_convert_seconds(source, out, out_fmt):
    """Wall seconds of `qemu-img convert -f raw -O out_fmt source out` plus `sync -f out`,
    after a `sync` so earlier writes are not counted."""
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", out_fmt, source, out], check=True,
                   timeout=1800)
    subprocess.run(["sync", "-f", out], check=True)
    return time.monotonic() - t0


# --- the drivers' command line and bench/RESULTS.md -----------------------------------------------
def driver_arguments(description=None):
    """An argument parser with the options every bench/*.sh wrapper passes its driver: --out
    FILE (the results file) and --git REV (the code's revision, for the report)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="the results file to write (Markdown)")
    ap.add_argument("--git", default="unknown", help="the code's revision, for the report")
    return ap


# Each driver but bench.py owns one section of the file between these markers; bench.py writes
# the rest and keeps the sections.
SECTION_RE = r"<!-- ([a-z]+)-bench:start.*?<!-- \1-bench:end -->"


def write_section(path, name, script, lines):
    """Replaces the `name` section of the results file at `path` (or appends it; creates the
    file) with `lines`, between <!-- NAME-bench:start ... --> and <!-- NAME-bench:end -->
    markers. Returns the section's text."""
    section = "\n".join([f"<!-- {name}-bench:start (written by bench/{script}; edits here are "
                         f"overwritten) -->"] + lines + [f"<!-- {name}-bench:end -->", ""])
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
    m = re.search(rf"<!-- {name}-bench:start.*?<!-- {name}-bench:end -->\n?", text, re.S)
    text = (text[:m.start()] + section + text[m.end():] if m else
            text.rstrip("\n") + "\n\n" + section)
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")
    return section


def with_kept_sections(text, path):
    """`text` followed by every driver's section of the file at `path` (if it exists)."""
    if os.path.exists(path):
        old = open(path).read()
        for m in re.finditer(SECTION_RE, old, re.S):
            text = text.rstrip("\n") + "\n\n" + m.group(0) + "\n"
    return text
