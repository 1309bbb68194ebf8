"""Bad input around the semi-booted target: each gets one clear error naming the thing, and
nothing is written to any disk.

- config files: an unknown key (with its line), a missing key, a volume name too long for a
  virtio serial, a bad replication endpoint, a bad size;
- a disk smaller than its volume: refused before QEMU starts, the disk unchanged;
- a QMP socket that is not QEMU: `target stop` / `target status` refuse, nothing killed;
- a disk whose serial matches no volume (the PE told about one volume, given two disks): the PE
  reports pe-error, `target start` fails with the pe-agent's message and stops the VM, and both
  disks are still empty;
- a replicator for a volume the target does not have: it exits with the pe-agent's message;
- a replicator with a malformed pe: target.
"""
import hashlib
import os
import socket
import subprocess
import threading

import petest
from cdptest import Proc, binary, log


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expect_fail(r, code, *texts):
    out = r.stdout + r.stderr
    assert r.returncode == code, f"exit {r.returncode}, expected {code}:\n{out}"
    for t in texts:
        assert t in out, f"missing {t!r} in:\n{out}"
    log(f"refused as expected: {r.stderr.strip().splitlines()[0] if r.stderr else out.strip()}")


def test(s):
    size = os.path.getsize(s.source)
    kernel, initrd = petest.pe_image()

    # --- config files ---------------------------------------------------------------------
    base = (f"name: bad\npe: {{kernel: {kernel}, initrd: {initrd}}}\nqmp_socket: {s.qmp}\n"
            f"replication_endpoint: {s.pe_endpoint}\n")
    cases = [
        (base + "colour: blue\ndisks:\n  - {volume: v, path: v.qcow2, size: 1M}\n",
         ":5: 'colour': unknown key (known here: "),
        (base.replace(f"qmp_socket: {s.qmp}\n", "") +
         "disks:\n  - {volume: v, path: v.qcow2, size: 1M}\n",
         ":1: 'qmp_socket': missing (required)"),
        (base + "disks:\n  - {volume: a-very-long-volume-name, path: v.qcow2, size: 1M}\n",
         ":6: 'disks[0].volume': 'a-very-long-volume-name' has 23 characters; a virtio disk "
         "serial holds at most 20"),
        (base.replace(s.pe_endpoint, "127.0.0.1:7800") +
         "disks:\n  - {volume: v, path: v.qcow2, size: 1M}\n",
         ":4: 'replication_endpoint': '127.0.0.1:7800' is not tcp://IPV4:PORT"),
        (base + "disks:\n  - {volume: v, path: v.qcow2, size: 1000}\n",
         ":6: 'disks[0].size': '1000' is not a size divisible by 512"),
    ]
    for text, expected in cases:
        with open(s.config, "w") as f:
            f.write(text)
        expect_fail(s.ctl_target("start", check=False), 2, expected)
        assert not os.path.exists(os.path.join(s.dir, "v.qcow2")), "a bad config created a disk"

    # --- a disk smaller than its volume ---------------------------------------------------------
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", s.disk, str(size // 2)], check=True)
    before = digest(s.disk)
    s.write_config()
    expect_fail(s.ctl_target("start", check=False), 1,
                f"disk {s.disk} (volume {s.volume}) has {size // 2} bytes but the volume has "
                f"{size}; nothing was started")
    assert s.qemu_pid() == 0 and digest(s.disk) == before
    os.unlink(s.disk)

    # --- a QMP socket that is not QEMU ----------------------------------------------------------
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(s.qmp)
    srv.listen(4)
    stop = threading.Event()

    def impostor():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            c.close()
    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    try:
        for cmd in ("stop", "status"):
            expect_fail(s.ctl_target(cmd, check=False), 1,
                        f"{s.qmp} is not a QEMU QMP monitor: it sent 'SSH-2.0-OpenSSH_9.2")
    finally:
        stop.set()
        t.join()
        srv.close()
        os.unlink(s.qmp)

    # --- a disk whose serial matches no volume --------------------------------------------------
    extra = os.path.join(s.dir, "extra.qcow2")
    s.write_config(disks=[(s.volume, s.disk, size), ("extra", extra, 64 << 20)],
                   extra=f"kernel_args: cdp.volumes={s.volume}:{size}\n")
    r = s.ctl_target("start", check=False)
    expect_fail(r, 1, "the PE refused its disks: disk /dev/vdb has serial 'extra', which matches "
                      f"no volume of this target (volumes: {s.volume}); nothing was written to "
                      "any disk", "the VM was stopped")
    assert s.qemu_pid() == 0 or not os.path.exists(f"/proc/{s.qemu_pid()}")
    for disk in (s.disk, extra):
        r = subprocess.run(["qemu-img", "map", "--output=json", disk], capture_output=True,
                           text=True, check=True)
        assert '"data": true' not in r.stdout, f"{disk} was written: {r.stdout}"
    os.unlink(s.disk)
    os.unlink(extra)
    os.unlink(os.path.join(s.dir, "cdp-test-target-pe-meta.qcow2"))

    # --- a replicator for a volume the target does not have -------------------------------------
    s.start_journal()
    s.start_agent()
    s.write_config(disks=[("other", s.disk, size)], extra="")
    s.ctl_target("start")
    s.start_pe_replicator()
    rc = s.procs["replicator"].p.wait(60)
    with open(os.path.join(s.dir, "replicator.log")) as f:
        out = f.read()
    assert rc == 1, f"replicator exited {rc}:\n{out}"
    assert (f"replicator: pe-agent {s.pe_endpoint}: pe-agent: this target has no volume "
            f"'{s.volume}' (it has: other); point the replicator at the right target") in out, out
    log("replicator for an unknown volume: refused")
    expect_fail(s.ctl_target("checksum", "--volume", s.volume, check=False), 1,
                f"target cdp-test-target has no volume '{s.volume}'")
    expect_fail(s.ctl_target("checksum", "--volume", "other", "--offset", str(size), check=False),
                1, f"is not inside volume other of {size} bytes")

    # --- a malformed pe: target -----------------------------------------------------------------
    r = subprocess.run([binary("replicator"), "--server", s.server, "--volume", s.volume,
                        "--target", "pe:udp://1.2.3.4"], capture_output=True, text=True,
                       timeout=30)
    expect_fail(r, 1, "--target 'pe:udp://1.2.3.4': a pe-agent target is pe:tcp://HOST:PORT")


if __name__ == "__main__":
    petest.run(test, size_mib=128)
