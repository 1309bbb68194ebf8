#!/usr/bin/env python3
"""One cdp-agent process protecting two disks as one consistency group (issue 17, items 2-3):

  disk A  a loop device with a plain ext4 ("the root"): holds both volumes' state dirs, so the
          agent freezes the filesystem it keeps its own state on;
  disk B  a loop device with a GPT partition table: partition 1 swap (not mounted), partition 2
          xfs — or, where the kernel has device-mapper, LVM on partition 2 and xfs on a logical
          volume; protected as a whole disk, its filesystem found by `freeze: auto`.

The agent is started the way the Debian package's unit does, `--config-dir DIR --group NAME`,
from two config files (a third file, of another group, is left alone). While a writer appends
"pair" files — each written and fsynced on A, then on B — the agent makes group points: one
freeze of both filesystems, one point per volume naming both LSNs. Every freeze also starts a
save of each state file (a test hook) while the filesystems are frozen. Then:
  - the points of A and B share group point ids and each names both volumes' LSNs, as `cdpctl
    points` shows (text and --json);
  - restoring both volumes at one group point (`cdpctl restore --at group:ID`) gives images
    whose filesystems are clean and consistent across disks: every pair file on B is complete
    on A (B's copy is written after A's, so a point of both at one instant can never show B's
    without A's), and every pair file present is byte-exact;
  - the agent never left a filesystem frozen and kept making points with its state on the
    frozen filesystem;
  - what the agent's own writes cost on idle filesystems: records/s and bytes/s journaled for
    each volume, and freezes/s, measured over a quiet minute (printed as FIGURES).
"""
import json
import os
import subprocess
import threading
import time

import cdptest as t
import tracetest as tt

IDLE_SECONDS = int(os.environ.get("CDP_GROUP_IDLE_SECONDS", "60"))
WRITE_SECONDS = int(os.environ.get("CDP_GROUP_WRITE_SECONDS", "20"))
PAIR_BYTES = 64 << 10


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def pair_content(i):
    seed = (str(i) + ":").encode()
    return (seed * (PAIR_BYTES // len(seed) + 1))[:PAIR_BYTES]


class GroupScene(t.Scene):
    def __init__(self):
        tt.require_kernel()
        t.require_tools("mkswap")
        # LVM needs device-mapper in the kernel (a microVM's kernel may have none): without it,
        # xfs sits on the partition itself, and the stacking through dm is covered by the unit
        # test's sysfs fixtures (disk_filesystems_test.cc) only.
        self.use_lvm = os.path.exists("/dev/mapper/control") and subprocess.run(
            ["dmsetup", "version"], capture_output=True).returncode == 0
        if self.use_lvm:
            t.require_tools("pvcreate", "vgcreate", "lvcreate", "vgchange", "lvs", "pvs")
        super().__init__(volume="unused", size_mib=0,
                         keep=bool(os.environ.get("CDP_TEST_KEEP")))
        pid = os.getpid()
        self.group = f"grp{pid}"
        self.vol_a, self.vol_b = f"grp{pid}-a", f"grp{pid}-b"
        self.vg = f"cdpgroup{pid}"
        self.loops, self.mounts, self.instances = [], [], []
        self.vg_made = False
        self.mnt_a = os.path.join(self.dir, "root")
        self.mnt_b = os.path.join(self.dir, "pgdata")
        try:
            self._make_disks()
        except BaseException:
            self.close(failed=True)
            raise

    def _loop(self, name, mib, partscan=False):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.truncate(mib << 20)
        args = ["losetup", "--find", "--show"] + (["--partscan"] if partscan else [])
        r = subprocess.run(args + [path], capture_output=True, text=True)
        if r.returncode != 0:
            tt.fail_or_skip(f"cannot get a loop device: {r.stderr.strip()}")
        loop = r.stdout.strip()
        self.loops.append(loop)
        return loop

    def _mount(self, dev, mnt, *opts):
        os.makedirs(mnt, exist_ok=True)
        run(["mount", *opts, dev, mnt])
        self.mounts.append(mnt)

    def _make_disks(self):
        self.loop_a = self._loop("disk-a.img", 512)
        # No lazy inode-table init: its background writes would be measured as idle writes.
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.loop_a])
        self._mount(self.loop_a, self.mnt_a)
        self.loop_b = self._loop("disk-b.img", 768, partscan=True)
        # p1: 32 MiB swap from sector 2048; p2: the rest (GPT keeps 34 sectors at the end).
        p2_start = 2048 + 65536
        p2_sectors = (768 << 11) - p2_start - 34
        run(["sfdisk", "--quiet", self.loop_b],
            input=f"label: gpt\nstart=2048, size=65536, type=swap\n"
                  f"start={p2_start}, size={p2_sectors}, type=linux\n")
        # Kernels built without partition-table parsers ignore the table: add the partitions by
        # hand (BLKPG), as the table says.
        for n, start, size in ((1, 2048, 65536), (2, p2_start, p2_sectors)):
            if not os.path.exists(f"{self.loop_b}p{n}"):
                run(["addpart", self.loop_b, str(n), str(start), str(size)])
        part = self.loop_b + "p2"
        self.wait_for(lambda: os.path.exists(part), 20, f"partition {part}")
        run(["mkswap", self.loop_b + "p1"])
        if not self.use_lvm:
            run(["mkfs.xfs", "-q", "-f", part])
            self._mount(part, self.mnt_b)
            self.lv_offset, self.lv_size = p2_start * 512, p2_sectors * 512
            self.fs_b_device = os.path.basename(part)
            t.log(f"A: ext4 on {self.loop_a} at {self.mnt_a}; B: {self.loop_b} GPT -> {part} "
                  f"xfs at {self.mnt_b} (no device-mapper in this kernel: no LVM)")
            return
        # Only this disk: the host's own LVM setup is none of the test's business.
        self.lvm_filter = ["--config", f'devices {{ filter = [ "a|^{part}$|", "r|.*|" ] }}']
        run(["pvcreate", "-q", "-y", *self.lvm_filter, part])
        run(["vgcreate", "-q", *self.lvm_filter, self.vg, part])
        self.vg_made = True
        run(["lvcreate", "-q", "-y", *self.lvm_filter, "-n", "pgdata", "-L", "600M", self.vg])
        lv = f"/dev/{self.vg}/pgdata"
        self.wait_for(lambda: os.path.exists(lv), 20, lv)
        run(["mkfs.xfs", "-q", "-f", lv])
        self._mount(lv, self.mnt_b)
        # Where the LV's first byte is on disk B: the partition's start + the PV's first extent
        # + the LV's first extent (one linear segment).
        pe_start = int(run(["pvs", *self.lvm_filter, "--noheadings", "--units", "b",
                            "--nosuffix", "-o", "pe_start", part]).stdout.split()[0])
        ranges = run(["lvs", *self.lvm_filter, "--noheadings", "-o", "seg_pe_ranges",
                      f"{self.vg}/pgdata"]).stdout.split()[0]  # e.g. /dev/loop3p1:0-149
        first_pe = int(ranges.rsplit(":", 1)[1].split("-")[0])
        extent = int(run(["vgs", *self.lvm_filter, "--noheadings", "--units", "b", "--nosuffix",
                          "-o", "vg_extent_size", self.vg]).stdout.split()[0])
        self.lv_offset = p2_start * 512 + pe_start + first_pe * extent
        self.lv_size = 600 << 20
        self.fs_b_device = "dm-"
        t.log(f"A: ext4 on {self.loop_a} at {self.mnt_a}; B: {self.loop_b} GPT -> {part} PV -> "
              f"{self.vg}/pgdata xfs at {self.mnt_b} (LV at byte {self.lv_offset})")

    def write_configs(self):
        self.conf_dir = os.path.join(self.dir, "agent-conf")
        os.makedirs(self.conf_dir)
        common = (f"group: {self.group}\nserver: {self.server}\ntrace: true\n"
                  "checkpoint_interval: 0.5\n")
        with open(os.path.join(self.conf_dir, "a-root.conf"), "w") as f:
            f.write(f"volume: {self.vol_a}\n{common}device: {self.loop_a}\n"
                    f"freeze:\n  - {self.mnt_a}\n"
                    f"state_dir: {self.mnt_a}/cdp-state/{self.vol_a}\n")
        with open(os.path.join(self.conf_dir, "b-data.conf"), "w") as f:
            f.write(f"volume: {self.vol_b}\n{common}device: {self.loop_b}\nfreeze: auto\n"
                    f"state_dir: {self.mnt_a}/cdp-state/{self.vol_b}\n")
        with open(os.path.join(self.conf_dir, "other.conf"), "w") as f:
            f.write("volume: someone-else\ndevice: /dev/null\n")  # another group: not read
        self.instances = [f"cdp-agent.{self.vol_a}", f"cdp-agent.{self.vol_b}"]

    def start_agent(self, wait=True, save_state_while_frozen=True):
        env = {"CDP_AGENT_TEST_SAVE_STATE_WHILE_FROZEN": "1"} if save_state_while_frozen else {}
        self.procs["agent"] = tt.Proc([t.binary("cdp-agent"), "--config-dir", self.conf_dir,
                                       "--group", self.group],
                                      os.path.join(self.dir, "cdp-agent.log"), env)

    def agent_log(self):
        with open(os.path.join(self.dir, "cdp-agent.log"), errors="replace") as f:
            return f.read()

    def vstatus(self, volume):
        doc = json.loads(self.cdpctl("status", "--json").stdout)
        return next((v for v in doc["volumes"] if v["name"] == volume), None)

    def points(self, volume):
        return json.loads(self.cdpctl("points", "--volume", volume, "--json").stdout)

    def is_frozen(self, mnt):
        p = subprocess.Popen(["sh", "-c", f"echo x > {mnt}/.probe"], start_new_session=True)
        try:
            p.wait(2)
            return False
        except subprocess.TimeoutExpired:
            return True

    def close(self, failed):
        for p in self.procs.values():
            try:
                p.kill9()
            except Exception:  # noqa: BLE001
                pass
        for mnt in self.mounts:
            subprocess.run(["pkill", "-9", "-f", f"cdp-thaw-watchdog --mount {mnt}"],
                           capture_output=True)
        for mnt in reversed(self.mounts):
            subprocess.run(["fsfreeze", "--unfreeze", mnt], capture_output=True)
            for _ in range(50):
                if subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
        if self.vg_made:
            subprocess.run(["vgchange", "-q", "-an", *self.lvm_filter, self.vg],
                           capture_output=True)
            subprocess.run(["vgremove", "-q", "-f", *self.lvm_filter, self.vg],
                           capture_output=True)
        for name in self.instances:
            tt.remove_instance(name)
        for loop in reversed(self.loops):
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        super().close(failed)


def pair_writer(scene, stop, written):
    """Each pair file: written and fsynced on A, then on B."""
    i = 0
    for mnt in (scene.mnt_a, scene.mnt_b):
        os.makedirs(os.path.join(mnt, "pairs"), exist_ok=True)
    while not stop.is_set():
        for mnt in (scene.mnt_a, scene.mnt_b):
            with open(os.path.join(mnt, "pairs", str(i)), "wb") as f:
                f.write(pair_content(i))
                f.flush()
                os.fsync(f.fileno())
        written.append(i)
        i += 1


def read_pairs(mnt):
    """{i: content} of the pair files in `mnt`."""
    d = os.path.join(mnt, "pairs")
    if not os.path.isdir(d):
        return {}
    out = {}
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            out[int(name)] = f.read()
    return out


def restored_pairs(s, image, offset, size, fs):
    """Mounts the filesystem at [offset, offset+size) of a restored image (a copy: recovery may
    write), checks it with fsck first, returns its pair files."""
    loop = run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size),
                image]).stdout.strip()
    mnt = image + ".mnt"
    os.makedirs(mnt, exist_ok=True)
    try:
        if fs == "ext4":
            r = subprocess.run(["e2fsck", "-f", "-n", loop], capture_output=True, text=True)
            assert r.returncode == 0, f"e2fsck -n of the restored A:\n{r.stdout}{r.stderr}"
            run(["mount", "-o", "ro", loop, mnt])
        else:
            run(["mount", "-o", "nouuid", loop, mnt])  # replays the log, as after a crash
            run(["umount", mnt])
            r = subprocess.run(["xfs_repair", "-n", loop], capture_output=True, text=True)
            assert r.returncode == 0, f"xfs_repair -n of the restored B:\n{r.stdout}{r.stderr}"
            run(["mount", "-o", "ro,nouuid", loop, mnt])
        try:
            return read_pairs(mnt)
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def usage_errors(s):
    """What the command line refuses, before anything starts (exit 2, one line)."""
    def agent(*args):
        r = subprocess.run([t.binary("cdp-agent"), *args], capture_output=True, text=True,
                           timeout=60)
        return r.returncode, r.stderr.strip()
    a, b = (os.path.join(s.conf_dir, n) for n in ("a-root.conf", "b-data.conf"))
    assert agent("--config", a, "--config", b, "--checkpoint-interval", "2") == (
        2, "cdp-agent: --checkpoint-interval on the command line: with 2 config files, options "
           "of a volume go in its file (the command line may override them only with a single "
           "--config)")
    assert agent("--config-dir", s.conf_dir, "--group", "nogroup") == (
        2, f"cdp-agent: no config file in {s.conf_dir} is in group 'nogroup' ({s.conf_dir}/*.conf:"
           " 3 files; a file's group is its `group` key, else its `volume`)")
    assert agent("--config-dir", s.conf_dir) == (2, "cdp-agent: --config-dir needs --group NAME")
    bad = os.path.join(s.dir, "bad.conf")
    with open(bad, "w") as f:
        f.write("volume: v\ncheckpoint_interval: 0.01\n")
    assert agent("--config", bad, "--server", "tcp://127.0.0.1:1", "--device", "/dev/null",
                 "--trace") == (
        2, f"cdp-agent: {bad}: --checkpoint-interval must be between 0.05 and 86400 seconds")
    with open(bad, "w") as f:
        f.write("volume: v\nfreez: auto\n")
    rc, err = agent("--config", bad)
    assert rc == 2 and err.startswith(f"cdp-agent: {bad}:2: unknown key 'freez' (known: "), err


def test(s):
    s.write_configs()
    usage_errors(s)
    s.start_journal()
    s.start_agent()
    s.wait_for(lambda: "one group point per freeze" in s.agent_log(), 60, "the group cycle")
    log = s.agent_log()
    assert f"--freeze auto on {s.loop_b}: freezing {s.mnt_b} (xfs on {s.fs_b_device}" in log, \
        log[-3000:]
    assert "someone-else" not in log, "a config file of another group was read"

    def synced():
        st = [s.vstatus(v) for v in (s.vol_a, s.vol_b)]
        return all(x is not None and x["initial_sync_done"] and x["last_point_lsn"] > 0
                   for x in st)
    s.wait_for(synced, 600, "both volumes synced, with a point each")

    stop, written = threading.Event(), []
    writer = threading.Thread(target=pair_writer, args=(s, stop, written))
    writer.start()
    try:
        time.sleep(WRITE_SECONDS)
    finally:
        stop.set()
        writer.join()
    t.log(f"{len(written)} pair files written on both filesystems")

    # A group point covering the writes, asked of one volume: a freeze of both.
    # (A freeze over its limit on a loaded machine is abandoned, and the checkpoint says so.)
    for _ in range(10):
        r = s.cdpctl("checkpoint", "--volume", s.vol_a, "--label", "after pairs", check=False)
        if r.returncode == 0 or "freeze abandoned" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    lsn_a = int(r.stdout)
    pts_a, pts_b = s.points(s.vol_a), s.points(s.vol_b)
    group_a = {p["group_point_id"]: p for p in pts_a if p.get("group_point_id")}
    group_b = {p["group_point_id"]: p for p in pts_b if p.get("group_point_id")}
    common = sorted(set(group_a) & set(group_b))
    assert len(common) >= 3, f"group points: A {len(group_a)}, B {len(group_b)}, both {common}"
    for gid in common:
        for p in (group_a[gid], group_b[gid]):
            assert p["group"] == s.group, p
            members = {m["volume"]: m["lsn"] for m in p["group_members"]}
            assert set(members) == {s.vol_a, s.vol_b}, p
        assert group_a[gid]["group_members"] == group_b[gid]["group_members"], gid
        members = {m["volume"]: m["lsn"] for m in group_a[gid]["group_members"]}
        assert members[s.vol_a] == group_a[gid]["lsn"], (gid, group_a[gid])
        assert members[s.vol_b] == group_b[gid]["lsn"], (gid, group_b[gid])
    labelled = next(p for p in pts_a if p["lsn"] == lsn_a)
    assert labelled.get("group_point_id"), f"the checkpoint is not a group point: {labelled}"
    table = s.cdpctl("points", "--volume", s.vol_b).stdout
    gid = labelled["group_point_id"]
    assert f"[group {s.group} point {gid}: {s.vol_a}@" in table, table[-2000:]
    t.log(f"{len(common)} group points; last: {gid} {labelled['group_members']}")

    # Restore both volumes at a group point taken while the pairs were written, and at the last.
    during = [g for g in common if g < gid]
    chosen = [during[len(during) // 2], gid] if during else [gid]
    for g in chosen:
        img_a = os.path.join(s.dir, f"a-{g}.img")
        img_b = os.path.join(s.dir, f"b-{g}.img")
        s.cdpctl("restore", "--volume", s.vol_a, "--at", f"group:{g}", "--output", img_a)
        s.cdpctl("restore", "--volume", s.vol_b, "--at", f"group:{g}", "--output", img_b)
        pairs_a = restored_pairs(s, img_a, 0, 512 << 20, "ext4")
        pairs_b = restored_pairs(s, img_b, s.lv_offset, s.lv_size, "xfs")
        for i, content in list(pairs_a.items()) + list(pairs_b.items()):
            assert content in (b"", pair_content(i)[:len(content)]), f"pair {i} garbled at {g}"
        for i, content in pairs_b.items():
            if content:
                assert pairs_a.get(i) == pair_content(i), \
                    f"group point {g}: pair {i} is on B but not complete on A: not one instant"
        complete_b = [i for i, c in pairs_b.items() if c == pair_content(i)]
        t.log(f"group point {g}: A has {len(pairs_a)} pairs, B {len(pairs_b)} "
              f"({len(complete_b)} complete), every B pair complete on A")
        if g == gid:
            assert len(complete_b) == len(written), (len(complete_b), len(written))
        os.unlink(img_a)
        os.unlink(img_b)

    for mnt in (s.mnt_a, s.mnt_b):
        assert not s.is_frozen(mnt), f"{mnt} left frozen"
    st = s.vstatus(s.vol_a)
    assert st["trace"]["freezes"] >= 5, st["trace"]
    rc = s.procs["agent"].term(60)
    assert rc == 0, f"agent exited {rc}"
    log = s.agent_log()
    assert "state saves during freezes" in log, log[-2000:]
    for mnt in (s.mnt_a, s.mnt_b):
        assert not s.is_frozen(mnt), f"{mnt} left frozen after the agent stopped"

    # The agent's own cost on idle filesystems (its state dirs are on A), without the test
    # hook's extra state saves: a clean restart resumes, then a quiet minute.
    s.start_agent(save_state_while_frozen=False)
    s.wait_for(lambda: all((s.vstatus(v) or {}).get("agent_connected") for v in
                           (s.vol_a, s.vol_b)), 60, "the agent back for both volumes")
    time.sleep(10)
    before = {v: s.vstatus(v) for v in (s.vol_a, s.vol_b)}
    t0 = time.time()
    time.sleep(IDLE_SECONDS)
    after = {v: s.vstatus(v) for v in (s.vol_a, s.vol_b)}
    dt = time.time() - t0
    for v in (s.vol_a, s.vol_b):
        recs = (after[v]["captured_lsn"] - before[v]["captured_lsn"]) / dt
        byts = (after[v]["bytes_received"] - before[v]["bytes_received"]) / dt
        frz = (after[v]["trace"]["freezes"] - before[v]["trace"]["freezes"]) / dt
        print(f"FIGURES idle {v}: {recs:.3f} records/s, {byts:.0f} bytes/s, "
              f"{frz:.3f} freezes/s over {dt:.0f} s (checkpoint interval 0.5 s)")
        # Quiet filesystems back off to a freeze per 30 s: far below one per interval.
        assert frz < 0.5, f"{v}: {frz:.2f} freezes/s on an idle filesystem"
    assert s.procs["agent"].term(60) == 0
    for mnt in (s.mnt_a, s.mnt_b):
        assert not s.is_frozen(mnt), f"{mnt} left frozen after the agent stopped"


t.run(test, scene_class=lambda **_: GroupScene())
