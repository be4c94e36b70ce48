"""
What the kernel does with the SYN filter a stopping server attaches to its
listening TCP sockets (C{src/net/socket.rs}, C{drop_syns}): run it (as root,
for the raw socket of case 2) to see each fact the lossless stop relies on.

  1. A SYN reaching the filtered socket is dropped: the client's connect()
     stays pending (it retransmits its SYN), and once the socket is closed
     it is refused (a connect error, never an accepted-then-reset
     connection).
  2. A handshake whose SYN came before the filter completes after it: the
     final ACK is not a SYN, passes, and the connection is queued for
     accept(). A raw socket plays the client so that the ACK can be sent
     after the filter; a listener on the client's port with a drop-all
     filter keeps the client-side kernel from resetting the SYN-ACK.
  3. In an SO_REUSEPORT group, the kernel picks the socket before its filter
     runs: SYNs hashed to a filtered socket are dropped, retransmitted, and
     once that socket is closed they reach the live one. This is why
     recycling a worker loses nothing without net.ipv4.tcp_migrate_req.

    sudo python3 scripts/syn_filter_experiment.py
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import select
import socket
import struct
import time

SO_ATTACH_FILTER = 26


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


# The program of drop_syns: ldb [13]; jset #0x02, 0, 1; ret #0; ret #-1.
DROP_SYNS = (SockFilter * 4)(
    SockFilter(0x30, 0, 0, 13),
    SockFilter(0x45, 0, 1, 0x02),
    SockFilter(0x06, 0, 0, 0),
    SockFilter(0x06, 0, 0, 0xFFFFFFFF),
)
DROP_ALL = (SockFilter * 1)(SockFilter(0x06, 0, 0, 0))


def attach(sock: socket.socket, prog: ctypes.Array[SockFilter]) -> None:
    fprog = struct.pack("HL", len(prog), ctypes.addressof(prog))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def listener(port: int = 0, reuse_port: bool = False) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s


def start_connect(address: tuple[str, int]) -> socket.socket:
    c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex(address) == errno.EINPROGRESS
    return c


def outcome(c: socket.socket, timeout: float) -> str:
    _, w, _ = select.select([], [c], [], timeout)
    if not w:
        return "pending"
    e = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return "connected" if e == 0 else os.strerror(e)


def accept_all(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.accept()[0].close()
        except BlockingIOError:
            return n
        n += 1


def case_new_clients() -> None:
    s = listener()
    attach(s, DROP_SYNS)
    c = start_connect(s.getsockname())
    state = outcome(c, 2.5)
    print(
        f"1. connect after the filter, 2.5 s later: {state} (accepted {accept_all(s)})"
    )
    s.close()
    print("   the same client once the listener is closed:", outcome(c, 3.5))


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _segment(sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!BBH", 0, 6, len(head))
    return head[:16] + struct.pack("!H", _checksum(pseudo + head)) + head[18:]


def case_handshake_in_flight() -> None:
    server = listener()
    port = server.getsockname()[1]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)

    def client_port() -> tuple[socket.socket, int]:
        sink = socket.socket()
        sink.bind(("127.0.0.1", 0))
        attach(sink, DROP_ALL)
        sink.listen(1)
        return sink, sink.getsockname()[1]

    def syn_ack(cport: int, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            pkt = raw.recv(65535)
            ihl = (pkt[0] & 0xF) * 4
            sport, dport, seq, _, _, flags = struct.unpack(
                "!HHIIBB", pkt[ihl : ihl + 14]
            )
            if (sport, dport) == (port, cport) and flags & 0x12 == 0x12:
                return seq
        return None

    sink, cport = client_port()
    isn = random.getrandbits(31)
    raw.sendto(_segment(cport, port, isn, 0, 0x02), ("127.0.0.1", 0))
    server_isn = syn_ack(cport, 1.0)
    assert server_isn is not None, "no SYN-ACK before the filter"
    attach(server, DROP_SYNS)
    raw.sendto(_segment(cport, port, isn + 1, server_isn + 1, 0x10), ("127.0.0.1", 0))
    time.sleep(0.05)
    print(f"2. SYN before the filter, ACK after: accepted {accept_all(server)}")
    sink2, cport2 = client_port()
    raw.sendto(_segment(cport2, port, isn, 0, 0x02), ("127.0.0.1", 0))
    answered = syn_ack(cport2, 1.5) is not None
    print(f"   a SYN after the filter is answered: {answered}")
    for s in (server, sink, sink2, raw):
        s.close()


def case_reuseport() -> None:
    probe = listener()
    port = probe.getsockname()[1]
    probe.close()
    old, new = listener(port, True), listener(port, True)
    attach(old, DROP_SYNS)
    clients = [start_connect(("127.0.0.1", port)) for _ in range(40)]
    time.sleep(0.2)
    live, filtered = accept_all(new), accept_all(old)
    print(
        f"3. 40 connects: the live socket accepted {live}, the filtered one {filtered}"
    )
    old.close()
    start = time.monotonic()
    while live < 40 and time.monotonic() - start < 5:
        time.sleep(0.05)
        live += accept_all(new)
    states = [outcome(c, 0) for c in clients]
    print(
        f"   the filtered one closed: the live one accepted {live} of 40 within"
        f" {time.monotonic() - start:.2f} s; clients: {states.count('connected')} connected"
    )


if __name__ == "__main__":
    case_new_clients()
    case_handshake_in_flight()
    case_reuseport()
