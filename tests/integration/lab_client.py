"""A client of the lab's test service, run inside the cdp-client namespace:

  python3 lab_client.py HOST PORT OUT_FILE [PERIOD_S [TIMEOUT_S]]

Sends `PUT n` (n = 1, 2, ...) every PERIOD_S (default 0.02 s) and appends one line per
acknowledged n to OUT_FILE: "n time_ns". A request that fails or gets no `OK n` within
TIMEOUT_S (default 1 s) is not acknowledged (its n may or may not have been committed); the client reconnects and goes on
with n + 1. Stops cleanly on SIGTERM. The outage a client sees is the largest gap between two
consecutive acknowledgements.
"""
import signal
import socket
import sys
import time

host, port, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
period = float(sys.argv[4]) if len(sys.argv) > 4 else 0.02
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
out = open(out_path, "a", buffering=1)
sock, buf, n = None, b"", 0
next_at = time.monotonic()
while not stop:
    n += 1
    try:
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout)
            buf = b""
        sock.sendall(f"PUT {n}\n".encode())
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("closed")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        if line.decode().strip() == f"OK {n}":
            out.write(f"{n} {time.time_ns()}\n")
    except OSError:
        if sock is not None:
            sock.close()
        sock = None
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    else:
        next_at = time.monotonic()
out.close()
