#!/usr/bin/env python3
"""Data-path benchmark for the CDP appliance: throughput against qemu-nbd, replication lag
under a steady paced load, and the agent's CPU and memory. Standard library only.

Run it through bench/run.sh, which owns the temp dir and the clean-up trap. This script also
cleans up after itself (every child runs in its own session, its pid is appended to
--pidfile so run.sh's trap can kill what is left even if this process dies).

Units: MB = 10^6 bytes, MiB = 2^20 bytes. Every figure is reported, none is asserted.
"""
import argparse
import datetime
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

MiB = 1 << 20
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --- NBD wire constants (docs: NBD proto.md; cdp-agent/include/cdp/agent/nbd_protocol.h) ------
NBD_MAGIC = 0x4E42444D41474943           # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054            # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
CMD_WRITE = 1
CMD_DISC = 2


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- process bookkeeping ---------------------------------------------------------------------
class Procs:
    """Starts children in their own sessions, records their pids for run.sh's trap, and kills
    whatever is still running on close()."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.live = []

    def spawn(self, args, logpath=None, **kw):
        out = open(logpath, "ab") if logpath else subprocess.DEVNULL
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if logpath else
                             subprocess.DEVNULL, start_new_session=True, **kw)
        if logpath:
            out.close()
        self.live.append(p)
        self._write_pidfile()
        return p

    def _write_pidfile(self):
        # Only children not yet reaped: their pids cannot have been reused.
        tmp = self.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(f"{p.pid}\n" for p in self.live)
        os.replace(tmp, self.pidfile)

    def wait(self, p, timeout=None):
        """Waits for a child started with spawn() and forgets it; returns the exit code."""
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(p, 5)
            raise RuntimeError(f"{p.args[0]} did not finish within {timeout}s; killed")
        self._forget(p)
        return rc

    def _forget(self, p):
        if p in self.live:
            self.live.remove(p)
            self._write_pidfile()

    def stop(self, p, timeout=15):
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
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
        self._forget(p)
        return p.returncode

    def run(self, args, timeout=900):
        """Runs a client (nbdcopy) to completion as a tracked child; raises on failure."""
        p = self.spawn(args)
        rc = self.wait(p, timeout)
        if rc != 0:
            raise RuntimeError(f"{sh_quote(args)} exited with {rc}")

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


# --- /proc readers ---------------------------------------------------------------------------
def proc_cpu_seconds(pid):
    """utime + stime of a live process, in seconds (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_status_kib(pid, key):
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
        self.io0 = {n: proc_io(p) for n, p in self.procs.items()}
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        self.kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.host0 = host_cpu()
        self.load0 = loadavg()

    def stop(self):
        wall = time.monotonic() - self.t0
        cpu = {n: proc_cpu_seconds(p) - self.cpu0[n] for n, p in self.procs.items()}
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
            "io_write_bytes": io,
            "host_busy_cores": host_busy / wall if wall > 0 else 0,
            "others_cores": max(0.0, host_busy - ours) / wall if wall > 0 else 0,
            "ncpu": ncpu,
            "load_before": self.load0,
            "load_after": loadavg(),
        }


# --- the appliance ----------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what, procs=()):
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


def unix_accepts(path):
    with socket.socket(socket.AF_UNIX) as c:
        try:
            c.connect(path)
            return True
        except OSError:
            return False


class Appliance:
    """journal-server + cdp-agent + replicator for one volume, in its own directory."""

    def __init__(self, ctx, name, size_bytes, volume="bench0"):
        self.ctx, self.volume = ctx, volume
        self.dir = os.path.join(ctx.work, name)
        os.makedirs(self.dir)
        self.server = f"tcp://127.0.0.1:{free_port()}"
        self.source = os.path.join(self.dir, "source.img")
        self.target = os.path.join(self.dir, "target.img")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.uri = f"nbd+unix:///{volume}?socket={self.sock}"
        with open(self.source, "wb") as f:
            f.truncate(size_bytes)
        self.p = {}

    def start(self):
        b, d = self.ctx.bin, self.dir
        self.p["journal-server"] = self.ctx.procs.spawn(
            [b("journal-server"), "--data-dir", f"{d}/journal", "--listen", self.server],
            f"{d}/journal-server.log")
        self.p["cdp-agent"] = self.ctx.procs.spawn(
            [b("cdp-agent"), "--server", self.server, "--volume", self.volume, "--device",
             self.source, "--nbd", "unix:" + self.sock, "--ack", "async", "--state-dir",
             f"{d}/agent-state"], f"{d}/cdp-agent.log")
        self.p["replicator"] = self.ctx.procs.spawn(
            [b("replicator"), "--server", self.server, "--volume", self.volume, "--target",
             self.target, "--state-dir", f"{d}/replica-state"], f"{d}/replicator.log")
        wait_for(lambda: unix_accepts(self.sock), 30, "the agent's NBD socket",
                 self.p.values())

    def pids(self):
        return {n: p.pid for n, p in self.p.items()}

    def cdpctl(self, *args, timeout=900):
        return subprocess.run([self.ctx.bin("cdpctl"), "--server", self.server] + list(args),
                              capture_output=True, text=True, timeout=timeout)

    def status(self):
        r = self.cdpctl("status", "--json", timeout=30)
        if r.returncode != 0:
            return None
        for v in json.loads(r.stdout)["volumes"]:
            if v["name"] == self.volume:
                return v
        return None

    def wait_synced(self, timeout=900):
        t0 = time.monotonic()
        r = self.cdpctl("wait-synced", "--volume", self.volume, "--timeout", str(timeout),
                        timeout=timeout + 30)
        if r.returncode != 0:
            raise RuntimeError(f"cdpctl wait-synced exited {r.returncode}: {r.stdout}{r.stderr}")
        return time.monotonic() - t0

    def check_alive(self):
        for n, p in self.p.items():
            if p.poll() is not None:
                raise RuntimeError(f"{n} exited with {p.returncode}; see {self.dir}/{n}.log")

    def replica_identical(self):
        r = subprocess.run(["cmp", self.source, self.target], capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def journal_bytes(self):
        total = 0
        for root, _, files in os.walk(os.path.join(self.dir, "journal")):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def stop(self):
        rcs = {}
        # Agent first (it drains to the journal), then replicator, then the journal.
        for n in ("cdp-agent", "replicator", "journal-server"):
            if n in self.p:
                rcs[n] = self.ctx.procs.stop(self.p[n])
        return rcs

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Sampler(threading.Thread):
    """Starts `cdpctl status --json` every `period` seconds on a fixed schedule, without
    waiting for the previous one (cdpctl alone takes ~60-100 ms to start and answer here), at
    most `max_inflight` at a time. Keeps (monotonic time the answer arrived, volume dict)."""

    def __init__(self, app, period=0.1, max_inflight=4):
        super().__init__(daemon=True)
        self.app, self.period, self.max_inflight = app, period, max_inflight
        self.samples = []
        self.failures = 0
        self.skipped = 0
        self.launched = 0
        self.halt = threading.Event()
        self.inflight = []
        self.args = [app.ctx.bin("cdpctl"), "--server", app.server, "status", "--json"]

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
            t = time.monotonic()
            out = p.stdout.read()
            p.stdout.close()
            v = None
            if p.returncode == 0:
                try:
                    for x in json.loads(out)["volumes"]:
                        if x["name"] == self.app.volume:
                            v = x
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
                    self.inflight.append(subprocess.Popen(
                        self.args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
                    self.launched += 1
                else:
                    self.skipped += 1
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


# --- NBD load generator ------------------------------------------------------------------------
def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError(f"NBD server closed the connection ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def nbd_connect(path, export):
    """Fixed-newstyle handshake with NBD_OPT_GO; simple replies. Returns (sock, size, flags)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    magic, opt_magic, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBD_MAGIC or opt_magic != IHAVEOPT or not hflags & FLAG_FIXED_NEWSTYLE:
        raise RuntimeError(f"not a fixed-newstyle NBD server: {magic:#x} {opt_magic:#x} "
                           f"flags {hflags:#x}")
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))
    name = export.encode()
    payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
    size = tflags = None
    block = (1, 4096, 32 * MiB)
    while True:
        rmagic, opt, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
        data = recv_exact(s, rlen) if rlen else b""
        if rmagic != OPT_REPLY_MAGIC or opt != OPT_GO:
            raise RuntimeError(f"bad option reply: magic {rmagic:#x} option {opt}")
        if rtype & 0x80000000:
            raise RuntimeError(f"NBD_OPT_GO refused ({rtype:#x}): {data.decode(errors='replace')}")
        if rtype == REP_INFO:
            (itype,) = struct.unpack(">H", data[:2])
            if itype == INFO_EXPORT:
                size, tflags = struct.unpack(">QH", data[2:12])
            elif itype == INFO_BLOCK_SIZE:
                block = struct.unpack(">III", data[2:14])
        elif rtype == REP_ACK:
            break
    if size is None:
        raise RuntimeError("NBD_OPT_GO acked without NBD_INFO_EXPORT")
    return s, size, tflags, block


class LoadGen:
    """One NBD connection; WRITE requests at random 4 KiB-aligned offsets, random lengths
    4..64 KiB (multiples of 4 KiB), paced to `rate` bytes/s by a byte budget, at most
    `depth` requests in flight. A reader thread matches simple replies."""

    def __init__(self, path, export, rate, seconds, depth=16, seed=1):
        self.s, self.size, _, self.block = nbd_connect(path, export)
        self.rate, self.seconds, self.depth = rate, seconds, depth
        self.rng = random.Random(seed)
        self.pool = memoryview(os.urandom(16 * MiB))  # incompressible payload source
        self.sent_t = []      # monotonic send time per request (index = handle)
        self.done_t = []      # completion time per request
        self.lengths = []
        self.errors = 0
        self.slots = threading.Semaphore(depth)
        self.reader_exc = None

    def _reader(self):
        try:
            while not self.closing:
                hdr = recv_exact(self.s, 16)
                magic, err, handle = struct.unpack(">IIQ", hdr)
                if magic != SIMPLE_REPLY_MAGIC:
                    raise RuntimeError(f"reply magic {magic:#x} is not the simple-reply magic")
                if err:
                    self.errors += 1
                self.done_t[handle] = time.monotonic()
                self.slots.release()
        except Exception as e:  # noqa: BLE001 - surfaced by run() unless we are closing
            if not self.closing:
                self.reader_exc = e
            for _ in range(self.depth):
                self.slots.release()

    def run(self):
        maxlen_blocks = 16
        self.closing = False
        reader = threading.Thread(target=self._reader, daemon=True)
        # Pre-size the per-request arrays generously so the reader never races an append.
        cap = int(self.rate * self.seconds / (4096 * 2)) + 1024
        self.sent_t = [0.0] * cap
        self.done_t = [0.0] * cap
        reader.start()
        pool_len = len(self.pool)
        t0 = time.monotonic()
        end = t0 + self.seconds
        sent_bytes = 0
        n = 0
        while True:
            now = time.monotonic()
            if now >= end or self.reader_exc:
                break
            due = t0 + sent_bytes / self.rate
            if due > now:
                time.sleep(due - now)
                continue
            if not self.slots.acquire(timeout=60):
                raise RuntimeError("load generator: no NBD reply for 60 s")
            length = 4096 * self.rng.randint(1, maxlen_blocks)
            offset = 4096 * self.rng.randrange(0, (self.size - length) // 4096 + 1)
            src = self.rng.randrange(0, pool_len - length + 1) & ~4095
            if n >= cap:
                self.sent_t.extend([0.0] * cap)
                self.done_t.extend([0.0] * cap)
                cap *= 2
            self.sent_t[n] = time.monotonic()
            self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, n, offset, length))
            self.s.sendall(self.pool[src:src + length])
            self.lengths.append(length)
            sent_bytes += length
            n += 1
        t_send_end = time.monotonic()
        # Every slot back = every reply received.
        for _ in range(self.depth):
            if not self.slots.acquire(timeout=120):
                raise RuntimeError("load generator: replies missing 120 s after the last write")
        if self.reader_exc:
            raise RuntimeError(f"load generator: {self.reader_exc}")
        t_done = time.monotonic()
        self.closing = True
        self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        with_suppress(self.s.shutdown, socket.SHUT_RDWR)
        reader.join(10)
        self.s.close()
        self.n = n
        del self.sent_t[n:], self.done_t[n:]
        return {
            "t0": t0, "t_send_end": t_send_end, "t_done": t_done, "requests": n,
            "bytes": sent_bytes, "errors": self.errors,
            "mb_s": sent_bytes / (t_done - t0) / MB,
            "write_latency_ms": [(d - s) * 1000 for s, d in zip(self.sent_t, self.done_t)],
        }


# --- helpers -------------------------------------------------------------------------------------
def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def sh_quote(args):
    import shlex
    return " ".join(shlex.quote(a) for a in args)


def make_random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


# --- phase 1: throughput -----------------------------------------------------------------------
def run_qemu_copy(ctx, rep, data, size):
    d = os.path.join(ctx.work, f"qemu-{rep}")
    os.makedirs(d)
    img, sock = os.path.join(d, "disk.img"), os.path.join(d, "qemu.sock")
    with open(img, "wb") as f:
        f.truncate(size)
    qargs = ["qemu-nbd", "-f", "raw", "-t", "-k", sock, img]
    q = ctx.procs.spawn(qargs, os.path.join(d, "qemu-nbd.log"))
    try:
        wait_for(lambda: unix_accepts(sock), 30, "qemu-nbd socket", [q])
        uri = f"nbd+unix:///?socket={sock}"
        copy_args = ["nbdcopy", data, uri]
        meter = Meter({"qemu-nbd": q.pid})
        t0 = time.monotonic()
        ctx.procs.run(copy_args)
        t1 = time.monotonic()
        subprocess.run(["sync", img], check=True, timeout=900)
        t2 = time.monotonic()
        m = meter.stop()
        ctx.commands.setdefault("qemu", [sh_quote(qargs), sh_quote(copy_args),
                                         sh_quote(["sync", img])])
        return {"copy_s": t1 - t0, "sync_s": t2 - t1, "total_s": t2 - t0,
                "mb_s": len_of(data) / (t2 - t0) / MB, "meter": m}
    finally:
        ctx.procs.stop(q)
        shutil.rmtree(d, ignore_errors=True)


def len_of(path):
    return os.path.getsize(path)


def first_time(samples, pred):
    for t, v in samples:
        if pred(v):
            return t
    return None


def run_cdp_copy(ctx, rep, data, size):
    app = Appliance(ctx, f"cdp-{rep}", size)
    sampler = None
    try:
        app.start()
        idle_wait = app.wait_synced()  # initial sync of the (sparse, all-zero) device done
        app.check_alive()
        copy_args = ["nbdcopy", data, app.uri]
        sampler = Sampler(app)
        meter = Meter(app.pids())
        sampler.start()
        t0 = time.monotonic()
        ctx.procs.run(copy_args)
        t1 = time.monotonic()
        app.wait_synced()
        t2 = time.monotonic()
        m = meter.stop()
        samples = sampler.finish()
        app.check_alive()
        final = app.status()
        ctx.commands.setdefault("cdp", [
            sh_quote(app.p["journal-server"].args), sh_quote(app.p["cdp-agent"].args),
            sh_quote(app.p["replicator"].args), sh_quote(copy_args),
            sh_quote([ctx.bin("cdpctl"), "--server", app.server, "wait-synced", "--volume",
                      app.volume, "--timeout", "900"])])
        cap = final["captured_lsn"]
        t_durable = first_time(samples, lambda v: v["durable_lsn"] >= cap)
        t_applied = first_time(samples, lambda v: v["applied_lsn"] >= cap)
        same, why = app.replica_identical()
        rss = {n: proc_status_kib(pid, "VmHWM") for n, pid in app.pids().items()}
        return {
            "copy_s": t1 - t0, "total_s": t2 - t0, "idle_wait_synced_s": idle_wait,
            "mb_s": len_of(data) / (t2 - t0) / MB, "export_mb_s": len_of(data) / (t1 - t0) / MB,
            "durable_at_s": (t_durable - t0) if t_durable else None,
            "applied_at_s": (t_applied - t0) if t_applied else None,
            "max_pending_bytes": max((v["pending_bytes"] for _, v in samples), default=0),
            "max_dirty_bytes": max((v["dirty_bytes"] for _, v in samples), default=0),
            "resync_seen": any(v["resync_active"] for _, v in samples),
            "records": final["records_received"], "bytes_received": final["bytes_received"],
            "journal_disk_bytes": app.journal_bytes(), "replica_identical": same,
            "cmp": why, "meter": m, "vmhwm_kib": rss, "samples": len(samples),
        }
    finally:
        if sampler:
            sampler.finish()
        app.stop()
        app.remove()


# --- phase 2+3: lag at a steady rate, agent CPU and RSS --------------------------------------------
def run_lag(ctx, size, rate, seconds):
    app = Appliance(ctx, "lag", size)
    sampler = None
    try:
        app.start()
        t_start = time.monotonic()
        app.wait_synced()
        init_sync_s = time.monotonic() - t_start
        app.check_alive()
        base = app.status()
        base_lsn = base["captured_lsn"]
        gen = LoadGen(app.sock, app.volume, rate, seconds)
        sampler = Sampler(app)
        agent_pid = app.p["cdp-agent"].pid
        rss_before = proc_status_kib(agent_pid, "VmHWM")
        sampler.start()
        meter = Meter(app.pids())
        res = gen.run()
        m = meter.stop()
        rss_peak = proc_status_kib(agent_pid, "VmHWM")
        rss_now = proc_status_kib(agent_pid, "VmRSS")
        others_hwm = {n: proc_status_kib(pid, "VmHWM") for n, pid in app.pids().items()}
        t0, t_end = res["t0"], res["t_done"]
        drain = app.wait_synced()
        samples = sampler.finish()
        app.check_alive()
        final = app.status()
        window = [(t, v) for t, v in samples if t0 <= t <= t_end]
        lags = [v["lag_seconds"] for _, v in window]
        dirty_w = [v["dirty_bytes"] for _, v in window]
        # Cross-check from the client's side: LSN base+i+1 is the i-th write of the load
        # generator (the only writer, no flushes). That holds only while no write fell back to
        # the dirty bitmap (such writes get no LSN). Lag = sample time - completion time of the
        # oldest write the replica has not applied.
        client_valid = max(dirty_w or [0]) == 0
        done = gen.done_t
        client_lags = []
        for t, v in window:
            i = v["applied_lsn"] - base_lsn  # index of the oldest unapplied write
            ti = (done[i] or gen.sent_t[i]) if 0 <= i < len(done) else 0
            client_lags.append(t - ti if ti and ti <= t else 0.0)
        t_first_dirty = first_time(window, lambda v: v["dirty_bytes"] > 0)
        last = window[-1][1] if window else {"dirty_bytes": 0, "pending_bytes": 0}
        same, why = app.replica_identical()
        ctx.commands["lag"] = [
            sh_quote(app.p["journal-server"].args), sh_quote(app.p["cdp-agent"].args),
            sh_quote(app.p["replicator"].args),
            f"# bench.py load generator: NBD over unix:{app.sock}, export {app.volume}, "
            f"{rate / MB:.0f} MB/s, {seconds} s, WRITE 4..64 KiB at 4 KiB-aligned offsets, "
            f"queue depth {gen.depth}",
            sh_quote([ctx.bin("cdpctl"), "--server", app.server, "status", "--json"]) +
            "   # started every 100 ms",
            sh_quote([ctx.bin("cdpctl"), "--server", app.server, "wait-synced", "--volume",
                      app.volume, "--timeout", "900"]) + "   # after the load: drain time"]
        nan = float("nan")
        return {
            "init_sync_s": init_sync_s, "requests": res["requests"], "bytes": res["bytes"],
            "errors": res["errors"], "achieved_mb_s": res["mb_s"], "load_s": t_end - t0,
            "lag_p50": pct(lags, 50), "lag_p99": pct(lags, 99), "lag_max": max(lags or [0]),
            "lag_max_incl_drain": max([v["lag_seconds"] for _, v in samples] or [0]),
            "client_valid": client_valid,
            "client_lag_p50": pct(client_lags, 50) if client_valid else nan,
            "client_lag_p99": pct(client_lags, 99) if client_valid else nan,
            "client_lag_max": max(client_lags or [0]) if client_valid else nan,
            "lat_p50_ms": pct(res["write_latency_ms"], 50),
            "lat_p99_ms": pct(res["write_latency_ms"], 99),
            "lat_max_ms": max(res["write_latency_ms"] or [0]),
            "samples": len(window), "sample_failures": sampler.failures,
            "sample_skipped": sampler.skipped,
            "sample_period_actual_ms": ((window[-1][0] - window[0][0]) / (len(window) - 1) * 1000
                                        if len(window) > 1 else nan),
            "drain_s": drain,
            "max_dirty_bytes": max((v["dirty_bytes"] for _, v in samples), default=0),
            "dirty_frac": (sum(1 for d in dirty_w if d > 0) / len(dirty_w)) if dirty_w else 0,
            "first_dirty_s": (t_first_dirty - t0) if t_first_dirty else None,
            "exposed_at_end_bytes": last["dirty_bytes"] + last["pending_bytes"],
            "max_pending_bytes": max((v["pending_bytes"] for _, v in window), default=0),
            "resync_seen": any(v["resync_active"] for _, v in samples),
            "records": final["records_received"] - base["records_received"],
            "agent_cpu_pct": 100 * m["cpu"]["cdp-agent"] / m["wall"],
            "agent_hwm_kib": rss_peak, "agent_hwm_before_kib": rss_before,
            "agent_rss_end_kib": rss_now, "hwm_kib": others_hwm, "meter": m,
            "replica_identical": same, "cmp": why,
        }
    finally:
        if sampler:
            sampler.finish()
        app.stop()
        app.remove()


# --- disk probe: what the disk under the work dir gives with fsync --------------------------------
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


# --- report ------------------------------------------------------------------------------------------
def fmt(v, d=1):
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:.{d}f}"


def machine_info(ctx):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return "n/a"
    mem = "n/a"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    model = "n/a"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    df = run(["df", "-h", "--output=source,fstype,size,avail", ctx.work]).splitlines()
    return {
        "nproc": run(["nproc"]), "cpu": model, "mem": mem, "kernel": run(["uname", "-sr"]),
        "df": df[1] if len(df) > 1 else "n/a",
        "nbdcopy": run(["nbdcopy", "--version"]).splitlines()[0],
        "qemu-nbd": run(["qemu-nbd", "--version"]).splitlines()[0],
    }


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def cpu_line(m, names):
    parts = [f"{n} {m['cpu'][n]:.2f}" for n in names if n in m["cpu"]]
    return ", ".join(parts)


def analysis(args, tp, lag):
    """Sentences derived from the measurements, so they stay true when the run is repeated."""
    out = []
    if tp:
        cdp = [r["cdp"] for r in tp]
        q = [r["qemu"] for r in tp]
        copy = median([c["copy_s"] for c in cdp])
        total = median([c["total_s"] for c in cdp])
        dur = median([c["durable_at_s"] for c in cdp if c["durable_at_s"] is not None])
        app = median([c["applied_at_s"] for c in cdp if c["applied_at_s"] is not None])
        qtot = median([x["total_s"] for x in q])
        floor = median([c["idle_wait_synced_s"] for c in cdp])
        out.append(
            f"**Where the time goes (throughput, medians).** qemu-nbd takes {qtot:.2f} s "
            f"in total. Through the appliance, nbdcopy itself finishes after {copy:.2f} s; the "
            f"journal has every record durable at ~{fmt(dur, 2)} s and the replica has applied "
            f"the last one at ~{fmt(app, 2)} s (from 100 ms status samples); `wait-synced` "
            f"returns at {total:.2f} s. `wait-synced` needs two fresh agent reports (200 ms "
            f"apart), so it has a floor of ~{floor:.2f} s even on an idle, synced volume — "
            f"measured before each copy.")
        # CPU split for the median-total rep.
        mid = sorted(cdp, key=lambda c: c["total_s"])[len(cdp) // 2]
        m = mid["meter"]
        busy = sum(m["cpu"].values())
        out.append(
            f"In the median run the pipeline used {busy:.1f} CPU-seconds in "
            f"{m['wall']:.1f} s ({busy / m['wall']:.2f} of {m['ncpu']} cores): "
            f"{cpu_line(m, ['cdp-agent', 'journal-server', 'replicator', 'reaped children', 'bench.py'])}"
            f" (reaped children = nbdcopy + cdpctl). Other work on the host used "
            f"{m['others_cores']:.2f} cores meanwhile. qemu-nbd's own copy used "
            f"{cpu_line(q[0]['meter'], ['qemu-nbd', 'reaped children'])} CPU-seconds.")
        data = args.mib * MiB
        jb = median([c["journal_disk_bytes"] for c in cdp])
        wb = {n: median([c["meter"]["io_write_bytes"].get(n) or 0 for c in cdp])
              for n in ("cdp-agent", "journal-server", "replicator")}
        out.append(
            f"Each byte the client writes is written at least three times on this one disk: to "
            f"the source device by the agent, into RocksDB (WAL + blob file, journal on disk "
            f"after the copy: {jb / data:.2f}x the data) by journal-server, and to the replica "
            f"by the replicator; /proc/PID/io write_bytes during the copy: agent "
            f"{wb['cdp-agent'] / MiB:.0f} MiB, journal-server {wb['journal-server'] / MiB:.0f} "
            f"MiB, replicator {wb['replicator'] / MiB:.0f} MiB (buffered writes may be counted "
            f"later by writeback). qemu-nbd writes it once.")
        dirty = max(c["max_dirty_bytes"] for c in cdp)
        pend = max(c["max_pending_bytes"] for c in cdp)
        out.append(
            f"The agent's 32 MiB send buffer peaked at {pend / MiB:.1f} MiB pending; "
            + (f"it overflowed into the dirty bitmap (up to {dirty / MiB:.1f} MiB dirty), so "
               f"part of the copy was re-read and resent by the resync."
               if dirty else "it never fell back to the dirty bitmap.")
            + f" The agent's NBD server handles one request at a time per connection and does "
              f"not advertise multi-conn, so nbdcopy uses a single connection "
              f"(qemu-nbd does not advertise it for a writable export either).")
    if lag:
        m = lag["meter"]
        out.append(
            f"**Lag run.** The load generator achieved {lag['achieved_mb_s']:.1f} MB/s "
            f"({lag['requests']} writes, NBD write latency p50 {lag['lat_p50_ms']:.2f} ms, p99 "
            f"{lag['lat_p99_ms']:.2f} ms). Server-side `lag_seconds` p99 was "
            f"{lag['lag_p99']:.3f} s; the client-side cross-check (age of the oldest write the "
            f"replica has not applied, from the generator's own completion times) p99 "
            f"{lag['client_lag_p99']:.3f} s, max {lag['client_lag_max']:.3f} s. "
            f"`lag_seconds` only knows about records the agent has reported (every 200 ms) or "
            f"the journal holds, and the status sampler runs at ~"
            f"{fmt(lag['sample_period_actual_ms'], 0)} ms instead of 100 ms when cdpctl is "
            f"slow to start. CPU-seconds over the {m['wall']:.1f} s window: "
            f"{cpu_line(m, ['cdp-agent', 'journal-server', 'replicator', 'bench.py', 'reaped children'])}; "
            f"other work on the host {m['others_cores']:.2f} cores. Agent peak RSS (VmHWM, "
            f"since process start, includes the initial sync) {lag['agent_hwm_kib'] / 1024:.1f} "
            f"MiB; {lag['agent_hwm_before_kib'] / 1024:.1f} MiB before the load.")
    return out


def write_report(args, ctx, info, tp, lag, started, load_start, load_end, path):
    L = []
    q = "--quick " if args.quick else ""
    L.append("# Data-path benchmark results")
    L.append("")
    L.append("Generated by `bench/run.sh`; rerun with `bash bench/run.sh` from the repository root "
             "(`bash bench/run.sh --quick` for a smoke check: 64 MiB copies, 10 s lag run; "
             "`--out FILE` to write elsewhere). Needs the binaries in `build/` "
             "(`cmake --build build`), qemu-utils, libnbd-bin and python3. Nothing is asserted: "
             "targets are listed next to the figures. MB = 10^6 bytes, MiB = 2^20 bytes.")
    L.append("")
    L.append(f"- Date: {started} → {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
             f" ({'quick smoke check' if args.quick else 'full run'}: `bash bench/run.sh {q}`)")
    L.append(f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem']} RAM, "
             f"{info['kernel']}")
    L.append(f"- Disk under /tmp (work dir {ctx.work}; df source, type, size, avail): "
             f"`{info['df']}`")
    L.append(f"- Load average (1/5/15 min): {load_start} at start, {load_end} at the end. The "
             f"machine is shared (other people build on it), so figures are noisy; the CPU used "
             f"by other work during each phase is given in the per-run tables (\"others\").")
    L.append(f"- Code: {args.git}; binaries copied from `{args.build_dir}` "
             f"(CMAKE_BUILD_TYPE: {args.build_type}); {info['nbdcopy']}; {info['qemu-nbd']}")
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append("| Figure | Result | Target |")
    L.append("|---|---|---|")
    if tp:
        cdp_mb = median([r["cdp"]["mb_s"] for r in tp])
        exp_mb = median([r["cdp"]["export_mb_s"] for r in tp])
        q_mb = median([r["qemu"]["mb_s"] for r in tp])
        ratio = median([r["cdp"]["mb_s"] / r["qemu"]["mb_s"] for r in tp])
        n = len(tp)
        L.append(f"| 1. nbdcopy {args.mib} MiB → agent export, until `wait-synced` (median of "
                 f"{n}) | {cdp_mb:.1f} MB/s | |")
        L.append(f"| 1. nbdcopy {args.mib} MiB → qemu-nbd, until `sync` (median of {n}) | "
                 f"{q_mb:.1f} MB/s | |")
        L.append(f"| 1. Throughput ratio appliance / qemu-nbd (median of per-rep ratios) | "
                 f"{ratio:.2f} | ≥ 0.8 {'✅' if ratio >= 0.8 else '❌ missed'} |")
        L.append(f"| 1. Agent export only (nbdcopy finish, before `wait-synced`; median) | "
                 f"{exp_mb:.1f} MB/s ({exp_mb / q_mb:.2f} of qemu-nbd) | |")
    if lag:
        L.append(f"| 2. Replication lag p50 / p99 / max at {args.rate:.0f} MB/s target for "
                 f"{args.seconds} s | {lag['lag_p50']:.3f} / {lag['lag_p99']:.3f} / "
                 f"{lag['lag_max']:.3f} s | p99 ≤ 1 s "
                 f"{'✅' if lag['lag_p99'] <= 1 else '❌ missed'} |")
        L.append(f"| 2. Achieved write rate | {lag['achieved_mb_s']:.1f} MB/s | "
                 f"{args.rate:.0f} MB/s |")
        L.append(f"| 3. Agent CPU during (2) | {lag['agent_cpu_pct']:.1f} % of one core | |")
        L.append(f"| 3. Agent peak RSS (VmHWM) | {lag['agent_hwm_kib'] / 1024:.1f} MiB | ≤ 64 MiB "
                 f"{'✅' if lag['agent_hwm_kib'] <= 64 * 1024 else '❌ missed'} |")
    L.append("")
    if tp:
        L.append("## 1. Throughput: nbdcopy into the agent's export vs qemu-nbd")
        L.append("")
        L.append(f"A {args.mib} MiB file of random bytes (page-cached) is copied with plain "
                 f"`nbdcopy FILE URI` into (a) the cdp-agent's unix-socket export with "
                 f"journal-server and replicator running (fresh journal, sparse source and "
                 f"replica each rep; the initial sync of the empty device is finished with "
                 f"`wait-synced` before the clock starts), timed until `cdpctl wait-synced` "
                 f"returns, and (b) `qemu-nbd -f raw -t -k SOCK FILE` serving a fresh sparse "
                 f"file of the same size, timed until nbdcopy exits plus `sync FILE`. The order "
                 f"alternates between reps. Each appliance rep ends with `cmp source replica`.")
        L.append("")
        L.append("| Rep | Appliance total s | MB/s | export-only s | MB/s | journal durable at s | "
                 "replica applied at s | qemu-nbd copy s | + sync s | MB/s | ratio | replica == "
                 "source | others (cores) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(tp):
            c, qq = r["cdp"], r["qemu"]
            L.append(f"| {i + 1} | {c['total_s']:.2f} | {c['mb_s']:.1f} | {c['copy_s']:.2f} | "
                     f"{c['export_mb_s']:.1f} | {fmt(c['durable_at_s'], 2)} | "
                     f"{fmt(c['applied_at_s'], 2)} | {qq['copy_s']:.2f} | {qq['sync_s']:.2f} | "
                     f"{qq['mb_s']:.1f} | {c['mb_s'] / qq['mb_s']:.2f} | "
                     f"{'yes' if c['replica_identical'] else 'NO: ' + c['cmp']} | "
                     f"{c['meter']['others_cores']:.2f} / {qq['meter']['others_cores']:.2f} |")
        L.append("")
        L.append("\"others\" = CPU used on the host by processes outside this benchmark during the "
                 "appliance / qemu-nbd copy, in cores (of "
                 f"{info['nproc']}).")
        L.append("")
        L.append("| Rep | CPU-s agent | journal-server | replicator | nbdcopy+cdpctl | records | "
                 "max pending MiB | max dirty MiB | journal on disk MiB | idle wait-synced s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(tp):
            c = r["cdp"]
            cpu = c["meter"]["cpu"]
            L.append(f"| {i + 1} | {cpu['cdp-agent']:.2f} | {cpu['journal-server']:.2f} | "
                     f"{cpu['replicator']:.2f} | {cpu['reaped children']:.2f} | {c['records']} | "
                     f"{c['max_pending_bytes'] / MiB:.1f} | {c['max_dirty_bytes'] / MiB:.1f} | "
                     f"{c['journal_disk_bytes'] / MiB:.0f} | {c['idle_wait_synced_s']:.2f} |")
        L.append("")
    if lag:
        L.append("## 2–3. Replication lag at a steady rate; agent CPU and memory")
        L.append("")
        L.append(f"A python NBD client (fixed newstyle, NBD_OPT_GO with export name = volume, "
                 f"simple replies) writes random bytes at random 4 KiB-aligned offsets of a "
                 f"{args.lag_mib} MiB volume, lengths 4..64 KiB in 4 KiB steps, paced to "
                 f"{args.rate:.0f} MB/s by a byte budget with up to 16 requests in flight, for "
                 f"{args.seconds} s. `cdpctl status --json` is sampled every 100 ms; percentiles "
                 f"are over the samples inside the load window. Agent CPU is utime+stime from "
                 f"/proc/PID/stat over the load window; RSS is VmHWM from /proc/PID/status.")
        L.append("")
        m = lag["meter"]
        rows = [
            ("Writes sent / bytes / NBD errors",
             f"{lag['requests']} / {lag['bytes'] / MB:.0f} MB / {lag['errors']}"),
            ("Achieved rate (until the last reply)", f"{lag['achieved_mb_s']:.1f} MB/s over "
             f"{lag['load_s']:.1f} s"),
            ("NBD write latency p50 / p99 / max", f"{lag['lat_p50_ms']:.2f} / "
             f"{lag['lat_p99_ms']:.2f} / {lag['lat_max_ms']:.1f} ms"),
            ("`lag_seconds` p50 / p99 / max", f"{lag['lag_p50']:.3f} / {lag['lag_p99']:.3f} / "
             f"{lag['lag_max']:.3f} s"),
            ("Client-side lag cross-check p50 / p99 / max", f"{lag['client_lag_p50']:.3f} / "
             f"{lag['client_lag_p99']:.3f} / {lag['client_lag_max']:.3f} s"),
            ("Status samples in window (failed) / mean period",
             f"{lag['samples']} ({lag['sample_failures']}) / "
             f"{fmt(lag['sample_period_actual_ms'], 0)} ms"),
            ("Drain: load end → `wait-synced` returns", f"{lag['drain_s']:.2f} s"),
            ("Max pending in agent buffer / max dirty bytes / resync seen",
             f"{lag['max_pending_bytes'] / MiB:.1f} MiB / {lag['max_dirty_bytes'] / MiB:.1f} "
             f"MiB / {'yes' if lag['resync_seen'] else 'no'}"),
            ("Agent CPU", f"{lag['agent_cpu_pct']:.1f} % of one core "
             f"({m['cpu']['cdp-agent']:.2f} CPU-s in {m['wall']:.1f} s)"),
            ("journal-server / replicator CPU",
             f"{100 * m['cpu']['journal-server'] / m['wall']:.1f} % / "
             f"{100 * m['cpu']['replicator'] / m['wall']:.1f} % of one core"),
            ("Load generator + sampler (bench.py, cdpctl) CPU",
             f"{100 * m['cpu']['bench.py'] / m['wall']:.1f} % + "
             f"{100 * m['cpu']['reaped children'] / m['wall']:.1f} % of one core"),
            ("Other work on the host during the window", f"{m['others_cores']:.2f} cores of "
             f"{m['ncpu']} (load {m['load_before']} → {m['load_after']})"),
            ("Agent VmHWM / before load / VmRSS at end",
             f"{lag['agent_hwm_kib'] / 1024:.1f} / {lag['agent_hwm_before_kib'] / 1024:.1f} / "
             f"{lag['agent_rss_end_kib'] / 1024:.1f} MiB"),
            ("journal-server / replicator VmHWM",
             f"{lag['hwm_kib']['journal-server'] / 1024:.1f} / "
             f"{lag['hwm_kib']['replicator'] / 1024:.1f} MiB"),
            ("Initial sync of the empty volume (start → first `wait-synced`)",
             f"{lag['init_sync_s']:.2f} s"),
            ("Replica == source after drain", "yes" if lag["replica_identical"] else
             "NO: " + lag["cmp"]),
        ]
        L.append("| Measure | Value |")
        L.append("|---|---|")
        for k, v in rows:
            L.append(f"| {k} | {v} |")
        L.append("")
    L.append("## Analysis")
    L.append("")
    for para in analysis(args, tp, lag):
        L.append(para)
        L.append("")
    L.append("## Exact commands")
    L.append("")
    L.append("Paths are from this run's temp dir (removed afterwards); ports are picked free.")
    L.append("")
    L.append("```sh")
    L.append(f"bash bench/run.sh {q}".strip())
    for k, title in (("cdp", "1a. appliance (per rep, fresh dir)"),
                     ("qemu", "1b. qemu-nbd (per rep, fresh file)"),
                     ("lag", "2-3. lag run")):
        if k in ctx.commands:
            L.append(f"# {title}")
            L.extend(ctx.commands[k])
    L.append("```")
    L.append("")
    text = "\n".join(L)
    with open(path, "w") as f:
        f.write(text)
    return text


def print_table(tp, lag, args):
    print()
    print("=" * 78)
    print(f"{'figure':<58}{'result':>20}")
    print("-" * 78)
    if tp:
        cdp_mb = median([r["cdp"]["mb_s"] for r in tp])
        q_mb = median([r["qemu"]["mb_s"] for r in tp])
        ratio = median([r["cdp"]["mb_s"] / r["qemu"]["mb_s"] for r in tp])
        exp_mb = median([r["cdp"]["export_mb_s"] for r in tp])
        print(f"{'1. appliance MB/s (copy → wait-synced), median':<58}{cdp_mb:>20.1f}")
        print(f"{'1. qemu-nbd MB/s (copy + sync), median':<58}{q_mb:>20.1f}")
        print(f"{'1. ratio (target >= 0.8)':<58}{ratio:>20.2f}")
        print(f"{'1. agent export only MB/s (nbdcopy finish), median':<58}{exp_mb:>20.1f}")
    if lag:
        s = f"{lag['lag_p50']:.3f}/{lag['lag_p99']:.3f}/{lag['lag_max']:.3f}"
        print(f"{'2. lag_seconds p50/p99/max (target p99 <= 1 s)':<58}{s:>20}")
        print(f"{'2. achieved MB/s (target ' + format(args.rate, '.0f') + ')':<58}"
              f"{lag['achieved_mb_s']:>20.1f}")
        print(f"{'3. agent CPU % of one core':<58}{lag['agent_cpu_pct']:>20.1f}")
        print(f"{'3. agent VmHWM MiB (target <= 64)':<58}{lag['agent_hwm_kib'] / 1024:>20.1f}")
    print("=" * 78)


class Ctx:
    def __init__(self, args):
        self.work = args.work
        self.bindir = args.bin_dir
        self.procs = Procs(args.pidfile)
        self.commands = {}

    def bin(self, name):
        return os.path.join(self.bindir, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=50, help="MB/s (10^6 B/s)")
    ap.add_argument("--lag-mib", type=int, default=1024)
    ap.add_argument("--git", default="n/a")
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--build-type", default="n/a")
    ap.add_argument("--skip", default="", help="comma list: throughput,lag (debugging)")
    args = ap.parse_args()
    # run.sh's trap sends SIGTERM: unwind through the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.mib, args.seconds = 64, 10
    skip = set(filter(None, args.skip.split(",")))
    ctx = Ctx(args)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = loadavg()
    info = machine_info(ctx)
    tp, lag = [], None
    try:
        if "throughput" not in skip:
            data = os.path.join(ctx.work, "random.bin")
            log(f"writing {args.mib} MiB of random bytes to {data}")
            make_random_file(data, args.mib * MiB)
            for rep in range(args.reps):
                order = ("qemu", "cdp") if rep % 2 == 0 else ("cdp", "qemu")
                r = {}
                for which in order:
                    log(f"throughput rep {rep + 1}/{args.reps}: {which}")
                    if which == "qemu":
                        r["qemu"] = run_qemu_copy(ctx, rep, data, args.mib * MiB)
                        log(f"  qemu-nbd: copy {r['qemu']['copy_s']:.2f}s + sync "
                            f"{r['qemu']['sync_s']:.2f}s = {r['qemu']['mb_s']:.1f} MB/s")
                    else:
                        r["cdp"] = run_cdp_copy(ctx, rep, data, args.mib * MiB)
                        c = r["cdp"]
                        log(f"  appliance: export {c['copy_s']:.2f}s, synced {c['total_s']:.2f}s"
                            f" = {c['mb_s']:.1f} MB/s (replica identical: "
                            f"{c['replica_identical']})")
                tp.append(r)
            os.unlink(data)
        if "lag" not in skip:
            log(f"lag run: {args.rate:.0f} MB/s for {args.seconds}s on a {args.lag_mib} MiB volume")
            lag = run_lag(ctx, args.lag_mib * MiB, args.rate * MB, args.seconds)
            log(f"  lag p50/p99/max {lag['lag_p50']:.3f}/{lag['lag_p99']:.3f}/"
                f"{lag['lag_max']:.3f}s at {lag['achieved_mb_s']:.1f} MB/s; agent CPU "
                f"{lag['agent_cpu_pct']:.1f}%, VmHWM {lag['agent_hwm_kib'] / 1024:.1f} MiB")
    finally:
        ctx.procs.close()
    load_end = loadavg()
    write_report(args, ctx, info, tp, lag, started, load_start, load_end, args.out)
    log(f"wrote {args.out}")
    print_table(tp, lag, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
