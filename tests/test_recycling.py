"""
Tests for worker recycling, C{twisted-shim serve --max-requests N
[--max-requests-jitter J]} (L{twisted_shim.wsgi.supervisor}): under load
from clients on persistent connections, each worker is replaced after its
limit of requests (not connections) without one request lost or reset, the
server keeps serving, and a limit is within [N, N+J]. Real processes, real
sockets; waits are bounded and progress is counted.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    TIMEOUT,
    KeepAlive,
    Served,
    Servers,
    alive,
    get,
    servers,
    wait_until,
)

RECYCLED = re.compile(
    r"^twisted-shim: worker (\d+) served (\d+) requests \(--max-requests\):"
    r" replaced by worker (\d+), stopping$"
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Servers]:
    with servers(tmp_path) as s:
        yield s


def recycles(server: Served) -> list[tuple[int, int, int]]:
    """(old pid, requests served, new pid) of each recycle logged so far."""
    return [
        (int(m[1]), int(m[2]), int(m[3]))
        for line in list(server.stderr_lines)
        if (m := RECYCLED.match(line))
    ]


@pytest.mark.parametrize("path", ["/pid", "/slow?0.01"], ids=["hello", "paused"])
def test_recycling_under_load_loses_nothing(serve: Servers, path: str) -> None:
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--max-requests",
        "50",
    )
    clients = KeepAlive(server.port, path, 8)
    assert wait_until(lambda: len(recycles(server)) >= 6, timeout=60), server.stderr
    counts = clients.stop()
    assert counts["lost"] == 0 and counts["broken"] == 0, (counts, clients.problems[:5])
    assert counts["refused"] == 0, counts
    done = recycles(server)
    old = {pid for pid, _, _ in done}
    assert all(served == 50 for _, served, _ in done), done
    # The recycled workers are gone; the server still serves, from others.
    assert wait_until(lambda: not any(alive(pid) for pid in old), timeout=TIMEOUT)
    status, body = get(server.port, "/pid")
    assert status == 200 and int(body) not in old and int(body) != server.pid
    assert server.proc.poll() is None
    assert "Traceback" not in server.stderr
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr


def test_one_worker_recycles_counting_requests_with_jitter(serve: Servers) -> None:
    """
    With --workers 1 a supervisor recycles too; one client on one
    persistent connection is enough (requests are counted, not
    connections); each worker's limit is within [10, 15].
    """
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--max-requests",
        "10",
        "--max-requests-jitter",
        "5",
    )
    assert server.ready_match is not None
    assert server.ready_match.groups() == (str(server.pid), "1", "0")
    clients = KeepAlive(server.port, "/pid", 1)
    assert wait_until(lambda: len(recycles(server)) >= 8, timeout=60), server.stderr
    counts = clients.stop()
    assert counts["lost"] == 0 and counts["broken"] == 0, (counts, clients.problems[:5])
    done = recycles(server)
    assert all(10 <= served <= 15 for _, served, _ in done), done
    pids = {int(b) for b in clients.bodies}
    assert len(pids) >= 8 and server.pid not in pids
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr
