#!/usr/bin/env python3
"""PE image (pe-boot/build-pe-image): two builds from the same inputs are byte-identical; the
image boots under QEMU TCG, loads its modules, takes 10.0.2.15 by DHCP on the NIC named by
cdp.repl_mac, brings the other NIC up without an address and runs the pe-agent with exactly the
arguments of the /init contract (docs/pe-image.md). The agent here is a stand-in compiled by the
test (dynamic, so the library copying is exercised): it prints its argv, reads the disk's serial,
mounts the disk's ext4 (module autoload through /sbin/modprobe) and answers TCP connections,
which the test makes through QEMU's hostfwd. Bad inputs give exit status 2 and a clear error."""
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import cdptest as t

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUILDER = os.path.join(REPO, "pe-boot/build-pe-image")
REPL_MAC, SVC_MAC = "52:54:00:12:34:01", "52:54:00:12:34:02"
VOLUMES = "vol-a:1048576"
BOOT_TIMEOUT = 120  # seconds; TCG on a loaded 2-core host, the PE itself needs ~5

STANDIN_C = r"""
/* Stand-in pe-agent: prints its argv, the serial of vda, a file of vda's ext4 and the
 * interfaces, then answers every TCP connection on --listen with one line. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void slurp(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "r");
  if (!f) { snprintf(buf, n, "<%s: %s>", path, strerror(errno)); return; }
  size_t r = fread(buf, 1, n - 1, f);
  buf[r] = 0;
  fclose(f);
  while (r && (buf[r - 1] == '\n' || buf[r - 1] == '\r')) buf[--r] = 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("standin-agent: argv:");
  for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
  printf("\n");
  const char *addr = NULL;
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--listen")) addr = argv[i + 1];
  char serial[256], hello[256];
  slurp("/sys/block/vda/serial", serial, sizeof serial);
  mkdir("/mnt/vda", 0755);
  if (mount("/dev/vda", "/mnt/vda", "ext4", MS_RDONLY, NULL) == 0)
    slurp("/mnt/vda/hello.txt", hello, sizeof hello);
  else
    snprintf(hello, sizeof hello, "<mount ext4 /dev/vda: %s>", strerror(errno));
  printf("standin-agent: vda serial=%s ext4 hello=%s\n", serial, hello);
  if (system("ip -o link show | sed 's/^/standin-agent: link /'; "
             "ip -o -4 addr show | sed 's/^/standin-agent: addr /'") != 0)
    printf("standin-agent: ip failed\n");
  if (!addr || strncmp(addr, "tcp://", 6)) { printf("standin-agent: bad --listen\n"); return 2; }
  char host[64];
  snprintf(host, sizeof host, "%s", addr + 6);
  char *colon = strrchr(host, ':');
  if (!colon) return 2;
  *colon = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return 2;
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&sa, sizeof sa) || listen(s, 4)) {
    printf("standin-agent: bind %s: %s\n", addr, strerror(errno));
    return 1;
  }
  printf("standin-agent: listening on %s\n", addr);
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    char line[600];
    int n = snprintf(line, sizeof line, "standin-agent serial=%s hello=%s\n", serial, hello);
    if (write(c, line, n) != n) printf("standin-agent: short write\n");
    close(c);
    printf("standin-agent: served a connection\n");
  }
}
"""


def build(outdir, *args):
    t0 = time.time()
    r = subprocess.run([BUILDER, *args, outdir], capture_output=True, text=True, timeout=600)
    for line in (r.stdout + r.stderr).splitlines():
        t.log(f"  {line}")
    t.log(f"build-pe-image {' '.join(args)} {os.path.basename(outdir)}: exit {r.returncode} "
          f"in {time.time() - t0:.1f}s")
    return r


def assert_bad_input(r, *texts):
    assert r.returncode == 2, f"expected exit status 2, got {r.returncode}: {r.stderr}"
    for text in texts:
        assert text in r.stderr, f"stderr lacks {text!r}: {r.stderr}"


def check_bad_inputs(d, agent):
    no_boot = os.path.join(d, "no-boot")
    os.makedirs(os.path.join(no_boot, "lib/modules"))
    r = build(os.path.join(d, "out-bad"), "--pe-agent", agent, "--kernel-from", no_boot)
    assert_bad_input(r, f"{no_boot}/boot is missing", "boot/vmlinuz-KVER")

    no_modules = os.path.join(d, "no-modules")
    os.makedirs(os.path.join(no_modules, "boot"))
    open(os.path.join(no_modules, "boot/vmlinuz-9.9.9-test"), "wb").close()
    r = build(os.path.join(d, "out-bad"), "--pe-agent", agent, "--kernel-from", no_modules)
    assert_bad_input(r, f"no kernel in {no_modules}", "lib/modules/KVER", "vmlinuz-9.9.9-test")

    missing = os.path.join(d, "no-such-pe-agent")
    r = build(os.path.join(d, "out-bad"), "--pe-agent", missing)
    assert_bad_input(r, f"pe-agent {missing} not found",
                     "build it first: cmake --build build --target pe-agent")
    assert not os.path.exists(os.path.join(d, "out-bad", "initrd.img"))


def check_reproducible(d, agent):
    a, b = os.path.join(d, "out-a"), os.path.join(d, "out-b")
    for out in (a, b):
        r = build(out, "--pe-agent", agent)
        assert r.returncode == 0, f"build-pe-image failed ({r.returncode}): {r.stderr}"
    for name in ("vmlinuz", "initrd.img", "pe-image.json"):
        r = subprocess.run(["cmp", os.path.join(a, name), os.path.join(b, name)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"two builds differ in {name}: {r.stdout}{r.stderr}"
    with open(os.path.join(a, "pe-image.json")) as f:
        meta = json.load(f)
    for key in ("kernel_version", "kernel_source", "busybox_version", "modules",
                "initrd_sha256", "vmlinuz_sha256"):
        assert meta.get(key), f"pe-image.json lacks {key}: {meta}"
    for m in ("virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "ext4", "xfs"):
        assert m in meta["modules"], f"module {m} missing from the image: {meta['modules']}"
    sha = subprocess.run(["sha256sum", os.path.join(a, "initrd.img")], capture_output=True,
                         text=True, check=True).stdout.split()[0]
    assert sha == meta["initrd_sha256"], (sha, meta["initrd_sha256"])
    entries = read_initrd(os.path.join(a, "initrd.img"))
    for path in ("init", "bin/busybox", "etc/udhcpc.script", "usr/bin/pe-agent",
                 "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6",
                 f"lib/modules/{meta['kernel_version']}/modules.dep"):
        assert path in entries and entries[path][0] & 0o170000 == 0o100000, \
            f"file {path} missing from initrd.img"
    for path in ("bin/sh", "sbin/modprobe", "sbin/udhcpc", "sbin/ip"):
        assert entries.get(path, ())[:4] == (0o120777, 0, 0, b"/bin/busybox"), \
            f"{path} is not a symlink to /bin/busybox: {entries.get(path)}"
    assert entries.get("dev/console", ())[:4] == (0o020600, 5, 1, b""), entries.get("dev/console")
    owners = {(uid, gid, mtime) for uid, gid, mtime in (e[4:] for e in entries.values())}
    assert owners == {(0, 0, 0)}, f"uid, gid, mtime not all 0: {owners}"
    t.log(f"reproducible: two builds byte-identical; kernel {meta['kernel_version']}, "
          f"initrd.img {os.path.getsize(os.path.join(a, 'initrd.img'))} bytes, "
          f"{len(meta['modules'])} modules")
    return a


def read_initrd(path):
    """{name: (mode, rdevmajor, rdevminor, symlink target or b"", uid, gid, mtime)} of every
    entry of the gzip'd newc archives (concatenated, as the kernel reads them)."""
    with gzip.open(path) as f:
        data = f.read()
    entries, off = {}, 0
    while off < len(data):
        if data[off] == 0:  # padding between archives
            off += 1
            continue
        assert data[off:off + 6] == b"070701", f"bad cpio magic at {off}: {data[off:off + 8]}"
        fields = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        _, mode, uid, gid, _, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name = data[off + 110:off + 110 + namesize - 1].decode()
        body = (off + 110 + namesize + 3) & ~3
        link = data[body:body + size] if mode & 0o170000 == 0o120000 else b""
        off = (body + size + 3) & ~3
        if name != "TRAILER!!!":
            entries[name] = (mode, rmaj, rmin, link, uid, gid, mtime)
    return entries


def make_disk(d):
    root = os.path.join(d, "fsroot")
    os.makedirs(root)
    with open(os.path.join(root, "hello.txt"), "w") as f:
        f.write("hello from vol-a\n")
    raw, qcow = os.path.join(d, "disk.raw"), os.path.join(d, "disk.qcow2")
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^has_journal", "-d", root, raw],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow], check=True)
    return qcow


def check_boot(d, image):
    disk = make_disk(d)
    console = os.path.join(d, "console.log")
    port, hostport = 7800 + os.getpid() % 100, t.free_port()
    args = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", "512",
        "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", f"file:{console}",
        "-kernel", os.path.join(image, "vmlinuz"), "-initrd", os.path.join(image, "initrd.img"),
        "-append", f"console=ttyS0 panic=-1 cdp.listen={port} cdp.repl_mac={REPL_MAC} "
                   f"cdp.volumes={VOLUMES}",
        # The service NIC comes first on the bus, so it is eth0: the replication NIC must be
        # found by its MAC, not by being first. Both networks offer DHCP.
        "-netdev", "user,id=svc,restrict=on",
        "-device", f"virtio-net-pci,netdev=svc,mac={SVC_MAC}",
        "-netdev", f"user,id=repl,hostfwd=tcp:127.0.0.1:{hostport}-:{port}",
        "-device", f"virtio-net-pci,netdev=repl,mac={REPL_MAC}",
        "-drive", f"file={disk},if=none,id=d0,format=qcow2",
        "-device", "virtio-blk-pci,drive=d0,serial=vol-a",
        "-no-reboot"]
    t0 = time.time()
    qemu = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # Connect once the agent says it listens: before that, slirp holds a host connection
        # open while it retries the guest, and a poll would wait out its read timeout.
        answer, listening = None, None
        while answer is None:
            if qemu.poll() is not None:
                raise AssertionError(f"qemu exited with {qemu.returncode}: "
                                     f"{qemu.stdout.read().decode(errors='replace')}")
            if time.time() - t0 > BOOT_TIMEOUT:
                raise AssertionError(f"no answer from the PE's agent within {BOOT_TIMEOUT}s")
            if listening is None and os.path.exists(console):
                with open(console, errors="replace") as f:
                    if "standin-agent: listening on" in f.read():
                        listening = time.time() - t0
            if listening is not None:
                answer = ask_agent(hostport)
            if answer is None:
                time.sleep(0.1)
        wall = time.time() - t0
        time.sleep(0.5)  # let "served a connection" reach the console file
        with open(console, errors="replace") as f:
            log = f.read()
        check_console(log, port, answer)
        m = re.search(r"^cdp-pe: network \S+ \S+ \(dhcp\) after (\d+\.\d\d) s$", log, re.M)
        t.log(f"PE boot: network up and agent starting at {m.group(1)} s of guest uptime; "
              f"agent listening {listening:.1f} s and answering {wall:.1f} s after qemu "
              f"started (TCG); "
              f"initrd.img {os.path.getsize(os.path.join(image, 'initrd.img'))} bytes")
    except BaseException:
        if os.path.exists(console):
            with open(console, errors="replace") as f:
                print("----- PE console (last 60 lines) -----")
                print("".join(f.readlines()[-60:]), end="")
        raise
    finally:
        if qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait()


def ask_agent(hostport):
    """One line from the agent through hostfwd, or None while the PE is not there yet (slirp
    accepts the connection on the host side and closes it when the guest refuses)."""
    try:
        with socket.create_connection(("127.0.0.1", hostport), timeout=5) as c:
            c.settimeout(5)
            data = b""
            while not data.endswith(b"\n"):
                chunk = c.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data.decode(errors="replace").strip() or None


def check_console(log, port, answer):
    lines = log.splitlines()

    def expect(pattern, what):
        for line in lines:
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"console lacks {what} (/{pattern}/)")

    assert "FATAL" not in log and "Kernel panic" not in log, "the PE hit a fatal error"
    expect(r"^cdp-pe: modules loaded: virtio_pci virtio_blk virtio_net virtio_scsi virtio_rng;"
           r" built in:.*; failed: none$", "all modules loaded")
    expect(r"^cdp-pe: disks: vda\(serial vol-a\)$", "the disk with serial vol-a")
    net = expect(r"^cdp-pe: network (eth\d+) 10\.0\.2\.15/24 \(dhcp\) after \d+\.\d\d s$",
                 "the replication network up by DHCP with 10.0.2.15")
    repl_if = net.group(1)
    expect(rf"^cdp-pe: starting pe-agent \(listen tcp://10\.0\.2\.15:{port}\)$", "agent start")
    expect(rf"^standin-agent: argv: --listen tcp://10\.0\.2\.15:{port} --volumes {VOLUMES} "
           rf"--meta-serial cdp-pe-meta --console /dev/console --allow-kexec$",
           "the agent's exact arguments")
    expect(r"^standin-agent: vda serial=vol-a ext4 hello=hello from vol-a$",
           "the agent reading the disk's serial and its ext4")
    assert answer == "standin-agent serial=vol-a hello=hello from vol-a", answer

    links = {m.group(1): (m.group(2).split(","), m.group(3)) for m in (
        re.match(r"^standin-agent: link \d+: (\S+): <([^>]*)>.*link/ether (\S+)", line)
        for line in lines) if m}
    inet = {m.group(1) for m in (re.match(r"^standin-agent: addr \d+: (\S+)\s+inet ", line)
                                 for line in lines) if m}
    assert links.get(repl_if, ([], ""))[1] == REPL_MAC, f"{repl_if} is not {REPL_MAC}: {links}"
    svc = [name for name, (_, mac) in links.items() if mac == SVC_MAC]
    assert len(svc) == 1, f"no interface with the service MAC {SVC_MAC}: {links}"
    assert "UP" in links[svc[0]][0], f"service NIC {svc[0]} is not up: {links}"
    assert inet == {"lo", repl_if}, f"IPv4 addresses on {inet}, expected lo and {repl_if} only"


def test(d):
    cc = shutil.which("cc") or "cc"
    src, agent = os.path.join(d, "standin.c"), os.path.join(d, "standin-agent")
    with open(src, "w") as f:
        f.write(STANDIN_C)
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", agent, src], check=True)
    check_bad_inputs(d, agent)
    image = check_reproducible(d, agent)
    check_boot(d, image)


def main():
    t.require_tools("qemu-system-x86_64", "qemu-img", "cc", "cpio", "gzip", "depmod", "cmp",
                    "mkfs.ext4", "sha256sum")
    t.run_in_temp_dir(test, "cdp-pe-it-")


if __name__ == "__main__":
    main()
