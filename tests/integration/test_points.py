#!/usr/bin/env python3
"""`cdpctl points --volume NAME [--json]` (docs/operator-guide.md): the consistency points the
journal holds for a volume. A protected volume gets a `sync` point when its initial sync is done
and a `flush` point for every NBD FLUSH a client sends; the list is oldest first, LSNs and times
strictly increasing, every flush point at the LSN the journal had when that flush was taken,
and the last one equal to the status's last point LSN. An unknown volume is refused with the
volumes the server has."""
import datetime
import json
import os

import cdptest as t


def points(s):
    return json.loads(s.cdpctl("points", "--volume", s.volume, "--json").stdout)


def test(s):
    t.require_tools("qemu-io")
    with open(s.source, "r+b") as f:  # data for the initial sync to send: its point has an LSN
        f.write(os.urandom(1 << 20))
    s.start_all()
    s.wait_synced()
    before = points(s)
    assert [p["origin"] for p in before] == ["sync"], before
    assert before[0]["label"] == "full sync", before

    flush_lsns = []
    for i in range(3):
        s.qemu_io(f"write -P {0x30 + i} {i}M 64k", "flush")
        s.wait_synced()
        flush_lsns.append(s.status()["durable_lsn"])
    after = points(s)
    assert [p["origin"] for p in after] == ["sync", "flush", "flush", "flush"], after
    assert [p["lsn"] for p in after[1:]] == flush_lsns, (after, flush_lsns)
    assert all(p["label"] == "" for p in after[1:]), after
    lsns = [p["lsn"] for p in after]
    times = [datetime.datetime.fromisoformat(p["time"][:26] + "+00:00") for p in after]
    assert lsns == sorted(set(lsns)), lsns
    assert times == sorted(times), times
    assert all(p["time"].endswith("Z") and len(p["time"]) == 30 for p in after), after
    assert after[-1]["lsn"] == s.status()["last_point_lsn"], (after, s.status())

    table = s.cdpctl("points", "--volume", s.volume).stdout
    assert table.splitlines()[-1] == "4 point(s)", table
    assert f"{after[1]['lsn']:<20} {after[1]['time']:<31} flush" in table, table

    r = s.cdpctl("points", "--volume", "nope", check=False)
    assert r.returncode == 1, r
    assert r.stderr.strip() == ("cdpctl: points: journal-server: no volume 'nope' (it has: "
                                f"{s.volume})"), r.stderr
    r = s.cdpctl("points", check=False)
    assert r.returncode == 2 and "points needs --volume NAME" in r.stderr, r
    t.log(f"points: {[(p['lsn'], p['origin']) for p in after]}")


t.run(test, size_mib=64)
