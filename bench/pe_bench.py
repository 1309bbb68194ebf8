#!/usr/bin/env python3
"""Semi-booted target benchmark (issue 4), with real QEMU (TCG here):

1. PE boot-to-ready: `cdpctl target start` from QEMU's launch until the pe-agent answers
   "pe-ready" (as cdpctl measures it), and the guest's own uptime when the pe-agent was ready;
   several boots. Target: <= 15 s.
2. Apply throughput inside the target VM: DATA MiB of random data written through the agent's
   NBD export (nbdcopy) while no replicator runs, so the journal holds it all; then the
   replicator is started into the pe-agent and timed until wait-synced: MB/s applied inside the
   VM (journal -> replicator -> ZeroMQ over QEMU user networking -> pe-agent -> O_DIRECT to a
   virtio disk -> qcow2). Next to it, in the same run: `qemu-img convert -O qcow2` of the same
   source image on the host (the standard tool doing the same job without a VM or a journal).
   The result is checked with `qemu-img compare`.

Run through bench/pe.sh. Nothing is asserted; the targets are printed next to the figures.
"""
import datetime
import os
import statistics
import subprocess
import time

from benchlib import MiB, driver_arguments, log, qemu_img_convert_seconds, write_section

import petest  # noqa: E402 - tests/integration, on the path through benchlib


def wait_journal_has_everything(s, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = s.status()
        if (v["initial_sync_done"] and v["pending_bytes"] == 0 and
                v["durable_lsn"] == v["captured_lsn"] and v["captured_lsn"] > 0):
            return v
        time.sleep(0.2)
    raise AssertionError("the journal did not receive everything")


def bench(s, a, results):
    # --- 1. boots ---------------------------------------------------------------------------
    s.start_journal()
    s.start_agent()
    s.write_config()
    for i in range(a.boots):
        s.target_start()
        st = s.target_status()
        results["boots"].append({"pe_boot_seconds": st["pe_boot_seconds"],
                                 "kernel_to_ready_seconds": st["pe_kernel_to_ready_seconds"],
                                 "accel": st["accel"], "kernel": st["kernel_release"]})
        log(f"boot {i + 1}: ready {st['pe_boot_seconds']:.2f} s after QEMU started "
            f"(guest uptime {st['pe_kernel_to_ready_seconds']:.2f} s), {st['accel']}")
        s.ctl_target("stop")

    # --- 2. apply throughput ----------------------------------------------------------------
    data = s.random_file(a.data_mib, "data.bin")
    t0 = time.time()
    subprocess.run(["nbdcopy", "--target-is-zero", data, s.uri], check=True, timeout=1800)
    v = wait_journal_has_everything(s)
    log(f"{a.data_mib} MiB journaled in {time.time() - t0:.1f} s (LSN {v['durable_lsn']})")
    s.target_start()
    t0 = time.time()
    s.start_pe_replicator()
    s.wait_synced(1800)
    apply_s = time.time() - t0
    tv = s.target_volume()
    results["apply"] = {"mib": a.data_mib, "seconds": apply_s,
                        "mb_per_s": a.data_mib * MiB / 1e6 / apply_s,
                        "applied_bytes": tv["applied_bytes"], "records": tv["applied_records"]}
    log(f"applied {tv['applied_bytes'] / MiB:.0f} MiB in {tv['applied_records']} records in "
        f"{apply_s:.1f} s: {results['apply']['mb_per_s']:.1f} MB/s inside the VM")
    s.ctl_target("stop")
    petest.qemu_img_compare(s.source, s.disk)
    results["identical"] = True

    conv_s = qemu_img_convert_seconds(s.source, os.path.join(s.dir, "convert.qcow2"), "qcow2")
    results["convert"] = {"seconds": conv_s, "mb_per_s": a.data_mib * MiB / 1e6 / conv_s}
    log(f"qemu-img convert of the same image: {conv_s:.1f} s, "
        f"{results['convert']['mb_per_s']:.1f} MB/s")


def report(a, results):
    boots = [b["pe_boot_seconds"] for b in results["boots"]]
    guest = [b["kernel_to_ready_seconds"] for b in results["boots"]]
    ap, cv = results["apply"], results["convert"]
    accel = results["boots"][0]["accel"] if results["boots"] else "?"
    kernel = results["boots"][0]["kernel"] if results["boots"] else "?"
    lines = [
        "## Semi-booted target (PE)", "",
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, git {a.git}; "
        f"QEMU {accel.upper()} (no usable KVM here), PE kernel {kernel}, 512 MiB, 1 vCPU; "
        f"{os.cpu_count()} host cores shared by QEMU, journal-server, replicator and agent.", "",
        "| | median | min | max | target |", "|---|---|---|---|---|",
        f"| PE boot to ready, QEMU start to pe-agent ready (s), {len(boots)} boots | "
        f"{statistics.median(boots):.1f} | {min(boots):.1f} | {max(boots):.1f} | <= 15 |",
        f"| of which the guest's uptime at ready (kernel start to ready, s) | "
        f"{statistics.median(guest):.1f} | {min(guest):.1f} | {max(guest):.1f} | |", "",
        f"| {ap['mib']} MiB of random data, 1 GiB volume | seconds | MB/s |", "|---|---|---|",
        f"| applied inside the target VM (journal -> replicator -> pe-agent, O_DIRECT to "
        f"virtio, qcow2; until wait-synced) | {ap['seconds']:.1f} | {ap['mb_per_s']:.1f} |",
        f"| `qemu-img convert -O qcow2` of the same source image on the host (baseline) | "
        f"{cv['seconds']:.1f} | {cv['mb_per_s']:.1f} |", "",
        f"The pe-agent applied {ap['applied_bytes'] / MiB:.0f} MiB in {ap['records']} records; "
        f"target qcow2 == source after the run (`qemu-img compare`): "
        f"**{'yes' if results.get('identical') else 'NO'}**.", "",
        "Reproduce: `bash bench/pe.sh` (root; builds the PE image into the build dir if needed).",
        ""]
    print(write_section(a.out, "pe", "pe.sh", lines))


def main():
    ap = driver_arguments(__doc__)
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--data-mib", type=int, default=512)
    a = ap.parse_args()
    results = {"boots": []}
    scene = petest.TargetScene(size_mib=1024)
    failed = True
    try:
        bench(scene, a, results)
        failed = False
    finally:
        scene.close(failed)
    report(a, results)


if __name__ == "__main__":
    main()
