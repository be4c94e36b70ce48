"""
Tests for thread-pool mode, C{twisted-shim serve --threads N}
(L{twisted_shim.wsgi.threaded}): concurrency bounded by the pool, the
environ a thread sees, C{blockingCallFromThread}, C{start_response} and
C{write()} semantics, errors, backpressure, closing the iterable when the
client disconnects, and graceful shutdown.

The server runs in a subprocess (C{python -m twisted_shim serve}); the
application (C{cli_support.APP_SOURCE}) records what it saw, and the tests
read it back over HTTP.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    TIMEOUT,
    InFlight,
    Served,
    Servers,
    get,
    get_json,
    servers,
    wait_until,
)
from wsgi_client import loopback_tcp_queues


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Servers]:
    with servers(tmp_path) as s:
        yield s


@pytest.fixture
def threaded(serve: Servers) -> Served:
    return serve("cliapp:application", "--bind", "127.0.0.1:0", "--threads", "4")


def test_ready_line(threaded: Served) -> None:
    assert threaded.ready_match is not None
    assert threaded.ready_match.groups() == (str(threaded.pid), "1", "4")


def test_blocking_requests_run_in_parallel(threaded: Served) -> None:
    """
    8 concurrent blocking requests with 4 threads: exactly 4 run at once
    (counted by the application, not timed).
    """
    clients = InFlight(threaded.port, "/block?0.3", 8)
    results = clients.join()
    assert sorted(r[0] for r in results) == ["ok"] * 8, results
    assert all(r[1] == (200, b"blocked") for r in results), results
    stats = get_json(threaded.port, "/stats")
    assert stats["max_active"] == 4
    assert stats["active"] == 0


def test_environ(threaded: Served) -> None:
    """No pause keys, wsgi.multithread true, a pool thread."""
    env = get_json(threaded.port, "/env")
    assert env["present"] == []
    assert env["multithread"] is True
    assert env["multiprocess"] is False
    assert env["main"] is False
    assert env["thread"].startswith("PoolThread-twisted-shim")
    assert env["disconnected"] is False


def test_environ_with_workers(serve: Servers) -> None:
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--workers",
        "2",
    )
    assert server.ready_match is not None
    assert server.ready_match.groups()[1:] == ("2", "2")
    env = get_json(server.port, "/env")
    assert env["present"] == []
    assert env["multithread"] is True
    assert env["multiprocess"] is True


def test_blocking_call_from_thread(threaded: Served) -> None:
    """C{blockingCallFromThread} with a Deferred-returning function works."""
    assert get(threaded.port, "/deferred") == (
        200,
        b"from the reactor; reactor thread: True",
    )


def test_write_callable(threaded: Served) -> None:
    assert get(threaded.port, "/write") == (200, b"written iterated")


def test_start_response_with_exc_info(threaded: Served) -> None:
    """Before any body, start_response(..., exc_info) replaces the status."""
    assert get(threaded.port, "/error-replaced") == (503, b"replaced")


def test_application_error_is_500(threaded: Served) -> None:
    status, _ = get(threaded.port, "/fails")
    assert status == 500
    threaded.wait_for_line("intentional-log-line: the application fails")
    # The server goes on.
    assert get(threaded.port, "/write") == (200, b"written iterated")


def test_request_body(threaded: Served) -> None:
    body = bytes(range(256)) * 1000
    assert get(threaded.port, "/echo", body=body) == (200, body)


def test_request_abandoned_before_a_thread_is_free_is_not_run(
    threaded: Served,
) -> None:
    """
    Requests whose clients left while they waited for a pool thread are
    dropped, not run: a blocking application would otherwise spend the pool
    on work nobody reads, and clients that time out and retry would pile it
    up. Counted by the application. Ordering, not timing: each blocker's
    request has been read by the server (so handed to the FIFO pool) before
    the next request is sent, and the last request runs after the abandoned
    ones would have.
    """
    blockers = []
    for _ in range(4):  # every thread busy for a second
        sock = socket.create_connection(("127.0.0.1", threaded.port), timeout=TIMEOUT)
        sock.sendall(b"GET /block?1.0 HTTP/1.1\r\nHost: test\r\n\r\n")
        port = sock.getsockname()[1]
        # Read by the server (so handed to the pool) before the next is sent.
        wait_until(
            lambda p=port: loopback_tcp_queues().get((threaded.port, p), (0, 1))[1] == 0
        )
        blockers.append(sock)
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", threaded.port), timeout=TIMEOUT)
        sock.sendall(b"GET /block?0.01 HTTP/1.1\r\nHost: test\r\n\r\n")
        sock.close()
    for sock in blockers:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert get(threaded.port, "/block?0.01") == (200, b"blocked")
    assert get_json(threaded.port, "/stats")["started"] == 5


def test_disconnect_closes_iterable(threaded: Served) -> None:
    """
    A client that goes away mid-stream: the iterable's close() is called
    once, in the pool thread, and the thread stops pulling.
    """
    sock = socket.create_connection(("127.0.0.1", threaded.port), timeout=TIMEOUT)
    sock.sendall(b"GET /stream?gone HTTP/1.1\r\nHost: test\r\n\r\n")
    received = b""
    while len(received) < 8 * 1024:
        data = sock.recv(65536)
        assert data
        received += data
    assert received.startswith(b"HTTP/1.1 200 ")
    sock.close()

    def closed() -> list[list[object]]:
        return [
            c for c in get_json(threaded.port, "/stats")["closes"] if c[0] == "gone"
        ]

    assert wait_until(lambda: bool(closed()), timeout=TIMEOUT, interval=0.05)
    time.sleep(0.3)
    [(name, thread, count)] = closed()
    assert count == 1
    assert str(thread).startswith("PoolThread-twisted-shim")


def test_backpressure(threaded: Served) -> None:
    """
    A client that does not read: the application's thread blocks instead
    of queueing the whole 48 MiB response; once the client reads, all of
    it arrives.
    """
    sock = socket.create_connection(("127.0.0.1", threaded.port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /flood HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    time.sleep(1.0)
    produced = get_json(threaded.port, "/stats")["produced"]
    time.sleep(0.5)
    assert get_json(threaded.port, "/stats")["produced"] == produced  # it is blocked
    assert produced < 24 * 1024 * 1024, produced
    total = 0
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        total += len(data)
    sock.close()
    head = 48 * 1024 * 1024
    assert total > head
    assert get_json(threaded.port, "/stats")["produced"] == head


def test_graceful_shutdown(threaded: Served) -> None:
    """SIGTERM: the blocking requests in flight complete, then exit 0."""
    clients = InFlight(threaded.port, "/block?0.5", 4)
    clients.wait_sent()
    time.sleep(0.1)
    threaded.signal(signal.SIGTERM)
    results = clients.join()
    assert threaded.wait() == 0
    assert [r[1] for r in results] == [(200, b"blocked")] * 4, results


def test_stuck_thread_does_not_block_exit(serve: Servers) -> None:
    """A thread still blocked when the grace period ends does not keep the process alive."""
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--grace",
        "0.5",
    )
    clients = InFlight(server.port, "/block?60", 1)
    clients.wait_sent()
    time.sleep(0.2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    [(kind, _)] = clients.join()
    assert kind == "error"
