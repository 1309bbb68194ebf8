"""A cutover by kexec in the lab, under client load (TCG emulation): the fallback for a PE whose
kernel is not the migrated OS's (docs/pe-agent.md §5).

The lab's plan with `takeover: {boot: kexec, ...}`: the pe-agent loads the migrated OS's own
/boot/vmlinuz-KVER and initrd with kexec_file_load, adapts the root, unmounts it and reboots into
that kernel; the migrated OS's own initramfs finds its root by UUID and starts its init.
`cdpctl cutover --json` exits 0; promote says `kexec into the migrated OS's own kernel KVER`;
the target's console shows the migrated OS's initramfs running (which a switch_root never
runs); 192.0.2.10 answers `WHO` with the target's UUID; every PUT the client got an `OK` for is
`HAS YES` there. The client-measured outage is reported, not asserted.
"""
import json
import os
import time

import labtest
from cdptest import log

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover.yaml")
lab, TGT_UUID = labtest.lab, labtest.TGT_UUID
OS_INITRAMFS = "cdp-os-initramfs: kernel "  # the lab source OS's own initramfs (lab-source-os.md)


def main(lab_dir, work):
    with open(PLAN) as f:
        text = f.read()
    plan = os.path.join(lab_dir, "cutover-kexec.yaml")
    with open(plan, "w") as f:
        f.write(text + '\ntakeover: {boot: kexec, kernel_args: "console=ttyS0 rw panic=-1 quiet"}\n')
    console = os.path.join(lab_dir, "cdp-lab-target.console.log")
    with open(console, errors="replace") as f:
        assert OS_INITRAMFS not in f.read(), "the migrated OS's initramfs ran before the cutover?"

    acked_file = os.path.join(work, "acked.txt")
    client = labtest.start_client(acked_file)
    time.sleep(3)
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
