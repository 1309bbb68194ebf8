#!/usr/bin/env python3
"""One writer per volume (docs/wire-protocol.md, "One writer per volume"; issue 15, item 2).

The protected agent (sync mode) writes the volume. A second cdp-agent started for the same volume
on another device, as an operator might by mistake, is refused by the journal-server: it says so,
journals nothing, and the replica stays the first device's. A copy of the writer's state dir (a
cloned source) is refused while the writer runs. Restarted with --take-over, the second agent
becomes the writer: the first is fenced (its sync-mode writes fail instead of being acked, and
its log says why), and the replica becomes the second device, byte for byte.
"""
import os
import shutil
import subprocess

import cdptest as t


def agent_log(s, name):
    with open(os.path.join(s.dir, name), errors="replace") as f:
        return f.read()


def start_other_agent(s, name, device, state_dir, *extra):
    sock = os.path.join(s.dir, f"{name}.sock")
    s.procs[name] = t.Proc(name, [
        t.binary("cdp-agent"), "--server", s.server, "--volume", s.volume, "--device", device,
        "--nbd", "unix:" + sock, "--state-dir", state_dir] + list(extra),
        os.path.join(s.dir, f"{name}.log"))
    return f"nbd+unix:///{s.volume}?socket={sock}"


def test(s):
    t.require_tools("qemu-io", "cmp")
    s.start_all()
    s.qemu_io("write -P 0x11 0 1M", "flush")
    s.wait_synced()
    writer = s.status()
    assert writer["writer_epoch"] == 1, writer
    first_identity = writer["writer_identity"]

    t.log("a second agent for the same volume, on another device, with its own state dir")
    other_dev = os.path.join(s.dir, "other.img")
    with open(other_dev, "wb") as f:
        f.truncate(os.path.getsize(s.source))
    other_state = os.path.join(s.dir, "other-state")
    other_uri = start_other_agent(s, "second", other_dev, other_state)
    s.wait_for(lambda: "FENCED" in agent_log(s, "second.log"), 30, "the second agent's refusal")
    log = agent_log(s, "second.log")
    assert ("this agent holds writer epoch 0 (none: a new or emptied state dir), but the "
            f"volume's writer is epoch 1, granted to {first_identity}") in log, log
    assert "restart it with --take-over" in log, log
    t.qemu_io(other_uri, "write -P 0x22 0 2M", "flush")  # async: its own device, not journaled
    s.qemu_io("write -P 0x33 4M 1M", "flush")
    s.wait_synced()
    s.assert_identical()  # the replica is the first device, none of the second's writes
    assert s.status()["writer_identity"] == first_identity

    t.log("a copy of the writer's state dir (a cloned source) while the writer runs")
    clone_state = os.path.join(s.dir, "clone-state")
    shutil.copytree(os.path.join(s.dir, "agent-state"), clone_state,
                    ignore=shutil.ignore_patterns("lock"))
    clone_dev = os.path.join(s.dir, "clone.img")
    shutil.copyfile(s.source, clone_dev)
    start_other_agent(s, "clone", clone_dev, clone_state)
    s.wait_for(lambda: "two agents share one state dir" in agent_log(s, "clone.log"), 30,
               "the clone's refusal")
    s.qemu_io("write -P 0x44 6M 1M", "flush")  # the writer goes on, acked (sync mode)
    s.procs.pop("clone").kill9()
    s.procs.pop("second").term()

    t.log("the second agent restarted with --take-over")
    start_other_agent(s, "second", other_dev, other_state, "--take-over")
    s.wait_for(lambda: s.status()["writer_epoch"] >= 2, 30, "the take-over")
    s.wait_for(lambda: "FENCED" in agent_log(s, "cdp-agent.log"), 30, "the first agent's fence")
    assert "this agent is fenced" in agent_log(s, "cdp-agent.log")
    # The fenced agent's sync-mode writes cannot become durable: the client gets an error.
    out = s.qemu_io("write -P 0x55 8M 64k", "flush", check=False)
    assert "error" in out.lower() or "failed" in out.lower(), out
    t.qemu_io(other_uri, "write -P 0x66 10M 1M", "flush")
    s.wait_synced()
    r = subprocess.run(["cmp", other_dev, s.target], capture_output=True, text=True)
    assert r.returncode == 0, f"the replica is not the new writer's device: {r.stdout}{r.stderr}"
    st = s.status()
    assert st["writer_epoch"] == 2 and st["writer_identity"] != first_identity, st
    t.log(f"writer epoch {st['writer_epoch']}: replica == the new writer's device")


t.run(test, size_mib=32, ack="sync")
