"""Failover drills in the lab, under client load (TCG emulation):

0. A network namespace named like the drill's (cdp-drill) that no drill made: the drill is
   refused at precheck with the exact message, nothing is made, the namespace is left alone.
1. A drill while a client in cdp-client sends `PUT n` every 20 ms:
   `cdpctl drill --plan deploy/lab/plans/drill.yaml --json` exits 0 with every step ok; the drill
   VM answered `WHO` with the target's UUID inside cdp-drill; the target's applied LSN advanced
   during the drill (replication went on); every PUT the client sent while the drill ran was
   acknowledged by the source (no n missing in that window: the source kept answering), and
   afterwards 192.0.2.10 is still the source. Nothing of the drill is left: no namespace, no
   overlay or delta file, the target pe-ready on its own disks.
2. `kill -9` of cdpctl in the middle of a drill (drill VM booting): the next drill cleans up what
   the dead one left (its VM, namespace, overlays, deltas) and passes.
3. A cutover after the drills whose target never passes its health check (the plan expects
   another reply, with a 5 s budget): verification (XXH3 of every region, source vs target)
   passes, so the target's disks, put back together from the drills' deltas, equal the source;
   the health step fails within its budget and the report says plainly that nothing is rolled
   back after the promotion, and what to do. The migrated OS does answer at 192.0.2.10 as the
   target, and every PUT acknowledged before the cutover is `HAS YES` there.
"""
import glob
import json
import os
import signal
import subprocess
import time

import cdptest
import labtest
from cdptest import log

PLANS = os.path.join(labtest.REPO, "deploy", "lab", "plans")
DRILL, CUTOVER = os.path.join(PLANS, "drill.yaml"), os.path.join(PLANS, "cutover.yaml")
CDPCTL = os.path.join(cdptest.BIN, "cdpctl", "cdpctl")
lab, SRC_UUID, TGT_UUID = labtest.lab, labtest.SRC_UUID, labtest.TGT_UUID
STEPS = ["precheck", "snapshot", "network", "boot", "prepare", "promote", "health", "replication",
         "teardown"]


def drill_files(lab_dir):
    return sorted(glob.glob(os.path.join(lab_dir, "*drill*.qcow2")) +
                  glob.glob(os.path.join(lab_dir, "*-drill.pid")))


def assert_nothing_left(lab_dir):
    assert not labtest.netns_exists("cdp-drill"), "the drill namespace is still there"
    assert not drill_files(lab_dir), f"drill files left: {drill_files(lab_dir)}"
    st = json.loads(lab("exec", "lab", "--", CDPCTL, "target", "status", "--json", "--config",
                        os.path.join(lab_dir, "target.yaml")).stdout)
    assert st["state"] == "pe-ready", st


def main(lab_dir, work):
    acked_file = os.path.join(work, "acked.txt")
    # --- 0. a namespace of the drill's name that no drill made: refused, left alone -------
    subprocess.run(["ip", "netns", "add", "cdp-drill"], check=True)
    try:
        rc, report = labtest.run_plan("drill", DRILL)
        assert rc == 1 and not report["ok"], report
        assert report["error"] == (
            f"precheck: {DRILL}:{labtest.line_of(DRILL, 'namespace:')}: 'drill.namespace': "
            "network namespace cdp-drill exists but no drill of "
            f"target cdp-lab-target left it (no drill files in {lab_dir}); remove it (ip netns "
            "del cdp-drill) or choose another drill.namespace"), report["error"]
        assert [s["name"] for s in report["steps"]] == ["precheck"], report
        assert labtest.netns_exists("cdp-drill") and not drill_files(lab_dir)
    finally:
        subprocess.run(["ip", "netns", "del", "cdp-drill"], check=False)
    log("a foreign cdp-drill namespace: refused at precheck, nothing made or removed")

    # --- 1. a drill under client load --------------------------------------------------------
    # A PUT unanswered for 5 s counts as the source not answering.
    client = labtest.start_client(acked_file, timeout=5)
    time.sleep(3)
    drill_start = time.time_ns()
    rc, report = labtest.run_plan("drill", DRILL)
    drill_end = time.time_ns()
    time.sleep(2)
    assert rc == 0 and report["ok"], report
    assert [s["name"] for s in report["steps"]] == STEPS, report
    assert report["downtime_seconds"] == 0, report
    health = next(s for s in report["steps"] if s["name"] == "health")
    assert health["result"] == (f"192.0.2.10:7000 answers 'WHO' with '{TGT_UUID}' in "
                                "namespace cdp-drill"), health
    snap, after = report["snapshot_lsn"]["src-root"], report["applied_lsn_after"]["src-root"]
    assert after > snap, f"replication did not advance during the drill: {snap} -> {after}"
    acked = labtest.read_acked(acked_file)
    during = [n for n, t in acked if drill_start <= t <= drill_end]
    assert len(during) > 50, f"only {len(during)} PUTs acknowledged during the drill"
    unanswered = sorted(set(range(during[0], during[-1] + 1)) - set(during))
    assert not unanswered, f"the source did not answer PUT {unanswered[:20]} during the drill"
    assert lab("probe", "WHO").stdout.strip() == SRC_UUID, "192.0.2.10 is not the source"
    assert_nothing_left(lab_dir)
    log(f"drill under load: ok; target applied LSN {snap} -> {after} during it; the source "
        f"answered all {len(during)} PUTs sent meanwhile (n {during[0]}..{during[-1]})")

    # --- 2. kill -9 of cdpctl mid-drill, then a drill that cleans up and passes ------------
    dead = subprocess.Popen(["ip", "netns", "exec", "cdp-lab", CDPCTL, "drill", "--plan",
                             DRILL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    pidfile = os.path.join(lab_dir, "cdp-lab-target-drill.pid")
    deadline = time.time() + 120
    while not os.path.exists(pidfile) and time.time() < deadline and dead.poll() is None:
        time.sleep(0.1)
    assert os.path.exists(pidfile), "the drill VM never started"
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait(10)
    left = drill_files(lab_dir)
    assert labtest.netns_exists("cdp-drill") and left, "kill -9 left nothing to clean up?"
    rc, report = labtest.run_plan("drill", DRILL)
    assert rc == 0 and report["ok"], report
    pre = report["steps"][0]
    assert "cleaned up after a drill that did not finish" in pre["result"], pre
    assert_nothing_left(lab_dir)
    log(f"kill -9 mid-drill left {len(left)} file(s) and the namespace; the next drill "
        f"cleaned up ({pre['result']}) and passed")

    # --- 3. a cutover after the drills: the target equals the source -----------------------
    labtest.stop_client(client)
    with open(CUTOVER) as f:
        text = f.read()
    assert 'expect: "${TARGET_UUID}"' in text and "takeover_seconds: 120" in text, text
    unhealthy = os.path.join(lab_dir, "cutover-unhealthy.yaml")
    with open(unhealthy, "w") as f:
        f.write(text.replace('expect: "${TARGET_UUID}"', "expect: someone-else")
                .replace("takeover_seconds: 120", "takeover_seconds: 5"))
    rc, report = labtest.run_plan("cutover", unhealthy)
    assert rc == 1 and not report["ok"], report
    assert [(s["name"], s["ok"]) for s in report["steps"]] == [
        ("precheck", True), ("pre-verify", True), ("quiesce", True), ("drain", True),
        ("verify", True), ("fence", True),
        ("promote", True), ("health", False)], report
    assert " equal: " in report["verify"], report
    assert report["error"] == (
        "health: the service at 192.0.2.10:7000 did not answer as expected within 5 s: "
        f"answered '{TGT_UUID}', expected 'someone-else'"), report["error"]
    assert report["rollback"] == (
        "NO ROLLBACK after the promotion: the migrated OS runs on the target (console "
        f"{lab_dir}/cdp-lab-target.console.log) and may hold the service address; the source "
        "is powered off. Fix the target's service, or stop the target (cdpctl target stop) "
        "before bringing the source back"), report["rollback"]
    assert lab("probe", "WHO").stdout.strip() == TGT_UUID, "192.0.2.10 is not the target"
    acked = labtest.read_acked(acked_file)
    missing = labtest.missing_on_service(n for n, _ in acked)
    assert not missing, f"acknowledged but lost: {missing[:20]} ({len(missing)} in all)"
    log(f"cutover after the drills: verify {report['verify']}; health failed within its budget "
        f"with a clear report ({report['rollback'][:40]}...); all {len(acked)} acknowledged "
        "PUTs HAS YES on the target")


if __name__ == "__main__":
    labtest.run_lab_test(main)
