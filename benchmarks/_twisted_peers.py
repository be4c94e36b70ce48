"""
The Twisted processes C{transport_bench.py} starts, one role per process:

``echo``
    The echo server of C{reactor_bench.py}'s C{tcp_pingpong} (its C{Echo}
    protocol: C{setTcpNoDelay(True)}, then every C{dataReceived} written
    back) listening on 127.0.0.1, port 0, backlog 1024. With C{--tls}, the
    same through C{listenSSL}, with the RSA-2048 key and self-signed
    certificate Twisted ships for its own tests (C{twisted/test/server.pem},
    loaded with C{PrivateCertificate.loadPEM}; valid until 2123). A file
    rather than a key made at startup: no key generation before every run,
    and the same key (so the same handshake work) in every run.
``site``
    A C{twisted.web.server.Site} whose leaf C{Resource} answers every GET
    with the 13 bytes C{Hello, world!}.
``pingpong``
    C{reactor_bench.py}'s ping-pong client (its C{Pinger} and C{_Rally}):
    C{--conns} connections to C{--port}, 64-byte messages, each sent again
    as soon as its echo is back. It runs one warm-up rally of a tenth of
    C{--trips}, prints C{@@READY}, then runs one rally of C{--trips} round
    trips per C{go} line on stdin, printing C{@@RUN} and the seconds it
    took; end of file on stdin stops it. With C{--tls}, the connections
    are C{connectSSL} with a default C{CertificateOptions()}, which does
    not verify the server's certificate (nor its name): a loopback
    benchmark against a test certificate, where the TLS work, not trust,
    is the point. Every connection carries at least one message of the
    warm-up rally, so every handshake is done before C{@@READY}; before
    it, C{@@TLS} and a JSON object give the protocol version and cipher
    the first connection negotiated.

TLS is Twisted's own (C{TLSMemoryBIOProtocol}, pyOpenSSL over memory BIOs,
above the transport), so on either reactor the TLS code is the same and
only the transport and the loop under it differ.

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
TLS_TAG = "@@TLS "
HELLO = b"Hello, world!"

Reactor = Any


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _announce(port: Any) -> None:
    print(PORT_TAG + str(port.getHost().port), flush=True)


def _server_tls_options() -> Any:
    """The key and certificate of C{twisted/test/server.pem}, as options."""
    from importlib.resources import files

    from twisted.internet import ssl

    pem = files("twisted.test").joinpath("server.pem").read_bytes()
    return ssl.PrivateCertificate.loadPEM(pem).options()


def serve_echo(reactor: Reactor, tls: bool) -> None:
    """Listen with the ping-pong echo server, over TLS if C{tls}."""
    factory = _echo_factory(_Tally())
    if tls:
        port = reactor.listenSSL(
            0, factory, _server_tls_options(), backlog=1024, interface="127.0.0.1"
        )
    else:
        port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
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


def _negotiated(client: Any) -> dict[str, str]:
    """The TLS protocol version and cipher of C{client}'s connection."""
    tls = client.transport.getHandle()
    return {
        "version": tls.get_protocol_version_name(),
        "cipher": tls.get_cipher_name(),
    }


def run_client(reactor: Reactor, port: int, conns: int, trips: int, tls: bool) -> None:
    """The ping-pong client, over TLS if C{tls}, driven by C{go} lines on stdin."""
    from twisted.internet import ssl
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
        options = ssl.CertificateOptions()  # no verification: see the docstring
        for _ in range(conns):
            if tls:
                reactor.connectSSL("127.0.0.1", port, factory, options)
            else:
                reactor.connectTCP("127.0.0.1", port, factory)
        await connected.wait_for(conns)
        await rally(max(conns, trips // 10))
        if tls:
            print(TLS_TAG + json.dumps(_negotiated(clients[0])))
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
    parser.add_argument("--tls", action="store_true", help="echo, pingpong: over TLS")
    args = parser.parse_args(argv)
    if args.tls and args.role == "site":
        parser.error("--tls is for echo and pingpong")
    _raise_nofile()
    reactor = _install_reactor(args.reactor)
    errors = _log_errors()
    if args.role == "echo":
        serve_echo(reactor, args.tls)
    elif args.role == "site":
        serve_site(reactor)
    else:
        run_client(reactor, args.port, args.conns, args.trips, args.tls)
    reactor.run()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
