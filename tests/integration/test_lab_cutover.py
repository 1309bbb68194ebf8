"""Cutover in the lab, under client load (TCG emulation):

0. Plans that cannot work are refused at precheck, naming the file, line and key, and nothing is
   touched: a source QMP socket that does not answer; a volume the journal does not protect
   (the target has a disk for it, but no cdp-agent sends it).
1. Rollback: a plan whose verification must fail (its source device is a wrong, zero-filled
   image) — the cutover fails at `verify`, the source VM is resumed, and the service still
   answers at 192.0.2.10 as the source (WHO), with its records.
1b. SIGTERM to cdpctl as its background verification starts: the cutover stops at its next
   check, before the quiesce ("stopped by a signal before pre-verify" or "... before quiesce"),
   prints its report, and the source was never paused: it answers at 192.0.2.10.
2. Cutover while a client in cdp-client sends `PUT n` every 20 ms and records every `OK n`:
   `cdpctl cutover --plan deploy/lab/plans/cutover.yaml --json` exits 0 with ok, every step
   and the downtime; afterwards 192.0.2.10 answers `WHO` with the target's UUID, and every
   acknowledged n — before, during and after the cutover — is `HAS n` → `YES` on the target.
   The client-measured outage (the largest gap between two acknowledgements) is reported;
   it is not asserted (wall-clock), only that nothing acknowledged was lost.
"""
import json
import os
import re
import signal
import subprocess
import time

import cdptest
import labtest
from cdptest import log

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover.yaml")
CDPCTL = os.path.join(cdptest.BIN, "cdpctl", "cdpctl")
lab, SRC_UUID, TGT_UUID = labtest.lab, labtest.SRC_UUID, labtest.TGT_UUID


def cutover(plan):
    return labtest.run_plan("cutover", plan)


def main(lab_dir, work):
    acked_file = os.path.join(work, "acked.txt")
    # --- 0. a source QMP socket that does not answer: refused at precheck, nothing touched --
    with open(PLAN) as f:
        text = f.read()
    no_qmp = os.path.join(lab_dir, "cutover-no-qmp.yaml")
    with open(no_qmp, "w") as f:
        f.write(text.replace("${CDP_LAB_DIR}/source.qmp", os.path.join(lab_dir, "nope.qmp")))
    rc, report = cutover(no_qmp)
    assert rc == 1 and not report["ok"], report
    assert report["error"].startswith(
        f"precheck: {no_qmp}:{labtest.line_of(PLAN, 'qmp_socket:')}: 'source.qmp_socket': "
        f"{lab_dir}/nope.qmp: "), report["error"]
    assert report["rollback"] == "nothing to roll back: the source was not touched", report
    assert lab("probe", "WHO").stdout.strip() == SRC_UUID
    log("a source QMP socket that does not answer: refused at precheck, source untouched")

    # --- 0b. a volume that is not protected: refused at precheck, naming volumes[1] ----------
    with open(os.path.join(lab_dir, "target.yaml")) as f:
        target = f.read()
    extra_target = os.path.join(lab_dir, "target-extra.yaml")
    with open(extra_target, "w") as f:
        f.write(target + f"  - {{volume: extra, path: {lab_dir}/extra.qcow2, size: 1M}}\n")
    unprotected = os.path.join(lab_dir, "cutover-unprotected.yaml")
    with open(unprotected, "w") as f:
        f.write(text.replace("volumes: [src-root]", "volumes: [src-root, extra]")
                .replace('devices: ["${CDP_LAB_DIR}/source.img"]',
                         'devices: ["${CDP_LAB_DIR}/source.img", "${CDP_LAB_DIR}/source.img"]')
                .replace("${CDP_LAB_DIR}/target.yaml", extra_target))
    rc, report = cutover(unprotected)
    assert rc == 1 and not report["ok"], report
    assert report["error"] == (
        f"precheck: {unprotected}:{labtest.line_of(PLAN, 'volumes:')}: 'volumes[1]': the "
        "journal-server at tcp://127.0.0.1:7700 has no volume extra: it is not protected; start "
        "its cdp-agent (or fix the name); nothing was touched"), report["error"]
    assert [s["name"] for s in report["steps"]] == ["precheck"], report
    assert not os.path.exists(os.path.join(lab_dir, "extra.qcow2"))
    assert lab("probe", "WHO").stdout.strip() == SRC_UUID
    log("a volume that is not protected: refused at precheck naming volumes[1], source untouched")

    # --- 1. rollback: verification fails, the source keeps serving ------------------------
    for n in range(1, 11):
        assert lab("probe", f"PUT {n}").stdout.strip() == f"OK {n}"
    wrong = os.path.join(lab_dir, "wrong.img")
    with open(wrong, "wb") as f:
        f.truncate(os.path.getsize(os.path.join(lab_dir, "source.img")))
    bad_plan = os.path.join(lab_dir, "cutover-bad-verify.yaml")
    assert "${CDP_LAB_DIR}/source.img" in text, text
    with open(bad_plan, "w") as f:
        f.write(text.replace("${CDP_LAB_DIR}/source.img", wrong))
    rc, report = cutover(bad_plan)
    assert rc == 1 and not report["ok"], report
    assert report["error"].startswith("verify: volume src-root: region 0+"), report["error"]
    assert "rolled back: the source VM runs again" in report["rollback"], report
    assert [s["name"] for s in report["steps"]] == [
        "precheck", "pre-verify", "quiesce", "drain", "verify"], report
    # The background pass saw the regions where the zero-filled image differs; the window
    # re-checked them and failed on the first.
    assert re.fullmatch(r"src-root: 64 regions at LSN \d+, [1-9]\d* differed \(being written\)",
                        report["steps"][1]["result"]), report["steps"][1]
    assert lab("probe", "WHO").stdout.strip() == SRC_UUID
    assert lab("probe", "LAST").stdout.strip() == "10"
    assert lab("probe", "PUT 11").stdout.strip() == "OK 11", "the source must serve again"
    log("rollback: verification failed, the source serves again at 192.0.2.10")

    # --- 1b. SIGTERM during the background verification: stopped before the quiesce ---------
    p = subprocess.Popen(["ip", "netns", "exec", "cdp-lab", CDPCTL, "cutover", "--plan", PLAN,
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timeline = []
    for line in p.stderr:
        timeline.append(line)
        if "pre-verify ..." in line:
            p.send_signal(signal.SIGTERM)  # to `ip netns exec`, which passes it on by exec
            break
    rest_out, rest_err = p.communicate(timeout=120)
    print("".join(timeline) + rest_err, flush=True)
    report = json.loads(rest_out.strip().splitlines()[-1])
    assert p.returncode == 1 and not report["ok"], report
    # The signal lands while pre-verify starts or runs: the cutover stops at the next check,
    # before pre-verify's work or before the quiesce — never after touching the source.
    stopped_at = report["steps"][-1]["name"]
    assert stopped_at in ("pre-verify", "quiesce"), report
    assert report["error"] == f"{stopped_at}: stopped by a signal before {stopped_at}", report
    assert [s["name"] for s in report["steps"]] == (
        ["precheck", "pre-verify"] + (["quiesce"] if stopped_at == "quiesce" else [])), report
    assert report["rollback"] == "nothing to roll back: the source was not touched", report
    assert lab("probe", "PUT 12").stdout.strip() == "OK 12", "the source must serve"
    log("SIGTERM during pre-verify: stopped before the quiesce, the source never paused")

    # --- 2. cutover under load --------------------------------------------------------------
    client = labtest.start_client(acked_file)
    time.sleep(3)
    rc, report = cutover(PLAN)
    assert rc == 0 and report["ok"], report
    assert [s["name"] for s in report["steps"]] == [
        "precheck", "pre-verify", "quiesce", "drain", "verify", "fence", "promote",
        "health"], report
    # The window verified what was written since the background pass (and what differed then).
    assert "in the window, the rest in the background pass at LSN" in report["verify"], report
    log(f"cutover report: downtime estimate {report['downtime_seconds']:.2f} s, "
        f"final LSN {report['final_lsn']}, verify: {report['verify']}")
    time.sleep(3)  # the client keeps writing, now to the target
    labtest.stop_client(client)
    assert lab("probe", "WHO").stdout.strip() == TGT_UUID, "192.0.2.10 is not the target"
    acked = labtest.read_acked(acked_file)
    assert len(acked) > 100, f"the client got only {len(acked)} acknowledgements"
    missing = labtest.missing_on_service(n for n, _ in acked)
    assert not missing, f"acknowledged but lost: {missing[:20]} ({len(missing)} in all)"
    outage = labtest.outage_seconds(acked)
    log(f"client: {len(acked)} PUTs acknowledged (last n {acked[-1][0]}), every one HAS YES "
        f"on the target; client-measured outage {outage:.2f} s")


if __name__ == "__main__":
    labtest.run_lab_test(main)
