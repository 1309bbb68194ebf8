"""The data-path benchmark's NBD load generator: a python NBD client (fixed newstyle,
NBD_OPT_GO, simple replies) writing random data at a paced rate, with marker blocks that give
the replica's lag without LSNs. Standard library only."""
import bisect
import os
import random
import socket
import struct
import threading
import time

from benchlib import MB, MiB, with_suppress

# --- NBD wire constants (docs: NBD proto.md; nbd/include/cdp/nbd/nbd_protocol.h) ------
NBD_MAGIC = 0x4E42444D41474943           # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054            # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
CMD_WRITE = 1
CMD_DISC = 2


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError(f"NBD server closed the connection ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def nbd_connect(path, export):
    """Fixed-newstyle handshake with NBD_OPT_GO; simple replies. Returns (sock, size, flags)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    magic, opt_magic, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBD_MAGIC or opt_magic != IHAVEOPT or not hflags & FLAG_FIXED_NEWSTYLE:
        raise RuntimeError(f"not a fixed-newstyle NBD server: {magic:#x} {opt_magic:#x} "
                           f"flags {hflags:#x}")
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))
    name = export.encode()
    payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
    size = tflags = None
    block = (1, 4096, 32 * MiB)
    while True:
        rmagic, opt, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
        data = recv_exact(s, rlen) if rlen else b""
        if rmagic != OPT_REPLY_MAGIC or opt != OPT_GO:
            raise RuntimeError(f"bad option reply: magic {rmagic:#x} option {opt}")
        if rtype & 0x80000000:
            raise RuntimeError(f"NBD_OPT_GO refused ({rtype:#x}): {data.decode(errors='replace')}")
        if rtype == REP_INFO:
            (itype,) = struct.unpack(">H", data[:2])
            if itype == INFO_EXPORT:
                size, tflags = struct.unpack(">QH", data[2:12])
            elif itype == INFO_BLOCK_SIZE:
                block = struct.unpack(">III", data[2:14])
        elif rtype == REP_ACK:
            break
    if size is None:
        raise RuntimeError("NBD_OPT_GO acked without NBD_INFO_EXPORT")
    return s, size, tflags, block


MARKER_MAGIC = b"CDPBMARK"


class LoadGen:
    """One NBD connection; WRITE requests at random 4 KiB-aligned offsets, random lengths
    4..64 KiB (multiples of 4 KiB), paced to `rate` bytes/s by a byte budget, at most
    `depth` requests in flight. A reader thread matches simple replies.

    Replica probe: every `marker_period` s one of `n_markers` 4 KiB blocks spread over the
    volume (round robin, never touched by the random writes) is written with a timestamp.
    replica_lag() reads those blocks from the replica image and returns the age of the oldest
    marker write the replica does not have yet (0 if it has all). It does not depend on LSNs,
    so it stays valid when the agent falls back to its dirty bitmap."""

    def __init__(self, path, export, rate, seconds, depth=16, seed=1, n_markers=16,
                 marker_period=0.05):
        self.s, self.size, _, self.block = nbd_connect(path, export)
        self.rate, self.seconds, self.depth = rate, seconds, depth
        self.rng = random.Random(seed)
        self.pool = memoryview(os.urandom(16 * MiB))  # incompressible payload source
        self.sent_t = []      # monotonic send time per request (index = handle)
        self.done_t = []      # completion time per request
        self.errors = 0
        self.slots = threading.Semaphore(depth)
        self.reader_exc = None
        self.marker_period = marker_period
        stride = (self.size // n_markers) // 4096 * 4096
        self.marker_off = [i * stride + 4096 * 7 for i in range(n_markers)]
        self.marker_hist = [[] for _ in range(n_markers)]  # stamps written, per marker block
        self.markers = 0

    def _reader(self):
        try:
            while not self.closing:
                hdr = recv_exact(self.s, 16)
                magic, err, handle = struct.unpack(">IIQ", hdr)
                if magic != SIMPLE_REPLY_MAGIC:
                    raise RuntimeError(f"reply magic {magic:#x} is not the simple-reply magic")
                if err:
                    self.errors += 1
                self.done_t[handle] = time.monotonic()
                self.slots.release()
        except Exception as e:  # noqa: BLE001 - surfaced by run() unless we are closing
            if not self.closing:
                self.reader_exc = e
            for _ in range(self.depth):
                self.slots.release()

    def _hits_marker(self, offset, length):
        return any(m < offset + length and offset < m + 4096 for m in self.marker_off)

    def replica_lag(self, fd, now):
        """Age (s) of the oldest marker write missing from the replica open on fd."""
        oldest = None
        for i, off in enumerate(self.marker_off):
            hist = self.marker_hist[i]
            if not hist:
                continue
            b = os.pread(fd, 24, off)
            stamp = -1.0
            if len(b) == 24 and b[:8] == MARKER_MAGIC:
                stamp = struct.unpack("<dQ", b[8:])[0]
            k = bisect.bisect_right(hist, stamp)  # first write newer than the replica's copy
            if k < len(hist) and (oldest is None or hist[k] < oldest):
                oldest = hist[k]
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def _send(self, n, offset, data):
        self.sent_t[n] = time.monotonic()
        self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, n, offset, len(data)))
        self.s.sendall(data)

    def run(self):
        maxlen_blocks = 16
        self.closing = False
        reader = threading.Thread(target=self._reader, daemon=True)
        # Pre-size the per-request arrays generously so the reader rarely races an extend.
        cap = int(self.rate * self.seconds / (4096 * 2)) + 1024
        self.sent_t = [0.0] * cap
        self.done_t = [0.0] * cap
        reader.start()
        pool_len = len(self.pool)
        t0 = time.monotonic()
        end = t0 + self.seconds
        next_marker = t0
        sent_bytes = 0
        n = 0
        while True:
            now = time.monotonic()
            if now >= end or self.reader_exc:
                break
            marker = now >= next_marker
            if not marker:
                due = min(t0 + sent_bytes / self.rate, next_marker)
                if due > now:
                    time.sleep(due - now)
                    continue
            if not self.slots.acquire(timeout=60):
                raise RuntimeError("load generator: no NBD reply for 60 s")
            if n >= cap:
                self.sent_t.extend([0.0] * cap)
                self.done_t.extend([0.0] * cap)
                cap *= 2
            if marker:
                i = self.markers % len(self.marker_off)
                stamp = time.monotonic()
                # Recorded before the write leaves, so the replica never holds an unknown stamp.
                self.marker_hist[i].append(stamp)
                data = (MARKER_MAGIC + struct.pack("<dQ", stamp, self.markers)).ljust(4096, b"\0")
                self._send(n, self.marker_off[i], data)
                self.markers += 1
                next_marker += self.marker_period
                length = 4096
            else:
                length = 4096 * self.rng.randint(1, maxlen_blocks)
                while True:
                    offset = 4096 * self.rng.randrange(0, (self.size - length) // 4096 + 1)
                    if not self._hits_marker(offset, length):
                        break
                src = self.rng.randrange(0, pool_len - length + 1) & ~4095
                self._send(n, offset, self.pool[src:src + length])
            sent_bytes += length
            n += 1
        t_send_end = time.monotonic()
        # Every slot back = every reply received.
        for _ in range(self.depth):
            if not self.slots.acquire(timeout=120):
                raise RuntimeError("load generator: replies missing 120 s after the last write")
        if self.reader_exc:
            raise RuntimeError(f"load generator: {self.reader_exc}")
        t_done = time.monotonic()
        self.closing = True
        self.s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        with_suppress(self.s.shutdown, socket.SHUT_RDWR)
        reader.join(10)
        self.s.close()
        self.n = n
        del self.sent_t[n:], self.done_t[n:]
        return {
            "t0": t0, "t_send_end": t_send_end, "t_done": t_done, "requests": n,
            "bytes": sent_bytes, "errors": self.errors, "markers": self.markers,
            "mb_s": sent_bytes / (t_done - t0) / MB,
            "write_latency_ms": [(d - s) * 1000 for s, d in zip(self.sent_t, self.done_t)],
        }
