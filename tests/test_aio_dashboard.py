"""
examples/aio_dashboard.py end to end: served by C{twisted-shim serve} (one
worker, no thread pool, the application on the reactor thread) against
throwaway PostgreSQL and Redis servers (tests/services.py) and an upstream
HTTP server in this process (tests/upstream_server.py), loaded with
httpx.AsyncClient over real sockets. Each request's coroutine runs as an
asyncio task on the reactor's loop while the request is paused, and awaits
redis.asyncio, httpx and asyncpg there.

It proves:

- 200 concurrent requests each count their hit in Redis, call the
  upstream and record their visit in PostgreSQL, and all get the right
  page. The upstream holds its answers until all 200 wait on it at once,
  which only 200 requests paused at the same time in one process can do;
  the server process has one thread throughout (sampled during the load).
  Redis counted 200 hits, the database has the 200 visits, no transaction
  is left open, and every pooled connection is back in its pool.
- Clients killed (FIN or RST) while their requests are paused leave
  nothing behind, wherever their task is suspended: in the upstream call
  (which never answers: httpx closes its connection, the upstream sees the
  request abandoned), in a PostgreSQL INSERT that a lock held by the test
  blocks, or in the pool's queue behind those (asyncpg cancels the query,
  the transaction rolls back, the connection goes back to the pool; no
  visit is recorded), or in a Redis command held by C{CLIENT PAUSE WRITE}
  (redis-py drops the connection and gives it back to its pool). No task
  is left on the loop; the server process's descriptors are, socket by
  socket, what they were before (its clients' connections closed, the
  asyncpg pool's five, at most the Redis and upstream pools' own), and it
  serves the next requests.
- A request that times out (the host's wait timeout) gets a 504, its task
  is cancelled (the upstream sees the call abandoned) and nothing is
  recorded.
- The same pages with Redis reached over its UNIX socket.

The server's stderr must show no traceback, unhandled error or asyncio
warning, and it exits with status 0 on SIGTERM (its pools closed).
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cli_support import Served
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
APP_NAME = "twisted_shim aio dashboard"
PG_POOL = 5
REDIS_POOL = 10
HTTP_POOL = 200
#: Bounds every load run (seconds).
LOAD_TIMEOUT = 90.0

BAD_OUTPUT = (
    "Traceback",
    "Unhandled",
    "Exception ignored",
    "panicked",
    "never retrieved",
    "was destroyed but it is pending",
    "never awaited",
    "Unclosed",
)


class AioDashboard:
    """examples.aio_dashboard served by C{twisted-shim serve}."""

    def __init__(self, env: dict[str, str]) -> None:
        environ = clean_environ()
        environ.update(env)
        environ["PYTHONPATH"] = str(ROOT)
        self.served = Served(
            ["examples.aio_dashboard:application", "--bind", "127.0.0.1:0"],
            ROOT,
            env=environ,
        )
        try:
            self.served.ready()
        except BaseException:
            self.served.close()
            raise
        match = self.served.ready_match
        assert match is not None
        # One process, one worker, no thread pool: the application runs on
        # the reactor thread.
        assert (int(match[1]), match[2], match[3]) == (self.served.pid, "1", "0")
        self.pid = self.served.pid
        self.port = self.served.port

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
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

    def pools(self) -> dict[str, Any]:
        status, page = self.get("/_pools")
        assert status == 200, page
        return page

    def stop(self) -> None:
        try:
            if self.served.proc.poll() is None:
                self.served.signal(signal.SIGTERM)
                code = self.served.wait(30)
            else:
                code = self.served.proc.returncode
        finally:
            self.served.close()
        stderr = self.served.stderr
        for bad in BAD_OUTPUT:
            assert bad not in stderr, stderr
        assert code == 0, stderr


def get_many(
    port: int, paths: list[str], concurrency: int
) -> tuple[list[tuple[int, dict[str, Any]]], float]:
    """
    GET every path, C{concurrency} at once, with httpx.AsyncClient (each
    request on a connection of its own while that many are open); the
    statuses and pages, and the seconds it took. Bounded by L{LOAD_TIMEOUT}.
    """

    async def run() -> list[tuple[int, dict[str, Any]]]:
        limits = httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency
        )
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
        ) as client:

            async def one(path: str) -> tuple[int, dict[str, Any]]:
                response = await client.get(path)
                return response.status_code, response.json()

            return await asyncio.gather(*(one(p) for p in paths))

    start = time.monotonic()
    # The client's own asyncio loop (the default one), whatever policy a
    # test of this session set.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        results = runner.run(asyncio.wait_for(run(), LOAD_TIMEOUT))
    return results, time.monotonic() - start


@pytest.fixture
def aio_dashboard(
    pg_db: Connection,  # noqa: F811
    redis_server: RedisExecutor,  # noqa: F811
    redis_db: Any,  # noqa: F811
    upstream: Upstream,  # noqa: F811
) -> Iterator[Callable[..., AioDashboard]]:
    """Start the example on the test's database, Redis and upstream."""
    info = pg_db.info
    pg_db.autocommit = True  # this session's own checks open no transaction
    redis_db.set("dashboard:greeting", GREETING)
    started: list[AioDashboard] = []

    def start(redis_unix: bool = False, timeout: float = 30.0) -> AioDashboard:
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
            "AIO_DASHBOARD_PG_POOL": str(PG_POOL),
            "AIO_DASHBOARD_REDIS_POOL": str(REDIS_POOL),
            "AIO_DASHBOARD_HTTP_POOL": str(HTTP_POOL),
            "AIO_DASHBOARD_TIMEOUT": str(timeout),
        }
        d = AioDashboard(env)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()


def check_page(status: int, page: dict[str, Any], path: str) -> None:
    assert status == 200, page
    assert page["path"] == path
    assert page["greeting"] == GREETING
    assert page["upstream"] == {"status": 200, "body": {"upstream": "ok", "path": path}}
    assert page["hits"] >= 1 and page["visits"] >= 1


def visits(db: Connection, like: str = "%") -> int:
    row = db.execute(
        "SELECT count(*) FROM aio_dashboard_visits WHERE path LIKE %s", (like,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def backends(db: Connection) -> collections.Counter[str]:
    """The example's PostgreSQL sessions, by state (C{waiting} for a lock)."""
    rows = db.execute(
        "SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
        (APP_NAME,),
    ).fetchall()
    return collections.Counter(
        "waiting" if wait == "Lock" else str(state) for state, wait in rows
    )


def pools_at_rest(page: dict[str, Any]) -> bool:
    """Every pooled connection is back in its pool."""
    pg, redis = page["pg"], page["redis"]
    return pg == {"size": PG_POOL, "idle": PG_POOL} and redis["in_use"] == 0


class ThreadSampler:
    """The most threads the server process had, sampled every 5 ms."""

    def __init__(self, server: AioDashboard) -> None:
        self.most = server.threads()
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.most = max(self.most, self._server.threads())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


def test_200_concurrent_requests(
    aio_dashboard: Callable[..., AioDashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
    redis_db: Any,  # noqa: F811
) -> None:
    server = aio_dashboard()
    check_page(*server.get("/warm-up"), "/warm-up")  # the pools start
    baseline = server.pools()
    upstream.hold_until = 200
    paths = [f"/item/{i}" for i in range(200)]
    sampler = ThreadSampler(server)
    results, elapsed = get_many(server.port, paths, concurrency=200)
    most_threads = sampler.stop()
    for path, (status, page) in zip(paths, results, strict=True):
        check_page(status, page, path)
    # All 200 waited on the upstream at once, so all were paused at once.
    assert upstream.hold_until is None
    assert upstream.max_pending == 200
    assert upstream.requests == 201
    assert sorted(page["hits"] for _, page in results) == list(range(2, 202))
    assert int(redis_db.get("aio_dashboard:hits")) == 201
    assert len({page["visit"] for _, page in results}) == 200
    row = pg_db.execute(
        "SELECT count(*), count(DISTINCT path), min(upstream_status), max(upstream_status)"
        " FROM aio_dashboard_visits WHERE path LIKE '/item/%'"
    ).fetchone()
    assert row == (200, 200, 200, 200)
    # One thread (the reactor's) throughout, and still.
    assert most_threads == 1
    assert server.threads() == 1
    page = eventually(server.pools, pools_at_rest)
    assert pools_at_rest(page), page
    assert page["tasks"] == baseline["tasks"]
    assert backends(pg_db) == {"idle": PG_POOL}
    print(
        f"\n200 concurrent requests: {elapsed:.3f} s, {most_threads} thread,"
        f" Redis connections {page['redis']['idle']}"
    )


def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a killed client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _send(port: int, paths: list[str]) -> dict[str, socket.socket]:
    socks = {}
    for path in paths:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: dashboard\r\n\r\n".encode())
        socks[path] = s
    return socks


def _kill(socks: list[socket.socket]) -> None:
    """Half of them closed (FIN), half reset (RST)."""
    for i, s in enumerate(socks):
        if i % 2:
            _abort(s)
        else:
            s.close()


_SOCKET = re.compile(r"socket:\[(\d+)\]")


def descriptors(pid: int, ports: dict[str, int]) -> collections.Counter[str]:
    """
    The open descriptors of process C{pid}, by what they are: C{listening},
    C{client} (a connection accepted on C{ports["server"]}), a connection to
    one of the other C{ports} (C{pg}, C{redis}, C{upstream}), C{socket}
    (any other socket), C{other} (not a socket).
    """
    inodes: set[int] = set()
    out: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = _SOCKET.fullmatch(target)
        if m is None:
            out["other"] += 1
        else:
            inodes.add(int(m[1]))
    roles = {port: role for role, port in ports.items()}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                inode = int(fields[9])
                if inode not in inodes:
                    continue
                inodes.discard(inode)
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "0A":
                    out["listening"] += 1
                elif local == ports["server"]:
                    out["client"] += 1
                else:
                    out[roles.get(remote, "socket")] += 1
    out["socket"] += len(inodes)
    return out


def test_killed_clients_cancel_their_tasks(
    aio_dashboard: Callable[..., AioDashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
    redis_server: RedisExecutor,  # noqa: F811
    redis_db: Any,  # noqa: F811
) -> None:
    server = aio_dashboard()
    info = pg_db.info
    ports = {
        "server": server.port,
        "pg": int(info.port),
        "redis": int(redis_server.port),
        "upstream": int(upstream.url.rsplit(":", 1)[1]),
    }

    def wave(prefix: str) -> None:
        upstream.hold_until = 20
        paths = [f"/{prefix}/{i}" for i in range(20)]
        results, _ = get_many(server.port, paths, concurrency=20)
        for path, (status, page) in zip(paths, results, strict=True):
            check_page(status, page, path)

    def settled() -> dict[str, Any]:
        """The pools once at rest, no client connection left."""
        page = eventually(server.pools, pools_at_rest)
        assert pools_at_rest(page), page
        eventually(lambda: descriptors(server.pid, ports)["client"], lambda n: n == 0)
        return page

    wave("before")
    rest = settled()
    before = descriptors(server.pid, ports)
    fds_before = server.fds()

    # 1. Paused in the upstream call, which never answers them.
    requests = upstream.requests
    socks = _send(server.port, [f"/slow/{i}" for i in range(10)])
    assert eventually(lambda: upstream.pending, lambda n: n == 10) == 10
    tasks = server.pools()["tasks"]
    assert tasks >= rest["tasks"] + 10
    connections = upstream.connections
    _kill(list(socks.values()))
    # httpx closed the connections of the calls cut short: the upstream's
    # handlers saw them go.
    assert eventually(lambda: upstream.pending, lambda n: n == 0) == 0
    assert eventually(
        lambda: upstream.connections, lambda n: n == connections - 10
    ) == (connections - 10)
    assert upstream.requests == requests + 10
    page = settled()
    assert page["tasks"] == rest["tasks"]
    assert visits(pg_db, "/slow/%") == 0

    # 2. Paused in PostgreSQL: the test locks the table, so the INSERTs of
    # the five requests that have a pooled connection wait for the lock,
    # and the other three wait for a connection.
    with psycopg.connect(
        host=info.host, port=info.port, user=info.user, dbname=info.dbname
    ) as locker:
        locker.execute("LOCK TABLE aio_dashboard_visits IN EXCLUSIVE MODE")
        socks = _send(server.port, [f"/locked/{i}" for i in range(8)])
        waiting = eventually(lambda: backends(pg_db)["waiting"], lambda n: n == PG_POOL)
        assert waiting == PG_POOL
        assert server.pools()["pg"] == {"size": PG_POOL, "idle": 0}
        _kill(list(socks.values()))
        # asyncpg cancelled the queries (PostgreSQL's cancel request), the
        # transactions rolled back, the connections are back in the pool,
        # with the lock still held.
        page = settled()
        assert backends(pg_db) == {"idle": PG_POOL}
        assert page["tasks"] == rest["tasks"]
        locker.rollback()
    assert visits(pg_db, "/locked/%") == 0

    # 3. Paused in Redis: CLIENT PAUSE WRITE holds the INCR of each
    # request's pipeline (the GET before it is answered).
    redis_db.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    try:
        socks = _send(server.port, [f"/redis/{i}" for i in range(6)])
        in_use = eventually(lambda: server.pools()["redis"]["in_use"], lambda n: n == 6)
        assert in_use == 6
        _kill(list(socks.values()))
        # redis-py dropped the connections whose reply never came and gave
        # them back to the pool.
        page = settled()
        assert page["tasks"] == rest["tasks"]
    finally:
        redis_db.execute_command("CLIENT", "UNPAUSE")
    assert visits(pg_db, "/redis/%") == 0

    wave("after")
    settled()
    after = descriptors(server.pid, ports)
    fds_after = server.fds()
    print(
        f"\nserver descriptors: {fds_before} before, {fds_after} after;"
        f" before {dict(before)}, after {dict(after)}"
    )
    # Socket by socket: no client connection left, the same listening
    # socket, the asyncpg pool's connections and nothing else to
    # PostgreSQL (its cancel requests' connections are closed), at most the
    # Redis pool's and the upstream pool's own (their count follows the
    # load: redis-py reconnects what it dropped when it needs it, httpx
    # opens one when none is idle at that moment), each of the upstream
    # ones a connection the upstream has open too, and the same
    # descriptors that are not sockets.
    assert after["client"] == 0
    assert after["listening"] == before["listening"] == 1
    assert after["pg"] == before["pg"] == PG_POOL
    assert after["redis"] <= REDIS_POOL
    assert after["upstream"] <= HTTP_POOL
    assert (
        eventually(lambda: upstream.connections, lambda n: n == after["upstream"])
        == after["upstream"]
    )
    assert after["socket"] == before["socket"]
    assert after["other"] == before["other"]
    assert visits(pg_db) == 40
    assert server.threads() == 1


def test_timeout_cancels_the_task(
    aio_dashboard: Callable[..., AioDashboard],
    upstream: Upstream,  # noqa: F811
    pg_db: Connection,  # noqa: F811
) -> None:
    server = aio_dashboard(timeout=1.0)
    check_page(*server.get("/warm-up"), "/warm-up")
    rest = server.pools()
    status, page = server.get("/slow/timeout")
    assert (status, page) == (504, {"error": "timed out"})
    assert eventually(lambda: upstream.pending, lambda n: n == 0) == 0
    page = eventually(server.pools, lambda p: p["tasks"] == rest["tasks"])
    assert page["tasks"] == rest["tasks"] and pools_at_rest(page)
    assert visits(pg_db, "/slow/%") == 0
    check_page(*server.get("/fine"), "/fine")
    assert visits(pg_db) == 2


def test_redis_over_unix_socket(
    aio_dashboard: Callable[..., AioDashboard],
    pg_db: Connection,  # noqa: F811
) -> None:
    server = aio_dashboard(redis_unix=True)
    paths = [f"/unix/{i}" for i in range(20)]
    results, _ = get_many(server.port, paths, concurrency=20)
    for path, (status, page) in zip(paths, results, strict=True):
        check_page(status, page, path)
    assert visits(pg_db) == 20
