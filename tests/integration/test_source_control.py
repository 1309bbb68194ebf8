#!/usr/bin/env python3
"""Source control through the agent (issue 17 item 4), with real processes: a journal-server and a
trace-mode cdp-agent protecting ext4 on a loop device, both in a network namespace this test
creates (so the fence removes addresses from a veth NIC of its own, never the host's), and
cdpctl source as the control client:
  1. status: the agent's volume and mount point, able to freeze; quiesce holds a freeze of the
     filesystem (the process's GroupFreeze) and reports the volume's final LSN; hold renews it;
     release thaws it;
  2. hashes: XXH3-64 per 4 MiB region computed by the agent equal those of the device's bytes
     read here with O_DIRECT (xxhsum -H3); 8192 regions of 4 KiB, more than one request takes,
     come back in order and right;
  3. fence: the service address leaves its NIC (read back with ip), another address stays, an
     address no NIC holds is reported as such; release with nothing frozen says so;
  4. the agent killed: the relay answers "no agent connected".
Everything (processes, mount, loop device, namespace) is removed at the end, also on failure."""
import json
import os
import subprocess

import cdptest as t
import tracetest as tt

NS = f"quiesce-ns{os.getpid()}"
NS_PATH = f"/run/netns/{NS}"


def ns_cmd(args):
    return ["nsenter", f"--net={NS_PATH}"] + list(args)


class NetnsTraceScene(tt.TraceScene):
    """TraceScene whose journal-server, agent and cdpctl run in the network namespace NS."""

    def __init__(self, **kw):
        t.require_tools("ip", "nsenter", "xxhsum", "dd")
        subprocess.run(["ip", "netns", "add", NS], check=True)
        try:
            for cmd in (["link", "set", "lo", "up"],
                        ["link", "add", "quiesce0", "type", "veth", "peer", "name", "quiesce1"],
                        ["link", "set", "quiesce0", "up"],
                        ["link", "set", "quiesce1", "up"],
                        ["addr", "add", "192.0.2.10/24", "dev", "quiesce0"],
                        ["addr", "add", "198.51.100.5/24", "dev", "quiesce0"]):
                subprocess.run(["ip", "-n", NS] + cmd, check=True)
            super().__init__(**kw)
        except BaseException:
            subprocess.run(["ip", "netns", "del", NS], capture_output=True)
            raise

    def spawn(self, key, args):
        name = os.path.basename(args[0])
        self.procs[key] = t.Proc(name, ns_cmd(args), os.path.join(self.dir, name + ".log"))
        return self.procs[key]

    def start_agent(self, wait=True, extra=(), env=None):
        args = [t.binary("cdp-agent"), "--server", self.server, "--volume", self.volume,
                "--device", self.source, "--trace", "--freeze", self.mnt,
                "--state-dir", os.path.join(self.dir, "agent-state")] + list(extra)
        self.procs["agent"] = tt.Proc(ns_cmd(args), os.path.join(self.dir, "cdp-agent.log"), env)
        if wait:
            self.wait_for(lambda: self.agent_logged("tracing "), 30, "agent tracing")

    def cdpctl(self, *args, check=True, timeout=600):
        cmd = ns_cmd([t.binary("cdpctl"), "--server", self.server, *args])
        t.log("cdpctl " + " ".join(args))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"cdpctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def volume_status(self):
        r = self.cdpctl("status", "--json", check=False)
        if r.returncode != 0:
            return None
        for v in json.loads(r.stdout).get("volumes", []):
            if v["name"] == self.volume:
                return v
        return None

    def close(self, failed):
        try:
            super().close(failed)
        finally:
            subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def addresses():
    out = subprocess.run(["ip", "-n", NS, "-o", "-4", "addr", "show", "dev", "quiesce0"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[3] for line in out.splitlines())


def xxh3_of_device(device, offset, length, scratch):
    subprocess.run(["dd", f"if={device}", f"of={scratch}", "bs=1M", "iflag=direct",
                    f"skip={offset >> 20}", f"count={length >> 20}", "status=none"], check=True)
    out = subprocess.run(["xxhsum", "-H3", scratch], capture_output=True, text=True,
                         check=True).stdout
    return out.split("=")[-1].strip()  # "XXH3 (FILE) = HEX"


def test(s):
    s.start_journal()
    s.start_agent()
    s.wait_for(lambda: s.volume_status() is not None, 60, "volume registered")
    with open(os.path.join(s.mnt, "data.bin"), "wb") as f:
        f.write(os.urandom(3 << 20))
    os.sync()

    t.log("1. status, quiesce (a held freeze), hold, release")
    st = json.loads(s.cdpctl("source", "status", "--volume", s.volume, "--json").stdout)
    assert st["volumes"] == [{"volume": s.volume, "final_lsn": 0, "mount_points": s.mnt}], st
    assert st["can_freeze"] is True and st["frozen"] is False, st
    s.wait_for(lambda: s.status()["initial_sync_done"], 120, "the initial sync")
    r = s.cdpctl("source", "quiesce", "--volume", s.volume, "--json")
    q = json.loads(r.stdout)
    assert q["frozen"] is True and q["volumes"][0]["final_lsn"] > 0, q
    assert s.is_frozen(wait=0.5), "quiesce did not leave the filesystem frozen"
    st = json.loads(s.cdpctl("source", "status", "--volume", s.volume, "--json").stdout)
    assert st["frozen"] is True, st
    s.cdpctl("source", "hold", "--volume", s.volume)
    r = s.cdpctl("source", "release", "--volume", s.volume)
    assert r.stdout.strip().startswith("thawed after "), r.stdout
    assert not s.is_frozen(wait=0.5), "release left the filesystem frozen"

    t.log("2. hashes by the agent equal the device's bytes (frozen here: nothing changes them)")
    s.freeze()
    lines = s.cdpctl("source", "hashes", "--volume", s.volume, "--length", "16M",
                     "--chunk", "4M").stdout.split()
    assert len(lines) == 12, lines  # 4 regions, 3 words each
    scratch = os.path.join(s.dir, "region.bin")
    for i in range(4):
        offset, length, got = int(lines[3 * i]), int(lines[3 * i + 1]), lines[3 * i + 2]
        assert (offset, length) == (i << 22, 4 << 20), lines
        want = xxh3_of_device(s.source, offset, length, scratch)
        assert got == want, f"region {offset}: agent {got}, device {want}"
    # More regions than the agent takes in one request (4096): cdpctl splits the request and
    # prints every region's hash in order.
    small = s.cdpctl("source", "hashes", "--volume", s.volume, "--length", "32M",
                     "--chunk", "4K").stdout.split()
    assert len(small) == 3 * 8192, len(small)
    assert [int(w) for w in small[0::3]] == [i << 12 for i in range(8192)], "offsets out of order"
    for i in (0, 4095, 4096, 8191):  # both sides of the split
        subprocess.run(["dd", f"if={s.source}", f"of={scratch}", "bs=4096", "iflag=direct",
                        f"skip={i}", "count=1", "status=none"], check=True)
        want = subprocess.run(["xxhsum", "-H3", scratch], capture_output=True, text=True,
                              check=True).stdout.split("=")[-1].strip()
        assert small[3 * i + 2] == want, (i, small[3 * i:3 * i + 3], want)
    s.thaw()

    t.log("3. fence: the service address leaves its NIC")
    assert addresses() == ["192.0.2.10/24", "198.51.100.5/24"], addresses()
    r = s.cdpctl("source", "fence", "--volume", s.volume, "--address", "192.0.2.10/24",
                 "--address", "192.0.2.12")
    assert r.stdout.strip() == "removed 192.0.2.10/24 from quiesce0; 192.0.2.12 was not held", \
        r.stdout
    assert addresses() == ["198.51.100.5/24"], addresses()
    r = s.cdpctl("source", "release", "--volume", s.volume)
    assert r.stdout.strip() == "nothing was frozen (thawed already)", r.stdout

    t.log("4. the agent killed: no agent connected")
    s.procs["agent"].kill9()
    s.wait_for(lambda: s.cdpctl("source", "status", "--volume", s.volume,
                                check=False).returncode == 1, 30, "the relay to see no agent")
    r = s.cdpctl("source", "status", "--volume", s.volume, check=False)
    assert r.stderr.strip() == (f"cdpctl: source status: journal-server: volume {s.volume}: no "
                                "agent connected; is the cdp-agent protecting it running on the "
                                "source?"), r.stderr


t.run(test, scene_class=NetnsTraceScene, fs="ext4", size_mib=64)
