#!/usr/bin/env python3
"""Bad input at the edges an operator touches: each gets one clear line and a non-zero exit
(or an NBD error reply), and the daemons keep serving everyone else."""
import os
import socket
import subprocess

import cdptest as t


def run(args, timeout=30):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip()


def expect_fail(args, *needles):
    rc, out = run(args)
    assert rc != 0, f"{args} should fail, got rc 0: {out}"
    for n in needles:
        assert n in out, f"{args}: expected '{n}' in: {out}"
    t.log(f"ok rc={rc}: {out.splitlines()[-1]}")


def test(s):
    t.require_tools("qemu-io", "nbdinfo")
    js, agent, rep, ctl = (t.binary(n) for n in ("journal-server", "cdp-agent", "replicator",
                                                 "cdpctl"))
    s.start_all()

    # Busy port, unwritable data dir, bad endpoint.
    expect_fail([js, "--data-dir", os.path.join(s.dir, "j2"), "--listen", s.server],
                "address already in use")
    blocker = os.path.join(s.dir, "a-file")
    open(blocker, "w").close()
    expect_fail([js, "--data-dir", os.path.join(blocker, "sub"), "--listen",
                 f"tcp://127.0.0.1:{t.free_port()}"], "data dir")
    expect_fail([js, "--data-dir", s.dir, "--listen", "http://x"], "expected tcp://HOST:PORT")
    expect_fail([js], "required")

    # Agent: missing device, bad --nbd, bad --ack, bad volume name, busy NBD socket path.
    common = ["--server", s.server, "--state-dir", os.path.join(s.dir, "st2")]
    expect_fail([agent, *common, "--volume", "v2", "--device", "/nonexistent/disk",
                 "--nbd", "unix:" + os.path.join(s.dir, "x.sock")], "/nonexistent/disk")
    expect_fail([agent, *common, "--volume", "v2", "--device", s.source, "--nbd", "udp:1"],
                "--nbd")
    expect_fail([agent, *common, "--volume", "v2", "--device", s.source, "--nbd",
                 "unix:" + os.path.join(s.dir, "y.sock"), "--ack", "maybe"], "--ack")
    expect_fail([agent, *common, "--volume", "bad name!", "--device", s.source, "--nbd",
                 "unix:" + os.path.join(s.dir, "z.sock")], "bad volume name")
    expect_fail([agent, *common, "--volume", "v2", "--device", s.dir, "--nbd",
                 "unix:" + os.path.join(s.dir, "w.sock")], "not a regular file or block device")
    # Issue 15, item 6: a buffer too small for a 1 MiB sync chunk used to spin forever, silently.
    rc, out = run([agent, *common, "--volume", "v2", "--device", s.source, "--nbd",
                   "unix:" + os.path.join(s.dir, "b.sock"), "--buffer-mib", "1"])
    assert rc == 2 and out.strip() == (
        "cdp-agent: --buffer-mib 1 is too small for NBD mode: a sync chunk of 1 MiB and its "
        "record header must fit in it; use at least 2 (default 32)"), (rc, out)
    rc, out = run([agent, *common, "--volume", "v2", "--device", s.source, "--trace",
                   "--buffer-mib", "4"])
    assert rc == 2 and "--buffer-mib 4 is too small for trace mode" in out and \
        "use at least 8" in out, (rc, out)

    # A second agent on the live agent's NBD socket, and an unwritable state dir.
    expect_fail([agent, *common, "--volume", "v2", "--device", s.source, "--nbd",
                 "unix:" + s.sock], s.sock)
    expect_fail([agent, "--server", s.server, "--state-dir", os.path.join(blocker, "st"),
                 "--volume", "v2", "--device", s.source, "--nbd",
                 "unix:" + os.path.join(s.dir, "v.sock")], "state dir")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    expect_fail([agent, *common, "--volume", "v2", "--device", s.source, "--nbd",
                 f"tcp:127.0.0.1:{busy.getsockname()[1]}"], "--nbd")
    busy.close()

    # cdpctl: unknown volume, no server, bad usage.
    rc, out = run([ctl, "--server", s.server, "wait-synced", "--volume", "nope", "--timeout",
                   "2"])
    assert rc == 3 and "unknown volume 'nope' (known: vol0)" in out, (rc, out)
    expect_fail([ctl, "--server", f"tcp://127.0.0.1:{t.free_port()}", "status"],
                "does not answer")
    expect_fail([ctl, "--server", s.server, "frobnicate"], "unknown command")
    expect_fail([ctl, "status"], "--server")

    # Replicator: a target smaller than the volume.
    small = os.path.join(s.dir, "small.img")
    with open(small, "wb") as f:
        f.truncate(1 << 20)
    expect_fail([rep, "--server", s.server, "--volume", s.volume, "--target", small,
                 "--state-dir", os.path.join(s.dir, "rs2")], "has 1048576 bytes")

    # Replicator: a cursor file with a field of the wrong type is refused with a worded error,
    # not an exception.
    rs3 = os.path.join(s.dir, "rs3")
    os.makedirs(rs3)
    with open(os.path.join(rs3, f"replica-{s.volume}.json"), "w") as f:
        f.write('{"applied_lsn": "twelve", "format": 1, "target": "%s"}\n' %
                os.path.join(s.dir, "t3.img"))
    expect_fail([rep, "--server", s.server, "--volume", s.volume, "--target",
                 os.path.join(s.dir, "t3.img"), "--state-dir", rs3], "does not parse")

    # NBD: out-of-range and over-maximum requests get errors; the export keeps serving.
    size = os.path.getsize(s.source)
    out = s.qemu_io(f"read {size - 4096} 8192", check=False)
    assert "error" in out.lower() or "invalid" in out.lower(), out
    out = s.qemu_io("write -P 0x42 0 64k", "read -P 0x42 0 64k")
    t.log("export still serves after bad requests")
    rc, out = run(["nbdinfo", f"nbd+unix:///no-such-export?socket={s.sock}"])
    assert rc != 0 and "no-such-export" in out, out
    rc, out = run(["nbdinfo", s.uri])
    assert rc == 0 and str(size) in out, out

    # A peer that speaks garbage on the journal port does not hurt the server.
    with socket.create_connection(("127.0.0.1", s.port)) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
    s.wait_synced(timeout=120)
    s.assert_identical()


t.run(test, size_mib=64)
