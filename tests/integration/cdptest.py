"""Integration-test harness: real journal-server, cdp-agent and replicator processes on
loopback, real NBD clients (qemu-io, nbdcopy), temp dirs and guaranteed clean-up.

Every process a test starts is killed and every temp dir removed when the Scene closes, also
when the test fails. Tools a test needs must exist; under CI a missing tool fails the test
loudly instead of skipping it.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(os.environ.get("CDP_BIN_DIR",
                                     os.path.join(os.path.dirname(__file__), "../../build")))


def binary(name):
    sub = {"journal-server": "journal-server", "cdp-agent": "cdp-agent",
           "replicator": "replicator", "cdpctl": "cdpctl", "pe-agent": "pe-boot"}[name]
    path = os.path.join(BIN, sub, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"FAIL: {path} is not built; build first (cmake --build build)")
    return path


def require_tools(*tools):
    """Fails (never skips silently under CI) when a tool the test needs is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"required tools missing: {', '.join(missing)}; run deploy/install-deps.sh"
        if os.environ.get("CI"):
            raise SystemExit("FAIL: " + msg)
        print("SKIP: " + msg)
        sys.exit(77)


def qemu_io(uri, *cmds, check=True):
    """Runs qemu-io on the NBD `uri` with each of `cmds`; its output. With check, a failure or
    an error in the output raises."""
    args = ["qemu-io", "-f", "raw", uri]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    if check and (r.returncode != 0 or "error" in out.lower() or "failed" in out.lower()):
        raise AssertionError(f"qemu-io failed ({r.returncode}):\n{out}")
    return out


def unix_accepts(path):
    """True when something accepts connections on the unix socket at `path`."""
    with socket.socket(socket.AF_UNIX) as c:
        try:
            c.connect(path)
            return True
        except OSError:
            return False


def run_cdpctl(args, shown=None, check=True, timeout=600):
    """Runs `cdpctl ARGS` and returns its CompletedProcess (text). With `check`, an exit status
    other than 0 raises AssertionError with the output, naming the words `shown` (default ARGS:
    a caller leaves out what every call of it adds)."""
    r = subprocess.run([binary("cdpctl")] + list(args), capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        shown = args if shown is None else shown
        raise AssertionError(f"cdpctl {' '.join(shown)} exited {r.returncode}:\n"
                             f"{r.stdout}{r.stderr}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 UTC time as cdpctl prints it (...Z, 9 digits)."""
    import datetime
    whole, _, frac = text.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proc:
    def __init__(self, name, args, logpath):
        self.name, self.args, self.logpath = name, args, logpath
        self.start()

    def start(self):
        self.logfile = open(self.logpath, "ab")
        self.p = subprocess.Popen(self.args, stdout=self.logfile, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def kill9(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self.logfile.close()

    def term(self, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{self.name} did not stop within {timeout}s of SIGTERM")
        self.logfile.close()
        return self.p.returncode

    def alive(self):
        return self.p.poll() is None


class Scene:
    """One journal-server, one protected volume, one replicator, in a temp dir (a new directory
    named `prefix`XXXXXX under `parent_dir`, default the system's temp dir)."""

    def __init__(self, volume="vol0", size_mib=512, ack="async", agent_args=(), keep=False,
                 journal_args=(), parent_dir=None, prefix="cdp-it-"):
        self.dir = tempfile.mkdtemp(prefix=prefix, dir=parent_dir)
        self.volume, self.ack, self.agent_args = volume, ack, list(agent_args)
        self.journal_args = list(journal_args)
        self.port = free_port()
        self.server = f"tcp://127.0.0.1:{self.port}"
        self.source = os.path.join(self.dir, "source.img")
        self.target = os.path.join(self.dir, "target.img")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.uri = f"nbd+unix:///{volume}?socket={self.sock}"
        with open(self.source, "wb") as f:
            f.truncate(size_mib << 20)
        self.procs = {}
        self.keep = keep

    # --- processes -------------------------------------------------------------------------
    def spawn(self, key, args):
        """Starts the daemon args[0] as self.procs[key], its output appended to NAME.log in the
        scene's dir (NAME = the binary's name). Subclasses may track the process further."""
        name = os.path.basename(args[0])
        self.procs[key] = Proc(name, args, os.path.join(self.dir, name + ".log"))
        return self.procs[key]

    def start_journal(self):
        self.spawn("journal", [
            binary("journal-server"), "--data-dir", os.path.join(self.dir, "journal"),
            "--listen", self.server] + self.journal_args)

    def start_agent(self, wait=True):
        self.spawn("agent", [
            binary("cdp-agent"), "--server", self.server, "--volume", self.volume,
            "--device", self.source, "--nbd", "unix:" + self.sock, "--ack", self.ack,
            "--state-dir", os.path.join(self.dir, "agent-state")] + self.agent_args +
            os.environ.get("CDP_AGENT_EXTRA", "").split())
        if wait:
            self.wait_for(self.nbd_accepts, 20, "agent NBD socket")

    def nbd_accepts(self):
        return unix_accepts(self.sock)

    def start_replicator(self):
        self.spawn("replicator", [
            binary("replicator"), "--server", self.server, "--volume", self.volume,
            "--target", self.target, "--state-dir", os.path.join(self.dir, "replica-state")])

    def start_all(self):
        self.start_journal()
        self.start_agent()
        self.start_replicator()
        self.wait_for(lambda: self.volume_status() is not None, 60,
                      f"volume {self.volume} registered by its agent")

    def wait_for(self, pred, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            for p in self.procs.values():
                if not p.alive() and p.p.returncode not in (None, -9, -15):
                    raise AssertionError(f"{p.name} exited with {p.p.returncode} while "
                                         f"waiting for {what}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    # --- tools -----------------------------------------------------------------------------
    def cdpctl(self, *args, check=True, timeout=600):
        return run_cdpctl(["--server", self.server, *args], shown=args, check=check,
                          timeout=timeout)

    def volume_status(self):
        """This scene's volume in `cdpctl status --json`, or None when it is not known yet."""
        doc = json.loads(self.cdpctl("status", "--json").stdout)
        for v in doc["volumes"]:
            if v["name"] == self.volume:
                return v
        return None

    def status(self):
        v = self.volume_status()
        if v is None:
            raise AssertionError(f"volume {self.volume} missing from status")
        return v

    def wait_synced(self, timeout=600):
        """`cdpctl wait-synced` for this volume (raises if it fails); the seconds it took."""
        t0 = time.monotonic()
        r = self.cdpctl("wait-synced", "--volume", self.volume, "--timeout", str(timeout),
                        timeout=timeout + 30)
        took = time.monotonic() - t0
        log(f"wait-synced took {took:.1f}s: {r.stdout.strip()}")
        return took

    def qemu_io(self, *cmds, check=True):
        return qemu_io(self.uri, *cmds, check=check)

    def nbdcopy(self, src, background=False):
        args = ["nbdcopy", src, self.uri]
        if background:
            return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        subprocess.run(args, check=True, timeout=900)

    def random_file(self, mib, name="random.bin", seed=None):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        return path

    def assert_identical(self):
        """The replica equals the source byte for byte (the source may be longer only if the
        target was never created; we compare the full volume)."""
        r = subprocess.run(["cmp", self.source, self.target], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"target differs from source: {r.stdout}{r.stderr}")
        log(f"cmp: {self.target} == {self.source} "
            f"({os.path.getsize(self.source) >> 20} MiB)")

    def dump_logs(self):
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                print(f"----- {name} (last 40 lines) -----")
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    for line in f.readlines()[-40:]:
                        print(line, end="")

    def close(self, failed):
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.kill9()
        if failed:
            self.dump_logs()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def guarded(test_fn, cleanup):
    """Runs test_fn() and exits 0 on success, 1 on failure (with the traceback), calling
    cleanup(failed) either way."""
    failed = True
    # A SIGTERM (a timeout) ends the test through the cleanup below, not around it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAIL: terminated by SIGTERM"))
    try:
        test_fn()
        failed = False
        print("PASS")
    except BaseException as e:  # noqa: BLE001 - report everything, clean up, exit 1
        import traceback
        traceback.print_exc()
        print(f"FAIL: {e}")
    finally:
        cleanup(failed)
    sys.exit(1 if failed else 0)


def run(test_fn, scene_class=None, **scene_args):
    """Runs test_fn(scene) and exits 0 on success, 1 on failure, cleaning up either way.
    scene_class: a Scene subclass (default Scene)."""
    scene = (scene_class or Scene)(**scene_args)
    guarded(lambda: test_fn(scene), scene.close)


def run_in_temp_dir(test_fn, prefix):
    """Runs test_fn(dir) in a fresh temp dir, removed afterwards; exits 0 or 1 like run()."""
    d = tempfile.mkdtemp(prefix=prefix)
    guarded(lambda: test_fn(d), lambda failed: shutil.rmtree(d, ignore_errors=True))
