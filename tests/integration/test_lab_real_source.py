#!/usr/bin/env python3
"""The lab's real source server (deploy/lab/build-real-source, docs/lab.md).

Builds the image (or reuses the cached one of the same inputs); its initramfs has vmw_pvscsi and
vmxnet3 and no virtio module. Boots it under QEMU (TCG) on VMware's virtual hardware (PVSCSI
disks, two vmxnet3 NICs) inside network namespaces made here: a lab namespace with a service
bridge (192.0.2.1/24) and a replication bridge (198.51.100.1/24), a client namespace
(192.0.2.100). Then, from the client: PostgreSQL answers SELECT 1 as role cdp at 192.0.2.10:5432
and cdp can create a table in its database; the test service at :7000 answers WHO with the VM's
SMBIOS UUID. Over the serial console (deploy/lab/serial-exec): PID 1 is systemd, the NICs are
ens192 (192.0.2.10/24) and ens224 (198.51.100.10/24) driven by vmxnet3, /var/lib/postgresql is
xfs on LVM (vgdata/pgdata), / is ext4 on /dev/sda2 (PVSCSI), fstab by UUID, the running
initramfs has no virtio, no virtio device or module, no sshd; the replication network reaches
198.51.100.1; a file copied in with --put arrives whole. Finally `systemctl poweroff` stops the
VM by itself. Namespaces, QEMU and files are removed even on failure."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import cdptest as t
import real_source as rs

VM_UUID = "5eed0000-0000-4000-8000-0000000000a1"
NS_LAB, NS_CLIENT = f"cdp-rs-{os.getpid()}-lab", f"cdp-rs-{os.getpid()}-cl"
BOOT_TIMEOUT = 900  # seconds; TCG on a shared 2-core host (about 2 minutes when idle)


def sh(*args, ns=None, check=True, timeout=60, **kw):
    if ns:
        args = ("ip", "netns", "exec", ns) + args
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def network_up():
    for ns in (NS_LAB, NS_CLIENT):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for br, addr in (("br-svc", "192.0.2.1/24"), ("br-repl", "198.51.100.1/24")):
        sh("ip", "-n", NS_LAB, "link", "add", br, "type", "bridge")
        sh("ip", "-n", NS_LAB, "addr", "add", addr, "dev", br)
        sh("ip", "-n", NS_LAB, "link", "set", br, "up")
    for tap, br in (("tap-svc", "br-svc"), ("tap-repl", "br-repl")):
        sh("ip", "-n", NS_LAB, "tuntap", "add", "dev", tap, "mode", "tap")
        sh("ip", "-n", NS_LAB, "link", "set", tap, "master", br, "up")
    sh("ip", "-n", NS_LAB, "link", "add", "cl-br", "type", "veth", "peer", "name", "eth0",
       "netns", NS_CLIENT)
    sh("ip", "-n", NS_LAB, "link", "set", "cl-br", "master", "br-svc", "up")
    sh("ip", "-n", NS_CLIENT, "addr", "add", "192.0.2.100/24", "dev", "eth0")
    sh("ip", "-n", NS_CLIENT, "link", "set", "eth0", "up")


def network_down():
    for ns in (NS_CLIENT, NS_LAB):
        if os.path.exists(f"/run/netns/{ns}"):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)


def psql(sql, timeout=20):
    return sh("psql", "-h", rs.SERVICE_IP, "-U", "cdp", "-d", "cdp", "-v", "ON_ERROR_STOP=1",
              "-tAc", sql, ns=NS_CLIENT, check=False, timeout=timeout,
              env=dict(os.environ, PGPASSWORD="cdp", PGCONNECT_TIMEOUT="5"))


def who():
    code = ("import socket\n"
            f"s=socket.create_connection(('{rs.SERVICE_IP}',{rs.SERVICE_PORT}),timeout=5)\n"
            "s.sendall(b'WHO\\n'); b=b''\n"
            "while not b.endswith(b'\\n'):\n"
            "    c=s.recv(100)\n"
            "    if not c: break\n"
            "    b+=c\n"
            "print(b.decode().strip())\n")
    r = sh(sys.executable, "-c", code, ns=NS_CLIENT, check=False, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def wait_for(what, pred, deadline, vm):
    while time.time() < deadline:
        if not vm.alive():
            raise AssertionError(f"QEMU exited while waiting for {what}: {vm.qemu_log()}")
        got = pred()
        if got:
            return got
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; console:\n{vm.console_text()[-3000:]}")


def check_image(image_dir, meta):
    mods = rs.initramfs_modules(image_dir)
    assert {"vmw_pvscsi", "vmxnet3", "sd_mod", "ext4", "xfs", "dm-mod"} <= mods, sorted(mods)
    virtio = sorted(m for m in mods if m.startswith("virtio"))
    assert not virtio, f"the initramfs holds virtio modules: {virtio}"
    for f in ("root.img", "data.img"):
        st = os.stat(os.path.join(image_dir, f))
        assert st.st_size == meta["root_disk" if f == "root.img" else "data_disk"]["size_mib"] << 20
    with open(os.path.join(image_dir, "root.img"), "rb") as f:
        mbr = f.read(512)
        assert mbr[510:512] == b"\x55\xaa", "root.img has no MBR signature"
        assert b"GRUB" in mbr, "root.img's MBR is not GRUB's boot.img"
        f.seek(512)
        assert f.read(8) == b"EFI PART", "root.img has no GPT header"
    t.log(f"image {image_dir}: kernel {meta['kernel_version']}, initramfs {len(mods)} modules "
          f"(vmw_pvscsi, vmxnet3; no virtio)")


def check_inside(vm, meta):
    def out(cmd):
        return vm.run(cmd)[1].strip()

    assert out("cat /proc/1/comm") == "systemd"
    addrs = out("ip -4 -o addr show scope global | awk '{print $2, $4}'").splitlines()
    assert sorted(addrs) == [f"{rs.SERVICE_NIC} {rs.SERVICE_IP}/24",
                             f"{rs.REPLICATION_NIC} {rs.REPLICATION_IP}/24"], addrs
    for nic in (rs.SERVICE_NIC, rs.REPLICATION_NIC):
        assert out(f"basename $(readlink /sys/class/net/{nic}/device/driver)") == "vmxnet3"
    assert out("findmnt -no FSTYPE,SOURCE /var/lib/postgresql").split() == \
        ["xfs", "/dev/mapper/vgdata-pgdata"]
    assert out("lvs --noheadings -o vg_name,lv_name").split() == ["vgdata", "pgdata"]
    assert out("findmnt -no FSTYPE,SOURCE /").split() == ["ext4", "/dev/sda2"]
    assert out("basename $(readlink /sys/block/sda/device/../../../driver)") == "vmw_pvscsi", \
        out("ls -l /sys/block/sda/device/../../../")
    fstab = [line.split()[:3] for line in out("grep -v '^#' /etc/fstab").splitlines() if line]
    assert fstab == [[f"UUID={meta['root_fs_uuid']}", "/", "ext4"],
                     [f"UUID={meta['data_fs_uuid']}", "/var/lib/postgresql", "xfs"]], fstab
    listing = out("lsinitramfs /boot/initrd.img-$(uname -r)")
    assert "/vmw_pvscsi.ko" in listing and "/vmxnet3.ko" in listing
    assert "virtio" not in listing, [x for x in listing.splitlines() if "virtio" in x]
    assert out("grep -c '^MODULES=list$' /etc/initramfs-tools/initramfs.conf") == "1"
    assert out("ls /sys/bus/virtio/devices 2>/dev/null | wc -l; lsmod | grep -c virtio || true") \
        .split() == ["0", "0"]
    assert out("test -e /usr/sbin/sshd && echo sshd || echo none") == "none"
    assert out("hostname; grep -c nameserver /etc/resolv.conf || true").split() == \
        ["cdp-source", "0"]  # nothing of the build host's resolv.conf
    assert out(f"grep -c 'root=UUID={meta['root_fs_uuid']}' /boot/grub/grub.cfg") != "0"
    assert out("systemctl is-active postgresql@15-main cdp-test-service").split() == \
        ["active", "active"]
    assert out("systemctl is-system-running || true") == "running"
    out("ping -c 1 -W 5 198.51.100.1 >/dev/null && echo ok")  # the replication network
    rc, o, e = vm.run("echo to-stdout; echo to-stderr >&2; exit 7", check=False)
    assert (rc, o, e) == (7, "to-stdout\n", "to-stderr\n"), (rc, o, e)
    blob = os.urandom(50000)
    vm.put(blob, "/root/blob", 0o600)
    assert out("sha256sum /root/blob | cut -c1-64; stat -c %a /root/blob").split() == \
        [hashlib.sha256(blob).hexdigest(), "600"]
    t.log("inside: systemd PID 1; ens192/ens224 vmxnet3; / ext4 on sda (vmw_pvscsi); "
          "/var/lib/postgresql xfs on vgdata/pgdata; fstab by UUID; initramfs without virtio; "
          "no sshd; system running; exit status and stderr kept; 50000-byte --put intact")


def test(d):
    t0 = time.time()
    image_dir, meta = rs.build_image(bin_dir=t.BIN, log=lambda line: t.log(f"  {line}"))
    t.log(f"image ready in {time.time() - t0:.1f} s (built {meta['built']} in "
          f"{meta['build_seconds']} s)")
    check_image(image_dir, meta)
    vm = rs.RealSourceVm(image_dir, os.path.join(d, "vm"), VM_UUID, service_tap="tap-svc",
                         replication_tap="tap-repl", netns=NS_LAB)
    try:
        network_up()
        vm.start()
        deadline = vm.started + BOOT_TIMEOUT
        wait_for("PostgreSQL at 192.0.2.10:5432 (SELECT 1 as cdp)",
                 lambda: psql("SELECT 1").stdout.strip() == "1", deadline, vm)
        t_pg = time.time() - vm.started
        r = psql("CREATE TABLE t (n int); INSERT INTO t VALUES (41), (1); SELECT sum(n) FROM t")
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "42", r.stdout + r.stderr
        got = wait_for("the test service's WHO at 192.0.2.10:7000", who, deadline, vm)
        assert got == VM_UUID, f"WHO answered {got!r}, want {VM_UUID}"
        t.log(f"boot: PostgreSQL answered {t_pg:.1f} s after QEMU started (TCG); "
              f"WHO = {got}")
        check_inside(vm, meta)
        assert vm.shutdown(180), "the VM did not power off within 180 s of systemctl poweroff"
        assert "reboot: Power down" in vm.console_text() or vm.proc.returncode == 0
        t.log("systemctl poweroff: QEMU exited by itself")
    except BaseException:
        print("----- console (last 60 lines) -----")
        print("".join(vm.console_text().splitlines(True)[-60:]))
        raise
    finally:
        vm.kill()
        network_down()


def main():
    t.require_tools("qemu-system-x86_64", "qemu-img", "ip", "psql", "debootstrap", "sgdisk",
                    "pvcreate", "mkfs.xfs", "mkfs.ext4", "losetup", "unshare")
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise SystemExit("FAIL: the real source needs root (image build, network namespaces)")
        print("SKIP: the real source needs root")
        sys.exit(77)
    t.run_in_temp_dir(test, "cdp-lab-rs-")


if __name__ == "__main__":
    main()
