"""The lab's real source server (deploy/lab/build-real-source, docs/lab.md "The real source
server"): build or find its cached image, boot it under QEMU on VMware's virtual hardware (PVSCSI
disks, vmxnet3 NICs in PCIe slots 192 and 224, so Debian names them ens192 and ens224), run
commands in it over its serial port (deploy/lab/serial-exec), shut it down.

  image_dir, meta = build_image()                 # builds once, then reuses the cache
  vm = RealSourceVm(image_dir, run_dir, uuid=..., service_tap="tap0", netns="ns")
  vm.start(); vm.wait_shell(600); rc, out, err = vm.run("systemctl is-active postgresql")
  vm.shutdown()                                   # poweroff inside; SIGKILL if it hangs

The cached images are never written: each VM gets qcow2 overlays (or copies) in its run_dir.
Standard library only; usable from tests, benchmarks and deploy/lab/lab.
"""
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))
BUILDER = os.path.join(REPO, "deploy", "lab", "build-real-source")
SERIAL_EXEC = os.path.join(REPO, "deploy", "lab", "serial-exec")
SERVICE_IP, REPLICATION_IP = "192.0.2.10", "198.51.100.10"
SERVICE_NIC, REPLICATION_NIC = "ens192", "ens224"  # vmxnet3 in PCIe slots 192 and 224
PG_PORT, SERVICE_PORT = 5432, 7000


def _load_serial_exec():
    loader = importlib.machinery.SourceFileLoader("serial_exec", SERIAL_EXEC)
    spec = importlib.util.spec_from_loader("serial_exec", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


serial_exec = _load_serial_exec()


def build_image(bin_dir=None, timeout=2400, log=print):
    """Runs deploy/lab/build-real-source (a no-op when the cache holds the image of the current
    inputs); returns (image_dir, the parsed real-source.json). Progress lines go to log. Raises
    AssertionError with the builder's last lines when it fails."""
    env = dict(os.environ)
    if bin_dir:
        env["CDP_BIN_DIR"] = bin_dir
    p = subprocess.Popen([BUILDER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    lines = []
    try:
        for line in p.stderr:
            lines.append(line.rstrip())
            log(line.rstrip())
        out = p.stdout.read()
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(60)
    if p.returncode != 0:
        raise AssertionError(f"build-real-source exited {p.returncode}:\n" + "\n".join(lines[-40:]))
    image_dir = out.strip().splitlines()[-1]
    with open(os.path.join(image_dir, "real-source.json")) as f:
        return image_dir, json.load(f)


def initramfs_modules(image_dir):
    """The module names (as .ko files are named, '-' kept) in the image's initramfs listing."""
    with open(os.path.join(image_dir, "initramfs.txt")) as f:
        return {os.path.basename(p.strip())[:-3] for p in f if p.strip().endswith(".ko")}


def pick_accel():
    """TCG: KVM does not run guests on the lab's build hosts (as deploy/lab/lab decides)."""
    return "tcg"


class RealSourceVm:
    """One boot of the real source. Files in run_dir: root.qcow2 and data.qcow2 (overlays on
    the cached raw images, or raw copies with disk_mode="copy"), console.log (ttyS0: GRUB, the
    kernel, systemd, a login prompt), cmd.sock (ttyS1: the root shell serial-exec talks to),
    qmp.sock, qemu.pid. NICs: service_tap (ens192, 192.0.2.10/24) and replication_tap (ens224,
    198.51.100.10/24) are tap devices in netns, which QEMU runs in; a NIC without a tap has no
    backend (link down). Not thread-safe."""

    def __init__(self, image_dir, run_dir, uuid, service_tap=None, replication_tap=None,
                 netns=None, name="cdp-real-source", memory_mib=1024, cpus=1,
                 service_mac="52:54:00:00:00:10", replication_mac="52:54:00:00:01:10",
                 disk_mode="overlay"):
        self.image_dir, self.run_dir, self.uuid, self.name = image_dir, run_dir, uuid, name
        self.service_tap, self.replication_tap, self.netns = service_tap, replication_tap, netns
        self.memory_mib, self.cpus, self.disk_mode = memory_mib, cpus, disk_mode
        self.service_mac, self.replication_mac = service_mac, replication_mac
        self.console = os.path.join(run_dir, "console.log")
        self.cmd_sock = os.path.join(run_dir, "cmd.sock")
        self.qmp_sock = os.path.join(run_dir, "qmp.sock")
        self.pidfile = os.path.join(run_dir, "qemu.pid")
        self.proc = None
        self.started = None

    def disks(self):
        """[(volume name, path)] of the VM's disks: the root disk, then the data disk."""
        ext = "qcow2" if self.disk_mode == "overlay" else "img"
        return [("src-root", os.path.join(self.run_dir, f"root.{ext}")),
                ("src-data", os.path.join(self.run_dir, f"data.{ext}"))]

    def _make_disks(self):
        for (_, path), base in zip(self.disks(), ("root.img", "data.img")):
            src = os.path.join(self.image_dir, base)
            if self.disk_mode == "overlay":
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", src,
                                path], check=True, timeout=60)
            else:
                subprocess.run(["cp", "--reflink=auto", "--sparse=always", src, path], check=True,
                               timeout=600)

    def qemu_args(self):
        """The QEMU command line: q35 (its PCIe root ports carry the physical slot numbers
        VMware uses; ACPI hotplug off so the kernel's pciehp reports them), SeaBIOS booting GRUB
        from the PVSCSI root disk, serial ports ttyS0 (console.log) and ttyS1 (cmd.sock)."""
        fmt = "qcow2" if self.disk_mode == "overlay" else "raw"
        args = ["qemu-system-x86_64", "-name", self.name, "-uuid", self.uuid,
                "-machine", "q35", "-accel", pick_accel(), "-cpu", "max",
                "-m", str(self.memory_mib), "-smp", str(self.cpus),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
                "-chardev", f"file,id=console,path={self.console}", "-serial", "chardev:console",
                "-chardev", f"socket,id=cmd,path={self.cmd_sock},server=on,wait=off",
                "-serial", "chardev:cmd",
                "-qmp", f"unix:{self.qmp_sock},server=on,wait=off", "-pidfile", self.pidfile,
                "-device", "pcie-root-port,id=rp160,chassis=1,slot=160",
                "-device", "pvscsi,id=pvscsi0,bus=rp160"]
        for i, (volume, path) in enumerate(self.disks()):
            args += ["-drive", f"file={path},format={fmt},if=none,id=disk{i},cache=writeback",
                     "-device", f"scsi-hd,drive=disk{i},bus=pvscsi0.0,scsi-id={i},lun=0,"
                                f"serial={volume}" + (",bootindex=0" if i == 0 else "")]
        for slot, tap, mac, nid in ((192, self.service_tap, self.service_mac, "svc"),
                                    (224, self.replication_tap, self.replication_mac, "repl")):
            args += ["-device", f"pcie-root-port,id=rp{slot},chassis={slot},slot={slot}"]
            if tap:
                args += ["-netdev", f"tap,id={nid},ifname={tap},script=no,downscript=no",
                         "-device", f"vmxnet3,netdev={nid},mac={mac},bus=rp{slot}"]
            else:
                args += ["-device", f"vmxnet3,mac={mac},bus=rp{slot}"]
        return args

    def start(self):
        """Makes the disks and starts QEMU (returns at once; the OS boots for a minute or two
        under TCG)."""
        os.makedirs(self.run_dir, exist_ok=True)
        self._make_disks()
        args = self.qemu_args()
        if self.netns:
            args = ["ip", "netns", "exec", self.netns] + args
        self.started = time.time()
        with open(os.path.join(self.run_dir, "qemu.log"), "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def console_text(self):
        with contextlib.suppress(OSError):
            with open(self.console, errors="replace") as f:
                return f.read()
        return ""

    def qemu_log(self):
        with contextlib.suppress(OSError):
            with open(os.path.join(self.run_dir, "qemu.log"), errors="replace") as f:
                return f.read()
        return ""

    def wait_shell(self, timeout):
        """Waits until the root shell on ttyS1 answers (systemd has started its getty)."""
        deadline = time.time() + timeout
        while True:
            if not self.alive():
                raise AssertionError(f"QEMU exited ({self.proc.returncode}): {self.qemu_log()}")
            try:
                with serial_exec.SerialShell(self.cmd_sock, wait=min(20, timeout)):
                    return
            except serial_exec.ChannelError:
                if time.time() > deadline:
                    raise AssertionError(f"no shell on {self.name}'s ttyS1 within {timeout} s; "
                                         f"console:\n{self.console_text()[-3000:]}")

    def run(self, command, timeout=120, check=True):
        """Runs a shell command line in the VM as root: (exit status, stdout, stderr) as text.
        With check, a non-zero status raises AssertionError."""
        with serial_exec.SerialShell(self.cmd_sock, wait=30) as shell:
            rc, out, err = shell.run(command, timeout)
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        if check and rc != 0:
            raise AssertionError(f"{self.name}: {command!r} exited {rc}: {out}{err}")
        return rc, out, err

    def put(self, data, remote, mode=0o644):
        """Copies bytes to the file `remote` in the VM."""
        with serial_exec.SerialShell(self.cmd_sock, wait=30) as shell:
            shell.put(data, remote, mode)

    def shutdown(self, timeout=180):
        """Powers the OS off from inside (systemctl poweroff) and waits for QEMU to exit; kills
        it when it does not within timeout. True when it powered off by itself."""
        if not self.alive():
            return False
        with contextlib.suppress(serial_exec.ChannelError, serial_exec.CommandTimeout, OSError):
            with serial_exec.SerialShell(self.cmd_sock, wait=10) as shell:
                shell.run("systemctl --no-block poweroff", timeout=20)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def kill(self):
        """SIGKILL to QEMU (idempotent)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


if __name__ == "__main__":
    d, meta = build_image(log=lambda line: print(line, file=sys.stderr))
    print(d)
