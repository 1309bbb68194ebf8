"""A ZeroMQ peer written from the ZMTP 3.0 specification (rfc.zeromq.org/spec/23, NULL security),
for tests that must do what no cdp client does: announce a routing id of their choosing, stop
reading, or send frames libzmq would not. It speaks to a ROUTER as a DEALER would, and encodes
the few cdp.v1 messages the tests need by hand (no protobuf module is needed).

Every RawPeer answers the server's heartbeat PINGs on a thread of its own, so an idle peer stays
connected; close() (or the context manager) closes its TCP connection.
"""
import queue
import re
import socket
import struct
import threading

# --- cdp.v1 messages (proto/cdp.proto), encoded by hand ------------------------------------------

ROLE_AGENT, ROLE_REPLICATOR, ROLE_CONTROL = 1, 2, 3


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, value):
    """A field of a message: an int is a varint, bytes/str are length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def header(body_number, body=b""):
    """A cdp.v1.Header whose oneof body is field `body_number` holding the encoded `body`."""
    return _field(body_number, body)


def hello(role, identity="zmtp_peer", volume="", volume_size=0):
    body = _field(1, 1) + _field(2, 1) + _field(4, role) + _field(5, identity)
    if volume:
        body += _field(6, volume)
    if volume_size:
        body += _field(7, volume_size)
    return header(1, body)


STATUS_REQUEST = header(8)      # journal-server: StatusRequest
PE_STATUS_REQUEST = header(13)  # pe-agent: PeStatusRequest
UNEXPECTED = header(2)          # a HelloReply, which no server expects from a client


def _fields(data):
    """(number, value) of each field of an encoded message: an int or bytes."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(data, i)
        elif kind == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif kind == 1:
            value, i = data[i:i + 8], i + 8
        elif kind == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {kind} in {data!r}")
        yield number, value


def _read_varint(data, i):
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def body_of(header_bytes):
    """(body field number, body bytes) of an encoded cdp.v1.Header."""
    for number, value in _fields(header_bytes):
        return number, value
    return 0, b""


def error_text(header_bytes):
    """The message of an Error header (body 10), or None when it is not an Error."""
    number, body = body_of(header_bytes)
    if number != 10:
        return None
    for n, v in _fields(body):
        if n == 2:
            return v.decode(errors="replace")
    return ""


def string_field(body, number):
    for n, v in _fields(body):
        if n == number:
            return v.decode(errors="replace")
    return ""


def int_field(body, number):
    """A varint field (an int, a bool, an enum) of an encoded message; 0 when absent."""
    for n, v in _fields(body):
        if n == number and isinstance(v, int):
            return v
    return 0


HEX_ID = re.compile(r"\b00[0-9a-f]{8}\b")  # how the journal-server used to print routing ids


# --- ZMTP 3.0 -------------------------------------------------------------------------------------

def _command(body):
    if len(body) < 256:
        return bytes([0x04, len(body)]) + body
    return bytes([0x06]) + struct.pack(">Q", len(body)) + body


def _frame(data, more):
    flags = 0x01 if more else 0
    if len(data) < 256:
        return bytes([flags, len(data)]) + data
    return bytes([flags | 0x02]) + struct.pack(">Q", len(data)) + data


def _metadata(name, value):
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


class RawPeer:
    """One ZMTP connection to tcp://host:port that says it is a DEALER, announcing `identity`
    as its routing id (empty: let the ROUTER generate one, as every cdp client does)."""

    def __init__(self, port, identity=b"", host="127.0.0.1", read=True):
        self.sock = socket.create_connection((host, port), timeout=10)
        greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00")
                    + b"\x00" + b"\x00" * 31)
        self.sock.sendall(greeting)
        got = self._read_exact(64)
        if got[0] != 0xFF or got[9] != 0x7F:
            raise AssertionError(f"not a ZMTP greeting: {got!r}")
        ready = (b"\x05READY" + _metadata(b"Socket-Type", b"DEALER")
                 + _metadata(b"Identity", identity))
        self.sock.sendall(_command(ready))
        self.messages = queue.Queue()
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, daemon=True) if read else None
        if self._reader:
            self._reader.start()

    def _read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
        return data

    def _read_loop(self):
        parts = []
        try:
            while True:
                flags = self._read_exact(1)[0]
                size = (struct.unpack(">Q", self._read_exact(8))[0] if flags & 0x02
                        else self._read_exact(1)[0])
                data = self._read_exact(size)
                if flags & 0x04:  # a command: READY, PING, ERROR
                    name_len = data[0]
                    name = data[1:1 + name_len]
                    if name == b"PING":
                        context = data[1 + name_len + 2:]
                        with self._lock:
                            self.sock.sendall(_command(b"\x04PONG" + context))
                    continue
                parts.append(data)
                if not flags & 0x01:
                    self.messages.put(parts)
                    parts = []
        except (OSError, ConnectionError, IndexError, struct.error):
            self.closed.set()

    def send(self, *frames):
        with self._lock:
            for i, f in enumerate(frames):
                self.sock.sendall(_frame(f, i + 1 < len(frames)))

    def recv(self, timeout=5.0):
        """The frames of the next message, or None when none came within timeout seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def call(self, header_bytes, timeout=5.0):
        """Sends one header frame and returns the header frame of the reply (or None)."""
        self.send(header_bytes)
        reply = self.recv(timeout)
        return reply[0] if reply else None

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unseeded_routing_ids(count):
    """The first `count` routing ids a libzmq 4.3.4 ROUTER generates in a process that never
    seeded rand(): libzmq's generate_random() is rand() | rand() << 31, and glibc's rand()
    without srand() is seeded with 1. Computed with glibc's own rand() through ctypes."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.srand(1)
    low = libc.rand() & 0xFFFFFFFF
    high = (libc.rand() << 31) & 0xFFFFFFFF
    start = high | low
    return [b"\x00" + struct.pack(">I", (start + i) & 0xFFFFFFFF) for i in range(count)]
