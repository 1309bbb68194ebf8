#!/usr/bin/env python3
"""Issue 15, item 10: a peer must not be able to crash a ROUTER (the journal-server, the pe-agent)
by announcing a routing id that libzmq will generate for someone else.

libzmq 4.3.4 generates the routing id of a peer that announces none as 00 + a 32-bit counter
that starts at rand() -- never seeded, so the same in every process -- and aborts
(socket_base.cpp, add_out_pipe: zmq_assert) when the id it generates is already taken by a peer
that announced it. The journal-server also printed routing ids ("peer 006b8b4568") in the
errors it sends, so a peer could learn the counter too.

For each server the test plays the attacker as well as it can against the real binary:
  1. learn: sends a message the server does not expect and reads ids out of the error reply;
  2. plants "mines": peers that announce the next learned ids and the first 64 ids of an
     unseeded libzmq as their own, and stay connected;
  3. then normal clients connect (what every cdp client does: no id of its own) and ask for
     status, 128 times, so the counter of an unseeded server passes every mine.
The server must still answer and run, a peer announcing an id that libzmq would never generate
goes unanswered (and the log says so), and no log line or error reply carries a routing id. Before the fix the journal-server and the pe-agent abort at
step 3.
"""
import os
import time

import cdptest as t
import zmtp_peer as z

MINES = 64
NORMAL_CLIENTS = 2 * MINES


def learn_ids(port):
    """What a peer learns about routing ids from an error reply: (reply text, ids in it)."""
    with z.RawPeer(port) as p:
        reply = p.call(z.UNEXPECTED)
    text = z.error_text(reply) if reply else None
    assert text is not None, f"no Error reply to an unexpected message: {reply!r}"
    return text, z.HEX_ID.findall(text)


def plant_mines(port, learned):
    ids = []
    for h in learned:
        nxt = (int(h, 16) + 1) & 0xFFFFFFFF
        ids += [b"\x00" + (nxt + i).to_bytes(4, "big") for i in range(4)]
    ids += z.unseeded_routing_ids(MINES)
    mines = []
    for i in dict.fromkeys(ids):  # in order, once each
        mines.append(z.RawPeer(port, identity=i))
    time.sleep(0.5)  # the server's thread attaches them the next time it looks at its socket
    t.log(f"planted {len(mines)} peers announcing ids the server may generate next "
          f"({ids[0].hex()}..)")
    return mines


def normal_clients(port, proc, request, expect_body, check):
    for i in range(NORMAL_CLIENTS):
        with z.RawPeer(port) as p:
            reply = p.call(z.hello(z.ROLE_CONTROL, identity=f"normal-{i}@test"))
            assert reply is not None, (f"normal client {i}: no HelloReply; server "
                                       f"{'running' if proc.alive() else 'DEAD: ' + str(proc.p.returncode)}")
            assert z.body_of(reply)[0] == 2, f"normal client {i}: {z.error_text(reply)!r}"
            reply = p.call(request)
            assert reply is not None, f"normal client {i}: no reply to its request"
            number, body = z.body_of(reply)
            assert number == expect_body, f"normal client {i}: body {number}: {z.error_text(reply)}"
            check(body)
        assert proc.alive(), f"{proc.name} exited with {proc.p.returncode} after client {i}"
    t.log(f"{NORMAL_CLIENTS} normal clients served, {proc.name} still running")


def chosen_ids_are_not_served(port, request):
    """A peer announcing an id libzmq would never generate (not 00 + 4 bytes) is not served.
    (The mines announce ids of libzmq's own form, which a server cannot tell from generated
    ones; they are served, which is harmless once nobody can tell which ids come next.)"""
    with z.RawPeer(port, identity=b"replicator-db01") as p:
        p.send(request)
        got = p.recv(timeout=1.5)
    assert got is None, f"a peer with a routing id of its own was answered: {got!r}"
    t.log("a peer that announced a routing id of its own got no answer")


def no_ids_in_log(path, refused_line):
    with open(path, errors="replace") as f:
        text = f.read()
    leaked = z.HEX_ID.findall(text)
    assert not leaked, f"{path} prints routing ids: {leaked[:5]}"
    assert refused_line in text, f"{path} does not say what it refused:\n{text[-3000:]}"
    line = next(ln for ln in text.splitlines() if refused_line in ln)
    t.log(f"log: {line.strip()}")


REFUSED = "dropped unanswered from peers that chose their own routing id"


def attack(port, proc, request, expect_body, check=lambda body: None, also=lambda: None):
    """Steps 1-3 of the module's comment against the server `proc` listening on `port`, whose
    answer to `request` is body number `expect_body`; then the checks."""
    text, learned = learn_ids(port)
    t.log(f"{proc.name}'s error reply: {text!r}")
    mines = plant_mines(port, learned)
    try:
        normal_clients(port, proc, request, expect_body, check)
        also()
        chosen_ids_are_not_served(port, request)
    finally:
        for m in mines:
            m.close()
    time.sleep(0.2)
    assert proc.alive(), f"{proc.name} exited with {proc.p.returncode}"
    assert not learned, f"the error reply names routing ids {learned}: {text!r}"
    no_ids_in_log(proc.logpath, REFUSED)


def journal_server(s):
    s.start_journal()
    s.wait_for(lambda: s.cdpctl("status", check=False).returncode == 0, 30, "journal-server")

    def real_client():
        r = s.cdpctl("status")
        t.log(f"cdpctl status: {r.stdout.strip().splitlines()[0] if r.stdout.strip() else 'ok'}")
    attack(s.port, s.procs["journal"], z.STATUS_REQUEST, 9, also=real_client)


def pe_agent(s):
    size = 64 << 20
    disk, meta = os.path.join(s.dir, "vol0.img"), os.path.join(s.dir, "meta.img")
    for path, n in ((disk, size), (meta, 4 << 20)):
        with open(path, "wb") as f:
            f.truncate(n)
    port = t.free_port()
    binary = os.path.join(t.BIN, "pe-boot", "pe-agent")
    proc = t.Proc("pe-agent", [binary, "--listen", f"tcp://127.0.0.1:{port}", "--volumes",
                               f"vol0:{size}", "--meta", meta, "--disk", f"vol0={disk}"],
                  os.path.join(s.dir, "pe-agent.log"))
    s.procs["pe-agent"] = proc

    def ready():
        try:
            with z.RawPeer(port) as p:
                return p.call(z.hello(z.ROLE_CONTROL, "probe@test"), timeout=1) is not None
        except OSError:
            return False
    s.wait_for(ready, 30, "pe-agent")

    def pe_ready(body):
        assert z.int_field(body, 9) == 1, body  # PeStatusReply.pe_state == PE_STATE_READY
    attack(port, proc, z.PE_STATUS_REQUEST, 14, check=pe_ready)


def test(s):
    journal_server(s)
    pe_agent(s)


t.run(test)
