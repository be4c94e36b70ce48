#!/usr/bin/env python
"""
The slow "upstream" of the WSGI benchmarks: an HTTP/1.1 server that answers
every request C{--delay} seconds after its head arrived, with C{200 OK} and
the body C{ok}, keeping the connection alive.

Usage::

    python benchmarks/upstream_server.py --port PORT [--delay S] [--host H]

C{wsgi_bench.py} (50 ms, the C{upstream} app) and C{long_wait.py} (1 s,
5,000 requests waiting at once) start it as a process of its own, on the
client's CPU, so its cost is never charged to the server measured.

Method: one asyncio event loop (uvloop when it is importable, else
asyncio's own), a protocol per connection that finds each request head
(C{\\r\\n\\r\\n}; the benchmarks send GETs without a body) and schedules
its answer with C{call_later}: a timer, not a task or a thread, per waiting
request, so tens of thousands can wait at once. Answers on one connection
go out in the order their requests came (same delay, timers in order).
C{Connection: close} or HTTP/1.0 gets a closing answer. It raises its own
RLIMIT_NOFILE to the hard limit and listens with a backlog of 8192 (the
kernel caps it at C{net.core.somaxconn}). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import socket
import sys
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
CLOSING = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
BACKLOG = 8192
MAX_HEAD = 64 * 1024


def _new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), f"uvloop {uvloop.__version__}"


class Upstream(asyncio.Protocol):
    """One connection: each request head found is answered after C{delay}."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD and self.transport is not None:
                    self.transport.close()
                return
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
            first = head.split(b"\r\n", 1)[0]
            close = b"connection: close" in head or first.endswith(b"http/1.0")
            self.loop.call_later(self.delay, self.answer, close)

    def answer(self, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(CLOSING if close else RESPONSE)
        if close:
            self.transport.close()


def serve(host: str, port: int, delay: float) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop, kind = _new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: Upstream(loop, delay),
            host,
            port,
            backlog=BACKLOG,
            reuse_address=True,
        )
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    print(
        f"upstream listening on http://{host}:{port}/ ({kind}, delay {delay} s)",
        flush=True,
    )
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="An HTTP/1.1 server that answers every request after a delay."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds before each answer (1.0)"
    )
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.delay)


if __name__ == "__main__":
    sys.exit(main())
