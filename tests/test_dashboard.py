"""
examples/dashboard.py end to end: served by WSGIServer on the rust reactor
in a subprocess (one process, the application on the reactor thread, no
thread pool), against throwaway PostgreSQL and Redis servers
(tests/services.py) and an upstream HTTP server in this process, driven
over real sockets.

It proves:

- 200 concurrent requests each read the greeting from Redis, run their
  PostgreSQL transaction (recording the visit and the upstream's answer)
  and call the upstream, all while paused, and all get the right page; the
  upstream holds its answers until 5 requests wait on it at once, which
  only 5 transactions open at the same time on one thread can do, and it
  never sees more than 5 (the txpostgres pool's size). The database has
  the 200 visits, and no transaction is left open.
- The same with Redis reached over its UNIX socket.
- Clients killed (RST) while their requests are paused inside their
  transaction (the upstream never answers them), and while others wait in
  the pool's queue, leave nothing behind: the transactions roll back (no
  visit recorded, none idle in transaction), the upstream sees its
  requests abandoned, the pool serves the next requests, and the server
  process has the same number of open descriptors as before.
- A request that times out (the host's wait timeout) rolls back the same
  way and gets a 504.

The server's stderr must show no traceback and no unhandled error.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from psycopg import Connection
from pytest_redis.executor import RedisExecutor
from services import (  # noqa: F401 (fixtures)
    clean_environ,
    pg_db,
    pg_server,
    redis_db,
    redis_server,
)
from upstream_server import Upstream, eventually, upstream  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
GREETING = "hello from redis"
APP_NAME = "twisted_shim dashboard"
POOL = 5

SERVE = """
import socket
import twisted_shim
reactor = twisted_shim.install()
from twisted_shim.wsgi import WSGIServer
from examples.dashboard import application
server = WSGIServer(application)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
server.listen(sock)
print(sock.getsockname()[1], flush=True)
reactor.run()
"""

BAD_OUTPUT = ("Traceback", "Unhandled", "Exception ignored", "panicked")


class Dashboard:
    """examples.dashboard served by WSGIServer in a subprocess."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        environ = clean_environ()
        environ.update(env)
        environ["PYTHONPATH"] = str(ROOT)
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-c", SERVE],
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"dashboard did not start: {self.stderr()}")
        self.port = int(line)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def threads(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        raise AssertionError("no Threads: line")

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def get_many(self, paths: list[str]) -> list[tuple[int, dict[str, Any]]]:
        with ThreadPoolExecutor(len(paths)) as pool:
            return list(pool.map(self.get, paths))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("dashboard did not stop on SIGTERM") from None
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        stderr = self.stderr()
        for bad in BAD_OUTPUT:
            assert bad not in stderr, stderr
        assert self.proc.returncode == 0, stderr


@pytest.fixture
def dashboard(
    pg_db: Connection,  # noqa: F811
    redis_server: RedisExecutor,  # noqa: F811
    redis_db: Any,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Callable[..., Dashboard]]:
    """Start the dashboard on the test's database, Redis and upstream."""
    info = pg_db.info
    pg_db.autocommit = True  # this session's own checks open no transaction
    redis_db.set("dashboard:greeting", GREETING)
    started: list[Dashboard] = []

    def start(redis_unix: bool = False, timeout: float = 30.0) -> Dashboard:
        if redis_unix:
            redis_url = f"unix://{redis_server.unixsocket}?db=0"
        else:
            redis_url = f"redis://{redis_server.host}:{redis_server.port}/0"
        env = {
            "DATABASE_URL": (
                f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
            ),
            "REDIS_URL": redis_url,
            "UPSTREAM_URL": upstream.url,
            "DASHBOARD_PG_POOL": str(POOL),
            "DASHBOARD_TIMEOUT": str(timeout),
        }
        d = Dashboard(env, tmp_path / f"dashboard-{len(started)}.stderr")
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()


def open_transactions(db: Connection) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND state = 'idle in transaction'",
        (APP_NAME,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def visits(db: Connection, like: str = "%") -> int:
    row = db.execute(
        "SELECT count(*) FROM dashboard_visits WHERE path LIKE %s", (like,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def paths_in_transaction(db: Connection) -> set[str]:
    """The paths of the visits whose transaction is open."""
    rows = db.execute(
        "SELECT substring(query FROM %s::text) FROM pg_stat_activity"
        " WHERE application_name = %s AND state = 'idle in transaction'",
        (r"'(/[^']*)'", APP_NAME),
    ).fetchall()
    return {path for (path,) in rows}


def check_page(status: int, page: dict[str, Any], path: str) -> None:
    assert status == 200, page
    assert page["path"] == path
    assert page["greeting"] == GREETING
    assert page["upstream"] == {"status": 200, "body": {"upstream": "ok", "path": path}}
    assert page["visits"] >= 1


def test_concurrent_requests(
    dashboard: Callable[..., Dashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
) -> None:
    server = dashboard()
    upstream.hold_until = POOL
    paths = [f"/item/{i}" for i in range(200)]
    results = server.get_many(paths)
    for path, (status, page) in zip(paths, results, strict=True):
        check_page(status, page, path)
    assert len({page["visit"] for _, page in results}) == 200
    # Each transaction counts the visits committed before it, and its own.
    assert all(1 <= page["visits"] <= 200 for _, page in results)
    # 5 transactions waited on the upstream at once, never more.
    assert upstream.hold_until is None
    assert upstream.max_pending == POOL
    assert upstream.requests == 200
    row = pg_db.execute(
        "SELECT count(*), count(DISTINCT path), min(upstream_status), max(upstream_status)"
        " FROM dashboard_visits"
    ).fetchone()
    assert row == (200, 200, 200, 200)
    assert open_transactions(pg_db) == 0
    print(f"dashboard server threads: {server.threads()}")


def test_redis_over_unix_socket(
    dashboard: Callable[..., Dashboard],
    pg_db: Connection,  # noqa: F811
) -> None:
    server = dashboard(redis_unix=True)
    paths = [f"/unix/{i}" for i in range(20)]
    for path, (status, page) in zip(paths, server.get_many(paths), strict=True):
        check_page(status, page, path)
    assert visits(pg_db) == 20


def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a killed client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_killed_clients_roll_back(
    dashboard: Callable[..., Dashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
) -> None:
    server = dashboard()

    def wave(prefix: str) -> None:
        upstream.hold_until = POOL  # the upstream client pool ends with 5
        paths = [f"/{prefix}/{i}" for i in range(20)]
        for path, (status, page) in zip(paths, server.get_many(paths), strict=True):
            check_page(status, page, path)

    wave("before")
    before = eventually(server.fds, lambda n: n == server.fds(), timeout=1)

    # 8 requests: 5 get a connection and wait in their transaction on the
    # upstream, which never answers them; 3 wait in the pool's queue.
    socks = {}
    for i in range(8):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(f"GET /slow/{i} HTTP/1.1\r\nHost: dashboard\r\n\r\n".encode())
        socks[f"/slow/{i}"] = s
    assert eventually(lambda: open_transactions(pg_db), lambda n: n == POOL) == POOL
    assert eventually(lambda: upstream.pending, lambda n: n == POOL) == POOL
    assert visits(pg_db, "/slow/%") == 0  # not committed, not visible
    in_transaction = paths_in_transaction(pg_db)
    assert len(in_transaction) == POOL and in_transaction <= set(socks)
    paused = server.fds()

    # The queued ones go first (closed normally: EOF). The host closes
    # their connections, and takes them out of the pool's queue: once the
    # others are gone too and their connections free, none of them runs.
    for path in set(socks) - in_transaction:
        socks.pop(path).close()
    assert eventually(server.fds, lambda n: n == paused - 3) == paused - 3
    # Then those in their transaction, with an RST.
    for s in socks.values():
        _abort(s)

    assert eventually(lambda: open_transactions(pg_db), lambda n: n == 0) == 0
    assert eventually(lambda: upstream.pending, lambda n: n == 0) == 0
    assert visits(pg_db, "/slow/%") == 0
    assert upstream.requests == 20 + POOL

    wave("after")
    assert visits(pg_db) == 40
    after = eventually(server.fds, lambda n: n == before)
    assert after == before, f"{before} descriptors before, {after} after"
    assert open_transactions(pg_db) == 0


def test_timeout_rolls_back(
    dashboard: Callable[..., Dashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
) -> None:
    server = dashboard(timeout=1.0)
    status, page = server.get("/slow/timeout")
    assert (status, page) == (504, {"error": "timed out"})
    assert eventually(lambda: open_transactions(pg_db), lambda n: n == 0) == 0
    assert eventually(lambda: upstream.pending, lambda n: n == 0) == 0
    assert visits(pg_db) == 0
    check_page(*server.get("/fine"), "/fine")
    assert visits(pg_db) == 1
