#!/usr/bin/env python3
"""The lab's source server (deploy/lab/build-source-image, docs/lab-source-os.md).

First the test service alone on the host: the exact replies of its protocol, errors for garbage,
pipelined and concurrent clients, an incomplete request at EOF never stored, a torn last line of
the data file dropped on restart (and truncated, so the next record is not glued to it), a damaged
line refused. Then the image: built with the NIC of QEMU's user network, its content checked
without mounting (debugfs), its /boot and /lib/modules enough for build-pe-image --kernel-from;
booted under QEMU TCG from its own kernel and initramfs: WHO answers
the VM's SMBIOS UUID, 200 PUTs are acknowledged, LAST and HAS agree; QEMU is killed with SIGKILL
and the image booted again: every acknowledged record is there. Ctrl-Alt-Del powers the VM off
cleanly and e2fsck finds the filesystem clean."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import cdptest as t

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUILDER = os.path.join(REPO, "deploy/lab/build-source-image")
MAC = "52:54:00:12:34:56"
VM_UUID = "11111111-2222-3333-4444-555555555555"
BOOT_TIMEOUT = 120  # seconds; TCG on a loaded 2-core host, the OS itself needs ~5
RECORDS = 200


def service_binary():
    path = os.path.join(t.BIN, "deploy", "lab", "test-service", "cdp-test-service")
    if not os.access(path, os.X_OK):
        raise SystemExit(f"FAIL: {path} is not built; build first "
                         f"(cmake --build build --target cdp-test-service)")
    return path


class Client:
    """One connection to the test service: lines out, lines in."""

    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, *lines):
        self.sock.sendall("".join(line + "\n" for line in lines).encode())

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the service closed the connection; unanswered: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, request):
        self.send(request)
        return self.line()

    def closed(self):
        """True when the service closes the connection without sending anything more."""
        return self.buf == b"" and self.sock.recv(1) == b""


def expect(client, request, reply):
    got = client.ask(request)
    assert got == reply, f"{request!r}: expected {reply!r}, got {got!r}"


# --- the service on the host --------------------------------------------------------------

class HostService:
    def __init__(self, binary, d, data, uuid_file):
        self.binary, self.d, self.data, self.uuid_file = binary, d, data, uuid_file
        self.port, self.proc = t.free_port(), None

    def start(self):
        self.proc = t.Proc("cdp-test-service", [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--data", self.data,
            "--uuid-file", self.uuid_file], os.path.join(self.d, "service.log"))
        deadline = time.time() + 20
        while time.time() < deadline:
            if not self.proc.alive():
                raise AssertionError(f"cdp-test-service exited with {self.proc.p.returncode}: "
                                     f"{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("cdp-test-service did not listen within 20 s")

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def log(self):
        with open(os.path.join(self.d, "service.log"), errors="replace") as f:
            return f.read()


def check_service_on_host(d, binary):
    data = os.path.join(d, "records")
    uuid_file = os.path.join(d, "product_uuid")
    with open(uuid_file, "w") as f:
        f.write("ABCDEF01-2345-6789-ABCD-EF0123456789\n")
    svc = HostService(binary, d, data, uuid_file)
    try:
        svc.start()
        with Client(svc.port) as c:
            for request, reply in [
                    ("LAST", "0"), ("HAS 5", "NO"), ("PUT 5", "OK 5"), ("PUT 5", "OK 5"),
                    ("HAS 5", "YES"), ("LAST", "5"), ("PUT 3", "OK 3"), ("LAST", "5"),
                    ("HAS 3", "YES"), ("PUT 0", "OK 0"), ("HAS 0", "YES"),
                    ("PUT 007", "OK 7"), ("PUT 7\r", "OK 7"),
                    ("WHO", "abcdef01-2345-6789-abcd-ef0123456789"),
                    ("PUT 18446744073709551615", "OK 18446744073709551615"),
                    ("LAST", "18446744073709551615"),
                    ("HELLO", "ERR unknown request 'HELLO'; expected PUT <n>, LAST, HAS <n> or WHO"),
                    ("put 1", "ERR unknown request 'put'; expected PUT <n>, LAST, HAS <n> or WHO"),
                    ("", "ERR empty request; expected PUT <n>, LAST, HAS <n> or WHO"),
                    ("PUT", "ERR PUT takes one record number"),
                    ("PUT 1 2", "ERR PUT takes one record number"),
                    ("HAS", "ERR HAS takes one record number"),
                    ("PUT -1", "ERR '-1' is not a record number (0 to 18446744073709551615)"),
                    ("PUT +1", "ERR '+1' is not a record number (0 to 18446744073709551615)"),
                    ("PUT 1x", "ERR '1x' is not a record number (0 to 18446744073709551615)"),
                    ("PUT 18446744073709551616",
                     "ERR '18446744073709551616' is not a record number (0 to 18446744073709551615)"),
                    ("LAST 1", "ERR LAST takes no argument"),
                    ("WHO x", "ERR WHO takes no argument")]:
                expect(c, request, reply)
            # Pipelined: 50 requests in one send, 50 replies in order.
            c.send(*[f"PUT {n}" for n in range(100, 125)], *[f"HAS {n}" for n in range(100, 125)])
            replies = [c.line() for _ in range(50)]
            assert replies == [f"OK {n}" for n in range(100, 125)] + ["YES"] * 25, replies
        # The lines in the data file are exactly the records, each once.
        with open(data) as f:
            lines = f.read().splitlines()
        assert sorted(map(int, lines)) == sorted({0, 3, 5, 7, 2**64 - 1, *range(100, 125)}), lines

        # Concurrent clients, PUTs interleaved with readers.
        errors, workers = [], []

        def writer(k):
            try:
                with Client(svc.port) as c:
                    for i in range(50):
                        n = 1000 * (k + 1) + i
                        got = c.ask(f"PUT {n}")
                        assert got == f"OK {n}", f"PUT {n}: {got!r}"
                        assert c.ask(f"HAS {n}") == "YES", f"HAS {n} after OK"
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        def reader():
            try:
                with Client(svc.port) as c:
                    for _ in range(100):
                        int(c.ask("LAST"))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        workers = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        workers += [threading.Thread(target=reader) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not errors, f"concurrent clients failed: {errors}"
        with Client(svc.port) as c:
            expect(c, "HAS 8049", "YES")
            expect(c, "HAS 1050", "NO")
        t.log("host: protocol replies exact, 50 pipelined, 8 writers x 50 PUTs + 2 readers")

        # A request without its newline when the client shuts down is never stored.
        with Client(svc.port) as c:
            c.sock.sendall(b"PUT 77")
            c.sock.shutdown(socket.SHUT_WR)
            assert c.closed(), "the service answered an incomplete request"
        # A line longer than 4096 bytes: one error, then the connection closes.
        with Client(svc.port) as c:
            c.sock.sendall(b"PUT " + b"1" * 5000)
            assert c.line() == "ERR request longer than 4096 bytes"
            assert c.closed()
        with Client(svc.port) as c:
            expect(c, "HAS 77", "NO")
            last = c.ask("LAST")

        # A crash in the middle of an append leaves a torn last line: dropped on restart, and
        # the file truncated so the next record is a line of its own.
        svc.kill9()
        with open(data, "ab") as f:
            f.write(b"12")
        size_before = os.path.getsize(data)
        svc.start()
        with Client(svc.port) as c:
            expect(c, "LAST", last)
            expect(c, "HAS 12", "NO")
        assert os.path.getsize(data) == size_before - 2, "torn line not truncated"
        with Client(svc.port) as c:
            expect(c, "PUT 13", "OK 13")
        with open(data, "rb") as f:
            assert f.read().endswith(b"\n13\n"), "record 13 is not a line of its own"
        assert "dropping a torn last line ('12', 2 bytes" in svc.log(), svc.log()
        svc.kill9()
        svc.start()
        with Client(svc.port) as c:
            expect(c, "HAS 13", "YES")
            expect(c, "HAS 12", "NO")
            expect(c, "LAST", last)
        svc.kill9()

        # A damaged complete line is not a crash artefact: the service refuses to start.
        with open(data, "ab") as f:
            f.write(b"x9\n")
        r = subprocess.run([binary, "--port", str(t.free_port()), "--data", data],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert "is not a record number: 'x9'; the file is damaged" in r.stderr, r.stderr
        r = subprocess.run([binary, "--data", data], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "--port is required" in r.stderr, (r.returncode, r.stderr)
        t.log("host: torn last line dropped and truncated; damaged line refused")
    finally:
        svc.kill9()


# --- the image ----------------------------------------------------------------------------

def build(outdir, *args):
    t0 = time.time()
    r = subprocess.run([BUILDER, *args, outdir], capture_output=True, text=True, timeout=600)
    for line in (r.stdout + r.stderr).splitlines():
        t.log(f"  {line}")
    t.log(f"build-source-image {' '.join(args)}: exit {r.returncode} in {time.time() - t0:.1f}s")
    return r


def check_bad_inputs(d, binary):
    r = build(os.path.join(d, "bad"), "--test-service", os.path.join(d, "no-such-service"))
    assert r.returncode == 2 and "not found; build it first" in r.stderr, r.stderr
    r = build(os.path.join(d, "bad"), "--test-service", binary, "--mac", "01:00:5e:00:00:01")
    assert r.returncode == 2 and "is a multicast address" in r.stderr, r.stderr
    r = build(os.path.join(d, "bad"), "--test-service", binary, "--ip", "10.0.2.15")
    assert r.returncode == 2 and "is not an IPv4 ADDR/PREFIX" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(d, "bad", "source.img"))


def debugfs_cat(img, path):
    r = subprocess.run(["debugfs", "-R", f"cat {path}", img], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def debugfs_stat(img, path):
    r = subprocess.run(["debugfs", "-R", f"stat {path}", img], capture_output=True, text=True,
                       timeout=60)
    assert "File not found" not in r.stderr, f"{path} is not in the image"
    return r.stdout


def check_image(out, meta):
    img = os.path.join(out, "source.img")
    uuid, kver = meta["uuid"], meta["kernel_version"]
    assert meta["append"] == f"console=ttyS0 root=UUID={uuid} rw panic=-1", meta
    assert meta["service_port"] == 7000, meta
    info = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(rf"^Filesystem UUID:\s+{uuid}$", info, re.M), info
    assert re.search(r"^Filesystem volume name:\s+cdp-src-root$", info, re.M), info
    with open(img, "rb") as f:  # no partition table: the ext4 superblock is at byte 1024
        f.seek(1024 + 0x38)
        assert f.read(2) == b"\x53\xef", "source.img does not start with an ext4 filesystem"
    assert debugfs_cat(img, "/etc/fstab") == f"UUID={uuid} / ext4 defaults 0 1\n".encode()
    assert debugfs_cat(img, "/etc/hostname") == b"cdp-source\n"
    conf = [line for line in debugfs_cat(img, "/etc/cdp/net.conf").decode().splitlines()
            if line and not line.startswith("#")]
    assert conf == [f"iface {MAC} 10.0.2.15/24"], conf
    for name, boot_name in (("vmlinuz", f"vmlinuz-{kver}"), ("initrd.img", f"initrd.img-{kver}")):
        with open(os.path.join(out, name), "rb") as f:
            assert debugfs_cat(img, f"/boot/{boot_name}") == f.read(), \
                f"OUTDIR/{name} differs from /boot/{boot_name} of the image"
    listed = debugfs_cat(img, f"/boot/initrd.img-{kver}.modules").decode().split()
    names = sorted(os.path.basename(p)[:-3].replace("-", "_") for p in listed)
    assert names == meta["initramfs_modules"], (names, meta["initramfs_modules"])
    for m in ("virtio_pci", "virtio_blk", "virtio_net", "ext4"):
        assert m in names, f"{m} missing from the OS's initramfs: {names}"
        debugfs_stat(img, f"/lib/modules/{kver}/" +
                     next(p for p in listed if p.endswith(f"/{m}.ko")))
    dep = debugfs_cat(img, f"/lib/modules/{kver}/modules.dep").decode()
    for m in ("virtio_blk", "virtio_scsi", "xfs", "ext4"):
        assert f"/{m}.ko:" in dep, f"{m} missing from /lib/modules/{kver}/modules.dep"
    for path in ("/sbin/init", "/bin/busybox", "/usr/sbin/cdp-test-service", "/bin/sh",
                 "/usr/sbin/arping", "/var/lib/cdp-test", "/dev/console"):
        debugfs_stat(img, path)
    blocks = re.search(r"^Block count:\s+(\d+)$", info, re.M).group(1)
    free = re.search(r"^Free blocks:\s+(\d+)$", info, re.M).group(1)
    t.log(f"image: source.img {os.path.getsize(img) >> 20} MiB, "
          f"{(int(blocks) - int(free)) * 4 >> 10} MiB used; vmlinuz "
          f"{os.path.getsize(os.path.join(out, 'vmlinuz'))} bytes; initrd.img "
          f"{os.path.getsize(os.path.join(out, 'initrd.img'))} bytes, "
          f"{len(names)} modules")


def check_pe_from_image(d, out):
    """The PE can be rebuilt from the image's /boot and /lib/modules (build-pe-image
    --kernel-from), as it is from a replica to run the migrated OS's own kernel."""
    tree, agent = os.path.join(d, "rootfs"), os.path.join(d, "standin-agent")
    os.makedirs(tree)
    subprocess.run(["debugfs", "-R", f"rdump / {tree}", os.path.join(out, "source.img")],
                   check=True, capture_output=True, timeout=120)
    with open(agent + ".c", "w") as f:
        f.write("int main(void) { return 0; }\n")
    subprocess.run(["cc", "-o", agent, agent + ".c"], check=True)
    r = subprocess.run([os.path.join(REPO, "pe-boot/build-pe-image"), "--kernel-from", tree,
                        "--pe-agent", agent, os.path.join(d, "pe")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"build-pe-image --kernel-from the image failed:\n{r.stderr}"
    with open(os.path.join(d, "pe", "pe-image.json")) as f:
        pe = json.load(f)
    t.log(f"build-pe-image --kernel-from the image's root: {len(pe['modules'])} modules, "
          f"kernel {pe['kernel_version']}")
    shutil.rmtree(tree)


class Vm:
    """One boot of the image under QEMU TCG; killed with SIGKILL on close unless it is gone."""

    def __init__(self, d, out, meta, name):
        self.console = os.path.join(d, f"console-{name}.log")
        self.qmp = os.path.join(d, f"qmp-{name}.sock")
        self.hostport = t.free_port()
        args = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
            "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", f"file:{self.console}",
            "-kernel", os.path.join(out, "vmlinuz"), "-initrd", os.path.join(out, "initrd.img"),
            "-append", meta["append"],
            "-drive", f"file={os.path.join(out, 'source.img')},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.hostport}-:7000",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
            "-uuid", VM_UUID, "-qmp", f"unix:{self.qmp},server=on,wait=off", "-no-reboot"]
        self.t0 = time.time()
        self.qemu = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self):
        if not os.path.exists(self.console):
            return ""
        with open(self.console, errors="replace") as f:
            return f.read()

    def wait_up(self):
        """Waits for the console's "up after" line (connecting earlier makes slirp hold the
        connection while it retries the guest); returns (guest uptime, wall seconds)."""
        while True:
            if self.qemu.poll() is not None:
                raise AssertionError(f"qemu exited with {self.qemu.returncode}: "
                                     f"{self.qemu.stdout.read().decode(errors='replace')}")
            log = self.log()
            m = re.search(r"^cdp-os: up after (\d+\.\d\d) s$", log, re.M)
            if m:
                return float(m.group(1)), time.time() - self.t0
            if "FATAL" in log or "Kernel panic" in log:
                raise AssertionError("the source OS failed to boot")
            if time.time() - self.t0 > BOOT_TIMEOUT:
                raise AssertionError(f"the source OS was not up within {BOOT_TIMEOUT}s")
            time.sleep(0.1)

    def ctrl_alt_del(self, timeout=60):
        """Ctrl-Alt-Del over QMP: /sbin/init stops the service, remounts / read-only and powers
        off, and QEMU exits."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.qmp)
            f = s.makefile("rw")
            f.readline()
            for cmd in ({"execute": "qmp_capabilities"},
                        {"execute": "send-key", "arguments": {"keys": [
                            {"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]}}):
                f.write(json.dumps(cmd) + "\n")
                f.flush()
                while True:
                    r = json.loads(f.readline())
                    if "return" in r:
                        break
                    assert "error" not in r, r
        try:
            self.qemu.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the VM did not power off within {timeout}s of Ctrl-Alt-Del")

    def kill9(self):
        if self.qemu.poll() is None:
            os.killpg(self.qemu.pid, signal.SIGKILL)
        self.qemu.wait()


def check_console(log):
    assert "FATAL" not in log and "Kernel panic" not in log, "the source OS hit a fatal error"
    assert "WARNING" not in log, "the source OS warned: " + " | ".join(
        line for line in log.splitlines() if "WARNING" in line)
    for pattern in (
            r"^cdp-os-initramfs: kernel \S+; modules loaded: virtio_pci virtio_blk virtio_net "
            r"ext4; failed: none; at \d+\.\d\d s$",
            r"^cdp-os-initramfs: root UUID=\S+ is /dev/vda \(ext4, rw\); switching",
            rf"^cdp-os: network eth\d+ 10\.0\.2\.15/24 \(mac {MAC}\)$",
            r"^cdp-os: test service listening on :7000$",
            r"^cdp-os: up after \d+\.\d\d s$"):
        assert re.search(pattern, log, re.M), f"console lacks /{pattern}/"


def check_boot(d, out, meta):
    vms = []
    try:
        # First boot: write and acknowledge, then pull the plug.
        vm = Vm(d, out, meta, "1")
        vms.append(vm)
        up1, wall1 = vm.wait_up()
        with Client(vm.hostport) as c:
            expect(c, "WHO", VM_UUID)
            expect(c, "LAST", "0")
            for n in range(1, RECORDS + 1):
                expect(c, f"PUT {n}", f"OK {n}")
            expect(c, "LAST", str(RECORDS))
            expect(c, "HAS 150", "YES")
            expect(c, "HAS 999", "NO")
        check_console(vm.log())
        t.log(f"boot 1: service up after {up1:.2f} s of guest uptime ({wall1:.1f} s after qemu "
              f"started); {RECORDS} PUTs acknowledged; kill -9 qemu")
        vm.kill9()

        # Second boot: every acknowledged record survived.
        vm = Vm(d, out, meta, "2")
        vms.append(vm)
        up2, wall2 = vm.wait_up()
        with Client(vm.hostport) as c:
            expect(c, "WHO", VM_UUID)
            expect(c, "LAST", str(RECORDS))
            c.send(*[f"HAS {n}" for n in range(1, RECORDS + 1)])
            missing = [n for n in range(1, RECORDS + 1) if c.line() != "YES"]
            assert not missing, f"acknowledged records lost after kill -9: {missing}"
        log = vm.log()
        check_console(log)
        assert f"loaded {RECORDS} records from /var/lib/cdp-test/records (last {RECORDS})" in log
        recovered = "recovery complete" in log
        t.log(f"boot 2: service up after {up2:.2f} s of guest uptime ({wall2:.1f} s after qemu "
              f"started); all {RECORDS} records there (ext4 journal replayed: {recovered})")

        vm.ctrl_alt_del()
        log = vm.log()
        for line in ("cdp-os: Ctrl-Alt-Del: stopping the test service, then poweroff",
                     "cdp-os: root filesystem remounted read-only; poweroff now"):
            assert line in log, f"console lacks {line!r}"
        r = subprocess.run(["e2fsck", "-fn", os.path.join(out, "source.img")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"e2fsck -fn exited {r.returncode}:\n{r.stdout}{r.stderr}"
        t.log(f"Ctrl-Alt-Del powered the VM off; e2fsck -fn clean: {r.stdout.splitlines()[-1]}")
        t.log(f"source OS boot-to-service: {up1:.2f} s / {up2:.2f} s of guest uptime, "
              f"{wall1:.1f} s / {wall2:.1f} s from qemu start (TCG)")
    except BaseException:
        for vm in vms:
            print(f"----- console {os.path.basename(vm.console)} (last 50 lines) -----")
            print("".join(vm.log().splitlines(True)[-50:]), end="")
        raise
    finally:
        for vm in vms:
            vm.kill9()


def test(d):
    binary = service_binary()
    check_service_on_host(d, binary)
    check_bad_inputs(d, binary)
    out = os.path.join(d, "image")
    r = build(out, "--test-service", binary, "--ip", "10.0.2.15/24", "--mac", MAC)
    assert r.returncode == 0, f"build-source-image failed ({r.returncode}): {r.stderr}"
    with open(os.path.join(out, "source-image.json")) as f:
        meta = json.load(f)
    check_image(out, meta)
    check_pe_from_image(d, out)
    check_boot(d, out, meta)


def main():
    t.require_tools("qemu-system-x86_64", "busybox", "cc", "mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs", "cpio",
                    "gzip", "depmod", "sha256sum")
    t.run_in_temp_dir(test, "cdp-lab-src-")


if __name__ == "__main__":
    main()
