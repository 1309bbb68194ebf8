"""Cutover in the lab, under client load (TCG emulation):

0. A plan whose source QMP socket does not answer is refused at precheck, naming the key, and
   nothing is touched.
1. Rollback: a plan whose verification must fail (its source device is a wrong, zero-filled
   image) — the cutover fails at `verify`, the source VM is resumed, and the service still
   answers at 192.0.2.10 as the source (WHO), with its records.
2. Cutover while a client in cdp-client sends `PUT n` every 20 ms and records every `OK n`:
   `cdpctl cutover --plan deploy/lab/plans/cutover.yaml --json` exits 0 with ok, every step
   and the downtime; afterwards 192.0.2.10 answers `WHO` with the target's UUID, and every
   acknowledged n — before, during and after the cutover — is `HAS n` → `YES` on the target.
   The client-measured outage (the largest gap between two acknowledgements) is reported;
   it is not asserted (wall-clock), only that nothing acknowledged was lost.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import cdptest
import labtest
from cdptest import log

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover.yaml")
lab, SRC_UUID, TGT_UUID = labtest.lab, labtest.SRC_UUID, labtest.TGT_UUID


def cutover(plan):
    r = lab("exec", "lab", "--", os.path.join(cdptest.BIN, "cdpctl", "cdpctl"), "cutover",
            "--plan", plan, "--json", check=False, timeout=600)
    print(r.stderr, flush=True)  # the timeline
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"cutover printed no JSON report (exit {r.returncode}):\n{r.stdout}")
    return r.returncode, report


def main():
    lab_dir = labtest.prepare_lab_test()
    acked_file = os.path.join(tempfile.mkdtemp(prefix="cdp-lab-client-"), "acked.txt")
    client = None
    failed = True
    try:
        lab("up")

        # --- 0. a source QMP socket that does not answer: refused at precheck, nothing touched --
        with open(PLAN) as f:
            text = f.read()
        no_qmp = os.path.join(lab_dir, "cutover-no-qmp.yaml")
        with open(no_qmp, "w") as f:
            f.write(text.replace("${CDP_LAB_DIR}/source.qmp", os.path.join(lab_dir, "nope.qmp")))
        rc, report = cutover(no_qmp)
        assert rc == 1 and not report["ok"], report
        assert report["error"].startswith(
            f"precheck: source.qmp_socket {lab_dir}/nope.qmp: "), report["error"]
        assert report["rollback"] == "nothing to roll back: the source was not touched", report
        assert lab("probe", "WHO").stdout.strip() == SRC_UUID
        log("a source QMP socket that does not answer: refused at precheck, source untouched")

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
        assert [s["name"] for s in report["steps"]] == ["precheck", "quiesce", "drain", "verify"]
        assert lab("probe", "WHO").stdout.strip() == SRC_UUID
        assert lab("probe", "LAST").stdout.strip() == "10"
        assert lab("probe", "PUT 11").stdout.strip() == "OK 11", "the source must serve again"
        log("rollback: verification failed, the source serves again at 192.0.2.10")

        # --- 2. cutover under load --------------------------------------------------------------
        client = subprocess.Popen(["ip", "netns", "exec", "cdp-client", sys.executable,
                                   labtest.CLIENT,
                                   "192.0.2.10", "7000", acked_file, "0.02"])
        time.sleep(3)
        rc, report = cutover(PLAN)
        assert rc == 0 and report["ok"], report
        assert [s["name"] for s in report["steps"]] == [
            "precheck", "quiesce", "drain", "verify", "fence", "promote", "health"], report
        log(f"cutover report: downtime estimate {report['downtime_seconds']:.2f} s, "
            f"final LSN {report['final_lsn']}, verify: {report['verify']}")
        time.sleep(3)  # the client keeps writing, now to the target
        client.terminate()
        client.wait(10)
        client = None
        assert lab("probe", "WHO").stdout.strip() == TGT_UUID, "192.0.2.10 is not the target"
        acked = labtest.read_acked(acked_file)
        assert len(acked) > 100, f"the client got only {len(acked)} acknowledgements"
        missing = labtest.missing_on_service(n for n, _ in acked)
        assert not missing, f"acknowledged but lost: {missing[:20]} ({len(missing)} in all)"
        outage = labtest.outage_seconds(acked)
        log(f"client: {len(acked)} PUTs acknowledged (last n {acked[-1][0]}), every one HAS YES "
            f"on the target; client-measured outage {outage:.2f} s")
        failed = False
    finally:
        if client is not None:
            client.kill()
        if failed and os.path.isdir(lab_dir):
            for name in sorted(os.listdir(lab_dir)):
                if name.endswith(".log"):
                    print(f"----- {name} (last 30 lines) -----")
                    with open(os.path.join(lab_dir, name), errors="replace") as f:
                        print("".join(f.readlines()[-30:]))
        r = lab("down", check=False)
        print(r.stdout + r.stderr)
        shutil.rmtree(os.path.dirname(acked_file), ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        import traceback
        traceback.print_exc()
        print(f"FAIL: {e}")
        sys.exit(1)
