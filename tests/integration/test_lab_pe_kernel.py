"""The migrated OS's own kernel, in the lab (TCG emulation):

1. Rebuilding the PE from the replica (docs/target-vm.md): `cdpctl target export-boot` copies
   the newest kernel out of the running target's replica of src-root — byte for byte the
   source image's /boot/vmlinuz-KVER and /boot/initrd.img-KVER, its modules, the root
   filesystem's UUID — and leaves nothing behind (no delta, no raw copy, no mount);
   `build-pe-image --kernel-from` builds a PE on that kernel; the target restarts into it,
   resumes from its cursor (no full copy) and catches up (`wait-synced`).
2. A cutover by kexec under client load — the fallback for a PE whose kernel is not the
   migrated OS's (docs/pe-agent.md §5), forced here with `takeover: {boot: kexec}`: the
   pe-agent loads the migrated OS's own /boot/vmlinuz-KVER and initrd with kexec_file_load,
   adapts the root, unmounts it and reboots into that kernel; the migrated OS's own initramfs
   finds its root by UUID and starts its init. `cdpctl cutover --json` exits 0; promote says
   `kexec into the migrated OS's own kernel KVER`; the target's console shows the migrated OS's
   initramfs running (which a switch_root never runs); 192.0.2.10 answers `WHO` with the
   target's UUID; every PUT the client got an `OK` for is `HAS YES` there. The client-measured
   outage is reported, not asserted.
"""
import glob
import hashlib
import json
import os
import subprocess
import time

import cdptest
import labtest
from cdptest import log

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover.yaml")
lab, TGT_UUID = labtest.lab, labtest.TGT_UUID
OS_INITRAMFS = "cdp-os-initramfs: kernel "  # the lab source OS's own initramfs (lab-source-os.md)
CDPCTL = os.path.join(cdptest.BIN, "cdpctl", "cdpctl")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rebuild_pe_from_replica(lab_dir):
    with open(os.path.join(cdptest.BIN, "lab-source", "source-image.json")) as f:
        source = json.load(f)
    kver = source["kernel_version"]
    config = os.path.join(lab_dir, "target.yaml")
    out = os.path.join(lab_dir, "replica-kernel")
    r = lab("exec", "lab", "--", CDPCTL, "target", "export-boot", "--config", config,
            "--volume", "src-root", "--out", out, "--json")
    print(r.stderr, flush=True)
    exported = json.loads(r.stdout)
    assert exported["kernel_release"] == kver, exported
    assert exported["fs_uuid"] == source["uuid"], exported
    assert exported["lsn"] > 0 and exported["module_files"] > 10, exported
    assert sha256(f"{out}/boot/vmlinuz-{kver}") == source["vmlinuz_sha256"]
    assert sha256(f"{out}/boot/initrd.img-{kver}") == source["initrd_sha256"]
    assert os.path.isdir(f"{out}/lib/modules/{kver}/kernel")
    left = [p for p in glob.glob(os.path.join(lab_dir, "*")) if "boot-delta" in p or
            "boot-export" in p or p.endswith(".tmp")]
    assert not left, f"export-boot left {left}"
    with open("/proc/mounts") as f:
        assert lab_dir not in f.read(), "export-boot left a mount"

    pe = os.path.join(lab_dir, "pe-replica")
    r = subprocess.run([os.path.join(labtest.REPO, "pe-boot", "build-pe-image"), "--kernel-from",
                        out, "--pe-agent", os.path.join(cdptest.BIN, "pe-boot", "pe-agent"), pe],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"build-pe-image --kernel-from failed:\n{r.stdout}{r.stderr}"
    with open(os.path.join(pe, "pe-image.json")) as f:
        image = json.load(f)
    assert image["kernel_version"] == kver and image["vmlinuz_sha256"] == source["vmlinuz_sha256"]

    before = json.loads(lab("exec", "lab", "--", CDPCTL, "target", "status", "--json",
                            "--config", config).stdout)
    lab("exec", "lab", "--", CDPCTL, "target", "stop", "--config", config)
    with open(config) as f:
        text = f.read()
    old_pe = os.path.join(cdptest.BIN, "pe-image")
    assert old_pe in text, text
    with open(config, "w") as f:
        f.write(text.replace(old_pe, pe))
    lab("exec", "lab", "--", CDPCTL, "target", "start", "--config", config)
    lab("exec", "lab", "--", CDPCTL, "--server", "tcp://127.0.0.1:7700", "wait-synced",
        "--volume", "src-root", "--timeout", "300")
    after = json.loads(lab("exec", "lab", "--", CDPCTL, "target", "status", "--json",
                           "--config", config).stdout)
    assert after["state"] == "pe-ready" and after["kernel_release"] == kver, after
    vol_before, vol_after = before["volumes"][0], after["volumes"][0]
    assert vol_after["boot_applied_lsn"] >= vol_before["applied_lsn"] > 0, (before, after)
    log(f"PE rebuilt from the replica's kernel {kver} ({exported['module_files']} module files "
        f"exported at LSN {exported['lsn']}); the target restarted into it and resumed at LSN "
        f"{vol_after['boot_applied_lsn']}, then caught up to {vol_after['applied_lsn']}")


def main(lab_dir, work):
    rebuild_pe_from_replica(lab_dir)

    with open(PLAN) as f:
        text = f.read()
    plan = os.path.join(lab_dir, "cutover-kexec.yaml")
    with open(plan, "w") as f:
        f.write(text +
                '\ntakeover: {boot: kexec, kernel_args: "console=ttyS0 rw panic=-1 quiet"}\n')
    console = os.path.join(lab_dir, "cdp-lab-target.console.log")
    with open(console, errors="replace") as f:
        assert OS_INITRAMFS not in f.read(), "the migrated OS's initramfs ran before the cutover?"

    acked_file = os.path.join(work, "acked.txt")
    client = labtest.start_client(acked_file)
    time.sleep(8)  # the target has just rebooted: let it settle into the client's pace
    rc, report = labtest.run_plan("cutover", plan)
    assert rc == 0 and report["ok"], json.dumps(report, indent=1)
    promote = next(s for s in report["steps"] if s["name"] == "promote")
    assert promote["result"].startswith("kexec into the migrated OS's own kernel 6."), promote
    assert "kexec-load" in promote["result"], promote
    time.sleep(3)  # the client keeps writing, now to the target
    labtest.stop_client(client)

    with open(console, errors="replace") as f:
        booted = [line for line in f if line.startswith(OS_INITRAMFS)]
    assert len(booted) == 1, f"the migrated OS's own initramfs ran {len(booted)} times"
    assert lab("probe", "WHO").stdout.strip() == TGT_UUID, "192.0.2.10 is not the target"
    acked = labtest.read_acked(acked_file)
    assert len(acked) > 100, f"the client got only {len(acked)} acknowledgements"
    missing = labtest.missing_on_service(n for n, _ in acked)
    assert not missing, f"acknowledged but lost: {missing[:20]} ({len(missing)} in all)"
    log(f"kexec cutover: {promote['result']}; downtime estimate "
        f"{report['downtime_seconds']:.2f} s; client: {len(acked)} PUTs acknowledged, every one "
        f"HAS YES on the target; client-measured outage {labtest.outage_seconds(acked):.2f} s; "
        f"console: {booted[0].strip()}")


if __name__ == "__main__":
    labtest.run_lab_test(main)
