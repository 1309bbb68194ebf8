#!/usr/bin/env python3
"""Data-path benchmark for the CDP appliance: throughput against qemu-nbd, replication lag
under a steady paced load, and the agent's CPU and memory; writes bench/RESULTS.md. Standard
library only; the measuring tools are in benchlib.py and nbd_load.py.

Run it through bench/run.sh, which owns the temp dir and the clean-up trap and sets
CDP_BIN_DIR to its copies of the binaries. This script also cleans up after itself: daemons
(journal-server, cdp-agent, replicator, qemu-nbd) and nbdcopy each run in their own session
and --pidfile always lists the ones not yet reaped; short-lived clients (cdpctl, cmp, sync)
stay in this process's group, which run.sh creates with setsid. On SIGTERM/SIGINT every child
session is SIGKILLed at once; run.sh's trap then kills the group and whatever the pidfile still
lists, so nothing survives even if this process hangs.

Units: MB = 10^6 bytes, MiB = 2^20 bytes. Every figure is reported, none is asserted.
"""
import datetime
import os
import signal
import subprocess
import sys
import time

from benchlib import (MB, MiB, BenchScene, Children, Meter, Sampler, cdptest, disk_probe,
                      driver_arguments, first_time, fmt, fmt_bytes, loadavg, log,
                      make_random_file, median, pct, proc_status_kib, run_qemu_copy, sh_quote,
                      with_kept_sections)
from nbd_load import LoadGen


# --- phase 1: throughput into the appliance (qemu-nbd's is benchlib.run_qemu_copy) ------------
def run_cdp_copy(ctx, rep, data, size):
    app = ctx.scene(f"cdp-{rep}", size)
    sampler = None
    failed = True
    try:
        app.start_all()
        app.wait_synced()  # initial sync of the (sparse, all-zero) device done
        idle_wait = app.wait_synced()  # wait-synced's own floor on a synced volume
        app.check_alive()
        copy_args = ["nbdcopy", data, app.uri]
        base_bytes = app.status()["bytes_received"]
        sampler = Sampler(app)
        meter = Meter(app.pids())
        sampler.start()
        t0 = time.monotonic()
        nbdcopy_cpu = ctx.children.run(copy_args)
        t1 = time.monotonic()
        app.wait_synced()
        t2 = time.monotonic()
        m = meter.stop()
        samples = sampler.finish()
        app.check_alive()
        final = app.status()
        ctx.commands.setdefault("cdp", [
            *app.commands(), sh_quote(copy_args),
            sh_quote([cdptest.binary("cdpctl"), "--server", app.server, "wait-synced", "--volume",
                      app.volume, "--timeout", "900"])])
        cap = final["captured_lsn"]
        t_durable = first_time(samples, lambda v: v["durable_lsn"] >= cap)
        t_applied = first_time(samples, lambda v: v["applied_lsn"] >= cap)
        same, why = app.replica_identical()
        rss = {n: proc_status_kib(pid, "VmHWM") for n, pid in app.pids().items()}
        failed = False
        return {
            "copy_s": t1 - t0, "total_s": t2 - t0, "idle_wait_synced_s": idle_wait,
            "nbdcopy_cpu": nbdcopy_cpu,
            "journal_mb_s": (final["bytes_received"] - base_bytes) / (t_durable - t0) / MB
            if t_durable else None,
            "mb_s": os.path.getsize(data) / (t2 - t0) / MB,
            "export_mb_s": os.path.getsize(data) / (t1 - t0) / MB,
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
        app.close(failed)


# --- phase 2+3: lag at a steady rate, agent CPU and RSS ------------------------------------
def run_lag(ctx, rep, size, rate, seconds):
    app = ctx.scene(f"lag-{rep}", size)
    sampler = None
    replica_fd = [None]
    failed = True
    try:
        app.start_all()
        t_start = time.monotonic()
        app.wait_synced()
        init_sync_s = time.monotonic() - t_start
        idle_wait = app.wait_synced()  # wait-synced's own floor on a synced volume
        app.check_alive()
        base = app.status()
        base_lsn = base["captured_lsn"]
        gen = LoadGen(app.sock, app.volume, rate, seconds)

        def probe(now):
            if replica_fd[0] is None:
                try:
                    replica_fd[0] = os.open(app.target, os.O_RDONLY)
                except FileNotFoundError:
                    return None
            return gen.replica_lag(replica_fd[0], now)

        sampler = Sampler(app, probe=probe)
        agent_pid = app.procs["agent"].p.pid
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
        nan = float("nan")
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
        ingest = ((window[-1][1]["bytes_received"] - window[0][1]["bytes_received"]) /
                  (window[-1][0] - window[0][0]) / MB) if len(window) > 1 else nan
        probe_w = [v for t, v in sampler.probes if t0 <= t <= t_end]
        probe_all = [v for t, v in sampler.probes if t >= t0]
        last = window[-1][1] if window else {"dirty_bytes": 0, "pending_bytes": 0}
        same, why = app.replica_identical()
        ctx.commands["lag"] = [
            *app.commands(),
            f"# bench.py load generator: NBD over unix:{app.sock}, export {app.volume}, "
            f"{rate / MB:.0f} MB/s, {seconds} s, WRITE 4..64 KiB at 4 KiB-aligned offsets, "
            f"queue depth {gen.depth}",
            sh_quote([cdptest.binary("cdpctl"), "--server", app.server, "status", "--json"]) +
            "   # started every 100 ms",
            sh_quote([cdptest.binary("cdpctl"), "--server", app.server, "wait-synced", "--volume",
                      app.volume, "--timeout", "900"]) + "   # after the load: drain time"]
        failed = False
        return {
            "init_sync_s": init_sync_s, "journal_ingest_mb_s": ingest,
            "requests": res["requests"], "bytes": res["bytes"],
            "errors": res["errors"], "achieved_mb_s": res["mb_s"], "load_s": t_end - t0,
            "lag_p50": pct(lags, 50), "lag_p99": pct(lags, 99), "lag_max": max(lags or [0]),
            "lag_max_incl_drain": max([v["lag_seconds"] for _, v in samples] or [0]),
            "probe_p50": pct(probe_w, 50), "probe_p99": pct(probe_w, 99),
            "probe_max": max(probe_w or [nan]), "probe_max_incl_drain": max(probe_all or [nan]),
            "probe_n": len(probe_w), "markers": res["markers"], "idle_wait_synced_s": idle_wait,
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
        if replica_fd[0] is not None:
            os.close(replica_fd[0])
        app.close(failed)


# --- report ------------------------------------------------------------------------------------
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


def thread_lines(meter):
    """One line per daemon: per thread (merged by name) seconds on CPU / seconds runnable but
    waiting for a CPU."""
    out = []
    for n in ("cdp-agent", "journal-server", "replicator"):
        th = meter.get("threads", {}).get(n)
        if th:
            parts = ", ".join(f"{k} {c:.2f} / {w:.2f}" for k, (c, w) in th.items()
                              if c + w >= 0.005)
            out.append(f"- {n}: {parts or 'all threads < 0.01 s'}")
    return out


def thread_story(meter, proc, label):
    """"journal-server's main thread was on CPU 40 %, runnable but waiting for a CPU 12 % and
    blocked (I/O, fsync, poll) 48 % of the window." """
    th = meter.get("threads", {}).get(proc, {}).get(label)
    if not th:
        return ""
    c, wt = th
    w = meter["wall"]
    blocked = max(0.0, 1 - (c + wt) / w)
    return (f"{proc}'s {label} thread (receive, group commit, tail serving) was on CPU "
            f"{100 * c / w:.0f} %, runnable but waiting for a CPU {100 * wt / w:.0f} % and "
            f"blocked or idle (disk writes, fsync, poll) {100 * blocked:.0f} % of the window.")


def cpu_line(m, names):
    parts = [f"{n} {m['cpu'][n]:.2f}" for n in names if n in m["cpu"]]
    return ", ".join(parts)


SPILL_BYTES = 8 * MiB  # a dirty-bitmap backlog this big means "the journal fell behind"


def spilled(lag):
    """The journal fell behind for real: a sizeable dirty backlog or a probe p99 over 1 s."""
    return lag["max_dirty_bytes"] >= SPILL_BYTES or lag["probe_p99"] > 1


def lag_story(lag, title):
    """The narrative of one lag run."""
    m = lag["meter"]
    parts = [
        f"**{title}** The load generator achieved {lag['achieved_mb_s']:.1f} MB/s "
        f"({lag['requests']} writes; NBD write latency p50 {lag['lat_p50_ms']:.2f} ms, p99 "
        f"{lag['lat_p99_ms']:.2f} ms). `lag_seconds` p99 was {lag['lag_p99']:.3f} s."]
    if 0 < lag["max_dirty_bytes"] and not spilled(lag):
        parts.append(
            f"The agent's buffer filled briefly ({fmt(lag['first_dirty_s'], 1)} s into the "
            f"run; dirty bytes in {100 * lag['dirty_frac']:.0f} % of the samples, peak "
            f"{fmt_bytes(lag['max_dirty_bytes'])}): those writes went to the dirty bitmap and "
            f"were resynced. `lag_seconds` does not see such writes and the LSN-based client "
            f"cross-check no longer applies, but the replica probe (marker blocks read from "
            f"the replica image: p99 {lag['probe_p99']:.3f} s, max {lag['probe_max']:.3f} s, "
            f"{lag['probe_max_incl_drain']:.3f} s including the drain) shows the effect was "
            f"small. Drain after the load: {lag['drain_s']:.2f} s (idle `wait-synced` floor "
            f"{lag['idle_wait_synced_s']:.2f} s).")
    elif lag["max_dirty_bytes"] > 0:
        parts.append(
            f"But the journal did not keep up: the agent's 32 MiB buffer filled "
            f"{fmt(lag['first_dirty_s'], 1)} s into the run and from then on writes were "
            f"only marked in the dirty bitmap ({100 * lag['dirty_frac']:.0f} % of the "
            f"samples had dirty bytes, peak {fmt_bytes(lag['max_dirty_bytes'])}; "
            f"{fmt_bytes(lag['exposed_at_end_bytes'])} were pending or dirty when the "
            f"load stopped). Dirty-bitmap writes have no LSN until the resync ships them, "
            f"so `lag_seconds` (age of the oldest captured, unapplied record) does not see "
            f"them and **understates the real lag**; the LSN-based client cross-check is "
            f"invalid for the same reason. The replica probe, which reads marker blocks "
            f"from the replica image, does see them: p50 {lag['probe_p50']:.2f} s, p99 "
            f"{lag['probe_p99']:.2f} s, max {lag['probe_max']:.2f} s during the load and "
            f"{lag['probe_max_incl_drain']:.2f} s including the drain ({lag['drain_s']:.1f} s "
            f"from load end to `wait-synced`, whose own floor is "
            f"{lag['idle_wait_synced_s']:.2f} s).")
    else:
        cl = (f"p99 {lag['client_lag_p99']:.3f} s, max {lag['client_lag_max']:.3f} s"
              if lag["client_valid"] else "n/a")
        parts.append(
            f"The agent never fell back to the dirty bitmap, so every write had an LSN; the "
            f"LSN-based client cross-check gives {cl} and the replica probe (marker blocks "
            f"read from the replica image) p99 {lag['probe_p99']:.3f} s, max "
            f"{lag['probe_max']:.3f} s. Drain after the load: {lag['drain_s']:.2f} s "
            f"(idle `wait-synced` floor {lag['idle_wait_synced_s']:.2f} s). Headroom: the "
            f"agent's buffer peaked at {lag['max_pending_bytes'] / MiB:.1f} of 32 MiB; past "
            f"32 MiB it would have fallen back to the dirty bitmap.")
    ing = lag["journal_ingest_mb_s"]
    amp = ""
    if spilled(lag) and ing == ing and ing > lag["achieved_mb_s"]:
        amp = (" — more than offered, because the dirty bitmap tracks 64 KiB regions "
               "(cdp-agent/include/cdp/agent/dirty_bitmap.h) and the resync ships whole "
               "regions, so a 4-64 KiB random write costs one or two 64 KiB regions once it "
               "has spilled: the spill makes the backlog grow faster")
    parts.append(
        f"The journal ingested {fmt(ing, 1)} MB/s of payload during the load against "
        f"{lag['achieved_mb_s']:.1f} MB/s offered{amp}. "
        f"{thread_story(m, 'journal-server', 'main')}")
    parts.append(
        f"CPU-seconds over the {m['wall']:.1f} s window: "
        + cpu_line(m, ["cdp-agent", "journal-server", "replicator", "bench.py",
                       "reaped children"]) +
        f" (bench.py = load generator + sampler threads, reaped children = cdpctl): the "
        f"measurement itself took "
        f"{(m['cpu']['bench.py'] + m['cpu']['reaped children']) / m['wall']:.2f} cores and "
        f"other work on the host {m['others_cores']:.2f} cores of {m['ncpu']}. The agent's "
        f"peak RSS (VmHWM since "
        f"start) was {lag['agent_hwm_kib'] / 1024:.1f} MiB against "
        f"{lag['agent_hwm_before_kib'] / 1024:.1f} MiB before the load, with up to "
        f"{lag['max_pending_bytes'] / MiB:.1f} MiB of payload pending in its buffer."
        + (" The 32 MiB --buffer-mib limit counts record payloads only; not profiled, but "
           "the likely rest is per-record overhead (each 4-64 KiB payload is its own heap "
           "string, freed from another thread, so malloc arenas fragment), payloads still "
           "held by ZeroMQ after the queue trimmed them, and the resync's region buffers."
           if lag["agent_hwm_kib"] > 64 * 1024 else ""))
    return " ".join(parts)


def analysis(args, tp, lags, disk):
    """Sentences derived from the measurements, so they stay true when the run is repeated.
    The structural remarks (threads, flags) come from reading the code at the time of writing."""
    out = []
    if disk:
        out.append(
            f"**The disk.** Under the work dir, 1 MiB sequential writes with one final fdatasync "
            f"run at {disk['seq_mb_s']:.0f} MB/s; a 4 KiB append + fdatasync takes "
            f"{disk['lat4k'][0]:.1f} ms (p90 {disk['lat4k'][1]:.1f} ms), a 1 MiB append + "
            f"fdatasync {disk['lat1m'][0]:.1f} ms (p90 {disk['lat1m'][1]:.1f} ms). Every "
            f"process of the appliance writes to this one disk.")
    if tp:
        cdp = [r["cdp"] for r in tp]
        q = [r["qemu"] for r in tp]
        copy = median([c["copy_s"] for c in cdp])
        total = median([c["total_s"] for c in cdp])
        dur = median([c["durable_at_s"] for c in cdp if c["durable_at_s"] is not None])
        app = median([c["applied_at_s"] for c in cdp if c["applied_at_s"] is not None])
        qtot = median([x["total_s"] for x in q])
        qcopy = median([x["copy_s"] for x in q])
        floor = median([c["idle_wait_synced_s"] for c in cdp])
        qmb = median([x["mb_s"] for x in q])
        emb = median([c["export_mb_s"] for c in cdp])
        data_mb = args.mib * MiB / MB
        out.append(
            f"**Where the time goes (throughput, medians).** qemu-nbd: nbdcopy {qcopy:.2f} s + "
            f"sync = {qtot:.2f} s. Through the appliance nbdcopy itself finishes after "
            f"{copy:.2f} s ({emb / qmb:.2f}x qemu-nbd's rate"
            + (", so NBD capture is not the bottleneck" if emb >= 0.8 * qmb else "")
            + f"); then {fmt(dur - copy, 2)} s pass until the journal has every record durable "
            f"(at ~{fmt(dur, 2)} s: end-to-end journal ingest ~{fmt(data_mb / dur, 0)} MB/s), "
            f"{fmt(app - dur, 2)} s more until the replica has applied the last record (at "
            f"~{fmt(app, 2)} s), and `wait-synced` returns at {total:.2f} s (times from the "
            f"100 ms status samples). `wait-synced` waits for two fresh agent reports (sent "
            f"every 100 ms and at once when its queue drains), which costs ~{floor:.2f} s even on an idle, synced volume "
            f"(measured before each copy). So the gap to qemu-nbd is the journal: it cannot "
            f"ingest as fast as the client writes, the agent's buffer fills, and the copy's "
            f"tail is journaled (and partly resynced) after nbdcopy has finished.")
        mid = sorted(cdp, key=lambda c: c["total_s"])[len(cdp) // 2]
        m = mid["meter"]
        w = m["wall"]
        pipe = (m["cpu"]["cdp-agent"] + m["cpu"]["journal-server"] + m["cpu"]["replicator"] +
                mid["nbdcopy_cpu"])
        harness = m["cpu"]["bench.py"] + m["cpu"]["reaped children"] - mid["nbdcopy_cpu"]
        total_cores = (pipe + harness) / w + m["others_cores"]
        qm = sorted(q, key=lambda c: c["total_s"])[len(q) // 2]
        out.append(
            f"CPU in the median appliance rep ({w:.1f} s): the pipeline used {pipe:.2f} "
            f"CPU-seconds ({pipe / w:.2f} cores: agent {m['cpu']['cdp-agent']:.2f}, "
            f"journal-server {m['cpu']['journal-server']:.2f}, replicator "
            f"{m['cpu']['replicator']:.2f}, nbdcopy {mid['nbdcopy_cpu']:.2f}), the measurement "
            f"itself {harness:.2f} (cdpctl status every 100 ms + bench.py), other work on the "
            f"host {m['others_cores']:.2f} cores — {total_cores:.2f} of {m['ncpu']} cores in "
            f"all. The median qemu-nbd rep used {qm['meter']['cpu']['qemu-nbd']:.2f} "
            f"(qemu-nbd) + {qm['nbdcopy_cpu']:.2f} (nbdcopy) CPU-seconds in "
            f"{qm['meter']['wall']:.1f} s. {thread_story(m, 'journal-server', 'main')}")
        data = args.mib * MiB
        jb = median([c["journal_disk_bytes"] for c in cdp])
        wb = {n: median([c["meter"]["io_write_bytes"].get(n) or 0 for c in cdp])
              for n in ("cdp-agent", "journal-server", "replicator")}
        out.append(
            f"Each byte the client writes is written several times on this one disk: to the "
            f"source device by the agent, into RocksDB by journal-server (the payload goes "
            f"through the WAL, fsynced per group commit, and again into blob files when the "
            f"memtable is flushed; the journal directory occupies {jb / MiB:.0f} MiB after the "
            f"copy), and to the replica by the "
            f"replicator. /proc/PID/io write_bytes during the copy (median): agent "
            f"{wb['cdp-agent'] / MiB:.0f} MiB, journal-server {wb['journal-server'] / MiB:.0f} "
            f"MiB, replicator {wb['replicator'] / MiB:.0f} MiB for {data / MiB:.0f} MiB of data "
            f"(buffered writes are charged when writeback happens, so some land after the "
            f"window). qemu-nbd writes the data once. journal-server runs receive, group "
            f"commit (fsync) and tail serving on one thread (journal-server/server.cc Run), so "
            f"the replicator's reads wait behind every commit.")
        dirty = max(c["max_dirty_bytes"] for c in cdp)
        pend = max(c["max_pending_bytes"] for c in cdp)
        nd = sum(1 for c in cdp if c["max_dirty_bytes"] > 0)
        out.append(
            f"The agent's 32 MiB send buffer peaked at {pend / MiB:.1f} MiB pending; "
            + (f"in {nd} of {len(cdp)} reps it overflowed into the dirty bitmap (up to "
               f"{dirty / MiB:.1f} MiB dirty), so those regions were re-read from the source "
               f"and resent by the resync before `wait-synced` could return."
               if dirty else "it never fell back to the dirty bitmap.")
            + " The export-only figure is the client-visible speed: in async mode a write "
              "completes once it is on the source device, whatever the journal's state. The "
              "agent serves one request at a time per connection and offers no multi-conn; "
              "qemu-nbd does not offer multi-conn for a writable export either, so nbdcopy "
              "uses one connection to each.")
    if lags:
        fell = [i for i, x in enumerate(lags) if spilled(x)]
        touched = [i for i, x in enumerate(lags) if x["max_dirty_bytes"] > 0 and not spilled(x)]
        n = len(lags)
        if n > 1:
            out.append(
                f"**Lag runs.** In {len(fell)} of {n} runs the journal fell behind (dirty-"
                f"bitmap backlog ≥ {SPILL_BYTES // MiB} MiB or replica-probe p99 > 1 s)"
                + (f"; {len(touched)} more touched the dirty bitmap briefly" if touched else "")
                + "; per-run replica-probe p99: "
                + " / ".join(f"{x['probe_p99']:.2f}" for x in lags) + " s; other work on the "
                "host: " + " / ".join(f"{x['meter']['others_cores']:.2f}" for x in lags)
                + " cores."
                + (" The outcome is bimodal: while the journal keeps up, lag stays under a "
                   "second; once the agent's buffer fills, the backlog spirals."
                   if 0 < len(fell) < n else "")
                + (f" Other work on the host was about the same in every run, so "
                   f"{args.rate:.0f} MB/s of small random writes sits at the tipping point of what the pipeline "
                   "sustains on this machine: small disturbances decide whether the buffer "
                   "fills." if 0 < len(fell) < n and
                   max(x["meter"]["others_cores"] for x in lags) -
                   min(x["meter"]["others_cores"] for x in lags) < 0.2 else ""))
        worst = max(range(n), key=lambda i: lags[i]["probe_p99"])
        best = min(range(n), key=lambda i: lags[i]["probe_p99"])
        label = (lambda i: f"Lag run {i + 1}" + (" (worst)." if n > 1 and i == worst else
                                                 " (best)." if n > 1 else "."))
        out.append(lag_story(lags[worst], label(worst)))
        if n > 1 and best != worst and spilled(lags[best]) != spilled(lags[worst]):
            out.append(lag_story(lags[best], label(best)))
    tips = []
    lag = max(lags, key=lambda x: x["probe_p99"]) if lags else None
    ths = [x["meter"] for x in ([r["cdp"] for r in tp] + list(lags))]
    contended = [mt for mt in ths
                 if (mt.get("threads", {}).get("journal-server", {}).get("main", (0, 0))[1] >
                     mt.get("threads", {}).get("journal-server", {}).get("main", (0, 0))[0])]
    if contended:
        tips.append("on this host the journal's single loop thread spends more time waiting "
                    "for a CPU than running, in " + f"{len(contended)} of {len(ths)} measured "
                    "windows; rerunning on a quiet machine with more cores would separate "
                    "contention from the design's own limits")
    if lag and spilled(lag):
        tips.append(f"`lag_seconds` ignores data that is only in the dirty bitmap, so in "
                    f"the worst run it reported p99 {lag['lag_p99']:.2f} s while the replica "
                    f"probe saw p99 "
                    f"{lag['probe_p99']:.2f} s; a status field for the dirty backlog's age (or "
                    f"counting it in the lag) would make the figure honest")
        over = lag["agent_hwm_kib"] > 64 * 1024
        tips.append("a larger --buffer-mib only postpones the spill"
                    + (" (and the agent is already above the 64 MiB RSS target with the "
                       "default 32 MiB)" if over else "")
                    + "; the journal's sustained ingest rate is what has to exceed the "
                      "offered load")
    if tp:
        floor = median([r["cdp"]["idle_wait_synced_s"] for r in tp])
        tot = median([r["cdp"]["total_s"] for r in tp])
        tips.append(f"`wait-synced`'s two-report wait (~{floor:.2f} s) is "
                    f"{100 * floor / tot:.0f} % of the appliance's time in figure 1")
    if tips:
        out.append("**What would move the figures (suggestions from the numbers above, not "
                   "measured here):** " + "; ".join(tips) + ".")
    return out


def lag_rows(lag):
    """(measure, value) rows of one lag run for the report table."""
    m = lag["meter"]
    cl = (f"{lag['client_lag_p50']:.3f} / {lag['client_lag_p99']:.3f} / "
          f"{lag['client_lag_max']:.3f} s" if lag["client_valid"] else
          "n/a (dirty-bitmap fallback: LSNs no longer map to writes)")
    return [
        ("Writes sent / bytes / NBD errors",
         f"{lag['requests']} / {lag['bytes'] / MB:.0f} MB / {lag['errors']}"),
        ("Achieved rate (first write → last reply)", f"{lag['achieved_mb_s']:.1f} MB/s over "
         f"{lag['load_s']:.1f} s"),
        ("NBD write latency p50 / p99 / max", f"{lag['lat_p50_ms']:.2f} / "
         f"{lag['lat_p99_ms']:.2f} / {lag['lat_max_ms']:.1f} ms"),
        ("`lag_seconds` p50 / p99 / max (load window)", f"{lag['lag_p50']:.3f} / "
         f"{lag['lag_p99']:.3f} / {lag['lag_max']:.3f} s"),
        ("`lag_seconds` max including the drain", f"{lag['lag_max_incl_drain']:.3f} s"),
        ("Client-side lag cross-check from LSNs p50 / p99 / max", cl),
        ("Replica probe lag p50 / p99 / max (load window)",
         f"{lag['probe_p50']:.3f} / {lag['probe_p99']:.3f} / {lag['probe_max']:.3f} s"),
        ("Replica probe lag max including the drain / probes / marker writes",
         f"{lag['probe_max_incl_drain']:.3f} s / {lag['probe_n']} / {lag['markers']}"),
        ("Status samples in window / failed / skipped (4 in flight) / mean spacing",
         f"{lag['samples']} / {lag['sample_failures']} / {lag['sample_skipped']} / "
         f"{fmt(lag['sample_period_actual_ms'], 0)} ms"),
        ("Drain: load end → `wait-synced` returns (idle `wait-synced` floor)",
         f"{lag['drain_s']:.2f} s ({lag['idle_wait_synced_s']:.2f} s)"),
        ("Dirty-bitmap fallback: first at / samples with dirty bytes / peak",
         f"{fmt(lag['first_dirty_s'], 1)} s / {100 * lag['dirty_frac']:.0f} % / "
         f"{fmt_bytes(lag['max_dirty_bytes'])}" if lag["max_dirty_bytes"] else "none"),
        ("Pending + dirty when the load stopped (not yet journaled)",
         f"{lag['exposed_at_end_bytes'] / MiB:.1f} MiB"),
        ("Max pending in the agent's buffer", f"{lag['max_pending_bytes'] / MiB:.1f} MiB"),
        ("Journal ingest during the load (Δ bytes_received / Δt)",
         f"{fmt(lag['journal_ingest_mb_s'], 1)} MB/s"),
        ("Records journaled for the run (incl. resync)", f"{lag['records']}"),
        ("Agent CPU", f"{lag['agent_cpu_pct']:.1f} % of one core "
         f"({m['cpu']['cdp-agent']:.2f} CPU-s in {m['wall']:.1f} s)"),
        ("journal-server / replicator CPU",
         f"{100 * m['cpu']['journal-server'] / m['wall']:.1f} % / "
         f"{100 * m['cpu']['replicator'] / m['wall']:.1f} % of one core"),
        ("Load generator + sampler (bench.py) / cdpctl CPU",
         f"{100 * m['cpu']['bench.py'] / m['wall']:.1f} % / "
         f"{100 * m['cpu']['reaped children'] / m['wall']:.1f} % of one core"),
        ("Other work on the host during the window", f"{m['others_cores']:.2f} cores of "
         f"{m['ncpu']} (load {m['load_before']} → {m['load_after']})"),
        ("Agent VmHWM / VmHWM before the load / VmRSS at the end",
         f"{lag['agent_hwm_kib'] / 1024:.1f} / {lag['agent_hwm_before_kib'] / 1024:.1f} / "
         f"{lag['agent_rss_end_kib'] / 1024:.1f} MiB"),
        ("journal-server / replicator VmHWM",
         f"{lag['hwm_kib']['journal-server'] / 1024:.1f} / "
         f"{lag['hwm_kib']['replicator'] / 1024:.1f} MiB"),
        ("Initial sync of the empty volume (start → first `wait-synced`)",
         f"{lag['init_sync_s']:.2f} s"),
        ("Replica == source after the drain", "yes" if lag["replica_identical"] else
         "NO: " + lag["cmp"]),
    ]


def write_report(args, ctx, info, tp, lags, disk, started, load_start, load_end, path):
    L = []
    q = "--quick " if args.quick else ""
    L.append("# Data-path benchmark results")
    L.append("")
    L.append("Generated by `bench/run.sh` (driver: `bench/bench.py` with `bench/benchlib.py` and "
             "`bench/nbd_load.py`, python3 standard library only); rerun with "
             "`bash bench/run.sh` from the repository root, or "
             "`bash bench/run.sh --quick` for a smoke check (64 MiB copies, one 10 s lag run "
             "instead of three of 30 s; writes `bench/RESULTS-quick.md`). Needs the binaries "
             "in `build/` "
             "(`cmake --build build`), qemu-utils, libnbd-bin, python3. Everything runs on "
             "loopback in a temp dir under /tmp that is removed afterwards. Nothing is "
             "asserted: targets are listed next to the figures. MB = 10^6 bytes, "
             "MiB = 2^20 bytes.")
    L.append("")
    end = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    L.append(f"- Date: {started} → {end} "
             f"({'quick smoke check' if args.quick else 'full run'}: `bash bench/run.sh {q}`)"
             .replace(" `)", "`)"))
    L.append(f"- Machine: nproc {info['nproc']} ({info['cpu']}), {info['mem']} RAM, "
             f"{info['kernel']}")
    L.append(f"- Disk under /tmp (`df -h --output=source,fstype,size,avail`): "
             f"`{info['df']}`")
    if disk:
        L.append(f"- Disk probe (work dir): {disk['mib']} MiB sequential + fdatasync "
                 f"{disk['seq_mb_s']:.0f} MB/s; 4 KiB append + fdatasync p50 "
                 f"{disk['lat4k'][0]:.1f} ms / p90 {disk['lat4k'][1]:.1f} ms; 1 MiB append + "
                 f"fdatasync p50 {disk['lat1m'][0]:.1f} ms / p90 {disk['lat1m'][1]:.1f} ms")
    L.append(f"- Load average (1/5/15 min): {load_start} at start, {load_end} at the end. The "
             f"machine is shared (others build on it), so figures are noisy; the CPU used by "
             f"other work during each measured phase is given below (\"others\", in cores).")
    L.append(f"- Code: {args.git}; binaries copied from `{args.build_dir}` at start "
             f"(CMAKE_BUILD_TYPE {args.build_type}; built: {args.bin_times}); "
             f"{info['nbdcopy']}; {info['qemu-nbd']}")
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
        eratio = median([r["cdp"]["export_mb_s"] / r["qemu"]["mb_s"] for r in tp])
        n = len(tp)
        L.append(f"| 1. nbdcopy {args.mib} MiB → agent export, until `wait-synced` returns "
                 f"(median of {n}) | {cdp_mb:.1f} MB/s | |")
        L.append(f"| 1. nbdcopy {args.mib} MiB → `qemu-nbd -f raw -t`, until `sync FILE` "
                 f"returns (median of {n}) | {q_mb:.1f} MB/s | |")
        L.append(f"| 1. Throughput ratio appliance / qemu-nbd (median of per-rep ratios) | "
                 f"**{ratio:.2f}** | ≥ 0.8 {'✅' if ratio >= 0.8 else '❌ missed'} |")
        L.append(f"| 1. Agent export only (until nbdcopy exits, before `wait-synced`; median) | "
                 f"{exp_mb:.1f} MB/s (ratio {eratio:.2f}) | |")
    if lags:
        n = len(lags)
        med = lambda k: median([x[k] for x in lags])  # noqa: E731
        per = lambda k, f="{:.2f}": " / ".join(f.format(x[k]) for x in lags)  # noqa: E731
        of = f"median of {n} runs" if n > 1 else "1 run"
        nfell = sum(1 for x in lags if spilled(x))
        lag_note = "" if not nfell else (
            f" ⚠ understated in the {nfell} of {n} run(s) where the journal fell behind and "
            f"writes went to the dirty bitmap, see §2")
        L.append(f"| 2. `lag_seconds` p50 / p99 / max at {args.rate:.0f} MB/s for "
                 f"{args.seconds} s ({of}; per-run p99: {per('lag_p99')} s) | "
                 f"{med('lag_p50'):.3f} / **{med('lag_p99'):.3f}** / {med('lag_max'):.3f} s"
                 f"{lag_note} | p99 ≤ 1 s "
                 + ("✅" if med("lag_p99") <= 1 and not nfell else
                    "❌ missed" if med("lag_p99") > 1 else
                    f"⚠ met by `lag_seconds` only: the replica probe's p99 was ≤ 1 s in "
                    f"{sum(1 for x in lags if x['probe_p99'] <= 1)} of {n} runs")
                 + " |")
        L.append(f"| 2. Replica probe lag p50 / p99 / max ({of}; per-run p99: "
                 f"{per('probe_p99')} s; marker blocks read from the replica, see §2) | "
                 f"{med('probe_p50'):.3f} / {med('probe_p99'):.3f} / {med('probe_max'):.3f} s"
                 f" | cross-check, not the contract's figure |")
        L.append(f"| 2. Drain after the load (load end → `wait-synced` returns; per run) | "
                 f"{per('drain_s')} s | |")
        L.append(f"| 2. Achieved write rate ({of}) | {med('achieved_mb_s'):.1f} MB/s | "
                 f"{args.rate:.0f} MB/s |")
        L.append(f"| 3. Agent CPU during (2) ({of}; per run: {per('agent_cpu_pct', '{:.1f}')} %)"
                 f" | {med('agent_cpu_pct'):.1f} % of one core | |")
        hwm = max(x["agent_hwm_kib"] for x in lags)
        L.append(f"| 3. Agent peak RSS (VmHWM; highest of {n}; per run: "
                 + " / ".join(f"{x['agent_hwm_kib'] / 1024:.1f}" for x in lags) + " MiB) | "
                 f"**{hwm / 1024:.1f} MiB** | ≤ 64 MiB "
                 f"{'✅' if hwm <= 64 * 1024 else '❌ missed'} |")
    L.append("")
    if tp:
        L.append("## 1. Throughput: nbdcopy into the agent's export vs qemu-nbd")
        L.append("")
        L.append(f"A {args.mib} MiB file of random bytes (page-cached) is copied with plain "
                 f"`nbdcopy FILE URI` into (a) the cdp-agent's unix-socket export (`--ack "
                 f"async`) with journal-server and replicator running — fresh journal, sparse "
                 f"source and replica each rep; the initial sync of the empty device is finished "
                 f"(`wait-synced`) before the clock starts — timed until `cdpctl wait-synced` "
                 f"returns; and (b) `qemu-nbd -f raw -t -k SOCK FILE` serving a fresh sparse "
                 f"file of the same size, timed until nbdcopy exits plus `sync FILE`. The order "
                 f"alternates between reps. Every appliance rep ends with `cmp source replica`. "
                 f"\"durable at\" / \"applied at\" are the first 100 ms status samples showing "
                 f"the journal's durable LSN / the replica's applied LSN at the final captured "
                 f"LSN.")
        L.append("")
        L.append("| Rep | appliance total s | MB/s | export-only s | MB/s | journal durable at s | "
                 "replica applied at s | qemu-nbd copy s | + sync s | MB/s | ratio | replica == "
                 "source | others (cores) appliance / qemu |")
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
        L.append("CPU-seconds during the appliance copy (start → `wait-synced` returns), and "
                 "what the agent and journal did:")
        L.append("")
        L.append("| Rep | agent | journal-server | replicator | nbdcopy | cdpctl (sampling) | "
                 "qemu-nbd / its nbdcopy (qemu run) | journal ingest MB/s | records | max pending "
                 "MiB | max dirty MiB | journal dir MiB | idle `wait-synced` s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for i, r in enumerate(tp):
            c = r["cdp"]
            cpu = c["meter"]["cpu"]
            L.append(f"| {i + 1} | {cpu['cdp-agent']:.2f} | {cpu['journal-server']:.2f} | "
                     f"{cpu['replicator']:.2f} | {c['nbdcopy_cpu']:.2f} | "
                     f"{cpu['reaped children'] - c['nbdcopy_cpu']:.2f} | "
                     f"{r['qemu']['meter']['cpu']['qemu-nbd']:.2f} / "
                     f"{r['qemu']['nbdcopy_cpu']:.2f} | {fmt(c['journal_mb_s'], 0)} | "
                     f"{c['records']} | "
                     f"{c['max_pending_bytes'] / MiB:.1f} | {c['max_dirty_bytes'] / MiB:.1f} | "
                     f"{c['journal_disk_bytes'] / MiB:.0f} | {c['idle_wait_synced_s']:.2f} |")
        L.append("")
        L.append("\"journal ingest\" = payload bytes the journal received during the copy / time "
                 "until it had them all durable. Per thread in the median rep, from "
                 "/proc/PID/task/TID/schedstat: seconds on CPU / seconds runnable but waiting "
                 "for a CPU (threads with the same name merged; threads that exit inside the "
                 "window are not counted):")
        L.append("")
        mid = sorted(tp, key=lambda r: r["cdp"]["total_s"])[len(tp) // 2]["cdp"]["meter"]
        L.extend(thread_lines(mid))
        L.append("")
    if lags:
        L.append("## 2–3. Replication lag at a steady rate; agent CPU and memory")
        L.append("")
        L.append(f"A python NBD client in bench.py (fixed newstyle, NBD_OPT_GO with export name "
                 f"= volume, simple replies) writes random bytes at random 4 KiB-aligned "
                 f"offsets of a {args.lag_mib} MiB volume, lengths 4..64 KiB in 4 KiB steps, "
                 f"paced to {args.rate:.0f} MB/s by a byte budget with up to 16 requests in "
                 f"flight, for {args.seconds} s, on one connection; {len(lags)} run(s), each on a "
                 f"fresh appliance. `cdpctl status --json` is "
                 f"started every 100 ms (without waiting for the previous one); percentiles "
                 f"are over the samples that arrived inside the load window. Because "
                 f"`lag_seconds` is "
                 f"computed by the journal-server from LSNs, the generator also runs its own "
                 f"probe: every 50 ms it writes a timestamp into one of 16 reserved 4 KiB blocks "
                 f"spread over the volume (round robin; counted in the rate), and every 100 ms "
                 f"the sampler reads those blocks from the replica image and takes the age of "
                 f"the oldest marker write the replica does not hold yet (resolution ~50 ms). The "
                 f"probe counts a block as soon as the replica file shows it, before the "
                 f"replicator's fdatasync and cursor save that `applied_lsn` waits for, so "
                 f"while every write has an LSN it reads lower than `lag_seconds`; it does not "
                 f"depend on LSNs, so it stays valid when the agent falls back to its dirty "
                 f"bitmap. "
                 f"Agent CPU is "
                 f"utime+stime from /proc/PID/stat over the load window; RSS is VmHWM from "
                 f"/proc/PID/status right after it.")
        L.append("")
        table = [lag_rows(x) for x in lags]
        L.append("| Measure | " + " | ".join(f"run {i + 1}" for i in range(len(lags))) + " |")
        L.append("|---|" + "---|" * len(lags))
        for j, (k, _) in enumerate(table[0]):
            L.append(f"| {k} | " + " | ".join(t[j][1] for t in table) + " |")
        L.append("")
        L.append("Per thread over the load window (schedstat): seconds on CPU / seconds "
                 "runnable but waiting for a CPU:")
        L.append("")
        for i, x in enumerate(lags):
            if len(lags) > 1:
                L.append(f"- run {i + 1}:")
                L.extend("  " + line for line in thread_lines(x["meter"]))
            else:
                L.extend(thread_lines(x["meter"]))
        L.append("")
    L.append("## Analysis")
    L.append("")
    for para in analysis(args, tp, lags, disk):
        L.append(para)
        L.append("")
    L.append("## Exact commands")
    L.append("")
    L.append("Paths are from this run's temp dir (removed afterwards); ports are picked free; "
             "`bin/` holds copies of the build's binaries.")
    L.append("")
    L.append("```sh")
    L.append(f"bash bench/run.sh {q}".strip())
    for k, title in (("cdp", "1a. appliance (each rep, fresh dir; first `wait-synced` before "
                             "the clock starts)"),
                     ("qemu", "1b. qemu-nbd (each rep, fresh sparse file)"),
                     ("lag", "2-3. lag run")):
        if k in ctx.commands:
            L.append(f"# {title}")
            L.extend(ctx.commands[k])
    L.append("```")
    L.append("")
    # Keep the sections the other drivers maintain in the same file (bench/trace.sh, ...).
    text = with_kept_sections("\n".join(L), path)
    with open(path, "w") as f:
        f.write(text)
    return text


def print_table(tp, lags, args):
    print()
    print("=" * 78)
    print(f"{'figure':<52}{'result':>26}")
    print("-" * 78)
    if tp:
        cdp_mb = median([r["cdp"]["mb_s"] for r in tp])
        q_mb = median([r["qemu"]["mb_s"] for r in tp])
        ratio = median([r["cdp"]["mb_s"] / r["qemu"]["mb_s"] for r in tp])
        exp_mb = median([r["cdp"]["export_mb_s"] for r in tp])
        print(f"{'1. appliance MB/s (copy → wait-synced), median':<52}{cdp_mb:>26.1f}")
        print(f"{'1. qemu-nbd MB/s (copy + sync), median':<52}{q_mb:>26.1f}")
        print(f"{'1. ratio (target >= 0.8)':<52}{ratio:>26.2f}")
        print(f"{'1. agent export only MB/s, median':<52}{exp_mb:>26.1f}")
    if lags:
        n = len(lags)
        med = lambda k: median([x[k] for x in lags])  # noqa: E731
        per = lambda k, f="{:.2f}": "/".join(f.format(x[k]) for x in lags)  # noqa: E731
        tag = f" (median of {n})" if n > 1 else ""
        v = f"{med('lag_p50'):.3f}/{med('lag_p99'):.3f}/{med('lag_max'):.3f}"
        print(f"{'2. lag_seconds p50/p99/max' + tag:<52}{v:>26}")
        print(f"{'   per-run lag_seconds p99 (target <= 1 s)':<52}{per('lag_p99'):>26}")
        print(f"{'2. replica probe lag p99 per run, s':<52}{per('probe_p99'):>26}")
        print(f"{'2. drain (load end -> wait-synced) per run, s':<52}{per('drain_s'):>26}")
        dirty = "/".join(f"{x['max_dirty_bytes'] / MiB:.1f}" for x in lags)
        print(f"{'2. peak dirty-bitmap MiB per run':<52}{dirty:>26}")
        print(f"{'2. achieved MB/s' + tag:<52}{med('achieved_mb_s'):>26.1f}")
        print(f"{'3. agent CPU % of one core' + tag:<52}{med('agent_cpu_pct'):>26.1f}")
        hwm = "/".join(f"{x['agent_hwm_kib'] / 1024:.1f}" for x in lags)
        print(f"{'3. agent VmHWM MiB per run (target <= 64)':<52}{hwm:>26}")
    print("=" * 78)


class Ctx:
    """One run: its work dir, the children it started, the commands the report shows."""

    def __init__(self, args):
        self.work = args.work
        self.children = Children(args.pidfile)
        self.commands = {}

    def scene(self, name, size):
        """A fresh appliance for a `size`-byte volume in a new dir `name`-XXXXXX under work."""
        return BenchScene(self.children, self.work, name, size)


def main():
    ap = driver_arguments(__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=50, help="MB/s (10^6 B/s)")
    ap.add_argument("--lag-mib", type=int, default=1024)
    ap.add_argument("--lag-reps", type=int, default=3, help="lag runs (quick: 1)")
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--build-type", default="n/a")
    ap.add_argument("--bin-times", default="n/a", help="build time of each binary")
    ap.add_argument("--skip", default="", help="comma list: disk,throughput,lag (debugging)")
    args = ap.parse_args()
    if args.quick:
        args.mib, args.seconds, args.lag_reps = 64, 10, 1
    skip = set(filter(None, args.skip.split(",")))
    ctx = Ctx(args)

    def on_term(*_):
        # run.sh's trap (Ctrl-C, kill): no graceful drain, kill every child session now.
        if ctx.children.spawning:
            ctx.children.on_deferred_term = on_term
            return
        ctx.children.close()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = loadavg()
    info = machine_info(ctx)
    tp, lags, disk = [], [], None
    try:
        if "disk" not in skip:
            log("disk probe")
            disk = disk_probe(ctx.work, 64 if args.quick else 256)
            log(f"  {disk['seq_mb_s']:.0f} MB/s sequential+fdatasync; 4 KiB fdatasync p50 "
                f"{disk['lat4k'][0]:.1f} ms; 1 MiB fdatasync p50 {disk['lat1m'][0]:.1f} ms")
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
                        r["qemu"] = run_qemu_copy(ctx.children, ctx.work, rep, data,
                                                    args.mib * MiB, ctx.commands)
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
            for rep in range(args.lag_reps):
                log(f"lag run {rep + 1}/{args.lag_reps}: {args.rate:.0f} MB/s for "
                    f"{args.seconds}s on a {args.lag_mib} MiB volume")
                lag = run_lag(ctx, rep, args.lag_mib * MiB, args.rate * MB, args.seconds)
                log(f"  lag_seconds p50/p99/max {lag['lag_p50']:.3f}/{lag['lag_p99']:.3f}/"
                    f"{lag['lag_max']:.3f}s, probe p99 {lag['probe_p99']:.3f}s, peak dirty "
                    f"{fmt_bytes(lag['max_dirty_bytes'])} at {lag['achieved_mb_s']:.1f} MB/s; "
                    f"agent CPU {lag['agent_cpu_pct']:.1f}%, VmHWM "
                    f"{lag['agent_hwm_kib'] / 1024:.1f} MiB")
                lags.append(lag)
    finally:
        ctx.children.close()
    load_end = loadavg()
    write_report(args, ctx, info, tp, lags, disk, started, load_start, load_end, args.out)
    log(f"wrote {args.out}")
    print_table(tp, lags, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
