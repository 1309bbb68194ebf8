"""Trace-mode test harness: a real filesystem on a loop device, mounted, protected by cdp-agent
--trace, replicated to an image file. Extends cdptest.Scene.

Everything the scene creates — processes (the agent's thaw watchdog too), the mount, the loop
device, the agent's tracefs instance — is removed when it closes, also when the test failed; a
filesystem left frozen is thawed first. Missing root, loop devices, tracefs or tools fail the test
under CI and skip it (exit 77) otherwise.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

import cdptest as t

TRACEFS_CANDIDATES = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_workload.py")


def fail_or_skip(msg):
    if os.environ.get("CI"):
        raise SystemExit("FAIL: " + msg)
    print("SKIP: " + msg)
    sys.exit(77)


def require_kernel():
    """Root, a loop device and tracefs with block_rq_complete: fail loudly under CI."""
    if os.geteuid() != 0:
        fail_or_skip("trace-mode tests need root (loop devices, mount, tracefs)")
    t.require_tools("losetup", "mkfs.ext4", "mkfs.xfs", "e2fsck", "xfs_repair", "fsfreeze",
                    "sfdisk", "addpart", "fio", "tar", "cmp", "dd", "mount", "umount")
    if not any(os.path.isdir(os.path.join(p, "instances")) for p in TRACEFS_CANDIDATES):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                       capture_output=True)
    if not any(os.path.isdir(os.path.join(p, "events/block/block_rq_complete"))
               for p in TRACEFS_CANDIDATES):
        fail_or_skip("no tracefs with block/block_rq_complete (mount -t tracefs nodev "
                     "/sys/kernel/tracing; kernel needs CONFIG_FTRACE and block tracepoints)")


def tracefs_root():
    for p in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(p, "instances")):
            return p
    return None


def remove_instance(name):
    root = tracefs_root()
    if root is None:
        return
    inst = os.path.join(root, "instances", name)
    if os.path.isdir(inst):
        with contextlib.suppress(OSError):
            with open(os.path.join(inst, "events/block/block_rq_complete/enable"), "w") as f:
                f.write("0")
        for _ in range(50):
            try:
                os.rmdir(inst)
                break
            except OSError:
                time.sleep(0.1)


def instance_exists(name):
    root = tracefs_root()
    return root is not None and os.path.isdir(os.path.join(root, "instances", name))


class TraceScene(t.Scene):
    """A loop device with a filesystem, mounted; the agent protects it in trace mode."""

    def __init__(self, fs="ext4", size_mib=1024, partition=False, volume=None,
                 agent_args=(), **kw):
        require_kernel()
        volume = volume or f"tr{os.getpid()}"
        kw.setdefault("keep", bool(os.environ.get("CDP_TEST_KEEP")))  # keep files to debug
        super().__init__(volume=volume, size_mib=0, agent_args=agent_args, **kw)
        self.fs, self.partition = fs, partition
        self.instance = f"cdp-agent.{volume}"
        self.backing = os.path.join(self.dir, "disk.img")
        self.mnt = os.path.join(self.dir, "mnt")
        self.loop = None
        self.mounted = False
        self.workload = None
        with open(self.backing, "wb") as f:
            f.truncate(size_mib << 20)
        try:
            self._make_fs()
        except BaseException:
            self.close(failed=True)
            raise

    def _make_fs(self):
        args = ["losetup", "--find", "--show"] + (["--partscan"] if self.partition else [])
        r = subprocess.run(args + [self.backing], capture_output=True, text=True)
        if r.returncode != 0:
            fail_or_skip(f"cannot get a loop device: {r.stderr.strip()}")
        self.loop = r.stdout.strip()
        if self.partition:
            # One partition from 1 MiB to 1 MiB before the end: its sectors are not the disk's.
            subprocess.run(["sfdisk", "--quiet", self.loop], input="label: dos\nstart=2048, "
                           "type=83\n", text=True, check=True, capture_output=True)
            self.source = self.loop + "p1"
            if not os.path.exists(self.source):
                # Kernels built without partition-table parsers ignore the table; add the
                # partition by hand (BLKPG), as the table says: sector 2048 to the end.
                sectors = (os.path.getsize(self.backing) >> 9) - 2048
                subprocess.run(["addpart", self.loop, "1", "2048", str(sectors)], check=True,
                               capture_output=True)
            t.Scene.wait_for(self, lambda: os.path.exists(self.source), 20,
                             f"partition {self.source}")
        else:
            self.source = self.loop
        mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}[self.fs]
        subprocess.run(mkfs + [self.source], check=True, capture_output=True)
        os.makedirs(self.mnt)
        subprocess.run(["mount", self.source, self.mnt], check=True)
        self.mounted = True
        t.log(f"{self.fs} on {self.source} mounted at {self.mnt}")

    # --- processes -------------------------------------------------------------------------
    def start_agent(self, wait=True, extra=(), env=None):
        args = [t.binary("cdp-agent"), "--server", self.server, "--volume", self.volume,
                "--device", self.source, "--trace", "--freeze", self.mnt,
                "--state-dir", os.path.join(self.dir, "agent-state")] + self.agent_args + \
            list(extra) + os.environ.get("CDP_AGENT_EXTRA", "").split()
        self.procs["agent"] = Proc(args, os.path.join(self.dir, "cdp-agent.log"), env)
        if wait:
            self.wait_for(lambda: self.agent_logged("tracing "), 30, "agent tracing")

    def agent_log(self):
        with open(os.path.join(self.dir, "cdp-agent.log"), errors="replace") as f:
            return f.read()

    def agent_logged(self, text):
        return text in self.agent_log()

    def start_workload(self, seconds, fio_rate="4m"):
        t.log(f"workload for {seconds}s on {self.mnt}")
        self.workload = subprocess.Popen(
            [sys.executable, WORKLOAD, self.mnt, str(seconds), "--fio-rate", fio_rate],
            stdout=open(os.path.join(self.dir, "workload.log"), "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_workload(self):
        rc = self.workload.wait(timeout=900)
        with open(os.path.join(self.dir, "workload.log"), errors="replace") as f:
            out = f.read()
        assert rc == 0, f"workload failed ({rc}):\n{out[-3000:]}"
        t.log(out.strip().splitlines()[-1] if out.strip() else "workload done")
        self.workload = None

    # --- checks ----------------------------------------------------------------------------
    def finish_workload(self, covered=False):
        """Waits for the workload to end; with `covered`, then for a consistency point of the
        agent's own covering the last write. Then checks that the replica equals the device and
        that its filesystem is clean (assert_identical, fsck_target). Returns the status."""
        self.wait_workload()
        if covered:
            # How many points the agent took during the load depends on the machine (busy
            # cycles are skipped), but once it stops its own freezes must cover every write.
            self.wait_for(lambda: self.status()["last_point_lsn"] == self.status()["captured_lsn"],
                          120, "a consistency point covering the last write")
        self.assert_identical()
        self.fsck_target()
        return self.status()

    def freeze(self):
        # The agent's own freezes are short; ours is refused (EBUSY) while one is in progress.
        for _ in range(100):
            r = subprocess.run(["fsfreeze", "--freeze", self.mnt], capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"fsfreeze --freeze {self.mnt} kept failing: {r.stderr.strip()}")

    def thaw(self):
        subprocess.run(["fsfreeze", "--unfreeze", self.mnt], capture_output=True)

    def is_frozen(self, wait=1.0):
        """True when a write to the filesystem does not complete within `wait` seconds (the
        probe process is left to finish on its own after the thaw)."""
        p = subprocess.Popen(["sh", "-c", f"echo x > {self.mnt}/.probe"],
                             start_new_session=True)
        try:
            p.wait(wait)
            return False
        except subprocess.TimeoutExpired:
            return True

    def assert_identical(self):
        """Freeze the filesystem, let replication catch up, and compare the device (read with
        O_DIRECT, so no stale page cache) with the replica — both copied while still frozen, since
        some filesystems (xfs) write their log and superblock again at thaw, and the replica
        follows. The replica copy is kept for fsck_target."""
        snap = os.path.join(self.dir, "device-snapshot.img")
        self.replica_snap = os.path.join(self.dir, "replica-snapshot.img")
        self.freeze()
        try:
            self.wait_synced()
            subprocess.run(["dd", f"if={self.source}", f"of={snap}", "bs=1M", "iflag=direct",
                            "status=none"], check=True)
            subprocess.run(["cp", "--sparse=always", self.target, self.replica_snap], check=True)
        finally:
            self.thaw()
        r = subprocess.run(["cmp", snap, self.replica_snap], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"replica differs from the device: {r.stdout}{r.stderr}")
        t.log(f"cmp: replica == {self.source} ({os.path.getsize(snap) >> 20} MiB)")
        os.unlink(snap)

    def fsck_target(self):
        """fsck -n of the replica as compared by the last assert_identical. A frozen xfs may
        still have metadata in its log (it is consistent after log recovery, as after a crash),
        and xfs_repair -n does not replay logs: mount and unmount the copy first."""
        img = self.replica_snap
        if self.fs == "xfs":
            mnt = os.path.join(self.dir, "replica-mnt")
            os.makedirs(mnt, exist_ok=True)
            loop = subprocess.run(["losetup", "--find", "--show", img], capture_output=True,
                                  text=True, check=True).stdout.strip()
            try:
                subprocess.run(["mount", "-o", "nouuid", loop, mnt], check=True,
                               capture_output=True)
                subprocess.run(["umount", mnt], check=True, capture_output=True)
            finally:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
        cmd = {"ext4": ["e2fsck", "-f", "-n", img], "xfs": ["xfs_repair", "-n", "-f", img]}[self.fs]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        t.log(f"{cmd[0]} -n of the replica: clean")

    def trace_stats(self):
        return self.status().get("trace", {})

    def close(self, failed):
        if self.workload is not None and self.workload.poll() is None:
            with contextlib.suppress(Exception):
                os.killpg(self.workload.pid, signal.SIGKILL)
                self.workload.wait(30)
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.kill9()  # an agent's watchdog outlives it and thaws; it exits on its own
        # Watchdogs of killed agents exit when their socket closes; make sure.
        subprocess.run(["pkill", "-9", "-f", f"cdp-thaw-watchdog --mount {self.mnt}"],
                       capture_output=True)
        if self.mounted:
            self.thaw()
            for _ in range(50):
                if subprocess.run(["umount", self.mnt], capture_output=True).returncode == 0:
                    self.mounted = False
                    break
                time.sleep(0.2)
        remove_instance(self.instance)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        # Last: logs (when failed) and the temp dir, now that nothing is mounted in it.
        super().close(failed)


class Proc(t.Proc):
    """cdptest.Proc with an environment."""

    def __init__(self, args, logpath, env=None):
        self.env = env
        super().__init__("cdp-agent", args, logpath)

    def start(self):
        self.logfile = open(self.logpath, "ab")
        env = dict(os.environ, **(self.env or {}))
        self.p = subprocess.Popen(self.args, stdout=self.logfile, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=env)


def run(test_fn, **scene_args):
    """cdptest.run with a TraceScene."""
    t.run(test_fn, scene_class=TraceScene, **scene_args)
