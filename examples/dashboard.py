"""
A dashboard served by the WSGI host, built from unmodified Twisted client
libraries. For each request it

1. reads a greeting from Redis (txredisapi),
2. runs a PostgreSQL transaction through a txpostgres ConnectionPool: it
   records the visit, calls an upstream HTTP service with treq, records the
   upstream's answer in the same row, counts the visits, and commits,
3. renders the result as JSON,

all while the request's output is paused (C{environ["twisted_shim.wait"]}):
no thread is held while Redis, PostgreSQL or the upstream answer, so one
process on one thread serves many such requests at once.

    DATABASE_URL=postgresql://app@127.0.0.1/app REDIS_URL=redis://127.0.0.1:6379/0 \\
    UPSTREAM_URL=http://127.0.0.1:8001/ twisted-shim serve examples.dashboard:application

Configuration, from the environment:

- C{DATABASE_URL}: a libpq connection string or URL. Without it, libpq's
  own variables apply (C{PGHOST}, C{PGPORT}, C{PGUSER}, C{PGDATABASE},
  C{PGPASSWORD}, ...).
- C{REDIS_URL}: C{redis://[:password@]host[:port][/db]} or
  C{unix:///path/to/redis.sock[?db=N]}; C{redis://127.0.0.1:6379/0} by
  default. The greeting is the key C{dashboard:greeting}.
- C{UPSTREAM_URL}: the base URL the request's path is appended to
  (required).
- C{DASHBOARD_PG_POOL}: connections in the txpostgres pool (5).
- C{DASHBOARD_TIMEOUT}: seconds a request may wait, in all (10): then 504.

The table C{dashboard_visits} is created on first use. A client that goes
away while its request waits leaves nothing behind: the host cancels the
Deferred the request waits on, and the request's L{_Scope} then stops what
its transaction is waiting for (the upstream call), so the transaction
rolls back (the visit is not recorded) and its connection goes back to the
pool. A request waiting for a pooled connection leaves the queue. A query
already sent is not cancelled (PostgreSQL's cancel is racy and the
connection must finish its protocol exchange anyway): the transaction
rolls back right after it returns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import treq
import txredisapi
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from txpostgres import txpostgres

T = TypeVar("T")

GREETING_KEY = "dashboard:greeting"
SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboard_visits (
    id bigserial PRIMARY KEY,
    path text NOT NULL,
    upstream_status integer,
    visited_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLICATION_NAME = "twisted_shim dashboard"

_log = Logger()


@dataclass(frozen=True)
class Config:
    """The example's configuration (see the module docstring)."""

    dsn: str
    redis_url: str
    upstream_url: str
    pg_pool: int
    timeout: float

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        upstream = env.get("UPSTREAM_URL")
        if not upstream:
            raise RuntimeError("examples.dashboard needs UPSTREAM_URL")
        return cls(
            dsn=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            upstream_url=upstream.rstrip("/"),
            pg_pool=int(env.get("DASHBOARD_PG_POOL", "5")),
            timeout=float(env.get("DASHBOARD_TIMEOUT", "10")),
        )


def connect_redis(url: str) -> Any:
    """A lazily connecting txredisapi handler for C{url}."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        db = int(query.get("db", ["0"])[0])
        return txredisapi.lazyUnixConnection(parts.path, dbid=db, password=password)
    if parts.scheme != "redis":
        raise ValueError(f"REDIS_URL: unsupported scheme {parts.scheme!r}")
    db = int(parts.path.lstrip("/") or query.get("db", ["0"])[0])
    return txredisapi.lazyConnection(
        parts.hostname or "127.0.0.1", parts.port or 6379, dbid=db, password=password
    )


class Services:
    """The clients every request shares, created on the first request."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.redis = connect_redis(config.redis_url)
        self.pg = txpostgres.ConnectionPool(
            None, config.dsn, min=config.pg_pool, application_name=APPLICATION_NAME
        )
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = config.pg_pool
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def start(self) -> Services:
        try:
            await self.pg.start()
            await self.pg.runOperation(SCHEMA)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for conn in self.pg.connections:
            if conn.pollable() is not None:
                conn.close()
        self.redis.disconnect()


_config: Config | None = None
_ready: Services | None = None
_starting = False
_waiting: list[Deferred[Services]] = []


def config() -> Config:
    """The configuration, read from the environment once."""
    global _config
    if _config is None:
        _config = Config.from_environ()
    return _config


def services() -> Deferred[Services]:
    """
    The shared clients, once started: a new Deferred for each caller (so
    that a request that goes away while they start only stops waiting).
    If starting fails, the waiting requests fail, and the next one tries
    again.
    """
    global _starting
    d: Deferred[Services] = Deferred(_waiting.remove)
    if _ready is not None:
        d.callback(_ready)
        return d
    _waiting.append(d)
    if not _starting:
        _starting = True
        Deferred.fromCoroutine(_start_services()).addBoth(_started)
    return d


async def _start_services() -> Services:
    return await Services(config()).start()


def _started(outcome: Services | Failure) -> None:
    global _ready, _starting
    _starting = False
    waiting = list(_waiting)
    del _waiting[:]
    if isinstance(outcome, Failure):
        if not waiting:
            _log.failure("could not start the dashboard's clients", outcome)
        for d in waiting:
            d.errback(outcome)
    else:
        _ready = outcome
        for d in waiting:
            d.callback(outcome)


Cancel = Literal["yes", "no", "while queued"]


class _Scope:
    """
    What one request is waiting for, so that it can be stopped when the
    client goes away (or the request times out).

    L{wait} records each Deferred the request awaits, and whether it may be
    cancelled; L{cancel} marks the request cancelled and cancels what it
    waits for, where that is safe. Once the request is cancelled, L{check}
    and every L{wait} raise L{CancelledError}, so a transaction stops at
    its next step and rolls back.
    """

    def __init__(self) -> None:
        self.cancelled = False
        self._waiting: list[tuple[Deferred[Any], Cancel]] = []

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError()

    async def wait(self, d: Deferred[T], cancel: Cancel = "yes") -> T:
        """
        Await C{d}, then raise L{CancelledError} if the request was
        cancelled meanwhile. C{cancel}: C{"yes"} (Redis, the upstream);
        C{"no"} for a Deferred that must run to its end (a query on a
        txpostgres cursor: the connection must finish the exchange before it
        can roll back); C{"while queued"} for a pool's Deferred, which may
        be cancelled until it has a connection (then it runs the
        transaction, whose own waits are cancelled or stop on their own).
        """
        entry = (d, cancel)
        self._waiting.append(entry)
        if self.cancelled:
            self._cancel(entry)
        try:
            result = await d
        finally:
            self._waiting.remove(entry)
        self.check()
        return result

    def cancel(self) -> None:
        self.cancelled = True
        for entry in list(self._waiting):
            self._cancel(entry)

    @staticmethod
    def _cancel(entry: tuple[Deferred[Any], Cancel]) -> None:
        d, cancel = entry
        if cancel == "yes" or (cancel == "while queued" and not d.called):
            d.cancel()


def _interaction(
    f: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Deferred[T]]:
    def run(cursor: Any, *args: Any) -> Deferred[T]:
        return Deferred.fromCoroutine(f(cursor, *args))

    return run


async def _fetch(scope: _Scope, http: HTTPClient, url: str) -> tuple[int, Any]:
    response = await scope.wait(http.get(url))
    body = await scope.wait(treq.content(response))
    try:
        return response.code, json.loads(body)
    except ValueError:
        return response.code, body.decode("utf-8", "replace")


@_interaction
async def _visit(cursor: Any, scope: _Scope, s: Services, path: str) -> dict[str, Any]:
    async def sql(query: str, *params: Any) -> None:
        scope.check()  # nothing more is sent once the request is cancelled
        await scope.wait(cursor.execute(query, params or None), cancel="no")

    await sql("INSERT INTO dashboard_visits (path) VALUES (%s) RETURNING id", path)
    (visit_id,) = cursor.fetchone()
    try:
        status, body = await _fetch(scope, s.http, s.config.upstream_url + path)
        upstream: dict[str, Any] = {"status": status, "body": body}
    except CancelledError:
        raise
    except Exception as e:
        # Refused, reset, ...: recorded as such. (A call cancelled because
        # the request was fails here too; the next step raises CancelledError.)
        status, upstream = None, {"error": f"{type(e).__name__}: {e}"}
    await sql(
        "UPDATE dashboard_visits SET upstream_status = %s WHERE id = %s",
        status,
        visit_id,
    )
    await sql("SELECT count(*) FROM dashboard_visits")
    (count,) = cursor.fetchone()
    return {"visit": visit_id, "visits": count, "upstream": upstream}


async def dashboard(scope: _Scope, path: str) -> dict[str, Any]:
    """Everything one request does; run while its output is paused."""
    s = await scope.wait(services())
    greeting = await scope.wait(s.redis.get(GREETING_KEY))
    page: dict[str, Any] = {"path": path, "greeting": greeting}
    transaction = s.pg.runInteraction(_visit, scope, s, path)
    page.update(await scope.wait(transaction, cancel="while queued"))
    return page


def start(path: str) -> Deferred[dict[str, Any]]:
    """
    Run L{dashboard} for C{path}. Cancelling the returned Deferred (as the
    host does when the client goes away) cancels the request's L{_Scope};
    the work finishes (rolls back) in the background, and its outcome is
    dropped.
    """
    scope = _Scope()
    result: Deferred[dict[str, Any]] = Deferred(lambda _: scope.cancel())
    work = Deferred.fromCoroutine(dashboard(scope, path))

    def relay(outcome: dict[str, Any] | Failure) -> None:
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        elif isinstance(outcome, Failure) and not outcome.check(CancelledError):
            _log.failure("dashboard request failed after it was cancelled", outcome)

    work.addBoth(relay)
    return result


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterator[bytes]:
    waiter = environ["twisted_shim.wait"](
        start(environ["PATH_INFO"]), timeout=config().timeout
    )
    yield b""  # paused until the Deferred fires
    try:
        page = waiter.result()
    except TimeoutError:
        status, page = "504 Gateway Timeout", {"error": "timed out"}
    except Exception as e:
        status, page = "503 Service Unavailable", {"error": f"{type(e).__name__}: {e}"}
    else:
        upstream = page["upstream"].get("status")
        status = "200 OK" if upstream == 200 else "502 Bad Gateway"
    body = json.dumps(page).encode() + b"\n"
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    yield body
