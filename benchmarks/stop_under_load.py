#!/usr/bin/env python
"""
Requests lost when a loaded server stops or recycles its workers: wrk keeps
100 keep-alive connections busy while C{twisted-shim serve} gets SIGTERM,
or recycles workers with C{--max-requests}; the table counts what wrk saw
go wrong.

Usage::

    python benchmarks/stop_under_load.py [--runs 5] [--duration 6]
        [--scenarios sigterm-hello,...] [--json PATH]

Method: each run starts a fresh C{twisted-shim serve wsgi_apps:APP} on a
free port (this repository's build, C{.venv}'s Python), waits for its
C{ready} line, and runs C{wrk -c100 -t2 -dDURATION --latency} against it.
A C{sigterm-*} scenario sends SIGTERM to the server (the supervisor with
C{--workers 2}) at DURATION/2 and records how the server exited and how
long after the signal; a C{recycle-*} scenario runs C{--max-requests 1000
--workers 2} for the whole duration and counts the recycles logged.
Applications (C{benchmarks/wsgi_apps.py}): C{hello}, and C{paused}, whose
every request pauses its output and resumes 10 ms later from a
C{callLater}.

What the columns mean (wrk's own counters):

  - C{read}, C{write}, C{timeout}: a request that got no (complete)
    response: the server closed or reset a connection under a request,
    or did not answer within wrk's 2 s. Lossless means 0.
  - C{non-2xx}: responses with another status (0 expected).
  - C{connect}, and C{refused} among C{write}: connections wrk could not
    open. After SIGTERM the server stops listening and wrk keeps
    reconnecting to a closed port until its duration is over, so thousands
    are expected there, each a refused connection, not a request: a client
    whose handshake fails has sent nothing. wrk connects without blocking
    and learns of the refusal when it first writes, so it counts most of
    them as C{write} errors; C{refused} is the kernel's count of handshakes
    that failed (C{TcpAttemptFails}), so C{write} minus C{refused} is the
    writes that failed on an open connection. While recycling all must be 0.
  - C{resets}: established connections reset (C{TcpEstabResets}): 0 when
    no connection was cut under a request.

As root, each run has a network namespace of its own (loopback only), so
the kernel's counters are the run's alone; otherwise the two kernel columns
are left out.

Only wall-clock behaviour on this machine is measured; nothing is asserted
(the same properties are tested, counted, in C{tests/test_cli.py} and
C{tests/test_recycling.py}).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _machine import core_build, cpu_model
from _report import markdown_table, plain_table, write_json

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
PYTHON = ROOT / ".venv" / "bin" / "python"

READY = re.compile(r"^twisted-shim: ready \(pid \d+")
RECYCLED = re.compile(r"^twisted-shim: worker \d+ served \d+ requests")
SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")

#: name: (application, extra serve arguments, send SIGTERM half-way)
SCENARIOS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "sigterm-hello": ("hello", (), True),
    "sigterm-paused": ("paused", (), True),
    "sigterm-hello-2w": ("hello", ("--workers", "2"), True),
    "recycle-hello": ("hello", ("--workers", "2", "--max-requests", "1000"), False),
    "recycle-paused": (
        "paused",
        ("--workers", "2", "--max-requests", "1000"),
        False,
    ),
}
STARTUP_TIMEOUT = 30.0


@dataclass
class Run:
    scenario: str
    run: int
    requests: int = 0
    non_2xx: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    connect: int = 0
    recycles: int = 0
    refused: int | None = None
    resets: int | None = None
    exit_code: int | None = None
    exit_after: float | None = None
    server_log: list[str] = field(default_factory=list)


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters of this network namespace."""
    counters: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = Path(path).read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            prefix, *keys = names.split()
            counters.update(
                (prefix + k, int(v))
                for k, v in zip(keys, values.split()[1:], strict=True)
            )
    return counters


def own_network_namespace() -> bool:
    """Move this process (and so its children) to a new network namespace
    with loopback up; false if not allowed."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(clone_newnet) != 0:
        return False
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(scenario: str, number: int, duration: float, isolated: bool) -> Run:
    app, extra, sigterm = SCENARIOS[scenario]
    port = free_port()
    result = Run(scenario, number)
    server = subprocess.Popen(
        [str(PYTHON), "-m", "twisted_shim", "serve", f"wsgi_apps:{app}"]
        + ["--bind", f"127.0.0.1:{port}", *extra],
        cwd=BENCHMARKS,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ready = threading.Event()

    def read_log() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            result.server_log.append(line.rstrip("\n"))
            if READY.match(line):
                ready.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        if not ready.wait(STARTUP_TIMEOUT):
            raise SystemExit(
                f"{scenario}: the server did not start:\n"
                + "\n".join(result.server_log)
            )
        wrk = subprocess.Popen(
            ["wrk", "-c100", "-t2", f"-d{duration:g}s", "--latency"]
            + [f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = time.monotonic()
        before = tcp_counters()
        exited: list[float] = []
        if sigterm:
            time.sleep(duration / 2)
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            waiter = threading.Thread(
                target=lambda: (server.wait(), exited.append(time.monotonic())),
                daemon=True,
            )
            waiter.start()
        if not sigterm:
            # While the server runs, the counters are read just before wrk's
            # end: it resets the connections it leaves with requests
            # outstanding when it exits.
            time.sleep(max(0.0, started + duration - 0.3 - time.monotonic()))
            after = tcp_counters()
        out, _ = wrk.communicate(timeout=duration + 60)
        if sigterm:
            after = tcp_counters()
        if isolated:
            result.refused = after["Tcp:AttemptFails"] - before["Tcp:AttemptFails"]
            result.resets = after["Tcp:EstabResets"] - before["Tcp:EstabResets"]
        if sigterm:
            waiter.join(60)
            result.exit_code = server.returncode
            if exited:
                result.exit_after = exited[0] - signalled
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        reader.join(5)
    if m := SOCKET_ERRORS.search(out):
        result.connect, result.read, result.write, result.timeout = map(int, m.groups())
    if m := NON_2XX.search(out):
        result.non_2xx = int(m.group(1))
    if m := REQUESTS.search(out):
        result.requests = int(m.group(1))
    else:
        raise SystemExit(f"{scenario}: unexpected wrk output:\n{out}")
    result.recycles = sum(bool(RECYCLED.match(line)) for line in result.server_log)
    return result


def exit_text(r: Run) -> str:
    if r.exit_code is None:
        return "(running)"
    return f"{r.exit_code} after {r.exit_after:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument(
        "--duration", type=float, default=6.0, help="wrk's duration, seconds (6)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (all)",
    )
    parser.add_argument("--json", type=Path, help="also write the runs to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    if not PYTHON.exists():
        raise SystemExit(f"{PYTHON} missing: run make build first")
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}")
    isolated = own_network_namespace()
    if not isolated:
        print("not root: no network namespace, no kernel counters", file=sys.stderr)
    runs: list[Run] = []
    for name in scenarios:
        for n in range(1, args.runs + 1):
            r = one_run(name, n, args.duration, isolated)
            runs.append(r)
            print(
                f"{name} #{n}: {r.requests} requests, read {r.read} write {r.write}"
                f" timeout {r.timeout} non-2xx {r.non_2xx} connect {r.connect}"
                f" refused {r.refused} resets {r.resets}"
                f" recycles {r.recycles} exit {exit_text(r)}",
                file=sys.stderr,
            )
    headers = [
        "scenario",
        "run",
        "requests",
        "read",
        "write",
        "timeout",
        "non-2xx",
        "connect",
        "refused",
        "resets",
        "recycles",
        "server exit (after SIGTERM)",
    ]
    rows = [
        [
            r.scenario,
            str(r.run),
            str(r.requests),
            str(r.read),
            str(r.write),
            str(r.timeout),
            str(r.non_2xx),
            str(r.connect),
            "-" if r.refused is None else str(r.refused),
            "-" if r.resets is None else str(r.resets),
            str(r.recycles) if not SCENARIOS[r.scenario][2] else "-",
            exit_text(r) if SCENARIOS[r.scenario][2] else "-",
        ]
        for r in runs
    ]
    right = [False, *[True] * 10, False]
    print(plain_table(headers, rows, right, group_column=0))
    print()
    print(f"wrk -c100 -t2 -d{args.duration:g}s; {cpu_model()}; {core_build()}")
    print()
    print(markdown_table(headers, rows, right))
    if args.json:
        write_json(
            args.json,
            {
                "cpu": cpu_model(),
                "build": core_build(),
                "runs": [
                    {k: v for k, v in asdict(r).items() if k != "server_log"}
                    for r in runs
                ],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
