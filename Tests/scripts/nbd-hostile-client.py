#!/usr/bin/python3
"""NBD clients that misbehave on purpose, and a well-behaved one that measures, for the
flow-control and admission tests (Tests/IntegrationTests/HostileClientTests.swift).
Only for Unix sockets the test made itself.

  nbd-hostile-client.py greedy SOCKET COUNT LENGTH HOLD_SECONDS
      handshake, then COUNT pipelined reads of LENGTH bytes at offset 0; never reads a
      reply; holds the connection HOLD_SECONDS, closes it; prints `sent N`
  nbd-hostile-client.py partial SOCKET COUNT LENGTH HOLD_SECONDS
      COUNT connections, each sends the header of a LENGTH-byte write and all of its
      payload but the last byte (as fast as the server reads), holds them HOLD_SECONDS,
      closes them; prints `connections N sent B` (B: bytes the sockets accepted)
  nbd-hostile-client.py flood SOCKET COUNT HOLD_SECONDS
      opens COUNT connections that never answer the handshake, holds them HOLD_SECONDS;
      prints `opened N refused M` (refused: connect failed)
  nbd-hostile-client.py plain-go SOCKET_OR_HOST:PORT
      a client without TLS: NBD_OPT_GO for the default export; prints the reply's type
      in hex and its message, e.g. `reply 0x80000005 this export requires TLS ...`
  nbd-hostile-client.py latency URI SECONDS
      4 KiB reads at random offsets with libnbd for SECONDS; prints
      `reads N errors E p50 X p99 Y max Z` (seconds)
"""
import os
import random
import resource
import socket
import struct
import sys
import time

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513


def handshake(s):
    hello = recv_exact(s, 18)
    assert hello[:8] == NBD_MAGIC and struct.unpack(">Q", hello[8:16])[0] == IHAVEOPT, hello
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(struct.pack(">QII", IHAVEOPT, 1, 0))  # NBD_OPT_EXPORT_NAME, default export
    size, flags = struct.unpack(">QH", recv_exact(s, 10))
    return size


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("server closed the connection")
        b += chunk
    return b


def greedy(path, count, length, hold):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    handshake(s)
    s.setblocking(False)
    pending = b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, i, 0, length) for i in range(count))
    sent = 0
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        if sent < len(pending):
            try:
                sent += s.send(pending[sent:])
            except BlockingIOError:
                pass
        time.sleep(0.05)
    s.close()
    print(f"sent {sent // 28}")


def partial(path, count, length, hold):
    conns = []
    for i in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        handshake(s)
        s.setblocking(False)
        # NBD_CMD_WRITE (1) at offset 0; the payload's last byte never comes.
        data = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, i, 0, length) + bytes(length - 1)
        conns.append([s, memoryview(data), 0])
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        for c in conns:
            if c[2] < len(c[1]):
                try:
                    c[2] += c[0].send(c[1][c[2] : c[2] + (1 << 20)])
                except BlockingIOError:
                    pass
        time.sleep(0.02)
    print(f"connections {len(conns)} sent {sum(c[2] for c in conns)}", flush=True)
    for c in conns:
        c[0].close()


def flood(path, count, hold):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, refused = [], 0
    for _ in range(count):
        # A blocking connect waits for the server to accept (with a timeout, Python's
        # non-blocking connect fails at once with EAGAIN while the backlog is full).
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    print(f"opened {len(held)} refused {refused}", flush=True)
    time.sleep(hold)
    for s in held:
        s.close()


def plain_go(where):
    if where.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(where)
    else:
        host, port = where.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
    hello = recv_exact(s, 18)
    assert hello[:8] == NBD_MAGIC, hello
    s.sendall(struct.pack(">I", 3))
    data = struct.pack(">IH", 0, 0)  # default export, no info requests
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
    magic, option, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    message = recv_exact(s, length).decode(errors="replace")
    print(f"reply 0x{rtype:08x} {message}")
    s.close()


def latency(uri, seconds):
    import nbd

    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    lat, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        offset = random.randrange(0, size // 4096) * 4096
        t = time.monotonic()
        try:
            h.pread(4096, offset)
        except nbd.Error:
            errors += 1
        lat.append(time.monotonic() - t)
    h.shutdown()
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"reads {len(lat)} errors {errors} p50 {pick(0.5):.4f} p99 {pick(0.99):.4f} max {lat[-1]:.4f}")


def main():
    mode = sys.argv[1]
    if mode == "greedy":
        greedy(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "partial":
        partial(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "flood":
        flood(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "plain-go":
        plain_go(sys.argv[2])
    elif mode == "latency":
        latency(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
