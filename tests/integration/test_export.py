#!/usr/bin/env python3
"""`cdpctl export --volume NAME --at TIME|LSN --nbd unix:PATH|tcp:HOST:PORT` (docs/restore.md,
section 5): a point in time served read-only over NBD by real clients.

Three steps of known content, a flush point after each. The export of the middle point equals
that step's copy of the source (`qemu-img compare` over a unix socket, `nbdcopy` + `cmp` over
TCP) while the source keeps changing; a write through the export is refused and changes
nothing; SIGTERM stops it with exit 0 and removes its socket. Bad input: an unparsable --nbd, a
busy socket path, an unknown volume and an LSN never journaled each end the command with a
worded error and no socket left behind."""
import json
import os
import signal
import subprocess
import time

import cdptest as t


def points(s):
    return json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)


def start_export(s, at, nbd):
    p = subprocess.Popen([t.binary("cdpctl"), "--server", s.server, "export", "--volume",
                          s.volume, "--at", str(at), "--nbd", nbd],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith(f"exporting volume {s.volume} at LSN "), (line, p.stderr.read())
    return p, line


def stop_export(p):
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, (p.returncode, out, err)
    assert out.endswith(f"export of volume vol0 stopped\n"), out


def test(s):
    t.require_tools("qemu-io", "qemu-img", "nbdcopy", "cmp")
    with open(s.source, "r+b") as f:
        f.write(os.urandom(4 << 20))
    s.start_all()
    s.wait_synced()
    expected = []
    for k in range(1, 4):
        s.qemu_io(f"write -P {0x50 + k} {8 * k}M 1M", f"write -P {0x20 + k} 100k 5k", "flush")
        s.wait_synced()
        path = os.path.join(s.dir, f"expected-{k}.raw")
        subprocess.run(["cp", "--sparse=always", s.source, path], check=True)
        expected.append((points(s)[-1], path))
    point, image = expected[1]

    sock = os.path.join(s.dir, "export.sock")
    p, line = start_export(s, point["lsn"], "unix:" + sock)
    try:
        assert f"at LSN {point['lsn']} ({point['time']}, flush) read-only on unix:{sock}" in line, line
        uri = f"nbd+unix:///{s.volume}?socket={sock}"
        s.qemu_io("write -P 0x77 16M 1M", "flush")  # the source moves on; the export does not
        subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, image], check=True,
                       capture_output=True)
        r = subprocess.run(["qemu-io", "-f", "raw", uri, "-c", "write -P 0x66 0 4k"],
                           capture_output=True, text=True)
        # The export says NBD_FLAG_READ_ONLY, so QEMU will not even open it for writing.
        assert r.returncode == 1 and "Could not open image: Permission denied" in r.stderr, r
        subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, image], check=True,
                       capture_output=True)
    finally:
        stop_export(p)
    assert not os.path.exists(sock), "the export left its socket behind"

    port = t.free_port()
    p, line = start_export(s, expected[0][0]["time"], f"tcp:127.0.0.1:{port}")
    try:
        copy = os.path.join(s.dir, "copy.raw")
        subprocess.run(["nbdcopy", f"nbd://127.0.0.1:{port}/{s.volume}", copy], check=True,
                       timeout=300)
        r = subprocess.run(["cmp", copy, expected[0][1]], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        stop_export(p)
    t.log(f"export: LSN {point['lsn']} over unix and LSN {expected[0][0]['lsn']} over TCP "
          "equal their recorded images")

    def refused(args, code, expect):
        r = s.cdpctl("export", "--volume", args.get("volume", s.volume), "--at",
                     str(args.get("at", point["lsn"])), "--nbd", args["nbd"], check=False,
                     timeout=60)
        assert r.returncode == code and expect in r.stderr, (args, r.returncode, r.stderr)
        return r.stderr.strip()

    refused({"nbd": "udp:1.2.3.4"}, 2, "udp:1.2.3.4")
    busy = os.path.join(s.dir, "busy")
    with open(busy, "w") as f:
        f.write("not a socket")
    refused({"nbd": "unix:" + busy}, 1, "cdpctl: export: --nbd unix:" + busy)
    gone = os.path.join(s.dir, "gone.sock")
    refused({"nbd": "unix:" + gone, "volume": "nope"}, 1, "no volume 'nope'")
    durable = s.status()["durable_lsn"]
    msg = refused({"nbd": "unix:" + gone, "at": durable + 5}, 1,
                  f"LSN {durable + 5} was never journaled")
    assert not os.path.exists(gone)
    with open(busy) as f:
        assert f.read() == "not a socket"
    t.log(f"bad input refused, e.g. {msg}")


t.run(test, size_mib=64)
