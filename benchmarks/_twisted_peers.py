"""
The Twisted processes C{transport_bench.py} starts, one role per process:

``echo``
    The echo server of C{reactor_bench.py}'s C{tcp_pingpong} (its C{Echo}
    protocol: C{setTcpNoDelay(True)}, then every C{dataReceived} written
    back) listening on 127.0.0.1, port 0, backlog 1024.
``site``
    A C{twisted.web.server.Site} whose leaf C{Resource} answers every GET
    with the 13 bytes C{Hello, world!}.
``pingpong``
    C{reactor_bench.py}'s ping-pong client (its C{Pinger} and C{_Rally}):
    C{--conns} connections to C{--port}, 64-byte messages, each sent again
    as soon as its echo is back. It runs one warm-up rally of a tenth of
    C{--trips}, prints C{@@READY}, then runs one rally of C{--trips} round
    trips per C{go} line on stdin, printing C{@@RUN} and the seconds it
    took; end of file on stdin stops it.

Servers print C{@@PORT n} once listening and run until SIGTERM. Each role
raises its soft RLIMIT_NOFILE to the hard limit (the idle-connection
benchmark holds thousands of descriptors) and sends Twisted's warnings and
errors to stderr. The protocol code is imported from C{reactor_bench.py},
so the servers measured here are the ones measured there.

Usage (from the harness)::

    python benchmarks/_twisted_peers.py ROLE --reactor {rust,epoll} [...]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
from time import perf_counter
from typing import Any

from reactor_bench import (
    _client_factory,
    _echo_factory,
    _install_reactor,
    _log_errors,
    _pinger_class,
    _Rally,
    _Tally,
)

PORT_TAG = "@@PORT "
READY_TAG = "@@READY"
RUN_TAG = "@@RUN "
HELLO = b"Hello, world!"

Reactor = Any


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _announce(port: Any) -> None:
    print(PORT_TAG + str(port.getHost().port), flush=True)


def serve_echo(reactor: Reactor) -> None:
    """Listen with the ping-pong echo server."""
    port = reactor.listenTCP(
        0, _echo_factory(_Tally()), backlog=1024, interface="127.0.0.1"
    )
    reactor.callWhenRunning(_announce, port)


def serve_site(reactor: Reactor) -> None:
    """Listen with a Site answering C{Hello, world!} to every GET."""
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            return HELLO

    port = reactor.listenTCP(0, Site(Hello()), backlog=1024, interface="127.0.0.1")
    reactor.callWhenRunning(_announce, port)


def run_client(reactor: Reactor, port: int, conns: int, trips: int) -> None:
    """The ping-pong client, driven by C{go} lines on stdin."""
    from twisted.internet.defer import Deferred, DeferredQueue

    connected = _Tally()
    pinger = _pinger_class(connected)
    clients: list[Any] = []

    def build() -> Any:
        client = pinger()
        clients.append(client)
        return client

    lines: DeferredQueue[str] = DeferredQueue()

    def read_stdin() -> None:
        # A thread, so the reactor never blocks on the harness.
        for line in sys.stdin:
            reactor.callFromThread(lines.put, line.strip())
        reactor.callFromThread(lines.put, "")

    async def rally(n: int) -> float:
        r = _Rally(n)
        for client in clients:
            client.rally = r
        start = perf_counter()
        for client in clients:
            r.serve(client)
        return await r.done - start

    async def main() -> None:
        factory = _client_factory(build, connected)
        for _ in range(conns):
            reactor.connectTCP("127.0.0.1", port, factory)
        await connected.wait_for(conns)
        await rally(max(conns, trips // 10))
        print(READY_TAG, flush=True)
        while await lines.get() == "go":
            seconds = await rally(trips)
            print(RUN_TAG + json.dumps({"trips": trips, "seconds": seconds}))
            sys.stdout.flush()

    def start() -> None:
        threading.Thread(target=read_stdin, daemon=True).start()
        d = Deferred.fromCoroutine(main())
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("echo", "site", "pingpong"))
    parser.add_argument("--reactor", required=True, choices=("rust", "epoll"))
    parser.add_argument("--port", type=int, help="pingpong: the server's port")
    parser.add_argument("--conns", type=int, default=100, help="pingpong")
    parser.add_argument("--trips", type=int, default=100_000, help="pingpong")
    args = parser.parse_args(argv)
    _raise_nofile()
    reactor = _install_reactor(args.reactor)
    errors = _log_errors()
    if args.role == "echo":
        serve_echo(reactor)
    elif args.role == "site":
        serve_site(reactor)
    else:
        run_client(reactor, args.port, args.conns, args.trips)
    reactor.run()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
