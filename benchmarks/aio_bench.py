#!/usr/bin/env python
"""
asyncio benchmarks: the same asyncio code on three event loops, in one run.

Usage::

    python benchmarks/aio_bench.py [--smoke] [--only NAME[,NAME...]]
                                   [--loops L[,L...]]

Loops
-----
``rust``
    C{twisted_shim.aio.new_event_loop()}: the asyncio face of a
    C{RustReactor}'s loop (L{twisted_shim.aio.RustEventLoop}).
``default``
    C{asyncio.new_event_loop()} under the default policy: CPython's
    C{SelectorEventLoop} on epoll.
``uvloop``
    C{uvloop.new_event_loop()}.

Method
------
Every (benchmark, loop) pair runs in fresh processes: the process measured
runs under C{taskset -c 0}, its load (the C ping-pong client, the HTTP
server) under C{taskset -c 1}. Each process makes its loop with
C{asyncio.Runner(loop_factory=...)}; the code is the same on every loop
and uses only asyncio's public API. Rates are the best of 3 runs
(C{--smoke}: 2, smaller workloads); the JSON keeps every run. A pair that
fails or runs past its time limit is recorded as an error and the next one
runs. Run it alone on the machine (C{make bench} does; other agents'
benchmarks take C{flock /tmp/twisted_shim_bench.lock}).

Benchmarks (full size)
----------------------
``call_soon``
    A driver callback queues 1,000 C{loop.call_soon(f)} and then itself
    again, until 1,000,000 C{f} have run. Rate: callbacks per second,
    scheduling and running included.
``call_soon_chain``
    One callback that C{call_soon}s itself, 200,000 times: each runs in its
    own iteration of the loop, so this is the cost of an iteration with one
    ready handle (a wait that is a poll, a pass of one handle).
``call_later``
    1,000,000 C{loop.call_later((i % 1000) * 1e-6, f)}, run until every
    C{f} has run (C{reactor_bench.py}'s C{calllater_fire} in asyncio's
    terms). Rate: timers per second, from the first C{call_later} to the
    last C{f}.
``call_soon_threadsafe``
    Another thread calls C{loop.call_soon_threadsafe(f)} 100,000 times as
    fast as it can. Rate: calls per second, from starting the thread to the
    last C{f} on the loop.
``tcp_echo_protocol``
    An echo server, an C{asyncio.Protocol} whose C{data_received} writes
    the data back, listening with C{loop.create_server} on 127.0.0.1
    (TCP_NODELAY is asyncio's default on every loop). The load is
    C{transport_bench.py}'s ping-pong client
    (C{benchmarks/c/pingpong_client.c}): 100 connections, 64-byte
    messages, each sent again once echoed, a warm-up rally, then 3 rallies
    of 100,000 round trips. Rate: round trips per second. The server's CPU
    per round trip (the sum of its threads' schedstat over the rally) is
    the lowest of the 3; "≥" when the client used more than 90% of its
    core (then the rate is the client's).
``tcp_echo_streams``
    The same with C{asyncio.start_server}: per connection,
    C{data = await reader.read(65536)}, C{writer.write(data)},
    C{await writer.drain()}, until end of stream.
``httpx_client``
    An C{httpx.AsyncClient} (one per run, keep-alive) on the loop measured:
    10 tasks GET C{http://127.0.0.1:PORT/} in turn until 5,000 responses
    (C{Hello, world!}, 13 bytes, checked) have come, after 500 of warm-up.
    The server is the same for every loop, in its own process: a minimal
    HTTP/1.1 responder (an C{asyncio.Protocol} on uvloop that answers each
    request head with a fixed keep-alive response), far faster than the
    client. Rate: requests per second; the client process's CPU time per
    request (C{time.process_time}) is reported too.

Output: a table (benchmark, rate per loop, rust/default and rust/uvloop
ratios of the rates), the CPU rows, plain and Markdown, and JSON in
C{benchmarks/results/aio.json} (C{aio-smoke.json} with C{--smoke}); with
C{--only}, the other benchmarks already in that file are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
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
from _transport_procs import (
    CLIENT_CPU,
    SERVER_CPU,
    START_TIMEOUT_S,
    Proc,
    cpu_s,
    rally,
    start_client,
)

LOOPS: tuple[str, ...] = ("rust", "default", "uvloop")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve()
CLIENT_BOUND = 0.9  # a client's share of its core above which it was the limit
HOST = "127.0.0.1"
HELLO = b"Hello, world!"
PAIR_TIMEOUT_S = 300.0

_RUN = "@@RUN "
_PORT = "@@PORT "

Params = dict[str, int]


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new event loop of kind C{name} (see the module's docstring)."""
    if name == "rust":
        from twisted_shim import aio

        return aio.new_event_loop()
    if name == "default":
        return asyncio.DefaultEventLoopPolicy().new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    raise ValueError(f"unknown loop {name!r}")


# --------------------------------------------------------------------------
# Registry


@dataclass
class Measurement:
    """One timed run: C{ops} operations in C{seconds}."""

    ops: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


Emit = Callable[[Measurement], None]
InProcess = Callable[[Params, Emit], Awaitable[None]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    unit: str
    kind: str  # "in-process", "echo" (server + C client), "http" (client + server)
    full: Params
    smoke: Params
    describe: Callable[[Params], str]
    run: InProcess | None = None
    #: The server role of an "echo" benchmark (L{serve}).
    role: str = ""


BENCHMARKS: dict[str, Benchmark] = {}


def _register(
    name: str,
    unit: str,
    full: Params,
    smoke: Params,
    describe: Callable[[Params], str],
) -> Callable[[InProcess], InProcess]:
    def deco(fn: InProcess) -> InProcess:
        BENCHMARKS[name] = Benchmark(
            name, unit, "in-process", full, smoke, describe, fn
        )
        return fn

    return deco


async def _pause() -> None:
    """Between runs: collect garbage, let the loop settle."""
    gc.collect()
    await asyncio.sleep(0.05)


# --------------------------------------------------------------------------
# Scheduling (in the measured process)


async def _repeat(
    p: Params, emit: Emit, once: Callable[[], Awaitable[Measurement]]
) -> None:
    for _ in range(p["repeats"]):
        await _pause()
        emit(await once())


async def _call_soon_once(n: int, batch: int) -> Measurement:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    count = 0

    def f() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(perf_counter())

    def driver(left: int) -> None:
        call_soon = loop.call_soon
        for _ in range(min(batch, left)):
            call_soon(f)
        if left > batch:
            call_soon(driver, left - batch)

    start = perf_counter()
    driver(n)
    end = await done
    return Measurement(n, end - start)


@_register(
    "call_soon",
    "callbacks/s",
    {"calls": 1_000_000, "batch": 1000},
    {"calls": 100_000, "batch": 1000},
    lambda p: f"{p['calls']:,} call_soon(f), {p['batch']:,} queued per pass",
)
async def bench_call_soon(p: Params, emit: Emit) -> None:
    await _repeat(p, emit, lambda: _call_soon_once(p["calls"], p["batch"]))


async def _call_soon_chain_once(n: int) -> Measurement:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    call_soon = loop.call_soon

    def f(left: int) -> None:
        if left:
            call_soon(f, left - 1)
        else:
            done.set_result(perf_counter())

    start = perf_counter()
    call_soon(f, n - 1)
    end = await done
    return Measurement(n, end - start)


@_register(
    "call_soon_chain",
    "callbacks/s",
    {"calls": 200_000},
    {"calls": 20_000},
    lambda p: f"one callback call_soon-ing itself {p['calls']:,} times",
)
async def bench_call_soon_chain(p: Params, emit: Emit) -> None:
    await _repeat(p, emit, lambda: _call_soon_chain_once(p["calls"]))


async def _call_later_once(n: int) -> Measurement:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    fired = 0

    def tick() -> None:
        nonlocal fired
        fired += 1
        if fired == n:
            done.set_result(perf_counter())

    call_later = loop.call_later
    start = perf_counter()
    for i in range(n):
        call_later((i % 1000) * 1e-6, tick)
    scheduled = perf_counter()
    end = await done
    return Measurement(
        n, end - start, {"schedule_s": scheduled - start, "fire_s": end - scheduled}
    )


@_register(
    "call_later",
    "timers/s",
    {"timers": 1_000_000},
    {"timers": 100_000},
    lambda p: f"{p['timers']:,} call_later((i % 1000) µs), run until all fired",
)
async def bench_call_later(p: Params, emit: Emit) -> None:
    await _repeat(p, emit, lambda: _call_later_once(p["timers"]))


async def _threadsafe_once(n: int) -> Measurement:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(perf_counter())

    def pump() -> None:
        threadsafe = loop.call_soon_threadsafe
        for _ in range(n):
            threadsafe(hit)

    thread = threading.Thread(target=pump, name="call_soon_threadsafe-pump")
    start = perf_counter()
    thread.start()
    end = await done
    thread.join()
    return Measurement(n, end - start)


@_register(
    "call_soon_threadsafe",
    "calls/s",
    {"calls": 100_000},
    {"calls": 20_000},
    lambda p: f"{p['calls']:,} call_soon_threadsafe(f) from one other thread",
)
async def bench_call_soon_threadsafe(p: Params, emit: Emit) -> None:
    await _repeat(p, emit, lambda: _threadsafe_once(p["calls"]))


# --------------------------------------------------------------------------
# TCP echo servers (the measured process) and the HTTP server (the load)


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _echo_streams(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(HELLO), HELLO)
)


class _HTTPResponder(asyncio.Protocol):
    """Answers every request head (no bodies: GETs) with L{_RESPONSE}."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(_RESPONSE * heads)


async def _serve(role: str) -> None:
    loop = asyncio.get_running_loop()
    if role == "echo-protocol":
        server = await loop.create_server(_EchoProtocol, HOST, 0, backlog=1024)
    elif role == "echo-streams":
        server = await asyncio.start_server(_echo_streams, HOST, 0, backlog=1024)
    elif role == "http":
        server = await loop.create_server(_HTTPResponder, HOST, 0, backlog=1024)
    else:
        raise ValueError(f"unknown role {role!r}")
    port = server.sockets[0].getsockname()[1]
    print(_PORT + str(port), flush=True)
    # Until SIGTERM (the harness's Proc.stop) or the end of stdin.
    await loop.run_in_executor(None, sys.stdin.read)


def serve(role: str, loop_name: str) -> int:
    with asyncio.Runner(loop_factory=lambda: new_loop(loop_name)) as runner:
        runner.run(_serve(role))
    return 0


def _register_echo(name: str, role: str, what: str) -> None:
    BENCHMARKS[name] = Benchmark(
        name,
        "round trips/s",
        "echo",
        {"conns": 100, "trips": 100_000, "repeats": 3},
        {"conns": 20, "trips": 5_000, "repeats": 2},
        lambda p: (
            f"{what}; C ping-pong client, {p['conns']} conns, 64 B, "
            f"{p['trips']:,} round trips per rally"
        ),
        role=role,
    )


_register_echo("tcp_echo_protocol", "echo-protocol", "asyncio.Protocol echo server")
_register_echo("tcp_echo_streams", "echo-streams", "start_server streams echo server")


# --------------------------------------------------------------------------
# httpx (the measured process is the client)


async def _httpx_requests(client: Any, url: str, n: int, concurrency: int) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            r = await client.get(url)
            if r.status_code != 200 or r.content != HELLO:
                raise AssertionError(
                    f"unexpected response {r.status_code} {r.content!r}"
                )

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _httpx_client(p: Params, emit: Emit) -> None:
    import httpx

    url = f"http://{HOST}:{p['port']}/"
    c = p["concurrency"]
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    for _ in range(p["repeats"]):
        await _pause()
        async with httpx.AsyncClient(limits=limits) as client:
            await _httpx_requests(client, url, p["warmup"], c)
            cpu0 = time.process_time()
            start = perf_counter()
            await _httpx_requests(client, url, p["requests"], c)
            seconds = perf_counter() - start
            cpu = time.process_time() - cpu0
        emit(
            Measurement(
                p["requests"],
                seconds,
                {"client_cpu_us_per_request": cpu / p["requests"] * 1e6},
            )
        )


BENCHMARKS["httpx_client"] = Benchmark(
    "httpx_client",
    "requests/s",
    "http",
    {"requests": 5_000, "warmup": 500, "concurrency": 10, "repeats": 3},
    {"requests": 500, "warmup": 100, "concurrency": 10, "repeats": 2},
    lambda p: (
        f"httpx.AsyncClient, {p['concurrency']} tasks, {p['requests']:,} GETs "
        "against a uvloop HTTP responder"
    ),
    _httpx_client,
)


# --------------------------------------------------------------------------
# Worker side


def worker(name: str, loop_name: str, params: Params) -> int:
    bench = BENCHMARKS[name]
    assert bench.run is not None

    def emit(m: Measurement) -> None:
        run = {"ops": m.ops, "seconds": m.seconds, "rate": m.ops / m.seconds, **m.extra}
        print(_RUN + json.dumps(run), flush=True)

    with asyncio.Runner(loop_factory=lambda: new_loop(loop_name)) as runner:
        runner.run(bench.run(params, emit))
    return 0


# --------------------------------------------------------------------------
# Harness


def _self(*args: str, cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, sys.executable, str(HERE), *args]


def _runs_of(proc: Proc, expected: int, timeout: float) -> list[dict[str, Any]]:
    runs = []
    for _ in range(expected):
        runs.append(json.loads(proc.expect(_RUN, timeout)))
    return runs


def run_in_process(bench: Benchmark, loop: str, p: Params) -> dict[str, Any]:
    proc = Proc(
        _self(
            "--worker",
            bench.name,
            "--loop",
            loop,
            "--params",
            json.dumps(p),
            cpu=SERVER_CPU,
        )
    )
    try:
        runs = _runs_of(proc, p["repeats"], PAIR_TIMEOUT_S)
        proc.popen.wait(30)
        if proc.popen.returncode != 0:
            raise RuntimeError(f"exit status {proc.popen.returncode}" + proc.tail())
    finally:
        proc.stop()
    return {"best": max(r["rate"] for r in runs), "runs": runs}


def run_http(bench: Benchmark, loop: str, p: Params) -> dict[str, Any]:
    server = Proc(_self("--serve", "http", "--loop", "uvloop", cpu=CLIENT_CPU))
    try:
        port = int(server.expect(_PORT, START_TIMEOUT_S))
        out = run_in_process(bench, loop, {**p, "port": port})
    finally:
        server.stop()
    best = max(out["runs"], key=lambda r: r["rate"])
    out["client_cpu_us_per_request"] = min(
        r["client_cpu_us_per_request"] for r in out["runs"]
    )
    out["best_run"] = best
    return out


def run_echo(bench: Benchmark, loop: str, p: Params) -> dict[str, Any]:
    server = Proc(_self("--serve", bench.role, "--loop", loop, cpu=SERVER_CPU))
    try:
        port = int(server.expect(_PORT, START_TIMEOUT_S))
        client = start_client(port, p)
        try:
            runs = []
            for _ in range(p["repeats"]):
                s0, c0 = cpu_s(server.pid), cpu_s(client.pid)
                seconds = rally(client, p)
                s1, c1 = cpu_s(server.pid), cpu_s(client.pid)
                runs.append(
                    {
                        "seconds": seconds,
                        "rate": p["trips"] / seconds,
                        "server_cpu_us_per_trip": (s1 - s0) / p["trips"] * 1e6,
                        "server_cpu_share": (s1 - s0) / seconds,
                        "client_cpu_share": (c1 - c0) / seconds,
                    }
                )
        finally:
            client.stop()
    finally:
        server.stop()
    best = max(runs, key=lambda r: r["rate"])
    return {
        "best": best["rate"],
        "client_bound": best["client_cpu_share"] > CLIENT_BOUND,
        "server_cpu_us_per_trip": min(r["server_cpu_us_per_trip"] for r in runs),
        "runs": runs,
    }


RUNNERS = {"in-process": run_in_process, "echo": run_echo, "http": run_http}


def _fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


HEADERS = ["benchmark", "unit", *LOOPS, "rust/default", "rust/uvloop"]
RIGHT = [False, False, True, True, True, True, True]


def rows(results: dict[str, dict[str, Any]], loops: tuple[str, ...]) -> list[list[str]]:
    out = []

    def cell(
        entry: dict[str, Any] | None, key: str, fmt: Callable[[float], str]
    ) -> str:
        if entry is None:
            return "-"
        if "error" in entry:
            return "error"
        mark = "≥" if entry.get("client_bound") and key == "best" else ""
        return mark + fmt(entry[key])

    def value(entry: dict[str, Any] | None, key: str) -> float | None:
        if entry is None or "error" in entry:
            return None
        return float(entry[key])

    for name, by_loop in results.items():
        bench = BENCHMARKS[name]
        lines = [("best", bench.unit, _fmt_rate)]
        if bench.kind == "echo":
            lines.append(("server_cpu_us_per_trip", "server CPU µs/trip", _f1))
        if bench.kind == "http":
            lines.append(("client_cpu_us_per_request", "client CPU µs/request", _f1))
        for key, unit, fmt in lines:
            cells = [name, unit]
            cells += [cell(by_loop.get(lp), key, fmt) for lp in LOOPS]
            # On a CPU row the ratio is a cost: below 1 is cheaper.
            ours = value(by_loop.get("rust"), key)
            cells += [
                _ratio(ours, value(by_loop.get("default"), key)),
                _ratio(ours, value(by_loop.get("uvloop"), key)),
            ]
            out.append(cells)
    return out


def _f1(v: float) -> str:
    return f"{v:.1f}"


def cpu_shares(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, by_loop in results.items():
        if BENCHMARKS[name].kind != "echo":
            continue
        cells = []
        for lp in LOOPS:
            e = by_loop.get(lp)
            if e and "runs" in e:
                best = max(e["runs"], key=lambda r: r["rate"])
                cells.append(
                    f"{lp} {best['server_cpu_share']:.0%}, {best['client_cpu_share']:.0%}"
                )
        if cells:
            lines.append(f"{name}: " + "; ".join(cells))
    return lines


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("uvloop", "httpx", "twisted_shim"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _header(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"Python {v['python']}, uvloop {v['uvloop']}, httpx {v['httpx']}, "
        f"twisted_shim {v['twisted_shim']} ({meta['core_build']})",
        f"{meta['cpu']} ({meta['cpus']} CPUs), {meta['platform']}, 1-min load "
        f"{meta['loadavg_start']:.2f} at start"
        + (f", {meta['loadavg_end']:.2f} at end" if "loadavg_end" in meta else ""),
        f"{'SMOKE' if meta['smoke'] else 'full'} run; rates are the best of each "
        f"pair's runs; measured process on CPU {SERVER_CPU}, its load on CPU "
        f"{CLIENT_CPU}; ratios > 1: ours faster (rate rows) or dearer (CPU rows); "
        "'≥': the client used > 90% of its core",
        *([f"WARNING: {meta['warning']}"] if "warning" in meta else []),
    ]


def harness(args: argparse.Namespace) -> int:
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
    loops = tuple(args.loops.split(",")) if args.loops else LOOPS
    bad = [lp for lp in loops if lp not in LOOPS]
    if bad:
        print(f"unknown loop(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print(
            "needs 2 CPUs (measured process on CPU 0, load on CPU 1)", file=sys.stderr
        )
        return 2
    sizes = {
        n: {
            **(BENCHMARKS[n].smoke if args.smoke else BENCHMARKS[n].full),
        }
        for n in names
    }
    for n in names:
        sizes[n].setdefault("repeats", 2 if args.smoke else 3)
    meta: dict[str, Any] = {
        "versions": _versions(),
        **machine_meta(),
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for line in _header(meta):
        print(line)
    print()
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            bench = BENCHMARKS[name]
            results[name] = {}
            for lp in loops:
                print(f"{name} on {lp} ... ", end="", flush=True)
                started = time.monotonic()
                try:
                    entry = RUNNERS[bench.kind](bench, lp, sizes[name])
                    runs = ", ".join(_fmt_rate(r["rate"]) for r in entry["runs"])
                    print(
                        f"{_fmt_rate(entry['best'])} {bench.unit} [{runs}] "
                        f"({time.monotonic() - started:.1f} s)",
                        flush=True,
                    )
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    entry = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"ERROR {entry['error']}", flush=True)
                results[name][lp] = entry
                Proc.stop_all()
    finally:
        Proc.stop_all()
    meta["loadavg_end"] = os.getloadavg()[0]
    core_now = core_build()
    if core_now.split(" built ")[0] != meta["core_build"].split(" built ")[0]:
        meta["warning"] = f"the Rust extension changed during the run (now {core_now})"
    table_rows = rows(results, loops)
    workloads = [f"{n}: {BENCHMARKS[n].describe(sizes[n])}" for n in names]
    shares = cpu_shares(results)
    errors = [
        f"{n} on {lp}: {e['error']}"
        for n, by in results.items()
        for lp, e in by.items()
        if "error" in e
    ]
    print()
    print("\n".join(_header(meta)))
    print()
    print(plain_table(HEADERS, table_rows, RIGHT))
    print()
    print_list("Workloads", workloads)
    if shares:
        print_list("CPU share of the best rally (server, client)", shares)
    if errors:
        print_list("Errors", errors)
    print()
    print_markdown(
        _header(meta),
        markdown_table(HEADERS, table_rows, RIGHT, code_columns=1),
        workloads + shares + errors,
    )
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("aio-smoke.json" if args.smoke else "aio.json")
    )
    benchmarks = read_previous(path, "benchmarks") if args.only else {}
    for n in names:
        entry = {
            "unit": BENCHMARKS[n].unit,
            "workload": BENCHMARKS[n].describe(sizes[n]),
        }
        entry.update({"params": sizes[n], "date": meta["date"], "loops": results[n]})
        best = {lp: e.get("best") for lp, e in results[n].items()}
        for peer in ("default", "uvloop"):
            if best.get("rust") and best.get(peer):
                entry[f"rust/{peer}"] = round(best["rust"] / best[peer], 4)
        benchmarks[n] = entry
    write_json(path, {"meta": meta, "benchmarks": benchmarks})
    print(f"wrote {path}")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The same asyncio benchmarks (call_soon, call_later, "
        "call_soon_threadsafe, TCP echo with a Protocol and with streams, an "
        "httpx client) on twisted_shim's loop, the default asyncio loop and "
        "uvloop, in one run.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny workloads")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--loops",
        metavar="L[,L...]",
        help=f"run only these loops (default: {','.join(LOOPS)})",
    )
    parser.add_argument("--json", help="JSON output path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.loop)
    if args.worker:
        return worker(args.worker, args.loop, json.loads(args.params))
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
