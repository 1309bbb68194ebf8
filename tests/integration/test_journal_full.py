#!/usr/bin/env python3
"""The journal's filesystem fills under load (docs/operator-guide.md, section 5; docs/retention.md).

The journal-server's --data-dir is a 512 MiB ext4 filesystem on a loop device, most of it taken
by a ballast file that leaves the free-space reserve (--reserve-bytes 256M) and 64 MiB. A client
writes 160 MiB through the agent (async mode) while it fills: below the reserve commits are
refused and nothing is acked; the server keeps answering status; the agent keeps serving its
client (the copy finishes) and falls back to its dirty bitmap, recording a history gap. Then
the ballast is removed: the server resumes its writes, the agent resends only the dirty regions,
the replica ends identical to the source, and the gap is in the journal's points and status.
The mount and the loop device are removed however the test ends.
"""
import json
import os
import subprocess
import time

import cdptest as t


class FullScene(t.Scene):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.fs_image = os.path.join(self.dir, "journal-fs.img")
        self.mnt = os.path.join(self.dir, "jfs")
        os.makedirs(self.mnt)
        with open(self.fs_image, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", self.fs_image], check=True)
        subprocess.run(["mount", "-o", "loop", self.fs_image, self.mnt], check=True)
        self.mounted = True

    def start_journal(self):
        self.procs["journal"] = t.Proc("journal-server", [
            t.binary("journal-server"), "--data-dir", os.path.join(self.mnt, "data"),
            "--listen", self.server, "--reserve-bytes", "256M"],
            os.path.join(self.dir, "journal-server.log"))

    def close(self, failed):
        for p in self.procs.values():
            try:
                p.kill9()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        if self.mounted:
            subprocess.run(["umount", self.mnt], check=False)  # -o loop frees the loop device
        super().close(failed)


def journal_log(s):
    with open(os.path.join(s.dir, "journal-server.log"), errors="replace") as f:
        return f.read()


def test(s):
    t.require_tools("mkfs.ext4", "mount", "umount", "fallocate", "nbdcopy", "cmp")
    s.start_all()
    s.wait_synced()
    free = os.statvfs(s.mnt).f_bavail * os.statvfs(s.mnt).f_frsize
    ballast = os.path.join(s.mnt, "ballast")
    subprocess.run(["fallocate", "-l", str(free - (256 + 64 << 20)), ballast], check=True)
    t.log(f"journal filesystem: {free >> 20} MiB free, ballast leaves the 256 MiB reserve + 64")

    data = s.random_file(160)
    t0 = time.time()
    copy = s.nbdcopy(data, background=True)
    s.wait_for(lambda: "under the reserve of 256 MiB: journaling stops" in journal_log(s), 120,
               "journaling to stop on the full journal filesystem")
    st = s.status()  # the server still answers
    t.log(f"journal full {time.time() - t0:.1f}s into the copy: status answers, durable LSN "
          f"{st['durable_lsn']}")
    out, _ = copy.communicate(timeout=300)
    assert copy.returncode == 0, out  # the client was never stalled
    s.wait_for(lambda: s.status()["dirty_bytes"] > 0 or s.status()["gaps"] >= 1, 60,
               "the agent to fall back to its dirty bitmap")
    st = s.status()
    assert st["gaps"] >= 1, st
    t.log(f"agent fell back: dirty {st['dirty_bytes'] >> 20} MiB, gaps {st['gaps']}")

    os.unlink(ballast)
    s.wait_synced(timeout=240)
    s.assert_identical()
    assert "MiB free again: journaling resumes" in journal_log(s), journal_log(s)[-2000:]
    st = s.status()
    assert st["gaps"] >= 1 and st["dirty_bytes"] == 0, st
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    assert any(p["origin"] == "sync" and p["label"] == "resync" for p in pts), pts
    t.log(f"space back: resynced, replica identical, {st['gaps']} gap(s) reported")


t.run(test, scene_class=FullScene, size_mib=256)
