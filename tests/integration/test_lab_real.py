"""`deploy/lab/lab up --source real` (docs/lab.md, "With the real source"): the Debian source VM
with the cdp-agent package installed into it while it runs, a two-disk target in the PE. `up`
returns once PostgreSQL answers as cdp at 192.0.2.10:5432 and the test service at :7000 from
the client namespace and both volumes are synced; a table written through PostgreSQL (on LVM and
xfs, inside the guest) reaches the target: after a CHECKPOINT, with the filesystems frozen by the
agent, the agent's block hashes of both whole disks equal the target's. `down` (always, in the
frame) removes everything. Then the agent is killed (SIGKILL) while it holds the group's freeze:
the source thaws and PostgreSQL takes writes again, and the agent starts again.
"""
import json
import os
import time

import labtest
from cdptest import log

lab = labtest.lab


psql = labtest.psql
in_source = labtest.in_source


def body(lab_dir, work):
    with open(os.path.join(lab_dir, "state.json")) as f:
        state = json.load(f)
    log(f"times: {state['times']}")
    assert state["source"] == "real", state
    assert state["volumes"] == {"src-root": 4 << 30, "src-data": 2 << 30}, state["volumes"]
    st = json.loads(lab("status").stdout)
    assert st["ok"], st
    assert st["service"]["who"] == labtest.SRC_UUID, st["service"]
    assert st["target"]["state"] == "pe-ready", st["target"]
    assert psql("SELECT 1") == "1"
    # The agent runs from its package, one group for both whole disks.
    assert in_source(lab_dir, "dpkg-query -W -f '${Status}' cdp-agent") == \
        "install ok installed"
    assert in_source(lab_dir, "systemctl is-active cdp-agent@lab") == "active"
    assert in_source(lab_dir, "grep -h '^device:' /etc/cdp/agent/src-*.conf | sort") == \
        "device: /dev/sda\ndevice: /dev/sdb"
    # A table through PostgreSQL: on the data disk's LVM/xfs; its pages on disk after CHECKPOINT.
    assert psql("CREATE TABLE lab_real AS SELECT g AS id, md5(g::text) AS v "
                "FROM generate_series(1, 20000) g") == "SELECT 20000"
    assert psql("SELECT count(*) FROM lab_real") == "20000"
    assert in_source(lab_dir, "runuser -u postgres -- psql -c CHECKPOINT") == "CHECKPOINT"
    for volume in ("src-data", "src-root"):
        r = lab("compare", volume, check=False, timeout=1200)
        log(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr)
        assert r.returncode == 0 and f"{volume}: source = target" in r.stdout, r.stdout + r.stderr
    assert "already up" in lab("up", "--source", "real").stdout
    agent_killed_while_frozen(lab_dir)


def agent_killed_while_frozen(lab_dir):
    """The agent killed (SIGKILL) while it holds a freeze of the group (what a cutover's quiesce
    leaves until the fence): its unit thaws what it froze (ExecStopPost thaw-frozen), PostgreSQL
    on the frozen data disk takes writes again, and systemd starts the agent again."""
    import cdptest
    r = lab("exec", "lab", "--", cdptest.binary("cdpctl"), "--server", "tcp://127.0.0.1:7700",
            "source", "quiesce", "--volume", "src-data", check=False, timeout=120)
    assert r.returncode == 0, f"source quiesce: {r.stdout}{r.stderr}"
    log("quiesced: " + r.stdout.strip().splitlines()[-1])
    # No write to a frozen filesystem on the way: systemctl show asks systemd over D-Bus.
    pid = in_source(lab_dir, "systemctl show -p MainPID --value cdp-agent@lab")
    assert pid.isdigit() and pid != "0", pid
    t0 = time.time()
    in_source(lab_dir, f"kill -9 {pid}")
    assert psql("WITH i AS (INSERT INTO lab_real VALUES (0, 'after the agent was killed') "
                "RETURNING id) SELECT id FROM i") == "0"
    log(f"PostgreSQL took a write {time.time() - t0:.1f} s after the frozen agent was killed")
    deadline = time.time() + 120
    while time.time() < deadline:
        now = in_source(lab_dir, "systemctl show -p MainPID --value cdp-agent@lab")
        active = in_source(lab_dir, "systemctl is-active cdp-agent@lab || true")
        if now not in ("0", pid) and active == "active":
            break
        time.sleep(2)
    else:
        raise AssertionError("cdp-agent@lab did not start again within 120 s of the kill")
    log(f"cdp-agent@lab active again (pid {now})")


if __name__ == "__main__":
    labtest.run_lab_test(body, up_args=("--source", "real"))
