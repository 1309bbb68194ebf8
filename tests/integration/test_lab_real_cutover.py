"""The drill and the cutover of the real source (docs/lab.md, "With the real source"; issue 17's
lab test): `lab up --source real`, then pgbench (TPC-B, 4 clients) and a ledger client (one
autocommitted INSERT every 20 ms, each acknowledged one recorded) run from cdp-client against
PostgreSQL at 192.0.2.10 while first `cdpctl drill --plan deploy/lab/plans/drill-real.yaml`
(the target's snapshot booted in cdp-drill: WHO and `psql -c 'SELECT 1'` answer there, the
source keeps serving) and then `cdpctl cutover --plan deploy/lab/plans/cutover-real.yaml` quiesces the Debian
server through its agent (CHECKPOINT hook, group freeze), verifies, fences it (the agent takes
192.0.2.10 off ens192), and promotes the target (switch_root into the migrated Debian with its
network adapted: vmxnet3 ens192 -> virtio, the name pinned by a .link file).

Afterwards, from cdp-client, against what now answers at 192.0.2.10:
- the test service's WHO is the target's UUID;
- every ledger row the client saw committed is there (not one acknowledged write lost);
- TPC-B's balance invariant holds: sum(abalance) = sum(bbalance) = sum(tbalance) = sum(delta);
- pg_amcheck --heapallindexed finds nothing.
The client-seen outage (largest gap between acknowledged INSERTs) and the report's downtime are
printed. `lab down` always runs (labtest.run_lab_test).
"""
import os
import subprocess
import time

import labtest
from cdptest import log

PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover-real.yaml")
DRILL = os.path.join(labtest.REPO, "deploy", "lab", "plans", "drill-real.yaml")
CLIENT_NS = os.environ.get("CDP_LAB_CLIENT_NETNS", "cdp-client")


in_client, psql = labtest.pg_in_client, labtest.psql


def acked_numbers(path):
    return [n for n, _ in labtest.read_acked(path)]


def body(lab_dir, work):
    psql("CREATE TABLE ledger (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    in_client("pgbench", "-i", "-s", "2", "-q")
    acked = os.path.join(work, "ledger.acked")
    ledger = labtest.start_pg_ledger(acked)
    # pgbench stops at the outage (its clients' connections break); what it committed stays.
    bench_log = open(os.path.join(work, "pgbench.log"), "w")
    bench = subprocess.Popen(["ip", "netns", "exec", CLIENT_NS] + labtest.PG_ENV +
                             ["pgbench", "-c", "4", "-j", "2", "-T", "1200", "-n", "-P", "10"],
                             stdout=bench_log, stderr=subprocess.STDOUT)
    labtest._clients.append(bench)
    time.sleep(20)
    assert ledger.poll() is None, f"the ledger client exited {ledger.returncode} (its error above)"
    before = len(acked_numbers(acked))
    assert before > 0, "the ledger client had no INSERT acknowledged in 20 s"
    # A drill first, while the clients run: the drill VM boots a snapshot of the target in
    # cdp-drill, prepares its own boot, takes over, and answers WHO and a SQL query there.
    rc, drill = labtest.run_plan("drill", DRILL)
    assert rc == 0 and drill["ok"], f"drill failed: {drill.get('error')}"
    health = next(s for s in drill["steps"] if s["name"] == "health")["result"]
    assert f"answers 'WHO' with '{labtest.TGT_UUID}'" in health, health
    assert "psql -h 192.0.2.10 -U cdp -d cdp -tAc 'SELECT 1' exited 0" in health, health
    assert labtest.lab("probe", "WHO").stdout.strip() == labtest.SRC_UUID
    rc, report = labtest.run_plan("cutover", PLAN)
    assert rc == 0 and report["ok"], f"cutover failed: {report.get('error')}; {report.get('rollback')}"
    # The ledger client goes on against the target: wait for its first acknowledgements there.
    done = len(acked_numbers(acked))
    deadline = time.time() + 120
    while len(acked_numbers(acked)) < done + 50 and time.time() < deadline:
        time.sleep(1)
    ledger.terminate()
    ledger.wait(10)
    bench.terminate()
    bench.wait(30)
    bench_log.close()
    with open(os.path.join(work, "pgbench.log")) as f:
        log("pgbench: " + " | ".join(line.strip() for line in f.readlines()[-6:]))
    rows = labtest.read_acked(acked)
    numbers = [n for n, _ in rows]
    assert len(numbers) >= done + 50, \
        f"the ledger client had {len(numbers) - done} INSERTs acknowledged by the target in 120 s"

    assert labtest.lab("probe", "WHO").stdout.strip() == labtest.TGT_UUID
    checked = labtest.check_pg_after_cutover(acked)
    log(f"cutover: downtime {report['downtime_seconds']:.2f} s (report); {checked}")


if __name__ == "__main__":
    labtest.run_lab_test(body, up_args=("--source", "real"))
