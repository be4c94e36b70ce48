"""
The dashboard of C{examples/dashboard.py}, built from asyncio client
libraries instead of Twisted ones, served by the same WSGI host. For each
request it

1. reads a greeting and counts the hit in Redis (redis.asyncio, one
   pipelined round trip), while it calls an upstream HTTP service
   (httpx.AsyncClient), the two at once in an C{asyncio.TaskGroup},
2. records the visit and the upstream's status in PostgreSQL and counts
   the visits, in one transaction on a connection from an asyncpg pool,
3. renders the result as JSON,

all while the request's output is paused: the application gives the
request's coroutine to C{environ["twisted_shim.wait"]}, which runs it as an
asyncio task on the reactor's own loop (C{twisted_shim.aio}) and resumes
the request when it is done. No thread is held while Redis, PostgreSQL or
the upstream answer, so one process on one thread serves many such
requests at once.

    DATABASE_URL=postgresql://app@127.0.0.1/app REDIS_URL=redis://127.0.0.1:6379/0 \\
    UPSTREAM_URL=http://127.0.0.1:8001/ twisted-shim serve examples.aio_dashboard

Configuration, from the environment:

- C{DATABASE_URL}: a PostgreSQL URL or DSN, as asyncpg takes it. Without
  it, libpq's variables apply (C{PGHOST}, C{PGPORT}, C{PGUSER},
  C{PGDATABASE}, C{PGPASSWORD}, ...).
- C{REDIS_URL}: C{redis://[:password@]host[:port][/db]} or
  C{unix:///path/to/redis.sock[?db=N]}; C{redis://127.0.0.1:6379/0} by
  default. The greeting is the key C{dashboard:greeting}, the hits are
  counted in C{aio_dashboard:hits}.
- C{UPSTREAM_URL}: the base URL the request's path is appended to
  (required).
- C{AIO_DASHBOARD_PG_POOL}: connections in the asyncpg pool, opened at
  start (5).
- C{AIO_DASHBOARD_REDIS_POOL}: at most this many Redis connections (10).
- C{AIO_DASHBOARD_HTTP_POOL}: at most this many upstream connections, all
  kept alive (100).
- C{AIO_DASHBOARD_TIMEOUT}: seconds a request may take, in all (10): then
  504. It is the request's only deadline: the host cancels the task, which
  stops whatever the request awaits (the pools and the upstream call have
  no timeouts of their own).

The table C{aio_dashboard_visits} is created on first use. C{GET /_pools}
answers, without touching any service, what the pools hold and how many
asyncio tasks the loop has: for monitoring, and for the example's test.

A client that goes away while its request waits leaves nothing behind: the
host cancels the task, so its coroutine gets C{CancelledError} wherever it
awaits. The C{TaskGroup} cancels the other call; httpx closes an upstream
connection whose response was cut short; redis-py drops a connection
whose reply did not come, and gives it back to its pool; asyncpg cancels a
query in flight (PostgreSQL's cancel request), the transaction rolls back
and the connection goes back to the pool; a request waiting for a pooled
connection leaves the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from twisted.internet import reactor
from twisted.internet.defer import Deferred

GREETING_KEY = "dashboard:greeting"
HITS_KEY = "aio_dashboard:hits"
SCHEMA = """
CREATE TABLE IF NOT EXISTS aio_dashboard_visits (
    id bigserial PRIMARY KEY,
    path text NOT NULL,
    upstream_status integer,
    visited_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLICATION_NAME = "twisted_shim aio dashboard"
#: The path that reports the pools (L{pools}).
POOLS_PATH = "/_pools"


@dataclass(frozen=True)
class Config:
    """The example's configuration (see the module docstring)."""

    dsn: str | None
    redis_url: str
    upstream_url: str
    pg_pool: int
    redis_pool: int
    http_pool: int
    timeout: float

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        upstream = env.get("UPSTREAM_URL")
        if not upstream:
            raise RuntimeError("examples.aio_dashboard needs UPSTREAM_URL")
        return cls(
            dsn=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            upstream_url=upstream.rstrip("/"),
            pg_pool=int(env.get("AIO_DASHBOARD_PG_POOL", "5")),
            redis_pool=int(env.get("AIO_DASHBOARD_REDIS_POOL", "10")),
            http_pool=int(env.get("AIO_DASHBOARD_HTTP_POOL", "100")),
            timeout=float(env.get("AIO_DASHBOARD_TIMEOUT", "10")),
        )


class Services:
    """The clients every request shares, started by the first request."""

    def __init__(
        self,
        config: Config,
        pg: asyncpg.Pool,
        redis_pool: aioredis.BlockingConnectionPool,
        http: httpx.AsyncClient,
    ) -> None:
        self.config = config
        self.pg = pg
        self.redis_pool = redis_pool
        self.redis = aioredis.Redis(connection_pool=redis_pool)
        self.http = http

    @classmethod
    async def start(cls, config: Config) -> Services:
        pg = await asyncpg.create_pool(
            config.dsn,
            min_size=config.pg_pool,
            max_size=config.pg_pool,
            server_settings={"application_name": APPLICATION_NAME},
        )
        redis_pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url,
            max_connections=config.redis_pool,
            timeout=None,  # the request's deadline is the host's
            client_name=APPLICATION_NAME.replace(" ", "-"),
            decode_responses=True,
        )
        http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=config.http_pool,
                max_keepalive_connections=config.http_pool,
            ),
            timeout=None,  # likewise
        )
        services = cls(config, pg, redis_pool, http)
        try:
            await pg.execute(SCHEMA)
            await services.redis.ping()
        except BaseException:
            await services.close()
            raise
        return services

    async def close(self) -> None:
        """Close the three clients (their connections, their pools)."""
        await self.http.aclose()
        await self.redis.aclose()
        await self.redis_pool.aclose()
        await self.pg.close()


_config: Config | None = None
_starting: asyncio.Task[Services] | None = None


def config() -> Config:
    """The configuration, read from the environment once."""
    global _config
    if _config is None:
        _config = Config.from_environ()
    return _config


async def services() -> Services:
    """
    The shared clients, once started. The first caller starts them in a
    task of their own, which every caller awaits through C{shield}: a
    request that goes away while they start only stops waiting. If starting
    fails, the waiting requests fail, and the next one tries again.
    """
    global _starting
    if _starting is None or (_starting.done() and _started() is None):
        _starting = asyncio.get_running_loop().create_task(_start(config()))
    return await asyncio.shield(_starting)


def _started() -> Services | None:
    """The shared clients if they started, else C{None}."""
    t = _starting
    if t is None or not t.done() or t.cancelled() or t.exception() is not None:
        return None
    return t.result()


async def _start(config: Config) -> Services:
    s = await Services.start(config)
    # Closed when the reactor stops: after the server has drained its
    # requests, under twisted-shim serve.
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before",
        "shutdown",
        lambda: Deferred.fromFuture(asyncio.ensure_future(s.close())),
    )
    return s


async def _count_hit(redis: aioredis.Redis) -> tuple[str | None, int]:
    """The greeting, and this hit's number: one pipelined round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        greeting, hits = await pipe.get(GREETING_KEY).incr(HITS_KEY).execute()
    return greeting, hits


async def _fetch(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The upstream's status and body, or the error that stopped the call."""
    try:
        response = await http.get(url)
    except httpx.HTTPError as e:  # refused, reset, ...: shown as such
        return {"status": None, "error": f"{type(e).__name__}: {e}"}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return {"status": response.status_code, "body": body}


async def dashboard(path: str) -> dict[str, Any]:
    """Everything one request does; run while its output is paused."""
    s = await services()
    async with asyncio.TaskGroup() as calls:
        counted = calls.create_task(_count_hit(s.redis))
        fetched = calls.create_task(_fetch(s.http, s.config.upstream_url + path))
    greeting, hits = counted.result()
    upstream = fetched.result()
    async with s.pg.acquire() as conn, conn.transaction():
        visit = await conn.fetchval(
            "INSERT INTO aio_dashboard_visits (path, upstream_status)"
            " VALUES ($1, $2) RETURNING id",
            path,
            upstream["status"],
        )
        visits = await conn.fetchval("SELECT count(*) FROM aio_dashboard_visits")
    return {
        "path": path,
        "greeting": greeting,
        "hits": hits,
        "upstream": upstream,
        "visit": visit,
        "visits": visits,
    }


def _describe(e: BaseException) -> str:
    """C{Type: message} of what failed (in a C{TaskGroup}: its first error)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


def pools() -> dict[str, Any]:
    """
    What the pools hold (C{None} before the first request started them),
    and how many asyncio tasks the loop has that are not done.
    """
    out: dict[str, Any] = {
        "tasks": len(asyncio.all_tasks(asyncio.get_running_loop())),
        "pg": None,
        "redis": None,
    }
    s = _started()
    if s is not None:
        out["pg"] = {"size": s.pg.get_size(), "idle": s.pg.get_idle_size()}
        (idle, _), (in_use, _) = s.redis_pool.get_connection_count()
        out["redis"] = {"idle": idle, "in_use": in_use}
    return out


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterator[bytes]:
    path = environ["PATH_INFO"]
    if path == POOLS_PATH:
        status, page = "200 OK", pools()
    else:
        waiter = environ["twisted_shim.wait"](dashboard(path), timeout=config().timeout)
        yield b""  # paused until the task is done
        try:
            page = waiter.result()
        except TimeoutError:
            status, page = "504 Gateway Timeout", {"error": "timed out"}
        except Exception as e:
            status, page = "503 Service Unavailable", {"error": _describe(e)}
        else:
            ok = page["upstream"]["status"] == 200
            status = "200 OK" if ok else "502 Bad Gateway"
    body = json.dumps(page).encode() + b"\n"
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    yield body
