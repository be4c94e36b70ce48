"""
Tests for L{twisted_shim.wsgi.server.WSGIServer.stop_accepting}, in this
process on a reactor of its own: a connection the kernel completed before
the stop is accepted and answered, never reset by the close; a client that
connects after it gets no answer (its SYN is dropped), then is refused once
the listening socket is closed; a UNIX socket's queue is drained too.
Whole processes under load: C{tests/test_cli.py}.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from twisted_shim.reactor import RustReactor
from twisted_shim.wsgi.server import WSGIServer

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def app(environ: dict, start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])  # type: ignore[operator]
    return [b"ok"]


@pytest.fixture
def reactor() -> Iterator[RustReactor]:
    r = RustReactor()
    yield r
    for dc in r.getDelayedCalls():
        dc.cancel()
    r.removeAll()


def iterate_until(reactor: RustReactor, done: list[object], turns: int = 500) -> None:
    """Run the reactor for at most C{turns} turns of up to 20 ms until
    C{done} is not empty."""
    for _ in range(turns):
        if done:
            return
        reactor.iterate(0.02)
    assert done, "not done in time"


def response(reactor: RustReactor, client: socket.socket) -> bytes:
    """Read C{client}'s response to the end, iterating the reactor."""
    client.setblocking(False)
    got = b""
    for _ in range(500):
        reactor.iterate(0.01)
        try:
            data = client.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            return got
        got += data
    raise AssertionError(f"no complete response: {got!r}")


def test_tcp_completed_connection_served_new_ones_refused(
    reactor: RustReactor,
) -> None:
    server = WSGIServer(app, reactor=reactor)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    address = listener.getsockname()
    server.listen(listener)
    # Completed by the kernel, not yet accepted (the reactor has not run).
    early = socket.create_connection(address, timeout=5)
    early.sendall(REQUEST)
    stopped: list[object] = []
    server.stop_accepting().addCallback(stopped.append)
    # A handshake begun after the stop: its SYN is dropped, so the connect
    # neither completes nor is refused while the server settles.
    late = socket.socket()
    late.setblocking(False)
    assert late.connect_ex(address) == errno.EINPROGRESS
    iterate_until(reactor, stopped)
    assert listener.fileno() == -1  # closed by the stop
    _, writable, _ = select.select([], [late], [], 0)
    assert not writable, "a connection begun after the stop was answered"
    got = response(reactor, early)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
    # The retransmitted SYN (1 s after the first) finds the port closed.
    _, writable, _ = select.select([], [late], [], 5)
    assert writable
    assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    early.close()
    late.close()


def test_unix_queue_drained(reactor: RustReactor, tmp_path: Path) -> None:
    server = WSGIServer(app, reactor=reactor)
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    server.listen(listener)
    queued = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for client in queued:
        client.connect(path)
        client.sendall(REQUEST)
    stopped: list[object] = []
    server.stop_accepting().addCallback(stopped.append)
    iterate_until(reactor, stopped)
    for client in queued:
        got = response(reactor, client)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
        client.close()


def test_stop_twice_and_abort(reactor: RustReactor) -> None:
    """Each caller's Deferred fires; L{WSGIServer.abort} closes at once."""
    server = WSGIServer(app, reactor=reactor)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    server.listen(listener)
    fired: list[object] = []
    server.stop_accepting().addCallback(fired.append)
    server.stop_accepting().addCallback(fired.append)
    assert server.abort() == 0
    assert len(fired) == 2 and listener.fileno() == -1
    server.stop_accepting().addCallback(fired.append)
    assert len(fired) == 3
