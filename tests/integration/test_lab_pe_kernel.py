"""The migrated OS's own kernel, in the lab (TCG emulation):

1. Exporting it (docs/target-vm.md): `cdpctl target export-boot` copies the newest kernel out
   of the running target's replica of src-root — byte for byte the source image's
   /boot/vmlinuz-KVER and /boot/initrd.img-KVER, its modules, the root filesystem's UUID — and
   leaves nothing behind (no delta, no raw copy, no mount).
2. Following it: the target is first put on a PE built on another kernel (Debian's cloud
   flavour, `build-pe-image --kernel-package linux-image-cloud-amd64`). `cdpctl target
   follow-boot` finds that the replica's OS boots KVER, exports it, builds a PE on it, records
   the override, restarts the target into it and prepares the boot: the target then runs KVER
   from STATE_DIR/NAME.pe/KVER (its vmlinuz byte for byte the source's), `target status` names
   the override, nothing temporary is left, the target resumed from its cursor (no full copy)
   and catches up (`wait-synced`). A second pass changes nothing.
3. A cutover by kexec under client load — the fallback for a PE whose kernel is not the
   migrated OS's (docs/pe-agent.md §5), forced here with `takeover: {boot: kexec}`: the
   precheck's takeover dry run loads the migrated OS's own /boot/vmlinuz-KVER and initrd with
   kexec_file_load, the promotion finds them unchanged and does not load them again (both said
   on the target's console), the pe-agent
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


def target(lab_dir, *args):
    return lab("exec", "lab", "--", CDPCTL, "--server", "tcp://127.0.0.1:7700", "target", *args,
               "--config", os.path.join(lab_dir, "target.yaml"), timeout=2400)


def target_status(lab_dir):
    return json.loads(target(lab_dir, "status", "--json").stdout)


def export_boot(lab_dir, source):
    kver = source["kernel_version"]
    out = os.path.join(lab_dir, "replica-kernel")
    r = target(lab_dir, "export-boot", "--volume", "src-root", "--out", out, "--json")
    print(r.stderr, flush=True)
    exported = json.loads(r.stdout)
    assert exported["kernel_release"] == kver, exported
    assert exported["fs_uuid"] == source["uuid"], exported
    assert exported["lsn"] > 0 and exported["module_files"] > 10, exported
    assert sha256(f"{out}/boot/vmlinuz-{kver}") == source["vmlinuz_sha256"]
    assert sha256(f"{out}/boot/initrd.img-{kver}") == source["initrd_sha256"]
    assert os.path.isdir(f"{out}/lib/modules/{kver}/kernel")
    assert_nothing_left(lab_dir, "export-boot")


def assert_nothing_left(lab_dir, who):
    left = [p for p in glob.glob(os.path.join(lab_dir, "*")) if "boot-delta" in p or
            "boot-export" in p or p.endswith(".tmp") or p.endswith(".boot")]
    assert not left, f"{who} left {left}"
    with open("/proc/mounts") as f:
        assert lab_dir not in f.read(), f"{who} left a mount"


def put_target_on_another_kernel(lab_dir):
    """Restarts the target on a PE built on Debian's cloud kernel; returns its release."""
    pe = os.path.join(lab_dir, "pe-cloud")
    r = subprocess.run([os.path.join(labtest.REPO, "pe-boot", "build-pe-image"),
                        "--kernel-package", "linux-image-cloud-amd64",
                        "--pe-agent", os.path.join(cdptest.BIN, "pe-boot", "pe-agent"), pe],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"build-pe-image --kernel-package failed:\n{r.stdout}{r.stderr}"
    with open(os.path.join(pe, "pe-image.json")) as f:
        cloud = json.load(f)["kernel_version"]
    config = os.path.join(lab_dir, "target.yaml")
    target(lab_dir, "stop")
    with open(config) as f:
        text = f.read()
    old_pe = os.path.join(cdptest.BIN, "pe-image")
    assert old_pe in text, text
    with open(config, "w") as f:
        f.write(text.replace(old_pe, pe))
    target(lab_dir, "start")
    status = target_status(lab_dir)
    assert status["kernel_release"] == cloud and status["pe_override"] == "", status
    return cloud


def follow_boot(lab_dir, source):
    kver = source["kernel_version"]
    cloud = put_target_on_another_kernel(lab_dir)
    assert cloud != kver and "cloud" in cloud, cloud
    target(lab_dir, "status")  # waits for nothing; prints for the log
    before = target_status(lab_dir)

    r = target(lab_dir, "follow-boot", "--volume", "src-root", "--json", "--timeout", "900")
    print(r.stderr, flush=True)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    name = "cdp-lab-target"
    pe_dir = doc["pe_dir"]
    assert doc["ok"] and doc["error"] == "", doc
    assert doc["rebuilt"] and doc["pe_kernel_before"] == cloud and doc["os_kernel"] == kver, doc
    assert os.path.dirname(pe_dir) == os.path.join(lab_dir, f"{name}.pe"), doc
    assert os.path.basename(pe_dir).startswith(kver + "."), doc
    assert doc["prepared"].startswith(f"kernel {kver}: "), doc
    assert f"the PE of {name} runs {cloud}; the migrated OS on src-root boots {kver}: " \
           "rebuilding the PE on it" in r.stderr, r.stderr
    assert sha256(os.path.join(pe_dir, "vmlinuz")) == source["vmlinuz_sha256"]
    assert os.listdir(os.path.join(lab_dir, f"{name}.pe")) == [os.path.basename(pe_dir)]
    assert_nothing_left(lab_dir, "follow-boot")

    target(lab_dir, "status")
    lab("exec", "lab", "--", CDPCTL, "--server", "tcp://127.0.0.1:7700", "wait-synced",
        "--volume", "src-root", "--timeout", "300")
    after = target_status(lab_dir)
    assert after["state"] == "pe-ready" and after["kernel_release"] == kver, after
    assert after["pe_override"] == os.path.join(lab_dir, f"{name}.pe.json"), after
    assert after["pe_kernel"] == os.path.join(pe_dir, "vmlinuz"), after
    vol_before, vol_after = before["volumes"][0], after["volumes"][0]
    assert vol_after["boot_applied_lsn"] >= vol_before["applied_lsn"] > 0, (before, after)

    again = target(lab_dir, "follow-boot", "--volume", "src-root", "--json")
    doc2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert doc2["ok"] and not doc2["rebuilt"] and doc2["os_kernel"] == kver, doc2
    assert doc2["prepared"] == "", doc2
    assert "a takeover is a switch_root; nothing to rebuild" in again.stderr, again.stderr
    assert target_status(lab_dir)["kernel_release"] == kver
    log(f"follow-boot: PE on {cloud} rebuilt on the replica's kernel {kver} ({pe_dir}) in "
        f"{doc['seconds']:.1f} s; the target restarted into it and resumed at LSN "
        f"{vol_after['boot_applied_lsn']}, then caught up to {vol_after['applied_lsn']}; boot "
        f"prepared ({doc['prepared']}); a second pass changed nothing in {doc2['seconds']:.1f} s")


def main(lab_dir, work):
    with open(os.path.join(cdptest.BIN, "lab-source", "source-image.json")) as f:
        source = json.load(f)
    export_boot(lab_dir, source)
    follow_boot(lab_dir, source)

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
    # The precheck loaded the kernel; the promotion found it unchanged and did not load it again.
    precheck = next(s for s in report["steps"] if s["name"] == "precheck")
    kver = source["kernel_version"]
    assert f"kexec into {kver}, its kernel loaded now" in precheck["result"], precheck
    with open(console, errors="replace") as f:
        text = f.read()
    assert "; kept loaded for the takeover" in text, "the precheck did not preload the kernel"
    assert "(the precheck's preload), unchanged since: not loaded again" in text, \
        "the promotion loaded the kernel again"

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
