#!/usr/bin/env python3
"""qemu-io through the agent's export (overlapping, FUA, unaligned writes, discards,
write-zeroes, flushes) and nbdcopy of a random 256 MiB file; then wait-synced and the target
image equals the source device byte for byte."""
import cdptest as t


def test(s):
    t.require_tools("qemu-io", "nbdcopy", "cmp")
    s.start_all()
    M = 1 << 20
    base = 300 * M  # past the nbdcopy region
    s.qemu_io(
        f"write -P 0x11 {base} 1M",
        f"write -P 0x22 {base + 512 * 1024} 1M",          # overlaps the first
        f"write -f -P 0x33 {base + 768 * 1024} 4k",        # FUA
        "flush",
        f"write -P 0x44 {base + 4 * M} 4M",
        f"discard {base + 5 * M} 1M",                       # TRIM inside written data
        f"write -z {base + 6 * M} 512k",                    # WRITE_ZEROES over data
        f"write -P 0x66 {base + 9 * M + 1} 1000",           # unaligned, byte granular
        f"write -f -z {base + 10 * M} 64k",                 # FUA write-zeroes
        "flush",
        f"read -P 0x11 {base} 512k",
        f"read -P 0x22 {base + 512 * 1024} 256k",
        f"read -P 0x33 {base + 768 * 1024} 4k",
        f"read -P 0x00 {base + 5 * M} 1M",
        f"read -P 0x00 {base + 6 * M} 512k",
        f"read -P 0x66 {base + 9 * M + 1} 1000",
    )
    rnd = s.random_file(256)
    t.log("nbdcopy 256 MiB into the export")
    s.nbdcopy(rnd)
    s.wait_synced()
    s.assert_identical()
    # The source really holds what the clients wrote.
    with open(rnd, "rb") as a, open(s.source, "rb") as b:
        assert a.read() == b.read(256 * M), "source device does not hold the nbdcopy data"
    st = s.status()
    assert st["applied_lsn"] == st["captured_lsn"] == st["durable_lsn"], st
    assert st["bytes_received"] >= 256 * M, st
    t.log(f"status: {st}")


t.run(test)
