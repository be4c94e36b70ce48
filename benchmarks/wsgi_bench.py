#!/usr/bin/env python
"""
WSGI server benchmarks: the same WSGI applications on twisted-shim's host and
on other Python WSGI servers, each loaded with wrk, in one table.

Usage::

    python benchmarks/wsgi_bench.py [--quick] [--only SERVER[,SERVER...]]
                                    [--apps APP[,APP...]] [--setup]
                                    [--baseline DIR]

Run it with any Python 3.11+ (the harness needs only the standard library).
It starts twisted-shim from the project's C{.venv} and the other servers from
their own virtualenv, C{.venv-bench}, which it creates from
C{requirements-bench.txt} when it is missing or that file changed
(C{--setup} forces a refresh; uWSGI, built from source, is installed on its
own and reported "not installed", with the reason, when it does not build).
If C{wrk} is missing it runs C{apt-get update} and C{apt-get install -y wrk}
(as root), and says so. A full run takes about 8 minutes on 2 cores,
C{--quick} about 3.

Servers (one process serving requests each)
-------------------------------------------
``twisted-shim``
    C{python -m twisted_shim serve wsgi_apps:APP --bind 127.0.0.1:PORT
    --workers 1 --threads 0}: the Rust HTTP/1.1 host on twisted-shim's
    reactor, the application on the reactor thread (no thread pool).
``twisted-shim-threads``
    The same with C{--threads N} (N = gunicorn gthread's, 32 by default):
    thread-pool mode for blocking applications; the application runs in the
    pool (no pause keys in its environ, so the upstream app blocks in
    C{http.client} as on the thread servers) and its output streams back
    through the loop.
``granian``
    C{granian --interface wsgi --workers 1}, everything else default: the
    WSGI calls run on Granian's default blocking-thread pool, which for WSGI
    is backpressure / 2 = backlog / 2 = 512 threads (Granian 2.x), spawned
    on demand.
``gunicorn-sync``
    C{gunicorn -k sync -w 1}: one request at a time, no keep-alive.
``gunicorn-gthread``
    C{gunicorn -k gthread -w 1 --threads 32}: keep-alive, a main thread that
    polls connections and 32 request threads. 32 is a generous production
    setting for a small machine (gunicorn's docs suggest 2-4 workers x
    threads per core): more threads only add GIL contention on the CPU-bound
    apps, and what threads buy on the upstream app is exactly the point of
    the comparison (32 threads cap it at 32 / 0.05 s = 640 req/s). Change it
    with C{--gthread-threads}.
``uwsgi``
    C{uwsgi --master --processes 1 --http-socket}: the worker parses HTTP
    itself (no separate router process), no threads, one request at a time,
    no keep-alive; C{--disable-logging}, C{--listen 1024}, and
    C{--add-header "Connection: close"}, because --http-socket closes every
    connection after its response without saying so, which wrk would count
    as a read error per request.
``twisted-web``
    C{twist --reactor=epoll web --wsgi wsgi_apps.APP}: Twisted's own WSGI
    container on the epoll reactor; each application call runs in the
    thread pool C{twisted.web.tap} makes for it (C{ThreadPool()}'s
    defaults: 5 to 20 threads; not the reactor's pool of 10).

Access logs are off everywhere but in C{twist web}, which always writes one;
it goes to a file in the temporary directory (never C{/dev/null}: twisted.web
rotates its log by renaming the file, which would replace the device). Listen backlogs are 1024 or more: twisted-shim
and Granian default to 1024, gunicorn to 2048, uWSGI and C{twist web} get
1024 on their command lines. Everything else is each server's default.

Applications (C{benchmarks/wsgi_apps.py}, one module for every server)
----------------------------------------------------------------------
``hello``
    GET, 13-byte body with Content-Length. 100 connections.
``big``
    GET, 64 KiB body with Content-Length. 100 connections.
``echo``
    POST of a 10 KiB body (the wrk Lua script sets method and body), echoed
    back. 100 connections.
``upstream``
    GET; the application makes one HTTP GET to a local upstream server that
    answers after 50 ms (C{upstream_server.py}, asyncio on uvloop, started
    once per run from C{.venv-bench}, keep-alive). On twisted-shim the
    request pauses with C{environ["twisted_shim.wait"]} on a GET made with
    Twisted's C{Agent} on a persistent pool; on the other servers the thread
    blocks in an C{http.client} GET on a persistent connection of its own
    (C{Agent} and C{http.client} are each side's standard HTTP client).
    500 connections, so no server can exceed 500 / 0.05 s = 10,000 req/s.
``upstream_treq`` (twisted-shim only)
    C{upstream} with treq instead of the bare C{Agent} on the paused path
    (on the other servers it would be C{upstream} again).
``sleep`` (not in the default set)
    The same 50 ms wait without the upstream: C{deferLater} on twisted-shim,
    C{time.sleep} elsewhere. 500 connections.

100 connections load the CPU-bound apps well past saturation on one core
with a realistic number of keep-alive clients; 500 is the concurrency the
upstream test is specified for.

Method
------
Every (server, application) pair gets a fresh server on a free port,
started in a new session under C{taskset -c 0}: the server, its workers and
all their threads on CPU 0. wrk runs under C{taskset -c 1}, with one thread
(it has one core), on CPU 1 with the upstream server and the harness itself.
The harness polls the port until it accepts, sends one request and checks
the status and body, then runs wrk twice with C{-t1 -cN --timeout 5s
--latency}: a warm-up (2 s; C{--quick} 1 s), then the measured run (10 s;
C{--quick} 3 s). Between the two it waits (up to 40 s) until the server has
closed every connection of the warm-up: a server that handles one request
at a time still has the warm-up's queued requests to serve (25 s for 500
upstream requests), and they would otherwise eat the measured run. A Lua
C{done()} hook prints wrk's totals as JSON: requests, duration, errors
(connect, read, write, status >= 400, timeout) and latency percentiles.

Rate = requests / duration of the measured run; p99 is wrk's 99th
percentile. wrk counts a response slower than the 5 s timeout as a timeout
error and leaves it out of its latency histogram, so when those are more
than 1% of the requests the p99 shows as "> 5000"; requests still waiting
when the run ends are not counted at all. A run whose errors (all kinds)
exceed 1% of its requests, or that completed no request, is INVALID.

The CPU time of the server's process tree, of wrk and of the upstream during
the measured run is read from /proc and kept in the JSON: a server near
100% of its core is CPU-bound; wrk above 90% of its core means the client
was the limit, and the rate shows as ">= N" (a lower bound for the server).
The CPU that other processes used meanwhile (user and system time in
/proc/stat less the benchmark's own) is kept too: before each pair the
harness waits (up to 30 s) until other processes use at most 10% of a CPU,
and a pair during which they used more, while its server used more than
30% of its core (a server waiting on its upstream or on its threads uses
much less, and is hardly set back), is run again once (C{--retries}); the
notes say so.

After the run the server's session gets SIGTERM, then SIGKILL after 5 s, and
any process left in the session is killed. On Ctrl-C, SIGTERM or SIGHUP
every process the harness started is stopped the same way.

The "server CPU µs/req" column is the server's CPU time during the measured
run (its whole process tree, user and system, from /proc) divided by the
requests it served: what a request costs the server, which stays meaningful
when wrk saturates its core first (the rate then shows as ">= N").

The ratio column is twisted-shim's rate divided by the server's rate on the
same application: above 1, twisted-shim served more requests per second.

Output: a plain-text table and a Markdown table (server, app, req/s, p99 ms,
errors, twisted-shim / server), with versions and method in the header, and
JSON in C{benchmarks/results/wsgi.json} (C{wsgi-quick.json} with
C{--quick}). With C{--only} or C{--apps}, the other pairs already in that
JSON file are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import machine_meta
from _procs import (
    LIVE,
    busy_cpu_s,
    install_signal_handlers,
    session_cpu_s,
    start,
    stop,
    stop_all,
    tail,
    wait_port,
)
from _report import (
    markdown_table,
    plain_table,
    print_list,
    print_markdown,
    read_previous,
    write_json,
)

# The repository, for twisted_shim.testing (standard library only), also
# when this harness runs on a Python without the project installed.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from twisted_shim.testing import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
PROJECT_VENV = ROOT / ".venv"
BENCH_VENV = ROOT / ".venv-bench"
REQUIREMENTS = ROOT / "requirements-bench.txt"
STAMP = BENCH_VENV / ".requirements-sha256"
UWSGI_ERROR = BENCH_VENV / ".uwsgi-build-error"

BASELINE = "twisted-shim"
HOST = "127.0.0.1"
WRK_TIMEOUT_S = 5.0
ERROR_LIMIT = 0.01
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 40.0
OTHER_CPU_LIMIT = 0.10
QUIET_TIMEOUT_S = 30.0
RETRIES = 1
CLIENT_BOUND = 0.9  # wrk's share of its core above which it was the limit
UPSTREAM_DELAY_S = 0.05
GTHREAD_THREADS = 32
ECHO_BODY_BYTES = 10 * 1024
_WRK_TAG = "@@WRK "

Cmd = list[str]


# --------------------------------------------------------------------------
# Process control (_procs.py): every process the harness starts is the
# leader of a new session; stopping it kills the whole session.

_LIVE = LIVE
_session_cpu_s = session_cpu_s
_start = start
_stop = stop
_stop_all = stop_all
_tail = tail
_busy_cpu_s = busy_cpu_s


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait until C{port} accepts; an error message if it never does."""
    return wait_port(HOST, port, proc, timeout)


def _wait_quiet(timeout: float) -> tuple[float, float]:
    """
    Wait until processes outside the benchmark use at most OTHER_CPU_LIMIT
    of a CPU (sampled over 0.5 s), for up to C{timeout} seconds. Returns
    (seconds waited, last sample).
    """
    start = time.monotonic()
    while True:
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0 = _busy_cpu_s()
        time.sleep(0.5)
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
        load = max(0.0, (_busy_cpu_s() - busy0 - own) / 0.5)
        waited = time.monotonic() - start
        if load <= OTHER_CPU_LIMIT or waited >= timeout:
            return waited, load


# /proc/net/tcp states that still hold a request or a connection the server
# has to deal with (everything but LISTEN 0A, TIME_WAIT 06 and CLOSE 07).
_IDLE_STATES = {"0A", "06", "07"}


def _server_connections(port: int) -> int:
    """Sockets on the server's side of C{port} that are not closed yet."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state not in _IDLE_STATES:
                count += 1
    return count


def _wait_drained(port: int, timeout: float) -> tuple[float, int]:
    """
    Wait until the server has closed every connection wrk left (a server
    that handles one request at a time still has the warm-up's queued
    requests to go through). Returns (seconds waited, connections left).
    """
    start = time.monotonic()
    while True:
        left = _server_connections(port)
        waited = time.monotonic() - start
        if left == 0 or waited >= timeout:
            return waited, left
        time.sleep(0.05)


# --------------------------------------------------------------------------
# Set-up: wrk and the peers' virtualenv


def _run_logged(cmd: Cmd, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ensure_wrk() -> str | None:
    """Path to wrk, installing it with apt-get if needed; None on failure."""
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(
            "wrk not found, and apt-get is not usable here (need root): "
            "install wrk and rerun",
            file=sys.stderr,
        )
        return None
    print(
        "wrk not found: running `apt-get update` and `apt-get install -y wrk`",
        flush=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        r = _run_logged(cmd, env=env)
        if r.returncode != 0:
            print(
                f"`{' '.join(cmd)}` failed:\n{(r.stdout + r.stderr)[-2000:]}",
                file=sys.stderr,
            )
            return None
    return shutil.which("wrk")


def _requirements() -> tuple[list[str], list[str]]:
    """(regular pins, pins installed on their own: uwsgi)."""
    regular, alone = [], []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        (alone if line.lower().startswith("uwsgi") else regular).append(line)
    return regular, alone


def _bench_python() -> Path:
    return BENCH_VENV / "bin" / "python"


def ensure_bench_venv(force: bool) -> bool:
    """Make or refresh .venv-bench from requirements-bench.txt."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if (
        not force
        and _bench_python().exists()
        and STAMP.exists()
        and STAMP.read_text().strip() == digest
    ):
        return True
    print(f"setting up {BENCH_VENV} from {REQUIREMENTS.name} ...", flush=True)
    if not _bench_python().exists():
        base = PROJECT_VENV / "bin" / "python"
        python = str(base) if base.exists() else sys.executable
        r = _run_logged([python, "-m", "venv", str(BENCH_VENV)])
        if r.returncode != 0:
            print(
                f"could not create {BENCH_VENV}:\n{r.stderr[-2000:]}", file=sys.stderr
            )
            return False
    pip = [
        str(_bench_python()),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    regular, alone = _requirements()
    _run_logged([*pip, "--upgrade", "pip"])
    r = _run_logged([*pip, *regular])
    if r.returncode != 0:
        print(
            f"pip install {' '.join(regular)} failed:\n{(r.stdout + r.stderr)[-3000:]}",
            file=sys.stderr,
        )
        return False
    UWSGI_ERROR.unlink(missing_ok=True)
    for spec in alone:
        print(f"  building {spec} (from source) ...", flush=True)
        r = _run_logged([*pip, spec])
        if r.returncode != 0:
            reason = _pip_failure_reason(r.stdout + r.stderr)
            UWSGI_ERROR.write_text(f"pip install {spec} failed: {reason}\n")
            print(f"  {spec} did not install: {reason}", flush=True)
    STAMP.write_text(digest + "\n")
    print("  done", flush=True)
    return True


def _pip_failure_reason(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln.lower() and "subprocess-exited-with-error" not in ln:
            return ln[:300]
    return (lines[-1] if lines else "unknown error")[:300]


# --------------------------------------------------------------------------
# Servers


@dataclass
class Ctx:
    gthread_threads: int
    upstream_url: str | None = None


@dataclass(frozen=True)
class Server:
    name: str
    describe: Callable[[Ctx], str]
    command: Callable[[str, int, Ctx], Cmd]
    # Returns None when usable, else why not.
    unavailable: Callable[[], str | None]


def _bench_bin(name: str) -> str:
    return str(BENCH_VENV / "bin" / name)


def _project_python() -> str:
    return str(PROJECT_VENV / "bin" / "python")


def _shim_unavailable() -> str | None:
    if not Path(_project_python()).exists():
        return f"{PROJECT_VENV} not found (run `make build`)"
    try:
        r = _run_logged(
            [_project_python(), "-m", "twisted_shim", "serve", "--help"],
            cwd=HERE,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return "`python -m twisted_shim serve --help` did not answer in 60 s"
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()
        return "`python -m twisted_shim serve --help` failed: " + (
            last[-1] if last else f"exit status {r.returncode}"
        )
    return None


def _bench_unavailable(exe: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if exe == "uwsgi" and UWSGI_ERROR.exists():
            return UWSGI_ERROR.read_text().strip()
        if not Path(_bench_bin(exe)).exists():
            return f"{_bench_bin(exe)} not found (run with --setup)"
        return None

    return check


def _shim_cmd(threaded: bool) -> Callable[[str, int, Ctx], Cmd]:
    """twisted-shim on the reactor thread, or with gunicorn gthread's threads."""

    def cmd(app: str, port: int, ctx: Ctx) -> Cmd:
        threads = ctx.gthread_threads if threaded else 0
        return [
            _project_python(),
            *f"-m twisted_shim serve wsgi_apps:{app} --bind {HOST}:{port}".split(),
            *f"--workers 1 --threads {threads}".split(),
        ]

    return cmd


def _granian_cmd(app: str, port: int, ctx: Ctx) -> Cmd:
    return [
        _bench_bin("granian"),
        *f"--interface wsgi --host {HOST} --port {port} --workers 1".split(),
        f"wsgi_apps:{app}",
    ]


def _gunicorn_cmd(worker: str) -> Callable[[str, int, Ctx], Cmd]:
    def cmd(app: str, port: int, ctx: Ctx) -> Cmd:
        threads = ["--threads", str(ctx.gthread_threads)] if worker == "gthread" else []
        return [
            _bench_bin("gunicorn"),
            *f"-k {worker} -w 1".split(),
            *threads,
            *f"-b {HOST}:{port} wsgi_apps:{app}".split(),
        ]

    return cmd


def _uwsgi_cmd(app: str, port: int, ctx: Ctx) -> Cmd:
    return [
        _bench_bin("uwsgi"),
        *"--master --processes 1".split(),
        *f"--http-socket {HOST}:{port} --wsgi wsgi_apps:{app}".split(),
        *f"--home {BENCH_VENV} --pythonpath {HERE}".split(),
        *"--disable-logging --listen 1024 --die-on-term --need-app --strict".split(),
        # --http-socket closes the connection after each response without
        # saying so, which wrk counts as a read error.
        *["--add-header", "Connection: close"],
    ]


def _twist_cmd(app: str, port: int, ctx: Ctx) -> Cmd:
    return [
        _bench_bin("twist"),
        *f"--reactor=epoll web --wsgi wsgi_apps.{app}".split(),
        *f"--listen tcp:{port}:interface={HOST}:backlog=1024".split(),
        # Never /dev/null: twisted.web rotates its access log by renaming the
        # file, which would replace /dev/null with a regular file.
        "--logfile",
        str(Path(tempfile.gettempdir()) / f"twisted-shim-bench-twist-{port}.log"),
    ]


SERVERS: dict[str, Server] = {
    s.name: s
    for s in [
        Server(
            "twisted-shim",
            lambda c: "--workers 1 --threads 0: the app runs on the reactor thread",
            _shim_cmd(threaded=False),
            _shim_unavailable,
        ),
        Server(
            "twisted-shim-threads",
            lambda c: (
                f"--workers 1 --threads {c.gthread_threads}: thread-pool mode "
                "(as gunicorn gthread), blocking calls in the pool"
            ),
            _shim_cmd(threaded=True),
            _shim_unavailable,
        ),
        Server(
            "granian",
            lambda c: "--interface wsgi --workers 1, default blocking threads (512)",
            _granian_cmd,
            _bench_unavailable("granian"),
        ),
        Server(
            "gunicorn-sync",
            lambda c: "-k sync -w 1 (one request at a time, no keep-alive)",
            _gunicorn_cmd("sync"),
            _bench_unavailable("gunicorn"),
        ),
        Server(
            "gunicorn-gthread",
            lambda c: f"-k gthread -w 1 --threads {c.gthread_threads}",
            _gunicorn_cmd("gthread"),
            _bench_unavailable("gunicorn"),
        ),
        Server(
            "uwsgi",
            lambda c: (
                "--master --processes 1 --http-socket, no threads, Connection: close"
            ),
            _uwsgi_cmd,
            _bench_unavailable("uwsgi"),
        ),
        Server(
            "twisted-web",
            lambda c: "twist --reactor=epoll web --wsgi (thread pool, max 20 threads)",
            _twist_cmd,
            _bench_unavailable("twist"),
        ),
    ]
}


# --------------------------------------------------------------------------
# Applications and their load


@dataclass(frozen=True)
class App:
    name: str
    connections: int
    describe: str
    method: str = "GET"
    body: bytes = b""
    expect: Callable[[bytes], bool] = lambda b: True
    #: Run only on these servers (all of them when empty).
    only: tuple[str, ...] = ()


ECHO_BODY = (b"0123456789abcdef" * (ECHO_BODY_BYTES // 16 + 1))[:ECHO_BODY_BYTES]

APPS: dict[str, App] = {
    a.name: a
    for a in [
        App("hello", 100, "GET, 13-byte body", expect=lambda b: b == b"Hello, world!"),
        App("big", 100, "GET, 64 KiB body", expect=lambda b: len(b) == 65536),
        App(
            "echo",
            100,
            "POST 10 KiB, echoed back",
            "POST",
            ECHO_BODY,
            expect=lambda b: b == ECHO_BODY,
        ),
        App(
            "upstream",
            500,
            "GET, app waits on a 50 ms upstream HTTP GET",
            expect=lambda b: b == b"upstream: ok",
        ),
        App(
            "upstream_treq",
            500,
            "as upstream, with treq instead of a bare Agent on the paused path",
            expect=lambda b: b == b"upstream: ok",
            only=(BASELINE,),
        ),
        App(
            "sleep",
            500,
            "GET, app waits 50 ms (deferLater / time.sleep)",
            expect=lambda b: b == b"slept: ok",
        ),
    ]
}
DEFAULT_APPS = ("hello", "big", "echo", "upstream", "upstream_treq")


def _wrk_script(app: App, directory: Path) -> Path:
    lines = []
    if app.method != "GET":
        lines.append(f'wrk.method = "{app.method}"')
    if app.body:
        # The body is ASCII (ECHO_BODY); wrk adds Content-Length itself.
        lines.append(f'wrk.body = "{app.body.decode("ascii")}"')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    lines.append(
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        f'  io.write(string.format("{_WRK_TAG}'
        '{\\"requests\\": %.0f, \\"duration_us\\": %.0f, \\"bytes\\": %.0f, '
        '\\"connect\\": %.0f, \\"read\\": %.0f, \\"write\\": %.0f, '
        '\\"status\\": %.0f, \\"timeout\\": %.0f, \\"p50_us\\": %.0f, '
        '\\"p90_us\\": %.0f, \\"p99_us\\": %.0f, \\"max_us\\": %.0f, '
        '\\"mean_us\\": %.1f}\\n",\n'
        "    summary.requests, summary.duration, summary.bytes,\n"
        "    e.connect, e.read, e.write, e.status, e.timeout,\n"
        "    latency:percentile(50), latency:percentile(90),\n"
        "    latency:percentile(99), latency.max, latency.mean))\n"
        "end"
    )
    path = directory / f"wrk-{app.name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _check_response(port: int, app: App, timeout: float) -> str | None:
    """One request before the load; an error message if it is wrong."""
    deadline = time.monotonic() + timeout
    last = "no response"
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            headers = {"Content-Type": "application/octet-stream"} if app.body else {}
            conn.request(app.method, "/", body=app.body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and app.expect(body):
                return None
            return f"check request: status {resp.status}, body {body[:80]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"check request failed: {exc!r}"
            time.sleep(0.2)
        finally:
            conn.close()
    return last


# --------------------------------------------------------------------------
# Running one pair


@dataclass
class PairResult:
    server: str
    app: str
    status: str  # ok, invalid, failed, not installed, not available
    connections: int = 0
    rate: float | None = None
    wrk: dict[str, float] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    error_rate: float = 0.0
    server_cpu: float | None = None  # fraction of one core, measured run
    wrk_cpu: float | None = None
    upstream_cpu: float | None = None
    other_cpu: float | None = None  # CPU used by processes not in the test
    wall_s: float = 0.0
    drain_s: float = 0.0
    command: str = ""
    note: str | None = None
    error: str | None = None

    @property
    def client_bound(self) -> bool:
        return self.wrk_cpu is not None and self.wrk_cpu > CLIENT_BOUND

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

    @property
    def measured(self) -> bool:
        return self.rate is not None

    @property
    def p99_ms(self) -> float | None:
        return self.wrk["p99_us"] / 1000 if "p99_us" in self.wrk else None

    @property
    def p99_hidden(self) -> bool:
        """Timeouts (not in wrk's histogram) above 1%: p99 is > the timeout."""
        req = self.wrk.get("requests", 0)
        return req > 0 and self.wrk.get("timeout", 0) / req > ERROR_LIMIT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "connections": self.connections,
            "rate": None if self.rate is None else round(self.rate, 1),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "p99_above_timeout": self.p99_hidden,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 5),
            "wrk": self.wrk,
            "warmup": self.warmup,
            "server_cpu": _round(self.server_cpu),
            "wrk_cpu": _round(self.wrk_cpu),
            "upstream_cpu": _round(self.upstream_cpu),
            "other_cpu": _round(self.other_cpu),
            "wall_s": round(self.wall_s, 2),
            "drain_s": round(self.drain_s, 2),
            "command": self.command,
        }
        if self.note:
            out["note"] = self.note
        if self.error:
            out["error"] = self.error
        return out


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


@dataclass
class Plan:
    wrk: str
    warmup_s: int
    duration_s: int
    server_cpu: int
    client_cpu: int
    workdir: Path
    ctx: Ctx
    upstream: subprocess.Popen[bytes] | None = None


def _run_wrk(
    plan: Plan, app: App, port: int, seconds: int, script: Path
) -> tuple[dict[str, float], str, str | None]:
    cmd = [
        "taskset",
        "-c",
        str(plan.client_cpu),
        plan.wrk,
        "-t1",
        f"-c{app.connections}",
        f"-d{seconds}s",
        "--timeout",
        f"{WRK_TIMEOUT_S:.0f}s",
        "--latency",
        "-s",
        str(script),
        f"http://{HOST}:{port}/",
    ]
    out_path = plan.workdir / "wrk.out"
    proc = _start(cmd, out_path)
    try:
        proc.wait(seconds + 60)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return {}, _tail(out_path, 40), "wrk did not finish"
    _LIVE.pop(proc.pid, None)
    text = out_path.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith(_WRK_TAG):
            return json.loads(line[len(_WRK_TAG) :]), text, None
    return {}, text, f"wrk exit status {proc.returncode}, no summary: {text[-500:]}"


def run_pair(plan: Plan, server: Server, app: App) -> PairResult:
    started = time.monotonic()
    result = PairResult(server.name, app.name, "failed", connections=app.connections)
    port = free_port(HOST)
    cmd = server.command(app.name, port, plan.ctx)
    result.command = " ".join(cmd)
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    if plan.ctx.upstream_url:
        env["WSGI_BENCH_UPSTREAM"] = plan.ctx.upstream_url
    log = plan.workdir / f"{server.name}-{app.name}.log"
    script = _wrk_script(app, plan.workdir)
    proc = _start(["taskset", "-c", str(plan.server_cpu), *cmd], log, env=env, cwd=HERE)
    try:
        problem = _wait_port(port, proc, READY_TIMEOUT_S) or _check_response(
            port, app, 30.0
        )
        if problem:
            result.error = f"{problem}\n{_tail(log)}"
            return result
        warm, _, problem = _run_wrk(plan, app, port, plan.warmup_s, script)
        result.warmup = warm
        if problem:
            result.error = f"warm-up: {problem}\n{_tail(log)}"
            return result
        waited, left = _wait_drained(port, DRAIN_TIMEOUT_S)
        result.drain_s = waited
        if left:
            result.add_note(
                f"{left} connections from the warm-up still open after "
                f"{waited:.0f} s; measured anyway"
            )
        elif waited > 1.0:
            result.add_note(
                f"the warm-up's queued requests took {waited:.1f} s to drain"
            )
        if proc.poll() is not None:
            result.error = f"server exited during warm-up\n{_tail(log)}"
            return result
        cpu0 = _session_cpu_s(proc.pid)
        up0 = _session_cpu_s(plan.upstream.pid) if plan.upstream else None
        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0 = _busy_cpu_s()
        t0 = time.monotonic()
        stats, text, problem = _run_wrk(plan, app, port, plan.duration_s, script)
        elapsed = time.monotonic() - t0
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        busy1 = _busy_cpu_s()
        cpu1 = _session_cpu_s(proc.pid)
        if problem:
            result.error = f"{problem}\n{_tail(log)}"
            return result
        if proc.poll() is not None:
            result.error = f"server exited during the run\n{_tail(log)}"
            return result
        result.wrk = stats
        duration = stats["duration_us"] / 1e6
        result.rate = stats["requests"] / duration if duration > 0 else 0.0
        result.errors = int(
            sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
        )
        result.error_rate = result.errors / max(stats["requests"], 1)
        result.server_cpu = (cpu1 - cpu0) / elapsed
        result.wrk_cpu = (
            (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        ) / elapsed
        if plan.upstream and up0 is not None:
            result.upstream_cpu = (_session_cpu_s(plan.upstream.pid) - up0) / elapsed
        harness_cpu = (self1.ru_utime + self1.ru_stime) - (
            self0.ru_utime + self0.ru_stime
        )
        result.other_cpu = max(
            0.0,
            (busy1 - busy0 - harness_cpu) / elapsed
            - result.server_cpu
            - result.wrk_cpu
            - (result.upstream_cpu or 0.0),
        )
        if result.other_cpu > OTHER_CPU_LIMIT:
            result.add_note(
                f"other processes used {result.other_cpu:.0%} of a CPU during the "
                "run: the result may be disturbed"
            )
        invalid = stats["requests"] == 0 or result.error_rate > ERROR_LIMIT
        result.status = "invalid" if invalid else "ok"
        if result.client_bound:
            result.add_note(f"wrk used {result.wrk_cpu:.0%} of its core: client-bound")
        return result
    finally:
        stop_note = _stop(proc)
        if stop_note:
            result.add_note(stop_note)
        result.wall_s = time.monotonic() - started


# --------------------------------------------------------------------------
# The upstream server (upstream_server.py, in .venv-bench: on uvloop)


def start_upstream(plan: Plan) -> str | None:
    port = free_port(HOST)
    log = plan.workdir / "upstream.log"
    cmd = [
        "taskset",
        "-c",
        str(plan.client_cpu),
        str(_bench_python()),
        str(HERE / "upstream_server.py"),
        *f"--host {HOST} --port {port} --delay {UPSTREAM_DELAY_S}".split(),
    ]
    proc = _start(cmd, log)
    problem = _wait_port(port, proc, 30.0)
    if problem:
        _stop(proc)
        return f"upstream server: {problem}\n{_tail(log)}"
    plan.upstream = proc
    plan.ctx.upstream_url = f"http://{HOST}:{port}/"
    return None


# --------------------------------------------------------------------------
# Versions, tables, JSON


def _cmd_output(cmd: Cmd) -> str:
    try:
        r = _run_logged(cmd, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (r.stdout + r.stderr).strip()


_VERSION_CODE = """
import importlib.metadata as m, json, platform, sys
out = {"python": platform.python_version()}
for d in sys.argv[1:]:
    try:
        out[d] = m.version(d)
    except m.PackageNotFoundError:
        out[d] = "not installed"
print(json.dumps(out))
"""


def _dist_versions(python: Path, dists: list[str]) -> dict[str, str]:
    if not python.exists():
        return {d: "not installed" for d in ["python", *dists]}
    try:
        return json.loads(_cmd_output([str(python), "-c", _VERSION_CODE, *dists]))
    except ValueError:
        return {d: "unknown" for d in ["python", *dists]}


def _versions() -> dict[str, str]:
    shim = _dist_versions(
        PROJECT_VENV / "bin" / "python", ["twisted_shim", "twisted", "treq"]
    )
    peers = _dist_versions(
        _bench_python(), ["granian", "gunicorn", "uwsgi", "twisted", "uvloop"]
    )
    wrk_line = _cmd_output([shutil.which("wrk") or "wrk", "--version"]).splitlines()
    return {
        "python": shim.get("python", "?"),
        "twisted_shim": shim.get("twisted_shim", "?"),
        "twisted (project)": shim.get("twisted", "?"),
        "treq (project)": shim.get("treq", "?"),
        "python (bench venv)": peers.get("python", "?"),
        "granian": peers.get("granian", "?"),
        "gunicorn": peers.get("gunicorn", "?"),
        "uwsgi": peers.get("uwsgi", "?"),
        "twisted (bench venv)": peers.get("twisted", "?"),
        "uvloop (upstream)": peers.get("uvloop", "?"),
        "wrk": wrk_line[0].split(" Copyright")[0].strip() if wrk_line else "?",
    }


def _git_head() -> str:
    out = _cmd_output(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"])
    return out.splitlines()[0] if out else "?"


def _fmt_rate(r: PairResult) -> str:
    if r.rate is None:
        return r.status
    # wrk saturated its core: the server may be faster than this.
    bound = ">= " if r.client_bound else ""
    return f"{bound}{r.rate:,.0f}"


def _fmt_p99(r: PairResult) -> str:
    if r.p99_ms is None:
        return "-"
    if r.p99_hidden:
        return f"> {WRK_TIMEOUT_S * 1000:.0f}"
    return f"{r.p99_ms:.1f}" if r.p99_ms >= 10 else f"{r.p99_ms:.2f}"


def _fmt_errors(r: PairResult) -> str:
    if not r.measured:
        return "-"
    if not r.wrk.get("requests"):
        return "no response in time INVALID"
    if r.errors == 0:
        return "0"
    kinds = ", ".join(
        f"{k} {int(r.wrk[k]):,}"
        for k in ("connect", "read", "write", "status", "timeout")
        if r.wrk.get(k)
    )
    mark = " INVALID" if r.status == "invalid" else ""
    return f"{r.error_rate:.1%} ({kinds}){mark}"


def _fmt_cpu_per_request(r: PairResult) -> str:
    """Microseconds of the server's CPU (its whole process tree, user and
    system) per request served in the measured run: the cost that stays
    meaningful when wrk, not the server, was the limit."""
    if r.server_cpu is None or not r.rate:
        return "-"
    return f"{r.server_cpu / r.rate * 1e6:,.1f}"


def _fmt_ratio(r: PairResult, base: PairResult | None) -> str:
    if base is None or base.rate is None or not r.rate:
        return "-"
    return f"{base.rate / r.rate:.2f}x"


HEADERS = [
    "server",
    "app",
    "req/s",
    "server CPU µs/req",
    "p99 ms",
    "errors",
    "twisted-shim / server",
]
ALIGN_RIGHT = [False, False, True, True, True, False, True]


def _rows(
    results: dict[tuple[str, str], PairResult], servers: list[str], apps: list[str]
) -> list[list[str]]:
    rows = []
    for app in apps:
        base = results.get((BASELINE, app))
        for server in servers:
            r = results.get((server, app))
            if r is None:
                continue
            rows.append(
                [
                    server,
                    app,
                    _fmt_rate(r),
                    _fmt_cpu_per_request(r),
                    _fmt_p99(r),
                    _fmt_errors(r),
                    _fmt_ratio(r, base),
                ]
            )
    return rows


def _header(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"twisted-shim {v['twisted_shim']} ({meta['core_build']}; git {meta['git']}), "
        f"Python {v['python']}, Twisted {v['twisted (project)']}, treq "
        f"{v['treq (project)']}",
        f"peers (.venv-bench, Python {v['python (bench venv)']}): Granian "
        f"{v['granian']}, gunicorn {v['gunicorn']}, uWSGI {v['uwsgi']}, Twisted "
        f"{v['twisted (bench venv)']}; upstream on uvloop {v['uvloop (upstream)']}; "
        f"{v['wrk']}",
        f"{meta['cpu']} ({meta['cpus']} CPUs), {meta['platform']}, 1-min load "
        f"{meta['loadavg_start']:.2f} at start"
        + (f", {meta['loadavg_end']:.2f} at end" if "loadavg_end" in meta else ""),
        f"{'quick' if meta['quick'] else 'full'} mode: each server alone on CPU "
        f"{meta['server_cpu']} (taskset, whole process tree); wrk -t1 (and the "
        f"upstream) on CPU {meta['client_cpu']}; warm-up {meta['warmup_s']} s, "
        f"measured {meta['duration_s']} s; fresh server per app; wrk --timeout "
        f"{WRK_TIMEOUT_S:.0f}s; >1% errors = INVALID",
        "connections: "
        + ", ".join(f"{a} {c}" for a, c in meta["connections"].items())
        + "; ratio = twisted-shim req/s / server req/s (> 1: twisted-shim faster); "
        f"'>=': wrk used > {CLIENT_BOUND:.0%} of its core (client-bound)",
    ]


def _server_lines(ctx: Ctx, servers: list[str]) -> list[str]:
    return [f"{s}: {SERVERS[s].describe(ctx)}" for s in servers]


def _write_json(
    path: Path,
    meta: dict[str, Any],
    results: dict[tuple[str, str], PairResult],
    merge: bool,
) -> None:
    runs: dict[str, dict[str, Any]] = read_previous(path, "results") if merge else {}
    for (server, app), r in results.items():
        entry = r.to_json()
        entry["date"] = meta["date"]
        base = results.get((BASELINE, app))
        if base and base.rate and r.rate:
            entry["twisted-shim/server"] = round(base.rate / r.rate, 4)
        runs.setdefault(app, {})[server] = entry
    write_json(path, {"meta": meta, "results": runs})


# --------------------------------------------------------------------------
# Harness


def _pick_cpus() -> tuple[int, int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[0], cpus[1]


def _split(
    value: str | None, known: dict[str, Any], default: tuple[str, ...], what: str
) -> list[str] | None:
    if not value:
        return list(default)
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        print(
            f"unknown {what}: {', '.join(bad)}; choose from {', '.join(known)}",
            file=sys.stderr,
        )
        return None
    return [n for n in known if n in names]  # in the canonical order


def _run_pair_quietly(plan: Plan, server: str, app: str, retries: int) -> PairResult:
    """
    L{run_pair} once the machine is quiet; again (up to C{retries} times)
    if processes outside the benchmark used the CPUs during the run.
    """
    disturbed: list[str] = []
    for attempt in range(retries + 1):
        waited, load = _wait_quiet(QUIET_TIMEOUT_S)
        r = run_pair(plan, SERVERS[server], APPS[app])
        if load > OTHER_CPU_LIMIT:
            r.add_note(
                f"the machine was still busy ({load:.0%} of a CPU) after waiting "
                f"{waited:.0f} s"
            )
        # Only a server that needed its core is set back by other processes
        # (one that waits on its upstream or its threads much less so).
        disturbed_run = (
            r.other_cpu is not None
            and r.other_cpu > OTHER_CPU_LIMIT
            and (r.server_cpu or 0.0) > 0.3
        )
        if not disturbed_run or attempt == retries:
            break
        rate = "-" if r.rate is None else f"{r.rate:,.0f} req/s"
        disturbed.append(f"{rate} with {r.other_cpu:.0%} other CPU")
        print(f"disturbed ({disturbed[-1]}), again ... ", end="", flush=True)
    if disturbed:
        r.add_note(f"attempt {len(disturbed) + 1}; disturbed: {'; '.join(disturbed)}")
    return r


def baseline_server(tree: Path) -> Server:
    """
    twisted-shim from another checkout of this repository, whose extension
    is built in place (C{maturin develop}, or C{cargo build --release} with
    the library copied to C{twisted_shim/_core.*.so}): the same command as
    C{twisted-shim} with that tree first on C{PYTHONPATH}, so before/after
    comparisons run in one sitting, on the same machine state.
    """
    tree = tree.resolve()
    label = _cmd_output(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"])
    shim = _shim_cmd(threaded=False)

    def cmd(app: str, port: int, ctx: Ctx) -> Cmd:
        path = f"PYTHONPATH={HERE}{os.pathsep}{tree}"
        return ["env", path, *shim(app, port, ctx)]

    def unavailable() -> str | None:
        if not list((tree / "twisted_shim").glob("_core*.so")):
            return f"no built extension in {tree}/twisted_shim"
        return _shim_unavailable()

    return Server(
        "twisted-shim@base",
        lambda c: f"as twisted-shim, from {tree} (git {label})",
        cmd,
        unavailable,
    )


def harness(args: argparse.Namespace) -> int:
    if args.baseline:
        base = baseline_server(Path(args.baseline))
        SERVERS[base.name] = base
    servers = _split(args.only, SERVERS, tuple(SERVERS), "server(s)")
    apps = _split(args.apps, APPS, DEFAULT_APPS, "app(s)")
    if servers is None or apps is None:
        return 2
    cpus = _pick_cpus()
    if cpus is None:
        print(
            "need at least 2 CPUs (server and wrk on separate cores)", file=sys.stderr
        )
        return 2
    server_cpu, client_cpu = cpus
    wrk = ensure_wrk()
    if wrk is None:
        return 1
    if not ensure_bench_venv(args.setup):
        return 1
    # The harness itself (mostly waiting) stays off the server's core.
    os.sched_setaffinity(0, {client_cpu})

    ctx = Ctx(gthread_threads=args.gthread_threads)
    warmup_s, duration_s = (1, 3) if args.quick else (2, 10)
    if args.duration:
        duration_s = args.duration
    meta: dict[str, Any] = {
        "versions": _versions(),
        **machine_meta(),
        "git": _git_head(),
        "quick": args.quick,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "wrk_timeout_s": WRK_TIMEOUT_S,
        "error_limit": ERROR_LIMIT,
        "connections": {a: APPS[a].connections for a in apps},
        "servers": {s: SERVERS[s].describe(ctx) for s in servers},
        "apps": {a: APPS[a].describe for a in apps},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for line in _header(meta):
        print(line)
    print()

    results: dict[tuple[str, str], PairResult] = {}
    wall_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wsgi-bench-") as tmp:
        plan = Plan(wrk, warmup_s, duration_s, server_cpu, client_cpu, Path(tmp), ctx)
        try:
            unavailable = {s: SERVERS[s].unavailable() for s in servers}
            if any(APPS[a].name.startswith("upstream") for a in apps):
                problem = start_upstream(plan)
                if problem:
                    print(problem, file=sys.stderr)
                    return 1
                print(f"upstream server on {ctx.upstream_url} (CPU {client_cpu})")
            pairs = [
                (a, s)
                for a in apps
                for s in servers
                if not APPS[a].only or s in APPS[a].only
            ]
            total = len(pairs)
            step = 0
            for app_name, server_name in pairs:
                step += 1
                label = f"[{step}/{total}] {app_name} on {server_name}"
                why = unavailable[server_name]
                if why:
                    status = (
                        "not installed" if server_name == "uwsgi" else "not available"
                    )
                    results[(server_name, app_name)] = PairResult(
                        server_name, app_name, status, note=why
                    )
                    print(f"{label}: {status.upper()}: {why}", flush=True)
                    continue
                print(f"{label} ... ", end="", flush=True)
                r = _run_pair_quietly(plan, server_name, app_name, args.retries)
                results[(server_name, app_name)] = r
                if r.measured:
                    cpu = f"server CPU {r.server_cpu:.0%}, wrk CPU {r.wrk_cpu:.0%}"
                    if r.upstream_cpu is not None:
                        cpu += f", upstream CPU {r.upstream_cpu:.0%}"
                    print(
                        f"{r.rate:,.0f} req/s, p99 {_fmt_p99(r)} ms, errors "
                        f"{_fmt_errors(r)}; {cpu} ({r.wall_s:.1f} s)",
                        flush=True,
                    )
                else:
                    print(f"FAILED ({r.wall_s:.1f} s)", flush=True)
                if r.note:
                    print(f"    note: {r.note}")
                if r.error:
                    for line in r.error.splitlines():
                        print(f"    | {line}")
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            _stop_all()
            return 130
        finally:
            _stop_all()

    meta["wall_s"] = round(time.monotonic() - wall_start, 1)
    meta["loadavg_end"] = os.getloadavg()[0]
    rows = _rows(results, servers, apps)
    print()
    for line in _header(meta):
        print(line)
    print()
    print(plain_table(HEADERS, rows, ALIGN_RIGHT, group_column=1))
    print()
    server_lines = _server_lines(ctx, servers)
    app_lines = [
        f"{a}: {APPS[a].describe}, {APPS[a].connections} connections" for a in apps
    ]
    notes = [
        f"{a} on {s}: {r.note or (r.error or '').splitlines()[0]}"
        for (s, a), r in results.items()
        if r.note or r.error
    ]
    print_list("Servers", server_lines)
    print_list("Apps", app_lines)
    if notes:
        print_list("Notes", notes)
    print()
    print_markdown(
        _header(meta),
        markdown_table(HEADERS, rows, ALIGN_RIGHT, code_columns=2),
        [*server_lines, *app_lines, *(f"note, {n}" for n in notes)],
    )
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / ("wsgi-quick.json" if args.quick else "wsgi.json")
    )
    _write_json(path, meta, results, merge=bool(args.only or args.apps))
    print(f"wrote {path}; wall time {meta['wall_s']:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve the same WSGI apps with twisted-shim and other WSGI "
        "servers, load each with wrk, and print one comparison table.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 s warm-up and 3 s runs (default: 2 s and 10 s)",
    )
    parser.add_argument(
        "--only",
        metavar="SERVER[,SERVER...]",
        help=f"run only these servers ({', '.join(SERVERS)})",
    )
    parser.add_argument(
        "--apps",
        metavar="APP[,APP...]",
        help=f"run only these apps ({', '.join(APPS)}; "
        f"default {','.join(DEFAULT_APPS)})",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="(re)install .venv-bench from requirements-bench.txt "
        "even if it looks current",
    )
    parser.add_argument(
        "--gthread-threads",
        type=int,
        default=GTHREAD_THREADS,
        help=f"gunicorn gthread --threads (default {GTHREAD_THREADS})",
    )
    parser.add_argument("--duration", type=int, help="measured seconds per run")
    parser.add_argument(
        "--retries",
        type=int,
        default=RETRIES,
        help="reruns of a pair when other processes used more than "
        f"{OTHER_CPU_LIMIT:.0%}% of a CPU during it (default {RETRIES})",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run twisted-shim from this checkout (extension built in "
        "place) as server twisted-shim@base, for before/after comparisons",
    )
    parser.add_argument("--json", help="JSON output path")
    args = parser.parse_args(argv)
    # Ctrl-C, SIGTERM and SIGHUP all stop every process started.
    install_signal_handlers()
    try:
        return harness(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        _stop_all()
        return 130


if __name__ == "__main__":
    sys.exit(main())
