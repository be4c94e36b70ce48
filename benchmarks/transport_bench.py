#!/usr/bin/env python
"""
Transport benchmarks: the baselines issue 11 (native TCP transports) is
measured against, taken with the server in its own process on its own core.

Usage::

    python benchmarks/transport_bench.py [--smoke] [--only NAME[,NAME...]]

Why a second script
-------------------
C{reactor_bench.py} runs client and server in one Twisted process on one
core, so it can only compare reactors with each other. What issue 11 adds
needs a server that is not Twisted (the C floor), clients that are not
(wrk, a C ping-pong client), and a tracer attached to the server alone (strace): here every
server is a process of its own, started under C{taskset -c 0}, and its
load comes from another process under C{taskset -c 1}. The Twisted code
(the echo protocol) is C{reactor_bench.py}'s,
imported by C{_twisted_peers.py} (the Twisted processes);
C{_transport_procs.py} starts and stops the processes and reads their CPU
time and memory; this file has the benchmarks and the report.

Servers
-------
``c``
    C{benchmarks/c/echo_epoll.c}: one level-triggered epoll loop, one
    C{recv} and one C{send} per readable connection, C{TCP_NODELAY}. It is
    compiled with C{cc -O2} into C{benchmarks/build/} (gitignored) when the
    source's SHA-256 differs from the one the binary was built from. A C
    program rather than C{socat}: socat forks a process per connection and
    relays through two descriptors, so it measures process scheduling, not
    what one event loop can do; a dozen lines of epoll is the floor a
    single-threaded loop like ours can approach, with nothing (no buffer
    objects, no callbacks) between the readiness and the system calls.
``rust``, ``epoll``
    C{_twisted_peers.py echo} (or C{echo --tls}, or C{site}) with
    C{twisted_shim.install()} or C{epollreactor.install()}.

Benchmarks (full size; C{--smoke} runs small ones to check the harness)
-----------------------------------------------------------------------
``pingpong_floor``
    The ping-pong client, C{benchmarks/c/pingpong_client.c} (the same
    protocol and output as C{_twisted_peers.py pingpong}; in C because
    the Twisted client needs more CPU per round trip than the servers it
    measures, so with it the rate was the client's), opens 100
    connections to the server and runs a warm-up, then 3 rallies of
    100,000 round trips of 64 bytes. Rate: round trips per second, best of
    3. The server's CPU time over the rally (the sum of its threads'
    /proc/PID/task/*/schedstat, in ns), per round trip, is the lowest of
    3: the server's cost whatever limits the rate. When the client used
    more than 90% of its core the rate is the client's limit and is shown
    as "≥"; when neither side is near 100% of its core (the report prints
    both shares), the rate is bound by wake-ups across the two cores.
``pingpong_syscalls``
    The same client and server, untimed: once the client is connected and
    warmed up, C{strace -c -f -p PID} attaches to every thread of the
    server, the client runs 20,000 round trips, and strace is stopped with
    SIGINT. Reported: each system call's count divided by the round trips
    (calls that fail, e.g. a C{recv} that gets EAGAIN, included; their
    share is kept in the JSON). strace slows the server by an order of
    magnitude, so nothing here is timed.
``web_site``
    C{_twisted_peers.py site}: a C{twisted.web.server.Site} with a leaf
    C{Resource} answering C{Hello, world!} (13 bytes), default Site (its
    access log goes to the Twisted log, which drops it). C{wrk -t1 -c50
    --timeout 5s} under C{taskset -c 1}: one 2 s warm-up, then 3 measured
    runs of 10 s. Rate: requests per second, best of 3 (a run with any
    socket error or non-2xx response is an error); server CPU per request,
    lowest of 3; "≥" when wrk used more than 90% of its core.
``idle_memory``
    A helper process opens 100 connections to the echo server, then
    10,000 more, and holds them (the soft RLIMIT_NOFILE of server and
    helper raised to the hard limit). The server's VmRSS is read once it
    holds each batch (its descriptor count has grown by the batch and its
    RSS has not moved for 0.2 s). Reported: (RSS with 10,100 - RSS with
    100) / 10,000, in KiB per connection; the first 100 absorb one-time
    costs (imports, caches). The kernel's socket buffers are not in RSS
    and are the same for every server.
``connections``
    The connection rate: C{benchmarks/c/connect_client.c} keeps 50
    connections in flight; each connects, sends 64 bytes, waits for the
    echo and closes, and its slot at once opens the next (the client
    closes first, so the TIME_WAIT states are the client's, which Linux
    reuses on loopback). The servers are those of C{pingpong_floor}, so a
    connection costs the server an accept, what it builds for the
    connection (a Twisted server builds a protocol and a transport), one
    echo, the end of stream and the close. A warm-up of 2,000 connections,
    then 3 runs of 20,000: rate (connections per second, best of 3), the
    server's CPU per connection (lowest of 3) and "≥" as for
    C{pingpong_floor}.
``tls_pingpong``
    The ping-pong over TLS, rust and epoll servers only (no C floor):
    C{_twisted_peers.py echo --tls} (C{listenSSL}, the key and
    self-signed certificate of C{twisted/test/server.pem}) against the
    Twisted client, C{_twisted_peers.py pingpong --tls} (C{connectSSL},
    certificate not verified), on the rust reactor for both servers, so
    only the server changes. TLS is Twisted's own on both sides
    (C{TLSMemoryBIOProtocol}: pyOpenSSL over memory BIOs, above the
    transport), so the TLS code is the same for both servers and what
    differs is the transport and the loop under it. 50 connections; the
    warm-up rally (3,000 round trips, at least one on every connection)
    does every handshake, so none is timed; then 3 rallies of 30,000
    round trips of 64 bytes. Rate, "≥" and the server's CPU per round
    trip as for C{pingpong_floor}. The client does the same TLS work per
    round trip as the server, and more Python, so it may well be the
    limit: with "≥" on both servers the rates are the client's, their
    ratio says little, and the server's CPU per round trip is the
    comparison. The JSON keeps the protocol version and cipher the
    client negotiated.

Output: a summary table (C floor, rust, epoll, rust/epoll, rust/C) and the
system calls per round trip by name, plain and Markdown, and JSON in
C{benchmarks/results/transport.json} (C{transport-smoke.json} with
C{--smoke}); with C{--only}, the other benchmarks in that file are kept.
strace and wrk are installed with C{apt-get} if missing (as root).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _machine import machine_meta
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
    Params,
    Proc,
    cpu_s,
    ensure_tool,
    rally,
    rss_kib,
    start_client,
    start_server,
    start_twisted_client,
    user_system_s,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SERVERS: tuple[str, ...] = ("c", "rust", "epoll")
REACTORS: tuple[str, ...] = ("rust", "epoll")
CLIENT_BOUND = 0.9  # a client's share of its core above which it was the limit
HOST = "127.0.0.1"
HELLO = b"Hello, world!"
_WRK_TAG = "@@WRK "

FULL: dict[str, Params] = {
    "pingpong_floor": {"conns": 100, "trips": 100_000, "repeats": 3},
    "pingpong_syscalls": {"conns": 100, "trips": 20_000},
    "web_site": {"conns": 50, "warmup_s": 2, "seconds": 10, "repeats": 3},
    "idle_memory": {"warm": 100, "idle": 10_000},
    "tls_pingpong": {"conns": 50, "trips": 30_000, "repeats": 3},
    "connections": {"conns": 50, "trips": 20_000, "repeats": 3},
}
SMOKE: dict[str, Params] = {
    "pingpong_floor": {"conns": 20, "trips": 5_000, "repeats": 2},
    "pingpong_syscalls": {"conns": 20, "trips": 2_000},
    "web_site": {"conns": 10, "warmup_s": 1, "seconds": 2, "repeats": 1},
    "idle_memory": {"warm": 20, "idle": 500},
    "tls_pingpong": {"conns": 10, "trips": 2_000, "repeats": 2},
    "connections": {"conns": 10, "trips": 2_000, "repeats": 2},
}


# --------------------------------------------------------------------------
# Benchmarks: each returns its JSON entry, one key per server.


def _pingpong_rallies(server: Proc, client: Proc, p: Params) -> dict[str, Any]:
    """C{p['repeats']} rallies of a warmed-up client: the best rate, whether
    it was the client's, the lowest server CPU per round trip, every run."""
    runs = []
    for _ in range(p["repeats"]):
        s0, c0 = cpu_s(server.pid), cpu_s(client.pid)
        user0, system0 = user_system_s(server.pid)
        seconds = rally(client, p)
        s1, c1 = cpu_s(server.pid), cpu_s(client.pid)
        user1, system1 = user_system_s(server.pid)
        runs.append(
            {
                "seconds": seconds,
                "rate": p["trips"] / seconds,
                "server_cpu_us_per_trip": (s1 - s0) / p["trips"] * 1e6,
                "server_cpu_share": (s1 - s0) / seconds,
                "server_system_fraction": (system1 - system0)
                / max(1e-9, (user1 - user0) + (system1 - system0)),
                "client_cpu_share": (c1 - c0) / seconds,
            }
        )
    best = max(runs, key=lambda r: r["rate"])
    return {
        "best": best["rate"],
        "client_bound": best["client_cpu_share"] > CLIENT_BOUND,
        "server_cpu_us_per_trip": min(r["server_cpu_us_per_trip"] for r in runs),
        "runs": runs,
    }


def bench_pingpong_floor(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in SERVERS:
        server, port = start_server(kind)
        client = start_client(port, p)
        out[kind] = _pingpong_rallies(server, client, p)
        client.stop()
        server.stop()
        print(f"  {kind}: {out[kind]['best']:,.0f} round trips/s", flush=True)
    return out


def bench_connections(p: Params) -> dict[str, Any]:
    """Short connections: C{p['trips']} is the number of connections a run
    makes (the client's protocol and output are the ping-pong client's)."""
    out: dict[str, Any] = {}
    for kind in SERVERS:
        server, port = start_server(kind)
        client = start_client(port, p, "connect_client")
        out[kind] = _pingpong_rallies(server, client, p)
        client.stop()
        server.stop()
        print(f"  {kind}: {out[kind]['best']:,.0f} connections/s", flush=True)
    return out


def bench_tls_pingpong(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in REACTORS:
        server, port = start_server(kind, "echo", "--tls")
        client, tls = start_twisted_client(port, p, "rust", "--tls")
        assert tls is not None
        out[kind] = {"tls": tls, **_pingpong_rallies(server, client, p)}
        client.stop()
        server.stop()
        rate = out[kind]["best"]
        print(
            f"  {kind}: {rate:,.0f} round trips/s ({tls['version']}, {tls['cipher']})",
            flush=True,
        )
    return out


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)?\s*(\w+)$")


def parse_strace_summary(text: str) -> dict[str, tuple[int, int]]:
    """C{strace -c}'s table as {syscall: (calls, errors)}, total left out."""
    out = {}
    for line in text.splitlines():
        m = _STRACE_ROW.match(line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def _wait_traced(pid: int, timeout: float) -> None:
    """Until every thread of C{pid} has a tracer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        traced = [
            re.search(r"^TracerPid:\s+(\d+)", (t / "status").read_text(), re.M)
            for t in tasks
        ]
        if all(m and m.group(1) != "0" for m in traced):
            return
        time.sleep(0.05)
    raise RuntimeError(f"strace did not attach to {pid} in {timeout:.0f} s")


def bench_pingpong_syscalls(p: Params) -> dict[str, Any]:
    strace = ensure_tool("strace")
    if strace is None:
        return {"skipped": "strace not found (install it and rerun)"}
    out: dict[str, Any] = {}
    for kind in SERVERS:
        server, port = start_server(kind)
        client = start_client(port, p)
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as summary:
            tracer = Proc(
                [strace, "-c", "-f", "-o", summary.name, "-p", str(server.pid)]
            )
            _wait_traced(server.pid, 10.0)
            rally(client, p)
            tracer.popen.send_signal(signal.SIGINT)
            tracer.popen.wait(30)
            tracer.stop()
            calls = parse_strace_summary(Path(summary.name).read_text())
        client.stop()
        server.stop()
        trips = p["trips"]
        out[kind] = {
            "trips": trips,
            "per_trip": {k: c / trips for k, (c, _) in calls.items()},
            "errors_per_trip": {k: e / trips for k, (_, e) in calls.items() if e},
            "total_per_trip": sum(c for c, _ in calls.values()) / trips,
        }
        print(f"  {kind}: {out[kind]['total_per_trip']:.2f} calls/round trip")
    return out


def _wrk_script(directory: Path) -> Path:
    path = directory / "done.lua"
    path.write_text(
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        f'  io.write(string.format("{_WRK_TAG}%.0f %.0f %.0f\\n",\n'
        "    summary.requests, summary.duration,\n"
        "    e.connect + e.read + e.write + e.status + e.timeout))\n"
        "end\n"
    )
    return path


def _wrk(wrk: str, script: Path, port: int, conns: int, seconds: int) -> list[float]:
    """One wrk run on CPU 1: [requests, seconds, errors, wrk CPU seconds]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            *("taskset", "-c", CLIENT_CPU, wrk, "-t1", f"-c{conns}", f"-d{seconds}s"),
            *("--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}/"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    for line in done.stdout.splitlines():
        if line.startswith(_WRK_TAG):
            requests, duration_us, errors = (float(x) for x in line.split()[1:])
            return [requests, duration_us / 1e6, errors, cpu]
    raise RuntimeError("wrk printed no summary:\n" + done.stdout + done.stderr)


def bench_web_site(p: Params) -> dict[str, Any]:
    wrk = ensure_tool("wrk")
    if wrk is None:
        return {"skipped": "wrk not found (install it and rerun)"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = _wrk_script(Path(tmp))
        for kind in REACTORS:
            server, port = start_server(kind, "site")
            with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=10) as r:
                if r.read() != HELLO:
                    raise RuntimeError(f"{kind}: unexpected body")
            _wrk(wrk, script, port, p["conns"], p["warmup_s"])
            runs = []
            for _ in range(p["repeats"]):
                s0 = cpu_s(server.pid)
                requests, seconds, errors, wrk_cpu = _wrk(
                    wrk, script, port, p["conns"], p["seconds"]
                )
                used = cpu_s(server.pid) - s0
                if errors:
                    raise RuntimeError(f"{kind}: wrk counted {errors:.0f} errors")
                runs.append(
                    {
                        "requests": requests,
                        "seconds": seconds,
                        "rate": requests / seconds,
                        "server_cpu_us_per_request": used / requests * 1e6,
                        "server_cpu_share": used / seconds,
                        "wrk_cpu_share": wrk_cpu / seconds,
                    }
                )
            server.stop()
            best = max(runs, key=lambda r: r["rate"])
            out[kind] = {
                "best": best["rate"],
                "client_bound": best["wrk_cpu_share"] > CLIENT_BOUND,
                "server_cpu_us_per_request": min(
                    r["server_cpu_us_per_request"] for r in runs
                ),
                "runs": runs,
            }
            print(f"  {kind}: {best['rate']:,.0f} requests/s", flush=True)
    return out


_HOLDER = """
import resource, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for batch in sys.argv[3:]:
    held += [socket.create_connection((host, port)) for _ in range(int(batch))]
    print("@@HELD", len(held), flush=True)
    sys.stdin.readline()
"""


def _settled_rss(pid: int, fds: int, timeout: float) -> int:
    """VmRSS once C{pid} holds C{fds} descriptors and RSS has stopped moving."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        if len(os.listdir(f"/proc/{pid}/fd")) >= fds:
            rss = rss_kib(pid)
            if rss == last:
                return rss
            last = rss
        time.sleep(0.2)
    raise RuntimeError(f"server {pid} did not reach {fds} descriptors")


def bench_idle_memory(p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    warm, idle = p["warm"], p["idle"]
    for kind in SERVERS:
        server, port = start_server(kind)
        fds = len(os.listdir(f"/proc/{server.pid}/fd"))
        holder = Proc(
            [sys.executable, "-c", _HOLDER, HOST, str(port), str(warm), str(idle)]
        )
        holder.expect("@@HELD", START_TIMEOUT_S)
        base = _settled_rss(server.pid, fds + warm, START_TIMEOUT_S)
        holder.send("")
        holder.expect("@@HELD", START_TIMEOUT_S + idle / 500)
        held = _settled_rss(server.pid, fds + warm + idle, START_TIMEOUT_S)
        holder.stop()
        server.stop()
        out[kind] = {
            "rss_kib_warm": base,
            "rss_kib_held": held,
            "idle": idle,
            "kib_per_conn": (held - base) / idle,
        }
        print(f"  {kind}: {out[kind]['kib_per_conn']:.2f} KiB/connection")
    return out


BENCHMARKS: dict[str, Callable[[Params], dict[str, Any]]] = {
    "pingpong_floor": bench_pingpong_floor,
    "pingpong_syscalls": bench_pingpong_syscalls,
    "web_site": bench_web_site,
    "idle_memory": bench_idle_memory,
    "tls_pingpong": bench_tls_pingpong,
    "connections": bench_connections,
}


# --------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Row:
    """One summary line: a figure per server, and whether higher is better."""

    label: str
    values: dict[str, float | None]
    fmt: Callable[[float], str]
    bound: dict[str, bool]

    def cells(self) -> list[str]:
        cells = [self.label]
        for kind in SERVERS:
            v = self.values.get(kind)
            mark = "≥ " if self.bound.get(kind) else ""
            cells.append("-" if v is None else mark + self.fmt(v))
        rust = self.values.get("rust")
        for other in ("epoll", "c"):
            v = self.values.get(other)
            cells.append(f"{rust / v:.2f}x" if rust is not None and v else "-")
        return cells


SUMMARY_HEADERS = ["measure", "C floor", "rust", "epoll", "rust/epoll", "rust/C"]


def _get(entry: dict[str, Any], key: str) -> dict[str, float | None]:
    return {k: v.get(key) for k, v in entry.items() if k in SERVERS}


def _bound(entry: dict[str, Any]) -> dict[str, bool]:
    return {k: bool(v.get("client_bound")) for k, v in entry.items() if k in SERVERS}


def _measured(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """C{name}'s results, or nothing if it was skipped or failed."""
    entry = results.get(name, {})
    return {} if "skipped" in entry or "error" in entry else entry


def summary_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows = []
    pp = _measured(results, "pingpong_floor")
    if pp:
        rows.append(Row("ping-pong round trips/s", _get(pp, "best"), _k, _bound(pp)))
        rows.append(
            Row(
                "ping-pong server CPU µs/round trip",
                _get(pp, "server_cpu_us_per_trip"),
                _f1,
                {},
            )
        )
    sc = _measured(results, "pingpong_syscalls")
    if sc:
        rows.append(Row("system calls/round trip", _get(sc, "total_per_trip"), _f2, {}))
    web = _measured(results, "web_site")
    if web:
        rows.append(Row("web_site requests/s", _get(web, "best"), _k, _bound(web)))
        rows.append(
            Row(
                "web_site server CPU µs/request",
                _get(web, "server_cpu_us_per_request"),
                _f1,
                {},
            )
        )
    tls = _measured(results, "tls_pingpong")
    if tls:
        rows.append(
            Row("TLS ping-pong round trips/s", _get(tls, "best"), _k, _bound(tls))
        )
        rows.append(
            Row(
                "TLS ping-pong server CPU µs/round trip",
                _get(tls, "server_cpu_us_per_trip"),
                _f1,
                {},
            )
        )
    conn = _measured(results, "connections")
    if conn:
        rows.append(Row("connections/s", _get(conn, "best"), _k, _bound(conn)))
        rows.append(
            Row(
                "server CPU µs/connection",
                _get(conn, "server_cpu_us_per_trip"),
                _f1,
                {},
            )
        )
    mem = _measured(results, "idle_memory")
    if mem:
        rows.append(
            Row("RSS KiB per idle connection", _get(mem, "kib_per_conn"), _f2, {})
        )
    return rows


def _k(v: float) -> str:
    return f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def _f1(v: float) -> str:
    return f"{v:.1f}"


def _f2(v: float) -> str:
    return f"{v:.2f}"


def syscall_rows(entry: dict[str, Any]) -> list[list[str]]:
    """One row per system call made at least 0.01 times per round trip."""
    per = {k: v["per_trip"] for k, v in entry.items() if k in SERVERS}
    names = sorted(
        {n for calls in per.values() for n, c in calls.items() if c >= 0.01},
        key=lambda n: -max(calls.get(n, 0.0) for calls in per.values()),
    )
    rows = [[n, *(f"{per.get(k, {}).get(n, 0.0):.2f}" for k in SERVERS)] for n in names]
    totals = [
        f"{entry[k]['total_per_trip']:.2f}" if k in entry else "-" for k in SERVERS
    ]
    return [*rows, ["total", *totals]]


def cpu_shares(results: dict[str, dict[str, Any]]) -> list[str]:
    """
    How busy each side was in the best run: below 90% on both sides the
    rate is bound by wake-ups across the cores, not by either side's CPU.
    """
    lines = []
    for name, client in (
        ("pingpong_floor", "client"),
        ("web_site", "wrk"),
        ("tls_pingpong", "client"),
        ("connections", "client"),
    ):
        entry = _measured(results, name)
        cells = []
        for kind in SERVERS:
            if kind in entry:
                best = max(entry[kind]["runs"], key=lambda r: r["rate"])
                cells.append(
                    f"{kind} {best['server_cpu_share']:.0%}, "
                    f"{best[client + '_cpu_share']:.0%}"
                    + (
                        f" (server {best['server_system_fraction']:.0%} in the kernel)"
                        if "server_system_fraction" in best
                        else ""
                    )
                )
        if cells:
            lines.append(f"{name}: " + "; ".join(cells))
    return lines


def report(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    header = [
        f"Python {platform.python_version()}, twisted_shim ({meta['core_build']}); "
        f"{meta['cpu']}, {meta['cpus']} CPUs, 1-min load {meta['loadavg_start']:.2f}",
        f"{'SMOKE' if meta['smoke'] else 'full'} run; servers on CPU {SERVER_CPU}, "
        f"clients on CPU {CLIENT_CPU}; '≥': the client used > 90% of its core",
    ]
    rows = [r.cells() for r in summary_rows(results)]
    right = [False, True, True, True, True, True]
    sys_headers = ["system call / round trip", "C floor", "rust", "epoll"]
    sys_right = [False, True, True, True]
    sc = _measured(results, "pingpong_syscalls")
    sys_rows = syscall_rows(sc) if sc else []
    print()
    print("\n".join(header))
    print()
    print(plain_table(SUMMARY_HEADERS, rows, right))
    if sys_rows:
        print()
        print(plain_table(sys_headers, sys_rows, sys_right))
    skipped = [
        f"{n} {why}: {e[why]}"
        for n, e in results.items()
        for why in ("skipped", "error")
        if why in e
    ]
    shares = cpu_shares(results)
    if shares:
        print_list("CPU share of the best run (server, client)", shares)
    for line in skipped:
        print(line)
    print()
    bullets = [
        f"{name}: {', '.join(f'{k} {v:,}' for k, v in meta['params'][name].items())}"
        for name in results
    ]
    table = markdown_table(SUMMARY_HEADERS, rows, right)
    if sys_rows:
        table += "\n\n" + markdown_table(sys_headers, sys_rows, sys_right)
    print_markdown(header, table, bullets + shares + skipped)


# --------------------------------------------------------------------------
# Harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Ping-pong against a C epoll floor, system calls per round "
        "trip, twisted.web Site under wrk, memory per idle connection, and "
        "ping-pong over TLS, on the rust and epoll reactors.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny workloads: check it works"
    )
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--json", help="JSON output path")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sizes = SMOKE if args.smoke else FULL
    meta: dict[str, Any] = {
        **machine_meta(),
        "python": platform.python_version(),
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": {n: sizes[n] for n in names},
    }
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs (server on CPU 0, client on CPU 1)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            print(f"{name} ...", flush=True)
            try:
                results[name] = BENCHMARKS[name](sizes[name])
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                # Recorded, and the next benchmark still runs.
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  ERROR {results[name]['error']}", flush=True)
            Proc.stop_all()
    finally:
        Proc.stop_all()
    meta["loadavg_end"] = os.getloadavg()[0]
    report(meta, results)

    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("transport-smoke.json" if args.smoke else "transport.json")
    )
    benchmarks = read_previous(path, "benchmarks") if args.only else {}
    benchmarks.update(
        {n: {"date": meta["date"], "params": sizes[n], **results[n]} for n in names}
    )
    write_json(path, {"meta": meta, "benchmarks": benchmarks})
    print(f"wrote {path}")
    return 1 if any("error" in e for e in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
