#!/usr/bin/env python3
"""The journal's filesystem fills under load (docs/operator-guide.md, section 5; docs/retention.md).

The journal-server's --data-dir is a 1 GiB ext4 filesystem on a loop device, most of it taken by
a ballast file that leaves the free-space reserve (--reserve-bytes 256M) and 64 MiB. A client
writes 160 MiB through the agent (async mode) while it fills: below the reserve commits are
refused and nothing is acked; the server keeps answering status, which says the journal is full;
the agent keeps serving its client (the copy finishes) and falls back to its dirty bitmap,
recording a history gap. Then the ballast is removed: the server resumes its writes, the agent
resends the records it kept and the dirty regions, the replica ends identical to the source, and
the gap is in the journal's points and status.

All of it runs twice, the second time with two CPU hogs competing with the three processes, so
that the timing a loaded machine brings (issue 15, item 11) is provoked on purpose. That failure
was the filesystem: with 512 MiB, the space the ballast gave back (402 MiB free, 146 MiB above the
reserve) was less than the copy and RocksDB's write-ahead log need, so the journal refilled to its
reserve and the last records waited there for good — and status did not say so. The mount and
the loop device are removed however the test ends.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import cdptest as t


class FullScene(t.Scene):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.fs_image = os.path.join(self.dir, "journal-fs.img")
        self.mnt = os.path.join(self.dir, "jfs")
        os.makedirs(self.mnt)
        with open(self.fs_image, "wb") as f:
            f.truncate(1024 << 20)
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


def cpu_hogs(n):
    """n busy processes (killed by the caller)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


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
    st = s.status()  # the server still answers, and says why nothing is journaled
    doc = json.loads(s.cdpctl("status", "--json").stdout)
    assert doc["journal_full"] and doc["journal_reserve_bytes"] == 256 << 20, doc
    table = s.cdpctl("status").stdout
    assert "journal full: " in table and "under the reserve of 256.0 MiB" in table, table
    t.log(f"journal full {time.time() - t0:.1f}s into the copy: status answers, durable LSN "
          f"{st['durable_lsn']}")
    out, _ = copy.communicate(timeout=300)
    assert copy.returncode == 0, out  # the client was never stalled
    # The gap the fallback records travels with the agent's next batch, which the full journal
    # refuses: it is journaled (and counted in status) once space is back, checked below.
    s.wait_for(lambda: s.status()["dirty_bytes"] > 0 or s.status()["gaps"] >= 1, 60,
               "the agent to fall back to its dirty bitmap")
    st = s.status()
    t.log(f"agent fell back: dirty {st['dirty_bytes'] >> 20} MiB, gaps {st['gaps']}")

    os.unlink(ballast)
    s.wait_synced(timeout=240)
    s.assert_identical()
    assert "MiB free again: journaling resumes" in journal_log(s), journal_log(s)[-2000:]
    st = s.status()
    assert st["gaps"] >= 1 and st["dirty_bytes"] == 0, st
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    assert any(p["origin"] == "sync" and p["label"] == "resync" for p in pts), pts
    assert not json.loads(s.cdpctl("status", "--json").stdout)["journal_full"]
    t.log(f"space back: resynced, replica identical, {st['gaps']} gap(s) reported")


def test_twice(s):
    test(s)
    t.log("again, with two CPU hogs")
    hogs = cpu_hogs(2)
    try:
        for p in list(s.procs.values()):
            p.kill9()
        s.procs.clear()
        subprocess.run(["umount", s.mnt], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", s.fs_image], check=True)
        subprocess.run(["mount", "-o", "loop", s.fs_image, s.mnt], check=True)
        for stale in (s.sock,):
            if os.path.exists(stale):
                os.unlink(stale)
        for path in (s.source, s.target):
            with open(path, "wb") as f:
                f.truncate(256 << 20)
        shutil.rmtree(os.path.join(s.dir, "agent-state"), ignore_errors=True)
        shutil.rmtree(os.path.join(s.dir, "replica-state"), ignore_errors=True)
        for name in os.listdir(s.dir):
            if name.endswith(".log"):
                os.rename(os.path.join(s.dir, name), os.path.join(s.dir, "first-" + name))
        test(s)
    finally:
        for h in hogs:
            h.kill()
            h.wait()


t.run(test_twice, scene_class=FullScene, size_mib=256)
