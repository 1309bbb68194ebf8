#!/usr/bin/env python3
"""`cdpctl export` mounted by the kernel (docs/restore.md, section 5): a past point's filesystem
read in place, without copying it.

The protected volume holds an ext4 filesystem, written through the agent in two versions: v1
(`report.txt` says "version 1", plus a 3 MiB file of random bytes), a flush point, then v2
(`report.txt` says "version 2", the random file deleted, `new.txt` added), another point. The
export of the v1 point is exposed as a file with `nbdfuse` (FUSE; this kernel has no nbd module)
and mounted read-only through a loop device: the kernel sees v1's files with v1's bytes while the
source holds v2. The mounts, the loop device and every process are removed however the test ends.
"""
import json
import os
import signal
import subprocess
import time

import cdptest as t


class MountScene(t.Scene):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.mounts = []  # innermost last
        self.exporters = []

    def close(self, failed):
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", mnt], check=False)  # -o loop frees the loop device
        for p in self.exporters:
            if p.poll() is None:
                p.kill()
                p.wait()
        super().close(failed)


def make_version(s, k, files):
    """A 64 MiB ext4 image holding `files` (name -> bytes), made on a loop mount."""
    image = os.path.join(s.dir, f"v{k}.img")
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    image], check=True)
    mnt = os.path.join(s.dir, f"mk{k}")
    os.makedirs(mnt)
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    s.mounts.append(mnt)
    try:
        for name, data in files.items():
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(data)
    finally:
        subprocess.run(["umount", mnt], check=True)
        s.mounts.remove(mnt)
    return image


def points(s):
    return json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)


def test(s):
    t.require_tools("mkfs.ext4", "mount", "umount", "nbdfuse", "cmp")
    if not os.path.exists("/dev/fuse"):
        raise SystemExit("FAIL: /dev/fuse is missing (modprobe fuse)")
    s.start_all()
    s.wait_synced()
    blob = os.urandom(3 << 20)
    v1 = make_version(s, 1, {"report.txt": b"version 1\n", "blob.bin": blob})
    # v2 reuses v1's filesystem, so only what changed differs on the disk.
    subprocess.run(["cp", "--sparse=always", v1, os.path.join(s.dir, "v2.img")], check=True)
    v2 = os.path.join(s.dir, "v2.img")
    mnt = os.path.join(s.dir, "mk2")
    os.makedirs(mnt)
    subprocess.run(["mount", "-o", "loop", v2, mnt], check=True)
    s.mounts.append(mnt)
    with open(os.path.join(mnt, "report.txt"), "wb") as f:
        f.write(b"version 2\n")
    os.unlink(os.path.join(mnt, "blob.bin"))
    with open(os.path.join(mnt, "new.txt"), "wb") as f:
        f.write(b"only in v2\n")
    subprocess.run(["umount", mnt], check=True)
    s.mounts.remove(mnt)

    s.nbdcopy(v1)
    s.qemu_io("flush")
    s.wait_synced()
    p1 = points(s)[-1]
    s.nbdcopy(v2)
    s.qemu_io("flush")
    s.wait_synced()
    p2 = points(s)[-1]
    assert p2["lsn"] > p1["lsn"], (p1, p2)

    sock = os.path.join(s.dir, "export.sock")
    export = subprocess.Popen([t.binary("cdpctl"), "--server", s.server, "export", "--volume",
                               s.volume, "--at", str(p1["lsn"]), "--nbd", "unix:" + sock],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    s.exporters.append(export)
    line = export.stdout.readline()
    assert line.startswith(f"exporting volume {s.volume} at LSN {p1['lsn']} "), (
        line, export.stderr.read() if export.poll() is not None else "")

    fuse_dir = os.path.join(s.dir, "fuse")
    os.makedirs(fuse_dir)
    fuse = subprocess.Popen(["nbdfuse", "-r", fuse_dir,
                             f"nbd+unix:///{s.volume}?socket={sock}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s.exporters.insert(0, fuse)  # stopped before the export it reads
    s.mounts.append(fuse_dir)
    exposed = os.path.join(fuse_dir, "nbd")
    s.wait_for(lambda: os.path.exists(exposed) or fuse.poll() is not None, 30,
               "nbdfuse to expose the export")
    assert fuse.poll() is None, fuse.stdout.read()
    assert os.path.getsize(exposed) == os.path.getsize(s.source)

    view = os.path.join(s.dir, "view")
    os.makedirs(view)
    subprocess.run(["mount", "-o", "loop,ro", "-t", "ext4", exposed, view], check=True)
    s.mounts.append(view)
    t0 = time.time()
    assert sorted(n for n in os.listdir(view) if n != "lost+found") == ["blob.bin", "report.txt"]
    with open(os.path.join(view, "report.txt"), "rb") as f:
        assert f.read() == b"version 1\n"
    with open(os.path.join(view, "blob.bin"), "rb") as f:
        assert f.read() == blob, "blob.bin read through the kernel differs from what was written"
    t.log(f"the kernel mounted the export of LSN {p1['lsn']} (v1) while the source holds LSN "
          f"{p2['lsn']} (v2): 2 files read back equal in {time.time() - t0:.2f}s")
    # The source really moved on: its filesystem is v2.
    r = subprocess.run(["cmp", "-n", str(64 << 20), s.source, v2], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    subprocess.run(["umount", view], check=True)
    s.mounts.remove(view)
    subprocess.run(["umount", fuse_dir], check=True)
    s.mounts.remove(fuse_dir)
    fuse.wait(timeout=30)
    export.send_signal(signal.SIGTERM)
    out, err = export.communicate(timeout=30)
    assert export.returncode == 0, (export.returncode, out, err)
    assert not os.path.exists(sock), "the export left its socket behind"


t.run(test, scene_class=MountScene, size_mib=64)
