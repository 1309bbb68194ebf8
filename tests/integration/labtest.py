"""Helpers for tests, benchmarks and demos that use the lab (deploy/lab/lab): running it,
refusing to touch a lab that is already up, and checking a client's acknowledged writes.

  python3 labtest.py check-acked FILE    # from the host: every n of lab_client.py's FILE is
                                         # HAS YES at 192.0.2.10; prints the outage; exit 1 if not
  python3 labtest.py check-pg FILE       # from the host, after a cutover of the real source:
                                         # pg_ledger_client.py's FILE all in `ledger`, TPC-B's
                                         # balances equal, pg_amcheck clean; exit 1 if not
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
LAB = os.path.join(REPO, "deploy", "lab", "lab")
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab_client.py")
SRC_UUID = "5eed0000-0000-4000-8000-000000000010"
TGT_UUID = "7a76e700-0000-4000-8000-000000000020"


def lab(*args, check=True, timeout=900):
    r = subprocess.run([LAB] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def netns_exists(name):
    return os.path.exists(f"/run/netns/{name}")


def require_no_lab():
    """Exits (FAIL) when a lab is already up: a test must not take someone's lab down. The
    namespaces are the lab's (CDP_LAB_NETNS, CDP_LAB_CLIENT_NETNS when set) and cdp-drill."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    names = (os.environ.get("CDP_LAB_NETNS", "cdp-lab"),
             os.environ.get("CDP_LAB_CLIENT_NETNS", "cdp-client"), "cdp-drill")
    if any(n in out for n in names):
        raise SystemExit("FAIL: a lab is already up on this machine (deploy/lab/lab down)")


def prepare_lab_test():
    """For a test that brings a lab up: fails (never skips silently under CI) when a tool or
    root is missing or a lab is already up; returns a fresh lab dir, set as CDP_LAB_DIR."""
    import cdptest
    import petest
    cdptest.require_tools(*petest.PE_TOOLS, "ip")
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise SystemExit("FAIL: the lab needs root (network namespaces, taps)")
        print("SKIP: the lab needs root")
        sys.exit(77)
    require_no_lab()
    lab_dir = tempfile.mkdtemp(prefix="cdp-lab-it-", dir="/var/tmp")
    os.environ["CDP_LAB_DIR"] = lab_dir
    return lab_dir


def read_acked(path):
    """[(n, time_ns)] acknowledged by lab_client.py."""
    with open(path) as f:
        return [tuple(map(int, line.split())) for line in f if line.strip()]


def outage_seconds(acked):
    """The largest gap between two consecutive acknowledgements."""
    gaps = [(acked[i + 1][1] - acked[i][1]) / 1e9 for i in range(len(acked) - 1)]
    return max(gaps) if gaps else float("nan")


def missing_on_service(numbers):
    """Asks HAS n for every n over one connection from cdp-client; returns those not YES."""
    code = ("import socket,sys,json\n"
            "s=socket.create_connection(('192.0.2.10',7000),timeout=10)\n"
            "f=s.makefile('rw')\n"
            "missing=[]\n"
            "for n in json.load(sys.stdin):\n"
            "    f.write(f'HAS {n}\\n'); f.flush()\n"
            "    if f.readline().strip()!='YES': missing.append(n)\n"
            "print(json.dumps(missing))\n")
    r = subprocess.run(["ip", "netns", "exec", "cdp-client", sys.executable, "-c", code],
                       input=json.dumps(list(numbers)), capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"HAS check failed: {r.stderr}")
    return json.loads(r.stdout)


def line_of(path, key):
    """The 1-based number of the first line of file `path` that starts (after spaces) with
    `key`: where the engines' errors point."""
    with open(path) as f:
        return next(i for i, line in enumerate(f, 1) if line.strip().startswith(key))


_clients = []  # started by start_client, killed by run_lab_test


def start_client(acked_file, period=0.02, timeout=1.0):
    """Starts lab_client.py in cdp-client against 192.0.2.10:7000 (killed at the test's end)."""
    p = subprocess.Popen(["ip", "netns", "exec", "cdp-client", sys.executable, CLIENT,
                          "192.0.2.10", "7000", acked_file, str(period), str(timeout)])
    _clients.append(p)
    return p


# `env` and the libpq variables for psql, pgbench and pg_amcheck as the lab's role cdp against
# PostgreSQL at 192.0.2.10 (the real source, or the target after a cutover).
PG_ENV = ["env", "PGPASSWORD=cdp", "PGHOST=192.0.2.10", "PGUSER=cdp", "PGDATABASE=cdp",
          "PGCONNECT_TIMEOUT=5"]

# Debian's own interpreter: python3-psycopg2 (deploy/install-deps.sh) is installed for it, not
# for another python3 that may come first on PATH (and run the tests).
DEBIAN_PYTHON = "/usr/bin/python3"
PG_LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pg_ledger_client.py")


def start_pg_ledger(acked_file, period=0.02):
    """Starts pg_ledger_client.py in cdp-client against PostgreSQL at 192.0.2.10 (killed at the
    test's end); fails at once, naming the package, when psycopg2 is missing."""
    r = subprocess.run([DEBIAN_PYTHON, "-c", "import psycopg2"], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{DEBIAN_PYTHON} cannot import psycopg2 ({r.stderr.strip()}): "
                             "install python3-psycopg2 (deploy/install-deps.sh)")
    ns = os.environ.get("CDP_LAB_CLIENT_NETNS", "cdp-client")
    p = subprocess.Popen(["ip", "netns", "exec", ns, DEBIAN_PYTHON, PG_LEDGER, "192.0.2.10",
                          acked_file, str(period)])
    _clients.append(p)
    return p


SERIAL_EXEC = os.path.join(REPO, "deploy", "lab", "serial-exec")


def in_source(lab_dir, command, timeout=300):
    """COMMAND (a shell line) in the real source VM over its serial command channel
    (LAB_DIR/cmd.sock): its stdout, stripped; AssertionError when it exits non-zero."""
    r = subprocess.run([SERIAL_EXEC, "--wait", "30", os.path.join(lab_dir, "cmd.sock"), command],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{command!r} in the source exited {r.returncode}: {r.stderr}"
    return r.stdout.strip()


def pg_in_client(*command, timeout=300, check=True):
    """COMMAND (psql, pgbench, pg_amcheck) in cdp-client with the lab's libpq environment
    (PG_ENV); with check, an AssertionError naming the command when it fails."""
    ns = os.environ.get("CDP_LAB_CLIENT_NETNS", "cdp-client")
    r = subprocess.run(["ip", "netns", "exec", ns] + PG_ENV + list(command),
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(command)} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r


def psql(sql):
    """One SQL statement against PostgreSQL at 192.0.2.10 as cdp: its unaligned output."""
    return pg_in_client("psql", "-tAc", sql).stdout.strip()


def missing_ledger_rows(numbers):
    """The acknowledged ledger numbers that are not in table `ledger` at 192.0.2.10."""
    if not numbers:
        return []
    present = psql("SELECT n FROM ledger WHERE n = ANY('{" + ",".join(map(str, numbers)) +
                   "}')").split()
    return sorted(set(numbers) - set(map(int, present)))


def check_pg_after_cutover(acked_file):
    """What a cutover of the real source must leave at 192.0.2.10 (from cdp-client): every
    INSERT the ledger client saw acknowledged (ACKED_FILE) in `ledger`, TPC-B's balance invariant
    (sum(abalance) = sum(bbalance) = sum(tbalance) = sum(delta)) with pgbench transactions, and
    pg_amcheck --heapallindexed clean. Returns a summary line; AssertionError naming what is
    wrong."""
    rows = read_acked(acked_file)
    numbers = [n for n, _ in rows]
    missing = missing_ledger_rows(numbers)
    assert not missing, (f"{len(missing)} of {len(numbers)} acknowledged ledger rows are missing "
                         f"(first: {missing[:10]})")
    sums = psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                "(SELECT sum(bbalance) FROM pgbench_branches), "
                "(SELECT sum(tbalance) FROM pgbench_tellers), "
                "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
                "(SELECT count(*) FROM pgbench_history)").split("|")
    assert len(set(sums[:4])) == 1, f"TPC-B balances differ: {sums}"
    assert int(sums[4]) > 0, "pgbench committed no transaction before the cutover"
    # Debian links pg_amcheck into no directory on PATH.
    amcheck = pg_in_client("/usr/lib/postgresql/15/bin/pg_amcheck", "--heapallindexed",
                           "--no-dependent-toast", "cdp", timeout=600, check=False)
    assert amcheck.returncode == 0 and amcheck.stdout.strip() == "", \
        f"pg_amcheck exited {amcheck.returncode}: {amcheck.stdout}{amcheck.stderr}"
    return (f"ledger: {len(numbers)} INSERTs acknowledged, all on the target, largest gap "
            f"{outage_seconds(rows):.2f} s; pgbench: {sums[4]} transactions, balances equal; "
            "pg_amcheck --heapallindexed clean")


def stop_client(p):
    p.terminate()
    p.wait(10)


def run_plan(command, plan):
    """`cdpctl COMMAND --plan PLAN --json` in the lab namespace: (exit code, JSON report). The
    timeline (stderr) is printed."""
    import cdptest
    r = lab("exec", "lab", "--", os.path.join(cdptest.BIN, "cdpctl", "cdpctl"), command,
            "--plan", plan, "--json", check=False, timeout=600)
    print(r.stderr, flush=True)
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"{command} printed no JSON report (exit {r.returncode}):\n{r.stdout}")
    return r.returncode, report


def run_lab_test(body, up_args=()):
    """The frame of a lab test: a fresh lab dir, `lab up UP_ARGS`, body(lab_dir, work_dir), and
    always `lab down` and the clients killed. An AssertionError fails the test (FAIL, exit 1) after the
    last lines of the lab's logs are printed; otherwise PASS."""
    lab_dir = prepare_lab_test()
    work = tempfile.mkdtemp(prefix="cdp-lab-test-")
    failed = True
    try:
        lab("up", *up_args, timeout=2400)
        body(lab_dir, work)
        failed = False
    except AssertionError as e:
        traceback.print_exc()
        print(f"FAIL: {e}")
    finally:
        for p in _clients:
            if p.poll() is None:
                p.kill()
        if failed and os.path.isdir(lab_dir):
            for name in sorted(os.listdir(lab_dir)):
                if name.endswith(".log"):
                    print(f"----- {name} (last 30 lines) -----")
                    with open(os.path.join(lab_dir, name), errors="replace") as f:
                        print("".join(f.readlines()[-30:]))
        r = lab("down", check=False)
        print(r.stdout + r.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check-acked":
        rows = read_acked(sys.argv[2])
        missing = missing_on_service(n for n, _ in rows)
        print(f"client: {len(rows)} writes acknowledged, {len(missing)} of them missing on the "
              f"target; outage seen by the client: {outage_seconds(rows):.2f} s")
        sys.exit(1 if missing else 0)
    if len(sys.argv) == 3 and sys.argv[1] == "check-pg":
        try:
            print(check_pg_after_cutover(sys.argv[2]))
        except AssertionError as e:
            print(f"FAILED: {e}")
            sys.exit(1)
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
