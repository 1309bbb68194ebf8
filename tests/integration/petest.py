"""Harness for tests of the semi-booted target: the PE image (built once per build dir), a
target VM config, and a Scene that also owns the target VM and a replicator into it.

Everything a test starts is stopped when the scene closes, also when the test fails: the
target VM is stopped over QMP (`cdpctl target stop`) and, failing that, its QEMU is killed
through its pid file.
"""
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time

import cdptest
from cdptest import BIN, Proc, Scene, binary, free_port, log

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
PE_TOOLS = ("qemu-system-x86_64", "qemu-img", "qemu-io", "nbdcopy", "busybox", "cpio",
            "depmod", "apt-get", "dpkg-deb", "xxhsum")


def pe_agent_binary():
    path = os.path.join(BIN, "pe-boot", "pe-agent")
    if not os.access(path, os.X_OK):
        raise SystemExit(f"FAIL: {path} is not built; build first (cmake --build build)")
    return path


def pe_image():
    """Builds the PE image into BIN/pe-image once (rebuilt when the pe-agent, the builder or the
    initramfs files are newer), under
    a lock so parallel tests share one build. Returns (kernel, initrd)."""
    out = os.path.join(BIN, "pe-image")
    kernel, initrd = os.path.join(out, "vmlinuz"), os.path.join(out, "initrd.img")
    agent = pe_agent_binary()
    os.makedirs(BIN, exist_ok=True)
    with open(os.path.join(BIN, "pe-image.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pe = os.path.join(REPO, "pe-boot")
        inputs = [agent, os.path.join(pe, "build-pe-image"), os.path.join(pe, "lib-image.sh")]
        inputs += [os.path.join(pe, "initramfs", f) for f in os.listdir(os.path.join(pe, "initramfs"))]
        if (not os.path.exists(initrd) or
                os.path.getmtime(initrd) < max(os.path.getmtime(p) for p in inputs)):
            log(f"building the PE image into {out}")
            t0 = time.time()
            r = subprocess.run([os.path.join(REPO, "pe-boot", "build-pe-image"), "--pe-agent",
                                agent, out], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise AssertionError(f"build-pe-image failed ({r.returncode}):\n"
                                     f"{r.stdout}{r.stderr}")
            log(f"PE image built in {time.time() - t0:.1f}s")
    return kernel, initrd


def qemu_img_compare(a, b, fmt_a="raw", fmt_b="qcow2"):
    r = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, a, b],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"qemu-img compare {a} {b} exited {r.returncode}: "
                             f"{r.stdout}{r.stderr}")
    assert "Images are identical" in r.stdout, r.stdout
    log(f"qemu-img compare: {os.path.basename(b)} == {os.path.basename(a)} "
        f"({r.stdout.strip()})")


class TargetScene(Scene):
    """A Scene (journal-server, cdp-agent over NBD on source.img) plus a target VM in PE whose
    disk for the volume is target-NAME.qcow2, and a replicator into its pe-agent."""

    def __init__(self, extra_config="", **kw):
        super().__init__(**kw)
        self.repl_port = free_port()
        self.pe_endpoint = f"tcp://127.0.0.1:{self.repl_port}"
        self.disk = os.path.join(self.dir, f"target-{self.volume}.qcow2")
        self.config = os.path.join(self.dir, "target.yaml")
        self.qmp = os.path.join(self.dir, "target.qmp")
        self.extra_config = extra_config
        self.vm_name = "cdp-test-target"

    def write_config(self, disks=None, extra=None):
        kernel, initrd = pe_image()
        size = os.path.getsize(self.source)
        disks = disks or [(self.volume, self.disk, size)]
        lines = [f"name: {self.vm_name}", "memory_mib: 512",
                 f"pe: {{kernel: {kernel}, initrd: {initrd}}}",
                 f"qmp_socket: {self.qmp}",
                 f"replication_endpoint: {self.pe_endpoint}",
                 "ready_timeout_seconds: 180",
                 "disks:"]
        for vol, path, sz in disks:
            lines.append(f"  - {{volume: {vol}, path: {path}, size: {sz}}}")
        text = "\n".join(lines) + "\n" + (extra if extra is not None else self.extra_config)
        with open(self.config, "w") as f:
            f.write(text)
        return self.config

    def ctl_target(self, *args, check=True, timeout=300):
        return cdptest.run_cdpctl(["target", *args, "--config", self.config],
                                  shown=("target",) + args, check=check, timeout=timeout)

    def target_start(self):
        t0 = time.time()
        r = self.ctl_target("start")
        log(f"target start took {time.time() - t0:.1f}s: {r.stdout.strip().splitlines()[-1]}")
        return r

    def target_status(self):
        r = self.ctl_target("status", "--json", check=False)
        if r.returncode not in (0, 1, 3):
            raise AssertionError(f"cdpctl target status exited {r.returncode}: {r.stderr}")
        return json.loads(r.stdout)

    def target_volume(self):
        st = self.target_status()
        assert st["state"] == "pe-ready", st
        for v in st["volumes"]:
            if v["name"] == self.volume:
                return v
        raise AssertionError(f"volume {self.volume} missing from target status: {st}")

    def qemu_pid(self):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.dir, f"{self.vm_name}.pid")) as f:
                return int(f.read().strip())
        return 0

    def start_pe_replicator(self):
        self.procs["replicator"] = Proc("replicator", [
            binary("replicator"), "--server", self.server, "--volume", self.volume,
            "--target", "pe:" + self.pe_endpoint], os.path.join(self.dir, "replicator.log"))

    def dump_logs(self):
        super().dump_logs()
        console = os.path.join(self.dir, f"{self.vm_name}.console.log")
        if os.path.exists(console):
            print("----- target console (last 40 lines) -----")
            with open(console, errors="replace") as f:
                for line in f.readlines()[-40:]:
                    print(line, end="")

    def close(self, failed):
        if os.path.exists(self.config):
            with contextlib.suppress(Exception):
                self.ctl_target("stop", check=False, timeout=60)
        pid = self.qemu_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        super().close(failed)


def run(test_fn, **scene_args):
    cdptest.require_tools(*PE_TOOLS)
    cdptest.run(test_fn, scene_class=TargetScene, **scene_args)
