#!/usr/bin/env python
"""
The upload benchmark: concurrent large POSTs to an application that reads
C{wsgi.input} in 64 KiB reads and answers how many bytes it read, on
twisted-shim, Granian and gunicorn; what each server's memory does with
bodies of hundreds of MiB.

Usage::

    python benchmarks/upload.py [--count N] [--size-mib M]
                                [--only SERVER[,SERVER...]] [--smoke]
                                [--rss-limit-mib L]

Defaults: 20 concurrent POSTs of 256 MiB each (5 GiB in all). C{--smoke} is
4 x 16 MiB (a check that every server works, not a result). Run it with the
project's C{.venv} Python; it uses C{.venv-bench} as C{wsgi_bench.py} does.

Servers (C{wsgi_bench.py}'s commands, the app C{wsgi_apps:count}, one
worker each)
----------------------------------------------------------------------
``twisted-shim``
    C{twisted-shim serve --workers 1 --threads 0 --max-body B}, B the body
    size (or the default, if larger); every other limit at its default.
``granian``
    C{granian --interface wsgi --workers 1}.
``gunicorn-gthread``
    C{gunicorn -k gthread -w 1 --threads 32}.

Method
------
The server (its whole process tree) runs on CPU 0 (C{taskset}); the client,
this harness, on CPU 1. Once the port accepts and a 1 KiB POST is answered
C{1024}, N threads wait at a barrier, then each opens a connection
(C{http.client}), sends the head with C{Content-Length} and streams the
body from one 1 MiB block sent again and again (the client never holds more
than that block), then reads the answer. A POST succeeds when the status is
200 and the answer is the exact byte count; anything else (another status,
a wrong count, a reset, a socket idle for 120 s, the whole run over
C{--timeout}) is a failure, reported with its reason.

- wall time: from the barrier to the last answer.
- throughput: the bytes of the successful POSTs / wall time, in MiB/s.
- RSS: the sum of the resident memory of the server's processes, sampled
  every 200 ms from /proc: at idle (after the check) and its peak. Past
  C{--rss-limit-mib} (default 8 GiB: the machine is shared) the harness
  kills the server and reports it, rather than let it exhaust memory.
- VmHWM: each server process's own resident high-water mark (from
  /proc/PID/status when the uploads end), summed: a peak shorter than the
  sampling interval shows there (an upper bound when a server has more
  than one process).
- server CPU: user + system time of its process tree during the run, as a
  share of one core; and what other processes used meanwhile (busy time in
  /proc/stat less the server's and the harness's): above 10% of a CPU the
  run gets a note.

After its run each server gets SIGTERM, then SIGKILL after 5 s; on any
error, Ctrl-C, SIGTERM or SIGHUP every process started is stopped the same
way. Output: a plain table and a Markdown one, and JSON in
C{benchmarks/results/upload.json} (C{upload-smoke.json} with C{--smoke}).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import sys
import tempfile
import threading
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
    session_cpu_s,
    start,
    stop,
    stop_all,
    tail,
    wait_port,
)
from _report import markdown_table, plain_table, print_list, print_markdown, write_json
from wsgi_bench import HOST, SERVERS, Ctx, _git_head, _pick_cpus, _versions

from twisted_shim.testing import free_port  # wsgi_bench put the repository on the path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
SERVER_NAMES = ("twisted-shim", "granian", "gunicorn-gthread")
APP = "count"
MIB = 1024 * 1024
COUNT = 20
SIZE_MIB = 256
SMOKE_COUNT = 4
SMOKE_SIZE_MIB = 16
BLOCK = bytes(range(256)) * (MIB // 256)  # the 1 MiB block every body repeats
SOCKET_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 1800.0
RSS_LIMIT_MIB = 8192
RSS_INTERVAL_S = 0.2
READY_TIMEOUT_S = 60.0
SHIM_DEFAULT_MAX_BODY = 16 * MIB
GTHREAD_THREADS = 32
OTHER_CPU_NOTE = 0.10


@dataclass
class Upload:
    """One POST: when it started and ended, and what went wrong."""

    started: float = 0.0
    ended: float = 0.0
    sent: int = 0
    error: str | None = None
    conn: http.client.HTTPConnection | None = None


@dataclass
class Run:
    """One server's run."""

    server: str
    status: str = "failed"  # ok, failed, not available
    command: str = ""
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    wall_s: float | None = None
    mib_s: float | None = None
    server_cpu: float | None = None
    other_cpu: float | None = None
    idle_rss: int | None = None
    peak_rss: int | None = None
    hwm: int | None = None
    note: str | None = None
    error: str | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "ok": self.ok,
            "failures": self.failures,
            "wall_s": None if self.wall_s is None else round(self.wall_s, 2),
            "mib_s": None if self.mib_s is None else round(self.mib_s, 1),
            "server_cpu": None
            if self.server_cpu is None
            else round(self.server_cpu, 3),
            "other_cpu": None if self.other_cpu is None else round(self.other_cpu, 3),
            "idle_rss_mib": None
            if self.idle_rss is None
            else round(self.idle_rss / MIB, 1),
            "peak_rss_mib": None
            if self.peak_rss is None
            else round(self.peak_rss / MIB, 1),
            "hwm_mib": None if self.hwm is None else round(self.hwm / MIB, 1),
            "command": self.command,
        }
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def post(
    port: int, size: int, upload: Upload, barrier: threading.Barrier | None
) -> None:
    """POST C{size} bytes (the 1 MiB block repeated) and check the count."""
    try:
        if barrier is not None:
            barrier.wait(60.0)
        upload.started = time.monotonic()
        conn = upload.conn = http.client.HTTPConnection(
            HOST, port, timeout=SOCKET_TIMEOUT_S
        )
        conn.putrequest("POST", "/")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        view = memoryview(BLOCK)
        while upload.sent < size:
            n = min(len(BLOCK), size - upload.sent)
            conn.send(view[:n])
            upload.sent += n
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            upload.error = f"status {resp.status}: {body[:100]!r}"
        elif body.strip() != str(size).encode():
            upload.error = f"answered {body[:40]!r}, sent {size}"
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
        upload.error = f"{type(exc).__name__}: {exc} after {upload.sent / MIB:.0f} MiB"
    finally:
        upload.ended = time.monotonic()
        if upload.conn is not None:
            upload.conn.close()


def _server_cmd(name: str, port: int, ctx: Ctx, size: int) -> list[str]:
    cmd = SERVERS[name].command(APP, port, ctx)
    if name == "twisted-shim":
        cmd += ["--max-body", str(max(size, SHIM_DEFAULT_MAX_BODY))]
    return cmd


@dataclass
class Plan:
    count: int
    size: int
    server_cpu: int
    timeout: float
    rss_limit: int
    workdir: Path
    ctx: Ctx


def run_server(plan: Plan, name: str) -> Run:
    """Start server C{name}, run the uploads against it, stop it."""
    run = Run(name)
    why = SERVERS[name].unavailable()
    if why:
        run.status, run.error = "not available", why
        return run
    port = free_port(HOST)
    cmd = _server_cmd(name, port, plan.ctx, plan.size)
    run.command = " ".join(cmd)
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    log = plan.workdir / f"{name}.log"
    proc = start(["taskset", "-c", str(plan.server_cpu), *cmd], log, env=env, cwd=HERE)
    uploads = [Upload() for _ in range(plan.count)]
    try:
        problem = wait_port(HOST, port, proc, READY_TIMEOUT_S)
        if problem is None:
            check = Upload()
            post(port, 1024, check, None)
            problem = check.error and f"check POST of 1 KiB: {check.error}"
        if problem:
            run.error = f"{problem}\n{tail(log)}"
            return run
        barrier = threading.Barrier(plan.count + 1)
        threads = [
            threading.Thread(
                target=post, args=(port, plan.size, u, barrier), daemon=True
            )
            for u in uploads
        ]
        with RssSampler(proc.pid, RSS_INTERVAL_S, plan.rss_limit) as rss:
            time.sleep(2 * RSS_INTERVAL_S)
            run.idle_rss = rss.peak
            for t in threads:
                t.start()
            cpu0 = session_cpu_s(proc.pid)
            busy0, own0 = busy_cpu_s(), own_cpu_s()
            barrier.wait(60.0)
            t0 = time.monotonic()
            deadline = t0 + plan.timeout
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in threads):
                run.add_note(f"run over {plan.timeout:.0f} s: connections closed")
                for u in uploads:
                    sock = u.conn.sock if u.conn is not None else None
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                for t in threads:
                    t.join(10.0)
            elapsed = max(u.ended for u in uploads) - t0
            cpu1 = session_cpu_s(proc.pid)
            busy1, own1 = busy_cpu_s(), own_cpu_s()
        run.peak_rss, run.hwm = rss.peak, rss.hwm or None
        if rss.killed_at is not None:
            run.add_note(
                f"killed: RSS {rss.killed_at / MIB:,.0f} MiB over the "
                f"{plan.rss_limit / MIB:,.0f} MiB limit"
            )
        run.wall_s = elapsed
        if elapsed > 0:
            run.server_cpu = (cpu1 - cpu0) / elapsed
            run.other_cpu = max(
                0.0, (busy1 - busy0 - (own1 - own0)) / elapsed - run.server_cpu
            )
            if run.other_cpu > OTHER_CPU_NOTE:
                run.add_note(
                    f"other processes used {run.other_cpu:.0%} of a CPU during the run"
                )
        done = [u for u in uploads if u.error is None]
        run.ok = len(done)
        run.failures = [u.error for u in uploads if u.error is not None]
        run.mib_s = len(done) * plan.size / MIB / elapsed if elapsed > 0 else None
        run.status = "ok" if not run.failures else "failed"
        return run
    finally:
        note = stop(proc)
        if note:
            run.add_note(f"at stop: {note.strip()}")


# --------------------------------------------------------------------------
# Report

HEADERS = [
    "server",
    "MiB/s",
    "wall s",
    "ok / sent",
    "server CPU",
    "RSS MiB idle -> peak",
    "VmHWM MiB",
]
ALIGN_RIGHT = [False, True, True, True, True, True, True]


def _rows(runs: dict[str, Run], count: int) -> list[list[str]]:
    rows = []
    for name, r in runs.items():
        rows.append(
            [
                name,
                "-" if r.mib_s is None else f"{r.mib_s:,.0f}",
                "-" if r.wall_s is None else f"{r.wall_s:.1f}",
                f"{r.ok} / {count}" if r.wall_s is not None else r.status,
                "-" if r.server_cpu is None else f"{r.server_cpu:.0%}",
                "-"
                if r.peak_rss is None
                else f"{(r.idle_rss or 0) / MIB:,.0f} -> {r.peak_rss / MIB:,.0f}",
                "-" if r.hwm is None else f"{r.hwm / MIB:,.0f}",
            ]
        )
    return rows


def _header(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"twisted-shim {v['twisted_shim']} ({meta['core_build']}; git {meta['git']}), "
        f"Python {v['python']}; Granian {v['granian']}, gunicorn {v['gunicorn']} "
        f"(Python {v['python (bench venv)']})",
        f"{meta['cpu']} ({meta['cpus']} CPUs), {meta['platform']}, 1-min load "
        f"{meta['loadavg_start']:.2f} at start"
        + (f", {meta['loadavg_end']:.2f} at end" if "loadavg_end" in meta else ""),
        f"{'SMOKE run (not a result): ' if meta['smoke'] else ''}"
        f"{meta['count']} concurrent POSTs of {meta['size_mib']:g} MiB "
        f"(http.client, 1 MiB block repeated), app reads wsgi.input in 64 KiB "
        f"reads; server on CPU {meta['server_cpu']}, client on CPU "
        f"{meta['client_cpu']}; RSS sampled every {RSS_INTERVAL_S:g} s, limit "
        f"{meta['rss_limit_mib']:,} MiB",
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
        print("need at least 2 CPUs (server and client apart)", file=sys.stderr)
        return 2
    count = args.count or (SMOKE_COUNT if args.smoke else COUNT)
    size_mib = args.size_mib or (SMOKE_SIZE_MIB if args.smoke else SIZE_MIB)
    size = int(size_mib * MIB)
    os.sched_setaffinity(0, {cpus[1]})
    ctx = Ctx(gthread_threads=GTHREAD_THREADS)
    meta: dict[str, Any] = {
        "versions": _versions(),
        **machine_meta(),
        "git": _git_head(),
        "smoke": args.smoke,
        "count": count,
        "size_mib": size_mib,
        "server_cpu": cpus[0],
        "client_cpu": cpus[1],
        "rss_limit_mib": args.rss_limit_mib,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for line in _header(meta):
        print(line)
    print()
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
        plan = Plan(
            count,
            size,
            cpus[0],
            args.timeout,
            args.rss_limit_mib * MIB,
            Path(tmp),
            ctx,
        )
        try:
            for i, name in enumerate(names, 1):
                print(f"[{i}/{len(names)}] {name} ... ", end="", flush=True)
                r = runs[name] = run_server(plan, name)
                if r.wall_s is not None:
                    print(
                        f"{r.ok}/{count} ok, {r.mib_s or 0:,.0f} MiB/s, "
                        f"{r.wall_s:.1f} s, RSS peak {(r.peak_rss or 0) / MIB:,.0f} MiB",
                        flush=True,
                    )
                else:
                    print(r.status.upper(), flush=True)
                for text in (r.note, r.error, *sorted(set(r.failures))):
                    for line in (text or "").splitlines():
                        print(f"    | {line}")
        finally:
            stop_all()
    meta["loadavg_end"] = os.getloadavg()[0]
    rows = _rows(runs, count)
    notes = [
        f"{n}: {r.note or r.error or ''} {'; '.join(sorted(set(r.failures)))}".strip()
        for n, r in runs.items()
        if r.note or r.error or r.failures
    ]
    server_lines = [f"{n}: {' '.join(_server_cmd(n, 0, ctx, size)[1:])}" for n in names]
    print()
    for line in _header(meta):
        print(line)
    print()
    print(plain_table(HEADERS, rows, ALIGN_RIGHT))
    print()
    print_list("Servers", server_lines)
    if notes:
        print_list("Notes", notes)
    print()
    print_markdown(
        _header(meta),
        markdown_table(HEADERS, rows, ALIGN_RIGHT, code_columns=1),
        [*server_lines, *(f"note, {n}" for n in notes)],
    )
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("upload-smoke.json" if args.smoke else "upload.json")
    )
    write_json(
        path, {"meta": meta, "results": {n: r.to_json() for n, r in runs.items()}}
    )
    print(f"wrote {path}")
    return 0 if all(r.status == "ok" for r in runs.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Concurrent large POSTs read in 64 KiB reads: throughput and "
        "server memory on twisted-shim, Granian and gunicorn.",
    )
    parser.add_argument("--count", type=int, help=f"concurrent POSTs (default {COUNT})")
    parser.add_argument(
        "--size-mib", type=float, help=f"MiB per POST (default {SIZE_MIB})"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_COUNT} x {SMOKE_SIZE_MIB} MiB (unless given), results in "
        "upload-smoke.json",
    )
    parser.add_argument(
        "--only",
        metavar="SERVER[,SERVER...]",
        help=f"run only these ({', '.join(SERVER_NAMES)})",
    )
    parser.add_argument(
        "--rss-limit-mib",
        type=int,
        default=RSS_LIMIT_MIB,
        help=f"kill a server whose RSS passes this (default {RSS_LIMIT_MIB})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=RUN_TIMEOUT_S,
        help=f"seconds the uploads may take in all (default {RUN_TIMEOUT_S:.0f})",
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


if __name__ == "__main__":
    sys.exit(main())
