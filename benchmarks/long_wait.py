#!/usr/bin/env python
"""
The long-wait benchmark: what pause_output is for. Thousands of keep-alive
clients, each request waiting 1 s on an upstream HTTP server; a server that
needs a thread per waiting request is capped at threads / 1 s, one that
pauses the request (twisted-shim) only by the clients.

Usage::

    python benchmarks/long_wait.py [--connections N] [--duration S]
                                   [--only SERVER[,SERVER...]] [--smoke]

Defaults: 5,000 connections, 60 s. C{--smoke} is 500 connections for 8 s
(a check that every server works, not a result). Run it with the project's
C{.venv} Python (C{make bench-long}); it uses C{.venv-bench} and wrk as
C{wsgi_bench.py} does (and sets them up the same way when missing).

Servers (C{wsgi_bench.py}'s commands, the app C{wsgi_apps:upstream}, one
worker each, their defaults otherwise)
----------------------------------------------------------------------
``twisted-shim``
    C{twisted-shim serve --workers 1 --threads 0}: the request pauses with
    C{environ["twisted_shim.wait"]} on a GET made with Twisted's C{Agent}
    over an C{HTTPConnectionPool(persistent=True)} whose
    C{maxPersistentPerHost} is 20,000, so every upstream connection is kept.
``granian``
    C{granian --interface wsgi --workers 1}: its default blocking threads
    (512 for WSGI in Granian 2.x), each blocked in an C{http.client} GET on
    a persistent connection of its own, as on the two below.
``gunicorn-gthread``
    C{gunicorn -k gthread -w 1 --threads 32} (C{--gthread-threads}); note
    gunicorn's default C{--worker-connections} of 1,000, which caps the
    connections it takes at once.
``twisted-web``
    C{twist --reactor=epoll web --wsgi}: Twisted's WSGI container, the app in
    the thread pool C{twisted.web.tap} makes for it (20 threads at most).

Method
------
For each server in turn, a fresh upstream (C{upstream_server.py}: asyncio on
uvloop, answers each request 1 s after it arrived, holds any number at
once) and a fresh server are started, each in a session of its own; the
server (whole process tree) is pinned to CPU 0 with C{taskset}, the
upstream, wrk and this harness to CPU 1. The harness raises its
RLIMIT_NOFILE to the hard limit first, so the servers, the upstream and wrk
inherit it (a server needs two descriptors per connection: the client's
and its upstream's). Once the port accepts and one request answers
C{upstream: ok}, C{wrk -t2 -cN -dS --timeout 30s --latency} runs once,
connections and all: there is no separate warm-up, because a thread server
still holding thousands of a warm-up's queued requests would serve them in
the measured run; over 60 s the first second of connecting weighs little.
A Lua C{done()} hook prints wrk's totals as JSON.

- req/s = responses / wrk's duration; p50 and p99 are wrk's percentiles of
  the responses it recorded. wrk records no response slower than its
  30 s timeout (it counts it as a timeout error, as it does every 2 s for
  each request still waiting past it), so when timeouts exceed 1% of the
  responses the p99 shows as "> 30".
- errors: wrk's connect, read, write, status (>= 400) and timeout counts.
- server CPU: user + system time of the server's process tree during the
  run (from /proc), as a share of one core; the upstream's and wrk's too,
  and what other processes used meanwhile (busy time in /proc/stat less
  all of those and the harness's): above 10% of a CPU the run gets a note.
- RSS: the sum of the resident memory of the server's processes, sampled
  every 200 ms from /proc from before the load until wrk ends: its value
  at idle (after the check request) and its peak; the JSON also has the
  sum of the processes' own high-water marks (VmHWM) at the end.
- twisted-shim / server: twisted-shim's req/s over the server's.
- Target (issue 10): twisted-shim >= 5x Granian's req/s with p99 <= 1.5 s,
  in the same run; the harness says whether it was met.

After its run each server and its upstream get SIGTERM, then SIGKILL after
5 s; on any error, Ctrl-C, SIGTERM or SIGHUP every process started is
stopped the same way. Output: a plain table and a Markdown one under the
versions and the machine, and JSON in C{benchmarks/results/long_wait.json}
(C{long_wait-smoke.json} with C{--smoke}).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import machine_meta
from _procs import (
    RssSampler,
    busy_cpu_s,
    install_signal_handlers,
    own_cpu_s,
    raise_nofile,
    session_cpu_s,
    start,
    stop,
    stop_all,
    tail,
    wait_port,
)
from _report import markdown_table, plain_table, print_list, print_markdown, write_json
from wsgi_bench import (
    _WRK_TAG,
    APPS,
    HOST,
    PROJECT_VENV,
    SERVERS,
    Ctx,
    _check_response,
    _git_head,
    _pick_cpus,
    _versions,
    _wrk_script,
    ensure_bench_venv,
    ensure_wrk,
)

from twisted_shim.testing import free_port  # wsgi_bench put the repository on the path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
BASELINE = "twisted-shim"
REFERENCE = "granian"
SERVER_NAMES = ("twisted-shim", "granian", "gunicorn-gthread", "twisted-web")
APP = "upstream"
DELAY_S = 1.0
CONNECTIONS = 5000
DURATION_S = 60
SMOKE_CONNECTIONS = 500
SMOKE_DURATION_S = 8
WRK_THREADS = 2
WRK_TIMEOUT_S = 30
GTHREAD_THREADS = 32
RSS_INTERVAL_S = 0.2
READY_TIMEOUT_S = 60.0
TARGET_RATIO = 5.0
TARGET_P99_S = 1.5
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")
MIB = 1024 * 1024
OTHER_CPU_NOTE = 0.10


@dataclass
class Run:
    """One server's run: what wrk saw and what the server cost."""

    server: str
    status: str = "failed"  # ok, failed, not available
    command: str = ""
    wrk: dict[str, float] = field(default_factory=dict)
    rate: float | None = None
    errors: int = 0
    server_cpu: float | None = None
    upstream_cpu: float | None = None
    wrk_cpu: float | None = None
    other_cpu: float | None = None
    idle_rss: int | None = None
    peak_rss: int | None = None
    hwm: int | None = None
    note: str | None = None
    error: str | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    @property
    def p99_hidden(self) -> bool:
        req = self.wrk.get("requests", 0)
        return self.wrk.get("timeout", 0) > max(req, 1) * 0.01

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "rate": None if self.rate is None else round(self.rate, 1),
            "p50_s": _pct_s(self, "p50_us"),
            "p99_s": _pct_s(self, "p99_us"),
            "p99_above_timeout": self.p99_hidden,
            "errors": self.errors,
            "wrk": self.wrk,
            "server_cpu": _r(self.server_cpu),
            "upstream_cpu": _r(self.upstream_cpu),
            "wrk_cpu": _r(self.wrk_cpu),
            "other_cpu": _r(self.other_cpu),
            "idle_rss_mib": _mib(self.idle_rss),
            "peak_rss_mib": _mib(self.peak_rss),
            "hwm_mib": _mib(self.hwm),
            "command": self.command,
        }
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def _pct_s(r: Run, key: str) -> float | None:
    return round(r.wrk[key] / 1e6, 4) if key in r.wrk else None


@dataclass
class Plan:
    wrk: str
    connections: int
    duration_s: int
    server_cpu: int
    client_cpu: int
    workdir: Path
    ctx: Ctx


def _start_upstream(plan: Plan) -> tuple[subprocess.Popen[bytes] | None, str]:
    """A fresh upstream on CPU 1; (process, URL) or (None, error)."""
    port = free_port(HOST)
    log = plan.workdir / f"upstream-{port}.log"
    cmd = [
        *f"taskset -c {plan.client_cpu}".split(),
        str(PROJECT_VENV / "bin" / "python"),
        str(HERE / "upstream_server.py"),
        *f"--host {HOST} --port {port} --delay {DELAY_S}".split(),
    ]
    proc = start(cmd, log)
    problem = wait_port(HOST, port, proc, 30.0)
    if problem:
        stop(proc)
        return None, f"upstream: {problem}\n{tail(log)}"
    return proc, f"http://{HOST}:{port}/"


def _run_wrk(plan: Plan, port: int, script: Path) -> tuple[dict[str, float], str]:
    """wrk's summary (empty on failure) and its output."""
    cmd = [
        *f"taskset -c {plan.client_cpu} {plan.wrk}".split(),
        f"-t{WRK_THREADS}",
        f"-c{plan.connections}",
        f"-d{plan.duration_s}s",
        *f"--timeout {WRK_TIMEOUT_S}s --latency -s {script}".split(),
        f"http://{HOST}:{port}/",
    ]
    out_path = plan.workdir / "wrk.out"
    proc = start(cmd, out_path)
    try:
        proc.wait(plan.duration_s + WRK_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        stop(proc)
        return {}, "wrk did not finish\n" + tail(out_path, 40)
    stop(proc)  # reaped already; drops it from the live set
    text = out_path.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith(_WRK_TAG):
            return json.loads(line[len(_WRK_TAG) :]), text
    return {}, f"wrk exit status {proc.returncode}, no summary:\n{text[-800:]}"


def run_server(plan: Plan, name: str) -> Run:
    """Start an upstream and server C{name}, load it with wrk, stop both."""
    run = Run(name)
    why = SERVERS[name].unavailable()
    if why:
        run.status, run.error = "not available", why
        return run
    upstream, url = _start_upstream(plan)
    if upstream is None:
        run.error = url
        return run
    port = free_port(HOST)
    cmd = SERVERS[name].command(APP, port, plan.ctx)
    run.command = " ".join(cmd)
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "WSGI_BENCH_UPSTREAM": url,
    }
    env.pop("VIRTUAL_ENV", None)
    log = plan.workdir / f"{name}.log"
    proc = start(["taskset", "-c", str(plan.server_cpu), *cmd], log, env=env, cwd=HERE)
    try:
        problem = wait_port(HOST, port, proc, READY_TIMEOUT_S) or _check_response(
            port, APPS[APP], 30.0
        )
        if problem:
            run.error = f"{problem}\n{tail(log)}"
            return run
        script = _wrk_script(APPS[APP], plan.workdir)
        with RssSampler(proc.pid, RSS_INTERVAL_S) as rss:
            time.sleep(2 * RSS_INTERVAL_S)
            run.idle_rss = rss.peak
            cpu0, up0 = session_cpu_s(proc.pid), session_cpu_s(upstream.pid)
            child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy0, own0 = busy_cpu_s(), own_cpu_s()
            t0 = time.monotonic()
            stats, text = _run_wrk(plan, port, script)
            elapsed = time.monotonic() - t0
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy1, own1 = busy_cpu_s(), own_cpu_s()
            cpu1, up1 = session_cpu_s(proc.pid), session_cpu_s(upstream.pid)
        run.peak_rss, run.hwm = rss.peak, rss.hwm or None
        if not stats:
            run.error = f"{text}\n{tail(log)}"
            return run
        if proc.poll() is not None:
            run.error = f"server exited during the run\n{tail(log)}"
            return run
        run.wrk = stats
        duration = stats["duration_us"] / 1e6
        run.rate = stats["requests"] / duration if duration > 0 else 0.0
        run.errors = int(sum(stats[k] for k in ERROR_KINDS))
        run.server_cpu = (cpu1 - cpu0) / elapsed
        run.upstream_cpu = (up1 - up0) / elapsed
        run.wrk_cpu = (
            (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        ) / elapsed
        run.other_cpu = max(
            0.0,
            (busy1 - busy0 - (own1 - own0)) / elapsed
            - run.server_cpu
            - run.upstream_cpu
            - run.wrk_cpu,
        )
        if run.other_cpu > OTHER_CPU_NOTE:
            run.add_note(
                f"other processes used {run.other_cpu:.0%} of a CPU during the run"
            )
        run.status = "ok" if stats["requests"] else "failed"
        return run
    finally:
        for p in (proc, upstream):
            note = stop(p)
            if note and p is proc:
                run.add_note(f"at stop: {note.strip()}")


# --------------------------------------------------------------------------
# Report


def _fmt_s(r: Run, key: str) -> str:
    if key not in r.wrk or not r.wrk.get("requests"):
        return "-"
    if key == "p99_us" and r.p99_hidden:
        return f"> {WRK_TIMEOUT_S}"
    return f"{r.wrk[key] / 1e6:.3f}"


def _fmt_errors(r: Run) -> str:
    if not r.wrk:
        return "-"
    kinds = [f"{k} {int(r.wrk[k]):,}" for k in ERROR_KINDS if r.wrk.get(k)]
    return ", ".join(kinds) if kinds else "0"


def _fmt_rss(r: Run) -> str:
    if r.peak_rss is None:
        return "-"
    return f"{(r.idle_rss or 0) / MIB:,.0f} -> {r.peak_rss / MIB:,.0f}"


def _ratio(base: Run | None, r: Run) -> float | None:
    if base is None or not base.rate or not r.rate:
        return None
    return base.rate / r.rate


HEADERS = [
    "server",
    "req/s",
    "p50 s",
    "p99 s",
    "wrk errors",
    "server CPU",
    "RSS MiB idle -> peak",
    "twisted-shim / server",
]
ALIGN_RIGHT = [False, True, True, True, False, True, True, True]


def _rows(runs: dict[str, Run]) -> list[list[str]]:
    base = runs.get(BASELINE)
    rows = []
    for name, r in runs.items():
        ratio = _ratio(base, r)
        rows.append(
            [
                name,
                f"{r.rate:,.0f}" if r.rate is not None else r.status,
                _fmt_s(r, "p50_us"),
                _fmt_s(r, "p99_us"),
                _fmt_errors(r),
                "-" if r.server_cpu is None else f"{r.server_cpu:.0%}",
                _fmt_rss(r),
                "-" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    return rows


def target_line(runs: dict[str, Run]) -> str:
    """Whether issue 10's target was met in this run, and by how much."""
    base, ref = runs.get(BASELINE), runs.get(REFERENCE)
    ratio = _ratio(base, ref) if base and ref else None
    if base is None or ref is None or ratio is None:
        return "target: not checked (needs twisted-shim and granian in the run)"
    p99 = base.wrk["p99_us"] / 1e6
    met = ratio >= TARGET_RATIO and p99 <= TARGET_P99_S and not base.p99_hidden
    return (
        f"target twisted-shim >= {TARGET_RATIO:.0f}x granian with p99 <= "
        f"{TARGET_P99_S} s: {'MET' if met else 'NOT MET'} ({ratio:.2f}x, "
        f"p99 {p99:.3f} s)"
    )


def _header(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"twisted-shim {v['twisted_shim']} ({meta['core_build']}; git {meta['git']}), "
        f"Python {v['python']}, Twisted {v['twisted (project)']}",
        f"peers (.venv-bench, Python {v['python (bench venv)']}): Granian "
        f"{v['granian']}, gunicorn {v['gunicorn']}, Twisted "
        f"{v['twisted (bench venv)']}; {v['wrk']}",
        f"{meta['cpu']} ({meta['cpus']} CPUs), {meta['platform']}, 1-min load "
        f"{meta['loadavg_start']:.2f} at start"
        + (f", {meta['loadavg_end']:.2f} at end" if "loadavg_end" in meta else ""),
        f"{'SMOKE run (not a result): ' if meta['smoke'] else ''}"
        f"{meta['connections']:,} keep-alive connections (wrk -t{WRK_THREADS} "
        f"--timeout {WRK_TIMEOUT_S}s), {meta['duration_s']} s, no warm-up; each "
        f"request waits {DELAY_S:g} s on an upstream (uvloop); server on CPU "
        f"{meta['server_cpu']}, wrk and upstream on CPU {meta['client_cpu']}; "
        f"RLIMIT_NOFILE {meta['nofile']}",
    ]


# --------------------------------------------------------------------------
# Harness


def harness(args: argparse.Namespace) -> int:
    names = [n.strip() for n in (args.only or ",".join(SERVER_NAMES)).split(",")]
    bad = [n for n in names if n not in SERVER_NAMES]
    if bad:
        print(f"unknown server(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    cpus = _pick_cpus()
    if cpus is None:
        print("need at least 2 CPUs (server and wrk apart)", file=sys.stderr)
        return 2
    connections = args.connections or (SMOKE_CONNECTIONS if args.smoke else CONNECTIONS)
    duration = args.duration or (SMOKE_DURATION_S if args.smoke else DURATION_S)
    # Per connection: wrk's socket, the server's, its upstream socket and the
    # upstream's; plus some slack for everything else.
    nofile = raise_nofile(2 * connections + 512)
    wrk = ensure_wrk()
    if wrk is None or not ensure_bench_venv(False):
        return 1
    os.sched_setaffinity(0, {cpus[1]})
    ctx = Ctx(gthread_threads=args.gthread_threads)
    meta: dict[str, Any] = {
        "versions": _versions(),
        **machine_meta(),
        "git": _git_head(),
        "smoke": args.smoke,
        "connections": connections,
        "duration_s": duration,
        "delay_s": DELAY_S,
        "wrk_threads": WRK_THREADS,
        "wrk_timeout_s": WRK_TIMEOUT_S,
        "server_cpu": cpus[0],
        "client_cpu": cpus[1],
        "nofile": nofile,
        "servers": {n: SERVERS[n].describe(ctx) for n in names},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for line in _header(meta):
        print(line)
    print()
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="long-wait-") as tmp:
        plan = Plan(wrk, connections, duration, cpus[0], cpus[1], Path(tmp), ctx)
        try:
            for i, name in enumerate(names, 1):
                print(f"[{i}/{len(names)}] {name} ... ", end="", flush=True)
                t0 = time.monotonic()
                r = runs[name] = run_server(plan, name)
                took = time.monotonic() - t0
                if r.rate is not None:
                    print(
                        f"{r.rate:,.0f} req/s, p50 {_fmt_s(r, 'p50_us')} s, p99 "
                        f"{_fmt_s(r, 'p99_us')} s, errors {_fmt_errors(r)}, CPU "
                        f"{r.server_cpu:.0%}, RSS {_fmt_rss(r)} MiB ({took:.0f} s)",
                        flush=True,
                    )
                else:
                    print(f"{r.status.upper()} ({took:.0f} s)", flush=True)
                for text in (r.note, r.error):
                    for line in (text or "").splitlines():
                        print(f"    | {line}")
        finally:
            stop_all()
    meta["loadavg_end"] = os.getloadavg()[0]
    rows = _rows(runs)
    target = target_line(runs)
    notes = [
        f"{n}: {r.note or (r.error or '').splitlines()[0]}"
        for n, r in runs.items()
        if r.note or r.error
    ]
    server_lines = [f"{n}: {SERVERS[n].describe(ctx)}" for n in names]
    print()
    for line in _header(meta):
        print(line)
    print()
    print(plain_table(HEADERS, rows, ALIGN_RIGHT))
    print()
    print(target)
    print_list("Servers", server_lines)
    if notes:
        print_list("Notes", notes)
    print()
    print_markdown(
        _header(meta),
        markdown_table(HEADERS, rows, ALIGN_RIGHT, code_columns=1),
        [target, *server_lines, *(f"note, {n}" for n in notes)],
    )
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("long_wait-smoke.json" if args.smoke else "long_wait.json")
    )
    meta["target"] = target
    write_json(
        path, {"meta": meta, "results": {n: r.to_json() for n, r in runs.items()}}
    )
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Thousands of keep-alive clients, each request waiting 1 s on "
        "an upstream: twisted-shim (pause_output) against thread-based servers.",
    )
    parser.add_argument(
        "--connections", type=int, help=f"wrk connections (default {CONNECTIONS})"
    )
    parser.add_argument(
        "--duration", type=int, help=f"seconds of load (default {DURATION_S})"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_CONNECTIONS} connections for {SMOKE_DURATION_S} s "
        "(unless given), results in long_wait-smoke.json",
    )
    parser.add_argument(
        "--only",
        metavar="SERVER[,SERVER...]",
        help=f"run only these ({', '.join(SERVER_NAMES)})",
    )
    parser.add_argument(
        "--gthread-threads",
        type=int,
        default=GTHREAD_THREADS,
        help=f"gunicorn gthread --threads (default {GTHREAD_THREADS})",
    )
    parser.add_argument("--json", help="JSON output path")
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        return harness(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        stop_all()
        return 130
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        stop_all()
        return 1


if __name__ == "__main__":
    sys.exit(main())
