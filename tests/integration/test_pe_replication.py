"""The semi-booted target, end to end with real QEMU (TCG): a source image protected over NBD,
the target VM booted into the PE, a replicator into its pe-agent.

1. A qemu-io + nbdcopy workload, wait-synced; the pe-agent's region checksums (XXH3-64, in the
   VM) equal xxhsum's of the source; the VM stopped over QMP: `qemu-img compare` says the target
   qcow2 and the source image are identical.
2. The VM restarted on its metadata disk shrunk to the 4 MiB older cdpctl made (it is grown to
   256 MiB, and the cursor on it is found), more writes, and QEMU killed
   with SIGKILL in the middle of them; the VM started again: replication resumes from the
   durable cursor — the pe-agent applies exactly the records after it, no full copy — and the
   result is identical again.
"""
import json
import os
import signal
import subprocess
import time

import petest
from cdptest import log

SIZE_MIB = 256


def journal_durable_lsn(s):
    return s.status()["durable_lsn"]


def xxh3(data):
    """XXH3-64 of data, by xxhsum (the reference implementation's CLI)."""
    r = subprocess.run(["xxhsum", "-H3", "-"], input=data, capture_output=True, check=True)
    return r.stdout.decode().split("=")[-1].strip()


def check_region_checksums(s):
    """The pe-agent's checksums of the target's disk, in the VM, equal the source's."""
    with open(s.source, "rb") as f:
        src = f.read()
    for args in (["--chunk", "32M"], ["--offset", "1000", "--length", "5000", "--chunk", "5000"]):
        doc = json.loads(s.ctl_target("checksum", "--volume", s.volume, "--json", *args).stdout)
        assert doc["applied_lsn"] == journal_durable_lsn(s), doc
        for r in doc["regions"]:
            want = xxh3(src[r["offset"]:r["offset"] + r["length"]])
            assert r["xxh3"] == want, f"region {r}: the source has {want}"
        log(f"checksums {' '.join(args)}: {len(doc['regions'])} regions equal the source's")


def test(s):
    s.start_journal()
    s.start_agent()
    s.write_config()
    s.target_start()
    st = s.target_status()
    assert st["state"] == "pe-ready", st
    assert st["pe_boot_seconds"] > 0 and st["pe_kernel_to_ready_seconds"] > 0, st
    expected = {"name": s.volume, "device": "/dev/vda", "size_bytes": SIZE_MIB << 20,
                "applied_lsn": 0, "boot_applied_lsn": 0, "applied_bytes": 0, "applied_records": 0}
    assert len(st["volumes"]) == 1, st["volumes"]
    assert {k: st["volumes"][0][k] for k in expected} == expected, st["volumes"]
    log(f"PE ready: boot {st['pe_boot_seconds']:.1f}s (kernel to ready "
        f"{st['pe_kernel_to_ready_seconds']:.1f}s), accel {st['accel']}")
    s.start_pe_replicator()

    # --- 1. workload, sync, stop over QMP, compare ------------------------------------------
    s.qemu_io("write -P 0x5a 0 4M", "write -P 0xa5 1M 64k", "write -P 0x11 5000k 3k",
              "write -z 2M 512k", "discard 3M 256k", "write -P 0x33 255M 1M", "flush")
    s.nbdcopy(s.random_file(64, "random1.bin"))
    s.qemu_io("write -P 0x77 100M 8M", "flush")
    s.wait_synced(600)
    durable = journal_durable_lsn(s)
    v = s.target_volume()
    assert v["applied_lsn"] == durable, (v, durable)
    log(f"phase 1: target applied LSN {v['applied_lsn']} == journal durable LSN {durable}, "
        f"{v['applied_bytes'] >> 20} MiB applied in the VM")
    check_region_checksums(s)
    s.ctl_target("stop")
    assert s.qemu_pid() == 0 or not os.path.exists(f"/proc/{s.qemu_pid()}"), "QEMU still runs"
    assert s.target_status()["state"] == "stopped"
    petest.qemu_img_compare(s.source, s.disk)

    # --- 2. restart, kill -9 QEMU mid-workload, restart, resume --------------------------------
    # As an older cdpctl made it: a 4 MiB metadata disk, without the kept area. The start grows
    # it and the cursor in it survives.
    meta = os.path.join(os.path.dirname(s.disk), f"{s.vm_name}-pe-meta.qcow2")
    subprocess.run(["qemu-img", "resize", "-q", "--shrink", "-f", "qcow2", meta, "4M"],
                   check=True)
    out = s.target_start().stdout
    assert f"grew metadata disk {meta} from 4194304 to 268435456 bytes" in out, out
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "--force-share", meta],
                                     capture_output=True, check=True).stdout)
    assert info["virtual-size"] == 256 << 20, info
    v = s.target_volume()
    assert v["boot_applied_lsn"] == durable, f"cursor after a clean stop: {v}, expected {durable}"
    before_kill = durable
    copy = s.nbdcopy(s.random_file(96, "random2.bin"), background=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        v = s.target_volume()
        if v["applied_lsn"] > before_kill + 20:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the target applied nothing new within 300 s: {v}")
    pid = s.qemu_pid()
    os.kill(pid, signal.SIGKILL)
    log(f"killed QEMU (pid {pid}) at applied LSN >= {v['applied_lsn']}")
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
    assert s.target_status()["state"] == "stopped"
    assert s.procs["replicator"].alive(), "the replicator must survive the target's death"
    s.qemu_io("write -P 0x99 200M 2M", "flush")  # writes while the target is down

    s.target_start()
    v = s.target_volume()
    resumed_from = v["boot_applied_lsn"]
    assert resumed_from > before_kill, (
        f"the durable cursor did not survive kill -9: boot_applied_lsn {resumed_from}, "
        f"it was past {before_kill} before the kill")
    log(f"restarted: the target resumes after LSN {resumed_from}")
    assert copy.wait(600) == 0, copy.stdout.read()
    s.qemu_io("flush")
    s.wait_synced(600)
    final = journal_durable_lsn(s)
    v = s.target_volume()
    assert v["applied_lsn"] == final, (v, final)
    # No full copy: since the restart the pe-agent applied exactly the records after its cursor.
    assert v["applied_records"] == final - resumed_from, (
        f"applied {v['applied_records']} records after the restart, expected "
        f"{final - resumed_from} (LSN {resumed_from}..{final})")
    total = sum(os.path.getsize(os.path.join(s.dir, f)) for f in ("random1.bin", "random2.bin"))
    log(f"after the restart: {v['applied_records']} records, {v['applied_bytes'] >> 20} MiB "
        f"applied (of {total >> 20} MiB written by nbdcopy in all)")
    assert v["applied_bytes"] < total, "the restart re-applied everything"
    with open(os.path.join(s.dir, "replicator.log")) as f:
        rlog = f.read()
    assert f"has applied LSN {resumed_from}; resuming after it" in rlog, rlog[-3000:]
    s.ctl_target("stop")
    petest.qemu_img_compare(s.source, s.disk)


if __name__ == "__main__":
    petest.run(test, size_mib=SIZE_MIB)
