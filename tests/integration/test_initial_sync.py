#!/usr/bin/env python3
"""Initial full sync of a device that already holds data (with holes and zero-filled ranges),
while a client writes through the export at the same time: the replica converges to the
source byte for byte, and zero ranges are skipped (far fewer bytes sent than the volume)."""
import os
import random

import cdptest as t

M = 1 << 20


def test(s):
    t.require_tools("qemu-io", "nbdcopy", "cmp")
    rng = random.Random(42)
    # 512 MiB volume: 96 MiB of random data in 1-8 MiB extents, 32 MiB of written zeroes,
    # the rest holes.
    with open(s.source, "r+b") as f:
        placed = 0
        while placed < 96 * M:
            off = rng.randrange(0, 500) * M
            n = rng.randrange(1, 9) * M
            f.seek(off)
            f.write(os.urandom(n))
            placed += n
        f.seek(480 * M)
        f.write(b"\0" * (32 * M))
    s.start_all()
    # Clients write while the full sync runs, overlapping synced and unsynced regions.
    rnd = s.random_file(64)
    copy = s.nbdcopy(rnd, background=True)
    s.qemu_io("write -P 0x21 200M 8M", "write -P 0x22 450M 4M", "discard 100M 16M",
              "write -z 300M 8M", "flush")
    assert copy.wait(600) == 0
    s.wait_synced()
    s.assert_identical()
    st = s.status()
    t.log(f"bytes sent for a 512 MiB volume: {st['bytes_received'] >> 20} MiB")
    assert st["initial_sync_done"], st
    assert st["bytes_received"] < 300 * M, f"zero ranges were not skipped: {st}"


t.run(test, size_mib=512)
