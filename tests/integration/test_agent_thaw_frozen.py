#!/usr/bin/env python3
"""thaw-frozen, the ExecStopPost safety net of cdp-agent@GROUP.service
(deploy/package/agent/thaw-frozen), on real filesystems left frozen as a SIGKILLed agent and
watchdog would leave them:
  1. group db01: `freeze: auto` on a partitioned disk thaws both partitions' filesystems; a block
     list thaws its mount point and names the listed path that is not a mount point; a volume of
     another group (flow list, quoted) stays frozen;
  2. run again with nothing frozen: silent, exit 0;
  3. the other group by its volume's name (no `group` key) thaws its filesystem.
Every loop device, mount and freeze is undone even on failure."""
import os
import subprocess

import cdptest as t
import tracetest as tt

SCRIPT = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                      "../../deploy/package/agent/thaw-frozen"))


class Disks:
    def __init__(self, d):
        self.d = d
        self.loops = []
        self.mounts = []

    def loop(self, name, size_mib, partitions=0):
        """A loop device over a new image; with `partitions`, that many 64 MiB partitions
        (DOS label), returned as the loop device and its partitions' device paths."""
        img = os.path.join(self.d, name + ".img")
        with open(img, "wb") as f:
            f.truncate(size_mib << 20)
        r = subprocess.run(["losetup", "--find", "--show", "--partscan", img],
                           capture_output=True, text=True)
        if r.returncode != 0:
            tt.fail_or_skip(f"cannot get a loop device: {r.stderr.strip()}")
        loop = r.stdout.strip()
        self.loops.append(loop)
        if not partitions:
            return loop, []
        starts = [2048 + i * 131072 for i in range(partitions)]
        layout = "label: dos\n" + "".join(f"start={s}, size=131072, type=83\n" for s in starts)
        subprocess.run(["sfdisk", "--quiet", loop], input=layout, text=True, check=True,
                       capture_output=True)
        parts = [f"{loop}p{i + 1}" for i in range(partitions)]
        for i, (part, start) in enumerate(zip(parts, starts)):
            if not os.path.exists(part):
                # Kernels built without partition-table parsers ignore the table; add the
                # partition by hand (BLKPG), as the table says (tracetest.py does the same).
                subprocess.run(["addpart", loop, str(i + 1), str(start), "131072"], check=True,
                               capture_output=True)
        deadline = t.time.time() + 20
        while not all(os.path.exists(p) for p in parts):
            assert t.time.time() < deadline, f"partitions {parts} did not appear"
            t.time.sleep(0.05)
        return loop, parts

    def mount(self, source, name):
        mnt = os.path.join(self.d, name)
        os.makedirs(mnt)
        subprocess.run(["mkfs.ext4", "-q", "-F", source], check=True, capture_output=True)
        subprocess.run(["mount", source, mnt], check=True)
        self.mounts.append(mnt)
        subprocess.run(["fsfreeze", "--freeze", mnt], check=True)
        return mnt

    def close(self):
        for mnt in reversed(self.mounts):
            subprocess.run(["fsfreeze", "--unfreeze", mnt], capture_output=True)
            subprocess.run(["umount", mnt], capture_output=True)
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)


def frozen(mnt):
    """True if `mnt` was frozen; thaws it (FITHAW fails with EINVAL on a thawed filesystem)."""
    return subprocess.run(["fsfreeze", "--unfreeze", mnt], capture_output=True).returncode == 0


def thaw(conf, group):
    return subprocess.run([SCRIPT, "--config-dir", conf, "--group", group],
                          capture_output=True, text=True, timeout=60)


def test(d):
    tt.require_kernel()
    t.require_tools("sfdisk", "lsblk", "findmnt", "mountpoint", "bash")
    disks = Disks(d)
    try:
        run(d, disks)
    finally:
        disks.close()


def run(d, disks):
    sda, (sda1, sda2) = disks.loop("sda", 160, partitions=2)
    a = disks.mount(sda1, "a")
    b = disks.mount(sda2, "b")
    sdb, _ = disks.loop("sdb", 64)
    c = disks.mount(sdb, "c")
    other_dev, _ = disks.loop("other", 64)
    other = disks.mount(other_dev, "other")
    notmounted = os.path.join(d, "not-mounted")
    os.makedirs(notmounted)
    conf = os.path.join(d, "conf")
    os.makedirs(conf)
    open(os.path.join(conf, "db01-sda.conf"), "w").write(
        f"# the root disk\nvolume: db01-sda\ngroup: db01\nserver: tcp://198.51.100.1:7700\n"
        f"device: {sda}\ntrace: true\nfreeze: auto   # every filesystem on it\n")
    open(os.path.join(conf, "db01-sdb.conf"), "w").write(
        f"volume: db01-sdb\ngroup: 'db01'\ndevice: {sdb}\ntrace: true\nfreeze:\n"
        f"  - {c}\n  - \"{notmounted}\"\ncheckpoint_interval: 1\n")
    open(os.path.join(conf, "web01.conf"), "w").write(
        f"volume: web01\ndevice: {other_dev}\ntrace: true\nfreeze: [\"{other}\"]\n")
    open(os.path.join(conf, "README"), "w").write("freeze: auto\n")  # not a .conf: ignored

    t.log("1. group db01: auto on a partitioned disk, a block list, another group untouched")
    r = thaw(conf, "db01")
    assert r.returncode == 0, r
    assert r.stdout == "".join(f"thaw-frozen: group db01: thawed {m} (it was still frozen)\n"
                               for m in [a, b, c]), r.stdout
    assert r.stderr == (f"thaw-frozen: group db01: {notmounted} is not a mount point; "
                        f"not thawed\n"), r.stderr
    for m in [a, b, c]:
        assert not frozen(m), f"{m} is still frozen"

    t.log("2. again, nothing of db01 frozen: silent")
    r = thaw(conf, "db01")
    assert (r.returncode, r.stdout) == (0, ""), r
    assert r.stderr == (f"thaw-frozen: group db01: {notmounted} is not a mount point; "
                        f"not thawed\n"), r.stderr

    t.log("3. the other volume, a group of its own by its name")
    r = thaw(conf, "web01")
    assert (r.returncode, r.stderr) == (0, ""), r
    assert r.stdout == f"thaw-frozen: group web01: thawed {other} (it was still frozen)\n", r
    assert not frozen(other)


if __name__ == "__main__":
    t.run_in_temp_dir(test, prefix="cdp-thaw-frozen-")
