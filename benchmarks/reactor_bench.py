#!/usr/bin/env python
"""
Reactor benchmarks: the same Twisted code on three reactors.

Usage::

    python benchmarks/reactor_bench.py [--quick] [--only NAME[,NAME...]]

Reactors
--------
``rust``
    C{twisted_shim.install()} (L{twisted_shim.reactor.RustReactor}).
``epoll``
    C{twisted.internet.epollreactor.install()}.
``asyncio-uvloop``
    C{twisted.internet.asyncioreactor.install(loop)} on C{uvloop.new_event_loop()}.

Method
------
Every (benchmark, reactor) pair runs in a fresh subprocess, because a reactor
can be installed only once per process. The subprocess installs the reactor,
sets the benchmark up once (listening ports, connections, the HTTP site; none
of it timed), then measures it 3 times in a row inside one ``reactor.run()``,
with a C{gc.collect()} and a short pause between runs. The table reports the
best (highest-rate) of the 3 runs; the JSON file keeps every run and the
median. Timing is C{time.perf_counter()} in the reactor thread. The benchmark
code is identical on every reactor and uses only Twisted's public API; all
traffic is over 127.0.0.1, client and server in the same process (one core).

A subprocess that runs longer than the timeout (120 s) is killed and recorded
as ``timeout``; one that exits non-zero, raises, or logs an error through
C{twisted.logger} is recorded as ``error``, with the tail of its stderr. The
harness then carries on with the next pair.

Benchmarks (default size; ``--quick`` uses smaller ones)
---------------------------------------------------------
``calllater_fire``
    Schedule 1,000,000 C{reactor.callLater((i % 1000) * 1e-6, f)} and run the
    reactor until C{f} has run 1,000,000 times. Rate: timers per second, from
    the first C{callLater} to the last call (scheduling included).
``calllater_half_cancelled``
    The same, but every other C{DelayedCall} is cancelled right after it is
    scheduled. Rate: scheduled timers per second, until the last live timer
    ran. (Also checks no cancelled call ran.)
``callfromthread``
    One non-reactor thread calls C{reactor.callFromThread(f)} 100,000 times as
    fast as it can. Rate: calls per second, from starting the thread to the
    last C{f} running in the reactor thread.
``tcp_pingpong``
    100 TCP connections between a C{Protocol} client and an echoing
    C{Protocol} server (C{setTcpNoDelay(True)} on both sides); each client
    sends 64 bytes, and sends again whenever the 64-byte echo is back, until
    100,000 round trips in total are done. Rate: round trips per second.
``tcp_pingpong_idle``
    The same ping-pong with 10,000 more idle TCP connections open on the
    reactor. Their client ends are plain sockets held by a helper process,
    so the reactor holds one descriptor per idle connection, as a server
    would. The soft RLIMIT_NOFILE is raised to the hard limit; if that cannot
    hold them, as many as fit are opened (the table notes how many), and the
    benchmark is skipped if fewer than half fit. Opening them is not timed.
``bulk_1gib``
    One TCP connection; the client writes 1 GiB in 64 KiB C{transport.write}
    calls from a registered push producer (it stops writing when paused and
    resumes when the transport asks), and the server protocol counts bytes.
    Rate: MiB per second, from the first write to the last byte received.
``agent_requests``
    A C{twisted.web.server.Site} serving b"hello" from a leaf C{Resource}, and
    a C{twisted.web.client.Agent} with a persistent C{HTTPConnectionPool}
    (maxPersistentPerHost = 50) running 20,000 GETs, 50 at a time, each body
    read with C{readBody}. Rate: requests per second.

Output: a plain-text table and a Markdown table (benchmark, rate on each
reactor, rust/epoll and uvloop/epoll ratios of the rates; above 1 is faster
than epoll), with the Python, Twisted, uvloop and twisted_shim versions in the
header, and JSON in C{benchmarks/results/reactor.json}
(C{reactor-quick.json} with C{--quick}). With C{--only}, the other benchmarks
already in that JSON file are kept.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from _machine import core_build, machine_meta
from _report import (
    markdown_table,
    plain_table,
    print_list,
    print_markdown,
    read_previous,
    write_json,
)

REACTORS: tuple[str, ...] = ("rust", "epoll", "asyncio-uvloop")
BASELINE = "epoll"
REPEATS = 3
DEFAULT_TIMEOUT = 120.0
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Lines the worker prints on stdout for the harness; everything else is noise.
_RUN = "@@RUN "
_NOTE = "@@NOTE "
_SKIP = "@@SKIP "

# A Twisted reactor; its interfaces (IReactorTime, IReactorTCP, ...) are not
# one type, so the benchmark code takes it untyped.
Reactor = Any
Params = dict[str, int]


# --------------------------------------------------------------------------
# Benchmark registry


@dataclass(frozen=True)
class Benchmark:
    name: str
    unit: str
    full: Params
    quick: Params
    describe: Callable[[Params], str]
    run: BenchFn


@dataclass
class Measurement:
    """One timed run: C{ops} operations (or MiB) in C{seconds}."""

    ops: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


# A benchmark: set up, then emit() one Measurement per run.
Emit = Callable[[Measurement], None]
BenchFn = Callable[[Reactor, Params, Emit], Awaitable[None]]


class Skip(Exception):
    """The benchmark cannot run here (e.g. too few file descriptors)."""


BENCHMARKS: dict[str, Benchmark] = {}


def _register(
    name: str,
    unit: str,
    full: Params,
    quick: Params,
    describe: Callable[[Params], str],
) -> Callable[[BenchFn], BenchFn]:
    def deco(fn: BenchFn) -> BenchFn:
        BENCHMARKS[name] = Benchmark(name, unit, full, quick, describe, fn)
        return fn

    return deco


# --------------------------------------------------------------------------
# Worker side: helpers (Twisted is imported only inside the worker functions,
# so the harness never imports a reactor).


async def _pause(reactor: Reactor, seconds: float = 0.05) -> None:
    """Let the reactor breathe between runs, and collect garbage."""
    from twisted.internet.task import deferLater

    gc.collect()
    await deferLater(reactor, seconds, lambda: None)


class _Tally:
    """A counter that fires Deferreds when it reaches given values."""

    def __init__(self) -> None:
        self.count = 0
        self.failure: Any = None
        self._waiters: list[tuple[int, Any]] = []

    def add(self) -> None:
        self.count += 1
        if self._waiters:
            ready = [w for w in self._waiters if w[0] <= self.count]
            self._waiters = [w for w in self._waiters if w[0] > self.count]
            for _, d in ready:
                d.callback(self.count)

    def fail(self, reason: Any) -> None:
        self.failure = reason
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(reason)

    def wait_for(self, target: int) -> Any:
        from twisted.internet.defer import Deferred, fail, succeed

        if self.failure is not None:
            return fail(self.failure)
        if self.count >= target:
            return succeed(self.count)
        d: Deferred[int] = Deferred()
        self._waiters.append((target, d))
        return d


# --------------------------------------------------------------------------
# Timers


async def _timers(reactor: Reactor, n: int, cancel_half: bool) -> Measurement:
    from twisted.internet.defer import Deferred

    expected = n - n // 2 if cancel_half else n
    done: Deferred[float] = Deferred()
    fired = 0

    def tick() -> None:
        nonlocal fired
        fired += 1
        if fired == expected:
            done.callback(perf_counter())

    call_later = reactor.callLater
    start = perf_counter()
    if cancel_half:
        for i in range(n):
            call = call_later((i % 1000) * 1e-6, tick)
            if i & 1:
                call.cancel()
    else:
        for i in range(n):
            call_later((i % 1000) * 1e-6, tick)
    scheduled = perf_counter()
    end = await done
    # Every timer was due 1 ms after it was scheduled: a cancelled one that
    # still runs would have run by now.
    await _pause(reactor, 0.01)
    if fired != expected:
        raise AssertionError(f"{fired} timers ran, expected {expected}")
    return Measurement(
        n, end - start, {"schedule_s": scheduled - start, "fire_s": end - scheduled}
    )


@_register(
    "calllater_fire",
    "timers/s",
    {"timers": 1_000_000},
    {"timers": 100_000},
    lambda p: f"{p['timers']:,} callLater((i % 1000) µs), run until all fired",
)
async def bench_calllater_fire(reactor: Reactor, p: Params, emit: Emit) -> None:
    for _ in range(p["repeats"]):
        await _pause(reactor)
        emit(await _timers(reactor, p["timers"], cancel_half=False))


@_register(
    "calllater_half_cancelled",
    "timers/s",
    {"timers": 1_000_000},
    {"timers": 100_000},
    lambda p: f"{p['timers']:,} callLater, every other one cancelled at once",
)
async def bench_calllater_half_cancelled(
    reactor: Reactor, p: Params, emit: Emit
) -> None:
    for _ in range(p["repeats"]):
        await _pause(reactor)
        emit(await _timers(reactor, p["timers"], cancel_half=True))


# --------------------------------------------------------------------------
# callFromThread


@_register(
    "callfromthread",
    "calls/s",
    {"calls": 100_000},
    {"calls": 50_000},
    lambda p: f"{p['calls']:,} callFromThread from one thread",
)
async def bench_callfromthread(reactor: Reactor, p: Params, emit: Emit) -> None:
    for _ in range(p["repeats"]):
        await _pause(reactor)
        emit(await _call_from_thread(reactor, p["calls"]))


async def _call_from_thread(reactor: Reactor, n: int) -> Measurement:
    from twisted.internet.defer import Deferred

    done: Deferred[float] = Deferred()
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.callback(perf_counter())

    def pump() -> None:
        call_from_thread = reactor.callFromThread
        for _ in range(n):
            call_from_thread(hit)

    thread = threading.Thread(target=pump, name="callFromThread-pump")
    start = perf_counter()
    thread.start()
    end = await done
    thread.join()
    return Measurement(n, end - start)


# --------------------------------------------------------------------------
# TCP ping-pong

MESSAGE = bytes(range(64))


def _echo_factory(accepted: _Tally) -> Any:
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            accepted.add()

        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    return Factory.forProtocol(Echo)


def _client_factory(build: Callable[[], Any], connected: _Tally) -> Any:
    from twisted.internet.protocol import ClientFactory

    class _Factory(ClientFactory):
        def buildProtocol(self, addr: Any) -> Any:
            return build()

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            connected.fail(reason)

    return _Factory()


class _Rally:
    """One ping-pong run: C{target} round trips over all the clients."""

    def __init__(self, target: int) -> None:
        from twisted.internet.defer import Deferred

        self.target = target
        self.sent = 0
        self.completed = 0
        self.done: Deferred[float] = Deferred()

    def serve(self, client: Any) -> None:
        self.sent += 1
        client.ping()

    def returned(self, client: Any) -> None:
        self.completed += 1
        if self.sent < self.target:
            self.sent += 1
            client.ping()
        elif self.completed == self.target:
            self.done.callback(perf_counter())


def _pinger_class(connected: _Tally) -> Any:
    from twisted.internet.protocol import Protocol

    class Pinger(Protocol):
        rally: _Rally | None = None
        pending = 0

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            connected.add()

        def ping(self) -> None:
            self.pending = len(MESSAGE)
            self.transport.write(MESSAGE)

        def dataReceived(self, data: bytes) -> None:
            self.pending -= len(data)
            if self.pending == 0:
                assert self.rally is not None
                self.rally.returned(self)
            elif self.pending < 0:
                raise AssertionError("more echoed than sent")

    return Pinger


def _fd_budget(idle: int, conns: int) -> tuple[int, str | None]:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit; return how many idle
    connections fit (and a note if fewer than C{idle}).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if idle == 0 or limit == resource.RLIM_INFINITY:
        return idle, None
    headroom = 2 * conns + 100  # ping-pong pairs, listener, poller, waker, stdio
    # Idle connections cost one descriptor here (their clients are elsewhere).
    fit = max(0, (limit - headroom) // 100 * 100)
    if fit >= idle:
        return idle, None
    message = (
        f"RLIMIT_NOFILE hard limit is {limit}: {idle:,} idle connections need "
        f"{idle + headroom} descriptors"
    )
    if fit < idle // 2:
        raise Skip(message + f"; only {fit:,} fit (raise it with `ulimit -Hn`)")
    return fit, message + f"; ran with {fit:,} idle connections instead"


async def _pingpong(reactor: Reactor, p: Params, emit: Emit, note: str | None) -> None:
    conns, trips, idle = p["conns"], p["trips"], p.get("idle", 0)
    accepted = _Tally()
    port = reactor.listenTCP(
        0, _echo_factory(accepted), backlog=1024, interface="127.0.0.1"
    )
    host, portno = "127.0.0.1", port.getHost().port

    # Idle connections first. Their client ends live in a helper process
    # (plain blocking sockets), so this process holds one descriptor per idle
    # connection, as a server would, and 10,000 fit the descriptor limit.
    holder = None
    opened_start = perf_counter()
    if idle:
        holder = subprocess.Popen(
            [sys.executable, "-c", _IDLE_HOLDER, host, str(portno), str(idle)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        await accepted.wait_for(idle)
    open_seconds = perf_counter() - opened_start

    # The ping-pong connections.
    connected = _Tally()
    pinger = _pinger_class(connected)
    clients: list[Any] = []

    def build() -> Any:
        client = pinger()
        clients.append(client)
        return client

    factory = _client_factory(build, connected)
    for _ in range(conns):
        reactor.connectTCP(host, portno, factory)
    await connected.wait_for(conns)
    await accepted.wait_for(idle + conns)

    extra: dict[str, float] = {"conns": conns, "idle": idle}
    if idle:
        extra["idle_open_s"] = open_seconds
    for _ in range(p["repeats"]):
        await _pause(reactor)
        rally = _Rally(trips)
        for client in clients:
            client.rally = rally
        start = perf_counter()
        for client in clients:
            rally.serve(client)
        end = await rally.done
        emit(Measurement(trips, end - start, dict(extra)))
    if holder is not None:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    if note:
        print(_NOTE + json.dumps(note), flush=True)


_IDLE_HOLDER = """
import resource, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [socket.create_connection((host, port)) for _ in range(n)]
sys.stdin.read()
"""


@_register(
    "tcp_pingpong",
    "round trips/s",
    {"conns": 100, "trips": 100_000},
    {"conns": 100, "trips": 20_000},
    lambda p: f"{p['conns']} conns, 64-byte echo, {p['trips']:,} round trips",
)
async def bench_tcp_pingpong(reactor: Reactor, p: Params, emit: Emit) -> None:
    await _pingpong(reactor, p, emit, None)


@_register(
    "tcp_pingpong_idle",
    "round trips/s",
    {"conns": 100, "trips": 100_000, "idle": 10_000},
    {"conns": 100, "trips": 20_000, "idle": 10_000},
    lambda p: (
        f"as tcp_pingpong, {p['trips']:,} round trips, + {p['idle']:,} idle conns open"
    ),
)
async def bench_tcp_pingpong_idle(reactor: Reactor, p: Params, emit: Emit) -> None:
    idle, note = _fd_budget(p["idle"], p["conns"])
    await _pingpong(reactor, {**p, "idle": idle}, emit, note)


# --------------------------------------------------------------------------
# Bulk transfer

CHUNK = 64 * 1024
MIB = 1024 * 1024


async def _bulk_once(reactor: Reactor, total: int) -> Measurement:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    received: Deferred[float] = Deferred()
    server_lost: Deferred[None] = Deferred()
    connected = _Tally()
    started: list[float] = []
    chunk = b"\xa5" * CHUNK

    class Sink(Protocol):
        count = 0

        def dataReceived(self, data: bytes) -> None:
            self.count += len(data)
            if self.count >= total and not received.called:
                received.callback(perf_counter())

        def connectionLost(self, reason: Any = None) -> None:
            if self.count != total:
                server_lost.errback(
                    AssertionError(f"received {self.count} of {total} bytes")
                )
            else:
                server_lost.callback(None)

    @implementer(IPushProducer)
    class Source(Protocol):
        remaining = total
        paused = False

        def connectionMade(self) -> None:
            connected.add()
            self.transport.registerProducer(self, True)
            started.append(perf_counter())
            self.resumeProducing()

        def resumeProducing(self) -> None:
            self.paused = False
            write = self.transport.write
            # transport.write calls pauseProducing when its buffer is full.
            while not self.paused and self.remaining > 0:
                self.remaining -= CHUNK
                write(chunk)
            if self.remaining <= 0 and not self.paused:
                self.paused = True
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def pauseProducing(self) -> None:
            self.paused = True

        def stopProducing(self) -> None:
            self.paused = True
            self.remaining = 0

    port = reactor.listenTCP(0, Factory.forProtocol(Sink), interface="127.0.0.1")
    reactor.connectTCP(
        "127.0.0.1", port.getHost().port, _client_factory(Source, connected)
    )
    await connected.wait_for(1)
    end = await received
    await server_lost
    await port.stopListening()
    return Measurement(total / MIB, end - started[0])


@_register(
    "bulk_1gib",
    "MiB/s",
    {"mib": 1024},
    {"mib": 256},
    lambda p: f"1 conn, {p['mib']:,} MiB in 64 KiB writes from a push producer",
)
async def bench_bulk(reactor: Reactor, p: Params, emit: Emit) -> None:
    if p["mib"] * MIB % CHUNK:
        raise ValueError("size must be a multiple of the chunk size")
    for _ in range(p["repeats"]):
        await _pause(reactor)
        emit(await _bulk_once(reactor, p["mib"] * MIB))


# --------------------------------------------------------------------------
# HTTP: Agent against Site


@_register(
    "agent_requests",
    "requests/s",
    {"requests": 20_000, "concurrency": 50},
    {"requests": 3_000, "concurrency": 50},
    lambda p: (
        f"Agent + persistent pool -> Site, {p['requests']:,} GETs, "
        f"{p['concurrency']} concurrent"
    ),
)
async def bench_agent(reactor: Reactor, p: Params, emit: Emit) -> None:
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Hello(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            return b"hello"

    port = reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = p["concurrency"]
    agent = Agent(reactor, pool=pool)
    url = f"http://127.0.0.1:{port.getHost().port}/".encode()

    for _ in range(p["repeats"]):
        await _pause(reactor)
        remaining = p["requests"]

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await agent.request(b"GET", url)
                body = await readBody(response)
                if body != b"hello":
                    raise AssertionError(f"unexpected body {body!r}")

        start = perf_counter()
        await gatherResults(
            [Deferred.fromCoroutine(client()) for _ in range(p["concurrency"])],
            consumeErrors=True,
        )
        emit(Measurement(p["requests"], perf_counter() - start))
    await pool.closeCachedConnections()


# --------------------------------------------------------------------------
# Worker process


def _install_reactor(name: str) -> Reactor:
    if name == "rust":
        import twisted_shim

        twisted_shim.install()
    elif name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
    elif name == "asyncio-uvloop":
        import asyncio

        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        from twisted.internet import asyncioreactor

        asyncioreactor.install(loop)
    else:
        raise ValueError(f"unknown reactor {name!r}")
    from twisted.internet import reactor

    return reactor


def _log_errors() -> list[str]:
    """
    Send C{twisted.logger} warnings and errors to stderr; return the list the
    errors (and criticals, e.g. unhandled errors in Deferreds) go to.
    """
    from twisted.logger import LogLevel, eventAsText, globalLogBeginner

    errors: list[str] = []
    loud = {LogLevel.warn, LogLevel.error, LogLevel.critical}

    def observer(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level not in loud:
            return
        text = eventAsText(event, includeSystem=True)
        print(text, file=sys.stderr, flush=True)
        if level is not LogLevel.warn:
            errors.append(text)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return errors


def worker(bench_name: str, reactor_name: str, params: Params) -> int:
    bench = BENCHMARKS[bench_name]
    reactor = _install_reactor(reactor_name)
    errors = _log_errors()
    outcome: dict[str, Any] = {}

    def emit(m: Measurement) -> None:
        run = {"ops": m.ops, "seconds": m.seconds, "rate": m.rate, **m.extra}
        print(_RUN + json.dumps(run), flush=True)

    def start() -> None:
        from twisted.internet.defer import Deferred

        async def main() -> None:
            await bench.run(reactor, params, emit)

        d = Deferred.fromCoroutine(main())
        d.addErrback(lambda f: outcome.setdefault("failure", f))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()

    failure = outcome.get("failure")
    if failure is not None:
        if failure.check(Skip):
            print(_SKIP + json.dumps(str(failure.value)), flush=True)
            return 0
        print(failure.getTraceback(), file=sys.stderr, flush=True)
        return 1
    if errors:
        print(f"{len(errors)} error(s) logged by Twisted", file=sys.stderr, flush=True)
        return 2
    return 0


# --------------------------------------------------------------------------
# Harness


@dataclass
class PairResult:
    status: str  # "ok", "error", "timeout", "skipped"
    runs: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    note: str | None = None
    error: str | None = None

    @property
    def best(self) -> float | None:
        return max(r["rate"] for r in self.runs) if self.ok else None

    @property
    def median(self) -> float | None:
        return statistics.median(r["rate"] for r in self.runs) if self.ok else None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.runs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "best": self.best,
            "median": self.median,
            "runs": self.runs,
            "wall_s": round(self.wall_s, 3),
        }
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_pair(bench: str, reactor: str, params: Params, timeout: float) -> PairResult:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        bench,
        "--reactor",
        reactor,
        "--params",
        json.dumps(params),
    ]
    started = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, text=True)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, rc = _text(exc.stdout), _text(exc.stderr), None
        timed_out = True
    result = PairResult("ok", wall_s=time.monotonic() - started)
    for line in stdout.splitlines():
        if line.startswith(_RUN):
            result.runs.append(json.loads(line[len(_RUN) :]))
        elif line.startswith(_NOTE):
            result.note = json.loads(line[len(_NOTE) :])
        elif line.startswith(_SKIP):
            result.status = "skipped"
            result.note = json.loads(line[len(_SKIP) :])
    if timed_out:
        result.status = "timeout"
        result.error = f"killed after {timeout:.0f} s\n" + _tail(stderr)
    elif rc != 0:
        result.status = "error"
        result.error = f"exit status {rc}\n" + _tail(stderr)
    elif result.status == "ok" and not result.runs:
        result.status = "error"
        result.error = "no measurement reported\n" + _tail(stderr)
    return result


def _fmt_rate(value: float | None, unit: str, status: str) -> str:
    if value is None:
        return status
    if unit == "MiB/s":
        return f"{value:,.0f}"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("twisted", "uvloop", "twisted_shim"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _rows(
    names: Iterable[str], results: dict[str, dict[str, PairResult]]
) -> list[list[str]]:
    rows = []
    for name in names:
        bench = BENCHMARKS[name]
        by = results[name]
        cells = [name, bench.unit]
        for r in REACTORS:
            pr = by.get(r)
            cells.append(_fmt_rate(pr.best, bench.unit, pr.status) if pr else "not run")
        base = by.get(BASELINE)
        base_best = base.best if base else None
        for r in ("rust", "asyncio-uvloop"):
            pr = by.get(r)
            cells.append(_fmt_ratio(pr.best if pr else None, base_best))
        rows.append(cells)
    return rows


HEADERS = ["benchmark", "unit", "rust", "epoll", "uvloop", "rust/epoll", "uvloop/epoll"]
ALIGN_RIGHT = [False, False, True, True, True, True, True]


def _workloads(names: Iterable[str], params: dict[str, Params]) -> list[str]:
    return [f"{n}: {BENCHMARKS[n].describe(params[n])}" for n in names]


def _notes(
    names: Iterable[str], results: dict[str, dict[str, PairResult]]
) -> list[str]:
    """Per-benchmark notes, one line per distinct note (with its reactors)."""
    out = []
    for name in names:
        by_note: dict[str, list[str]] = {}
        for reactor, pr in results[name].items():
            if pr.note:
                by_note.setdefault(pr.note, []).append(reactor)
        for note, reactors in by_note.items():
            where = (
                ""
                if len(reactors) == len(results[name])
                else f" ({', '.join(reactors)})"
            )
            out.append(f"{name}{where}: {note}")
    return out


def _header(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"Python {v['python']}, Twisted {v['twisted']}, uvloop {v['uvloop']}, "
        f"twisted_shim {v['twisted_shim']} ({meta['core_build']})",
        f"{meta['cpu']} ({meta['cpus']} CPUs), {meta['platform']}, "
        f"1-min load {meta['loadavg_start']:.2f} at start"
        + (f", {meta['loadavg_end']:.2f} at end" if "loadavg_end" in meta else ""),
        f"{'quick' if meta['quick'] else 'full'} mode; rates are the BEST of "
        f"{meta['repeats']} runs, each (benchmark, reactor) in a fresh subprocess; "
        "ratios > 1 are faster than epoll",
        *([f"WARNING: {meta['warning']}"] if "warning" in meta else []),
    ]


def harness(args: argparse.Namespace) -> int:
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
            print(f"choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
    reactors = tuple(args.reactors.split(",")) if args.reactors else REACTORS
    bad = [r for r in reactors if r not in REACTORS]
    if bad:
        print(f"unknown reactor(s): {', '.join(bad)}", file=sys.stderr)
        return 2

    params = {
        n: {
            **(BENCHMARKS[n].quick if args.quick else BENCHMARKS[n].full),
            "repeats": args.repeats,
        }
        for n in names
    }
    meta: dict[str, Any] = {
        "versions": _versions(),
        **machine_meta(),
        "quick": args.quick,
        "repeats": args.repeats,
        "statistic": "best",
        "timeout_s": args.timeout,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for line in _header(meta):
        print(line)
    print()

    wall_start = time.monotonic()
    results: dict[str, dict[str, PairResult]] = {}
    total = len(names) * len(reactors)
    step = 0
    for name in names:
        results[name] = {}
        for reactor in reactors:
            step += 1
            print(f"[{step}/{total}] {name} on {reactor} ... ", end="", flush=True)
            pr = run_pair(name, reactor, params[name], args.timeout)
            results[name][reactor] = pr
            unit = BENCHMARKS[name].unit
            if pr.ok:
                rates = ", ".join(_fmt_rate(r["rate"], unit, "") for r in pr.runs)
                print(
                    f"{_fmt_rate(pr.best, unit, '')} {unit} [{rates}] "
                    f"({pr.wall_s:.1f} s)"
                )
            else:
                print(f"{pr.status.upper()} ({pr.wall_s:.1f} s)")
    wall = time.monotonic() - wall_start
    meta["wall_s"] = round(wall, 1)
    meta["loadavg_end"] = os.getloadavg()[0]
    core_now = core_build()
    if core_now.split(" built ")[0] != meta["core_build"].split(" built ")[0]:
        meta["warning"] = (
            f"the Rust extension changed during the run (now {core_now}); "
            "rust results may mix builds"
        )

    rows = _rows(names, results)
    workloads = _workloads(names, params)
    print()
    for line in _header(meta):
        print(line)
    print()
    print(plain_table(HEADERS, rows, ALIGN_RIGHT))
    print()
    print_list("Workloads", workloads)
    notes = _notes(names, results)
    if notes:
        print_list("Notes", notes)
    failures = [
        (name, r, pr)
        for name in names
        for r, pr in results[name].items()
        if pr.status in ("error", "timeout")
    ]
    if failures:
        print("Failures:")
        for name, r, pr in failures:
            print(f"  {name} on {r}: {pr.status}")
            for line in (pr.error or "").splitlines():
                print(f"    | {line}")
    print()
    print_markdown(
        _header(meta),
        markdown_table(HEADERS, rows, ALIGN_RIGHT, code_columns=1),
        [*workloads, *(f"note: {n}" for n in notes)],
    )

    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("reactor-quick.json" if args.quick else "reactor.json")
    )
    _write_json(path, meta, names, params, results, merge=bool(args.only))
    print(f"wrote {path}; wall time {wall:.1f} s")
    return 0


def _write_json(
    path: Path,
    meta: dict[str, Any],
    names: list[str],
    params: dict[str, Params],
    results: dict[str, dict[str, PairResult]],
    merge: bool,
) -> None:
    benchmarks = read_previous(path, "benchmarks") if merge else {}
    for name in names:
        bench = BENCHMARKS[name]
        by = results[name]
        base = by.get(BASELINE)
        entry: dict[str, Any] = {
            "unit": bench.unit,
            "workload": bench.describe(params[name]),
            "params": params[name],
            "date": meta["date"],
            "core_build": meta["core_build"],
            "reactors": {r: pr.to_json() for r, pr in by.items()},
        }
        for r in ("rust", "asyncio-uvloop"):
            pr = by.get(r)
            if pr and pr.best is not None and base and base.best:
                entry[f"{r}/{BASELINE}"] = round(pr.best / base.best, 4)
        benchmarks[name] = entry
    write_json(path, {"meta": meta, "benchmarks": benchmarks})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the same Twisted benchmarks on the rust, epoll and "
        "asyncio-uvloop reactors and print a comparison table.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--reactors",
        metavar="R[,R...]",
        help=f"run only these reactors (default: {','.join(REACTORS)})",
    )
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per pair")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds before a benchmark subprocess is killed",
    )
    parser.add_argument("--json", help="JSON output path")
    # Internal: run one benchmark on one reactor in this process.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--reactor", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.reactor, json.loads(args.params))
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
