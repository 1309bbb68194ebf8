#!/usr/bin/env python3
"""The takeover's adaptation of the real source, per network format (issue 17's PE test;
docs/pe-agent.md §5).

A copy of the lab source's disks (deploy/lab/build-real-source, cached: Debian 12, / ext4 on a
GPT partition, /var/lib/postgresql xfs on LVM, ens192 192.0.2.10/24 and ens224 198.51.100.10/24
in /etc/network/interfaces; the root disk on a loop device), served by a host-side pe-agent (--disk, --meta,
--newroot in a scratch directory) in a network namespace whose NIC `eth1` has the target's
service MAC. The source's network configuration is rewritten in each format a Debian, Ubuntu or
RHEL-family server may use — ifupdown (as built), systemd-networkd, a NetworkManager keyfile,
netplan, RHEL ifcfg — and `cdpctl target takeover-plan --plan` asks for the takeover that
deploy/lab/plans/cutover-real.yaml would (ens192 by MAC 52:54:00:00:00:10 -> the target's
52:54:00:00:00:20, 192.0.2.10/24). For each format the dry run passes, its planned changes name
that format's file (the address moved to the target's NIC, or the name pinned to its MAC) and
turn the source's cdp-agent off, and the disks' bytes are what they were before (a dry run
writes nothing). Then a bond in ifupdown is refused with the file and line, before anything is
touched. Loop devices, mounts, the namespace and the pe-agent are removed even on failure.
"""
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import cdptest as t
import labtest
import real_source as rs

NS = f"cdp-pe-fmt-{os.getpid()}"
PLAN = os.path.join(labtest.REPO, "deploy", "lab", "plans", "cutover-real.yaml")
TARGET_MAC = "52:54:00:00:00:20"
LOOPBACK_ONLY = "auto lo\niface lo inet loopback\n"

# Each format: the files that configure the source's two NICs that way (the ifupdown file is
# reduced to the loopback for the others), and what the adaptation must change in them (file ->
# what), besides COMMON.
# ens192 is matched by name where the format (as a distribution writes it) usually does — then
# the name is pinned to the target's MAC by a .link file — and by MAC where it usually does —
# then the MAC is rewritten in the format's own file; ens224 (the replication NIC, not mapped:
# the target has no such NIC) stays by name.
SRC_MAC = "52:54:00:00:00:10"
# Planned for every format: the name pinned, gratuitous ARP, the source's agent off.
COMMON = {
    "/etc/systemd/network/10-cdp-ens192.link": f"pins the name ens192 to the target's NIC {TARGET_MAC}",
    "/etc/sysctl.d/90-cdp-arp-notify.conf": "gratuitous ARP when a NIC comes up (arp_notify): "
                                            "neighbours learn the new MACs of the moved addresses",
    "/etc/systemd/system/multi-user.target.wants/cdp-agent@lab.service":
        "disabled: cdp-agent@lab.service protected the source; on the target it would journal the "
        "target's writes as the source's",
}
FORMATS = {
    "ifupdown": ({}, {"/etc/network/interfaces":
                     "ifupdown: auto ens224 -> allow-hotplug (the plan maps no target NIC to it)"}),
    "networkd": ({
        "/etc/systemd/network/10-ens192.network":
            f"[Match]\nMACAddress={SRC_MAC}\n\n[Network]\nAddress=192.0.2.10/24\n",
        "/etc/systemd/network/20-ens224.network":
            "[Match]\nName=ens224\n\n[Network]\nAddress=198.51.100.10/24\n",
    }, {"/etc/systemd/network/10-ens192.network":
        f"systemd-networkd: ens192: [Match] MACAddress {SRC_MAC} -> {TARGET_MAC}"}),
    "nm-keyfile": ({
        "/etc/NetworkManager/system-connections/ens192.nmconnection":
            "[connection]\nid=ens192\ntype=ethernet\n\n"
            f"[ethernet]\nmac-address={SRC_MAC.upper()}\n\n"
            "[ipv4]\nmethod=manual\naddress1=192.0.2.10/24\n\n[ipv6]\nmethod=ignore\n",
        "/etc/NetworkManager/system-connections/ens224.nmconnection":
            "[connection]\nid=ens224\ntype=ethernet\ninterface-name=ens224\n\n"
            "[ipv4]\nmethod=manual\naddress1=198.51.100.10/24\n\n[ipv6]\nmethod=ignore\n",
    }, {"/etc/NetworkManager/system-connections/ens192.nmconnection":
        f"NetworkManager: ens192: mac-address {SRC_MAC} -> {TARGET_MAC}"}),
    "netplan": ({
        "/etc/netplan/01-netcfg.yaml":
            "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n"
            f"    ens192:\n      match:\n        macaddress: \"{SRC_MAC}\"\n"
            "      set-name: ens192\n      addresses: [192.0.2.10/24]\n"
            "    ens224:\n      addresses: [198.51.100.10/24]\n",
    }, {"/etc/netplan/01-netcfg.yaml":
        f"netplan: ethernets.ens192: match macaddress {SRC_MAC} -> {TARGET_MAC}"}),
    "ifcfg": ({
        "/etc/sysconfig/network-scripts/ifcfg-ens192":
            f"DEVICE=ens192\nHWADDR={SRC_MAC}\nTYPE=Ethernet\nBOOTPROTO=none\nONBOOT=yes\n"
            "IPADDR=192.0.2.10\nPREFIX=24\n",
        "/etc/sysconfig/network-scripts/ifcfg-ens224":
            "DEVICE=ens224\nTYPE=Ethernet\nBOOTPROTO=none\nONBOOT=yes\nIPADDR=198.51.100.10\n"
            "PREFIX=24\n",
    }, {"/etc/sysconfig/network-scripts/ifcfg-ens192":
        f"ifcfg: ens192: HWADDR {SRC_MAC} -> {TARGET_MAC}"}),
}


def sh(*args, check=True, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def digest(device):
    """XXH3-64 of a whole disk (a dry run must leave it as it was), by xxhsum."""
    return sh("xxhsum", "-H3", device, timeout=600).stdout.split()[0]


class Scene:
    def __init__(self, work):
        self.work, self.loops, self.nodes, self.mounted, self.agent = work, [], [], [], None

    def attach(self, image, offset=0, size=0):
        loop = sh("losetup", "--find", "--show", "--offset", str(offset),
                  *(["--sizelimit", str(size)] if size else []), image).stdout.strip()
        self.loops.append(loop)
        return loop

    def edit_root(self, root_part, files, links=None):
        """Mounts the copy's root (rw), writes FILES (path -> content; None removes) and LINKS
        (path -> symlink target), unmounts."""
        mnt = os.path.join(self.work, "edit")
        os.makedirs(mnt, exist_ok=True)
        sh("mount", "-t", "ext4", root_part, mnt)
        self.mounted.append(mnt)
        try:
            for path, content in files.items():
                host = mnt + path
                if content is None:
                    if os.path.lexists(host):
                        os.remove(host)
                    continue
                os.makedirs(os.path.dirname(host), exist_ok=True)
                with open(host, "w") as f:
                    f.write(content)
                if path.endswith(".nmconnection"):
                    os.chmod(host, 0o600)
            for path, target in (links or {}).items():
                os.makedirs(os.path.dirname(mnt + path), exist_ok=True)
                os.symlink(target, mnt + path)
        finally:
            sh("umount", mnt)
            self.mounted.remove(mnt)

    def close(self, failed):
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if failed and os.path.exists(os.path.join(self.work, "pe-agent.log")):
            with open(os.path.join(self.work, "pe-agent.log"), errors="replace") as f:
                print("----- pe-agent.log (last 40 lines) -----\n" + "".join(f.readlines()[-40:]))
        for mnt in self.mounted + [os.path.join(self.work, "newroot")]:
            subprocess.run(["umount", mnt], capture_output=True)
        for node in self.nodes:
            with contextlib.suppress(OSError):
                os.remove(node)
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def takeover_plan():
    r = subprocess.run(["ip", "netns", "exec", NS, t.binary("cdpctl"), "target",
                        "takeover-plan", "--plan", PLAN, "--json"],
                       capture_output=True, text=True, timeout=300)
    try:
        return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"takeover-plan printed no JSON (exit {r.returncode}): "
                             f"{r.stdout}{r.stderr}")


def body(s):
    t.require_tools("losetup", "mount", "ip", "xxhsum", "sfdisk")
    image_dir, meta = rs.build_image(bin_dir=t.BIN, log=t.log)
    # Copies: the cached images stay pristine (sparse, ~1.3 GB allocated).
    disks, images = {}, {}
    for volume, name in (("src-root", "root.img"), ("src-data", "data.img")):
        copy = os.path.join(s.work, name)
        sh("cp", "--sparse=always", os.path.join(image_dir, name), copy, timeout=600)
        # The root on a loop device with its partitions (the takeover mounts /dev/loopNp2); the
        # data disk (an LVM physical volume) as a plain file, which the host's LVM does not
        # activate.
        disks[volume] = (s.attach(copy) if volume == "src-root" else copy, os.path.getsize(copy))
        images[volume] = copy
    root_disk = disks["src-root"][0]
    # Its partitions as the PE's kernel shows them (/dev/loopNpK): this host's loop devices
    # get none (no partition scan here), so each is a loop device of its own over the same file,
    # at the partition's offset, with a node of that name.
    table = json.loads(sh("sfdisk", "--json", images["src-root"]).stdout)["partitiontable"]
    for k, part in enumerate(table["partitions"], 1):
        loop = s.attach(images["src-root"], offset=part["start"] * 512,
                        size=part["size"] * 512)
        node = f"{root_disk}p{k}"
        os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(loop).st_rdev)
        s.nodes.append(node)
    root_part = root_disk + "p2"
    meta_file = os.path.join(s.work, "meta.img")
    with open(meta_file, "wb") as f:
        f.truncate(1 << 20)

    # The PE's network as the takeover sees it: the target's service NIC, not yet renamed.
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "link", "add", "eth1", "address", TARGET_MAC, "type", "veth", "peer",
       "name", "eth1-peer")
    sh("ip", "-n", NS, "link", "set", "eth1", "up")
    port = t.free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(s.work, "pe-agent.log"), "w")
    s.agent = subprocess.Popen(
        ["ip", "netns", "exec", NS, t.binary("pe-agent"), "--listen", endpoint,
         "--volumes", f"src-root:{disks['src-root'][1]},src-data:{disks['src-data'][1]}",
         "--meta", meta_file, "--disk", f"src-root={root_disk}",
         "--disk", f"src-data={disks['src-data'][0]}",
         "--newroot", os.path.join(s.work, "newroot"),
         "--takeover-file", os.path.join(s.work, "takeover")],
        stdout=log, stderr=subprocess.STDOUT)
    # The plan's target config (${CDP_LAB_DIR}/target.yaml): only the pe-agent's endpoint and
    # disks matter to a takeover plan.
    os.environ["CDP_LAB_DIR"] = s.work
    with open(os.path.join(s.work, "target.yaml"), "w") as f:
        f.write(f"name: cdp-pe-fmt\npe: {{kernel: {meta_file}, initrd: {meta_file}}}\n"
                f"qmp_socket: {s.work}/target.qmp\nreplication_endpoint: {endpoint}\n"
                f"service_nic: {{mode: user, mac: \"{TARGET_MAC}\"}}\ndisks:\n" +
                "".join(f"  - {{volume: {v}, path: {s.work}/{v}.qcow2, size: {size}}}\n"
                        for v, (_, size) in disks.items()))

    # The lab source's initramfs has no virtio (as VMware guests' host-only images): the lab's
    # cutover test prepares it in the PE (prepare-boot). Here the subject is the network, so the
    # copy's initramfs is declared to carry the virtio drivers the way an operator declares an
    # initramfs the pe-agent cannot list (docs/pe-agent.md §5: INITRAMFS.modules).
    kver = meta["kernel_version"]
    # And the agent protecting it, as `lab up` installs it (dpkg -i, systemctl enable).
    with open(os.path.join(labtest.REPO, "deploy", "systemd", "cdp-agent@.service")) as f:
        unit = f.read()
    s.edit_root(root_part, {"/lib/systemd/system/cdp-agent@.service": unit}, links={
        "/etc/systemd/system/multi-user.target.wants/cdp-agent@lab.service":
            "/lib/systemd/system/cdp-agent@.service"})
    s.edit_root(root_part, {f"/boot/initrd.img-{kver}.modules":
                            "".join(f"{m}.ko\n" for m in sorted(rs.initramfs_modules(image_dir)) +
                                    ["virtio_blk", "virtio_pci", "virtio_net", "virtio_scsi"])})
    interfaces = None
    for name, (files, changed) in FORMATS.items():
        if interfaces is None:  # the source's own /etc/network/interfaces, for the others
            mnt = os.path.join(s.work, "edit")
            os.makedirs(mnt, exist_ok=True)
            sh("mount", "-o", "ro", root_part, mnt)
            s.mounted.append(mnt)
            with open(mnt + "/etc/network/interfaces") as f:
                interfaces = f.read()
            sh("umount", mnt)
            s.mounted.remove(mnt)
            assert "ens192" in interfaces and "192.0.2.10" in interfaces, interfaces
        previous = {p: None for other, (fs, _) in FORMATS.items() if other != name for p in fs}
        s.edit_root(root_part, {**previous, **files, "/etc/network/interfaces":
                                interfaces if name == "ifupdown" else LOOPBACK_ONLY})
        before = {v: digest(f) for v, f in images.items()}
        deadline = time.time() + 60
        while True:
            rc, plan = takeover_plan()
            # The pe-agent may still be starting (not pe-ready yet).
            if rc == 0 or time.time() > deadline or "not ready" not in plan.get("error", ""):
                break
            time.sleep(1)
        whats = {c["file"]: c["what"] for c in plan["changes"]}
        t.log(f"{name}: ok={plan['ok']}, {len(whats)} changes planned: {sorted(whats)}")
        assert rc == 0 and plan["ok"], f"{name}: the takeover dry run refused: {plan['error']}"
        assert whats == {**COMMON, **changed}, f"{name}: planned {whats}"
        assert {v: digest(f) for v, f in images.items()} == before, \
            f"{name}: the dry run wrote the disks"

    # A bond the takeover cannot map: refused with the file and line, nothing touched.
    s.edit_root(root_part, {"/etc/network/interfaces": LOOPBACK_ONLY +
                            "\nauto bond0\niface bond0 inet static\n    address 192.0.2.10/24\n"
                            "    bond-slaves ens192 ens224\n    bond-mode active-backup\n",
                            **{p: None for fs, _ in FORMATS.values() for p in fs}})
    before = {v: digest(f) for v, f in images.items()}
    rc, plan = takeover_plan()
    t.log(f"bond: rc={rc} error: {plan['error']}")
    assert rc == 1 and not plan["ok"], plan
    assert "/etc/network/interfaces:" in plan["error"] and "bond0" in plan["error"], plan["error"]
    assert {v: digest(f) for v, f in images.items()} == before, "the refused plan wrote"


if __name__ == "__main__":
    scene = Scene(tempfile.mkdtemp(prefix="cdp-pe-fmt-", dir="/var/tmp"))
    t.guarded(lambda: body(scene), scene.close)
