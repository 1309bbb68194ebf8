#!/usr/bin/env python3
"""The trace agent never pins the filesystem it freezes (issue 15 item 13): with --freeze on a
mounted ext4, `umount` of it while the agent runs succeeds (before the fix: "target is busy", the
agent and its thaw watchdog held the mount point open). The agent stays up, says once in its log
that the mount point no longer holds the filesystem, refuses a checkpoint saying why, and keeps
capturing the device: blocks written with dd to the unmounted device reach the replica. After
the remount it says freezes resume and takes freeze points again; the replica equals the device
byte for byte, e2fsck -n clean, no gap and no lost event."""
import json
import os
import re
import subprocess

import cdptest as t
import tracetest as tt

GONE = "no longer holds the filesystem"
BACK = "freezes (consistency points) resume"


def holders(path):
    """Processes with a descriptor, working directory or root under `path` (for a failure
    message): 'pid (comm): what' lines."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        links = []
        for name in ("cwd", "root"):
            links.append((name, f"/proc/{pid}/{name}"))
        try:
            links += [(f"fd {fd}", f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        for what, link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == path or target.startswith(path + "/"):
                out.append(f"{pid} ({comm}): {what} -> {target}")
    return "; ".join(out) or "none found"


def physical_extents(path):
    """[(byte offset in the file, byte offset on the device, length)] of a file (filefrag)."""
    r = subprocess.run(["filefrag", "-e", "-b1", path], capture_output=True, text=True,
                       check=True)
    extents = []
    for m in re.finditer(r"^\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+):.*$", r.stdout,
                         re.M):
        assert "unwritten" not in m.group(0) and "inline" not in m.group(0), r.stdout
        extents.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    assert extents and sum(e[2] for e in extents) == os.path.getsize(path), r.stdout
    return extents


def write_file(path, mib):
    data = os.urandom(mib << 20)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def freeze_points(s):
    pts = json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)
    return [p for p in pts if p["origin"] == "freeze"]


def test(s):
    t.require_tools("filefrag")
    s.start_all()
    s.wait_synced()
    data_path = os.path.join(s.mnt, "before-umount.bin")
    write_file(data_path, 4)
    s.wait_for(lambda: s.status()["last_point_lsn"] == s.status()["captured_lsn"]
               and s.trace_stats().get("freezes", 0) >= 1, 60,
               "a freeze point covering the first file")
    extents = physical_extents(data_path)

    t.log(f"umount {s.mnt} while the agent protects {s.source}")
    r = subprocess.run(["umount", s.mnt], capture_output=True, text=True)
    assert r.returncode == 0, (f"umount {s.mnt} exited {r.returncode} while the agent runs: "
                               f"{r.stderr.strip()}; held by: {holders(s.mnt)}")
    s.mounted = False
    s.wait_for(lambda: GONE in s.agent_log(), 30, "the agent to log that the filesystem is gone")
    assert s.procs["agent"].alive(), "the agent exited after the unmount"
    said = [line for line in s.agent_log().splitlines() if GONE in line]
    t.log(f"agent: {said[0]}")
    assert s.mnt in said[0] and s.source in said[0], said[0]

    r = s.cdpctl("checkpoint", "--volume", s.volume, check=False)
    assert r.returncode != 0 and GONE in r.stderr and s.mnt in r.stderr, \
        f"a checkpoint while unmounted: exit {r.returncode}, {r.stdout}{r.stderr}"
    t.log(f"checkpoint while unmounted refused: {r.stderr.strip()}")

    t.log(f"dd new content over the file's {len(extents)} extent(s) on the unmounted device")
    captured_before_dd = s.status()["captured_lsn"]
    new = os.urandom(sum(e[2] for e in extents))
    new_path = os.path.join(s.dir, "new-content.bin")
    with open(new_path, "wb") as f:
        f.write(new)
    for logical, physical, length in extents:
        subprocess.run(["dd", f"if={new_path}", f"of={s.source}", "bs=64K",
                        f"skip={logical}", f"seek={physical}", f"count={length}",
                        "iflag=skip_bytes,count_bytes", "oflag=seek_bytes",
                        "conv=notrunc,fsync", "status=none"], check=True)
    s.wait_for(lambda: s.status()["captured_lsn"] > captured_before_dd, 30,
               "the agent to capture the writes to the unmounted device")
    s.wait_synced()
    assert s.agent_log().count(GONE) == 1, "the unmount must be logged once, not every interval"

    lsn_at_remount = s.status()["captured_lsn"]
    t.log(f"remount {s.source} at {s.mnt} (captured LSN {lsn_at_remount})")
    subprocess.run(["mount", s.source, s.mnt], check=True)
    s.mounted = True
    s.wait_for(lambda: BACK in s.agent_log(), 30, "the agent to say freezes resume")
    with open(data_path, "rb") as f:
        assert f.read() == new, "the dd to the unmounted device did not land in the file"
    write_file(os.path.join(s.mnt, "after-remount.bin"), 4)
    s.wait_for(lambda: any(p["lsn"] > lsn_at_remount for p in freeze_points(s)), 60,
               f"a freeze point after the remount (LSN > {lsn_at_remount})")
    t.log(f"freeze point after the remount: {freeze_points(s)[-1]}")

    s.assert_identical()
    s.fsck_target()
    st = s.status()
    assert st["gaps"] == 0, f"unmounting must not cost a gap: {st}"
    assert st["trace"]["lost_events"] == 0, f"events lost: {st['trace']}"
    assert s.agent_log().count(GONE) == 1 and s.agent_log().count(BACK) == 1, \
        "unmount and remount are each logged once"


tt.run(test, fs="ext4", size_mib=256)
