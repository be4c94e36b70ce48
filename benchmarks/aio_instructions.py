#!/usr/bin/env python
"""
Instructions per operation of C{aio_bench.py}'s benchmarks, on each loop:
counts that do not vary with the machine's load, for comparing loops (and
builds) on a noisy machine.

Usage::

    python benchmarks/aio_instructions.py [--only NAME[,NAME...]]
                                          [--loops L[,L...]] [--ops N]

Method: the process measured runs under C{valgrind --tool=callgrind}
(user-space instructions of every thread, no cache simulation) twice, with
C{N} and C{2N} operations, C{PYTHONHASHSEED=0}; the difference divided by
C{N} is the cost of one operation, start-up and set-up cancelling out. For
the scheduling benchmarks the process is C{aio_bench.py}'s worker with one
run; for the TCP echo ones it is the echo server, loaded by the C ping-pong
client (10 connections) with one rally of C{N} or C{2N} round trips after
its warm-up (a tenth as many). Slow (valgrind runs Python some 50 times
slower): C{--ops} defaults to 20,000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _transport_procs import START_TIMEOUT_S, Proc, rally, start_client

HERE = Path(__file__).resolve().parent
BENCH = HERE / "aio_bench.py"
LOOPS = ("rust", "default", "uvloop")
SCHEDULING = {
    "call_soon": lambda n: {"calls": n, "batch": 1000},
    "call_soon_chain": lambda n: {"calls": n},
    "call_later": lambda n: {"timers": n},
    "call_soon_threadsafe": lambda n: {"calls": n},
}
ECHO = {"tcp_echo_protocol": "echo-protocol", "tcp_echo_streams": "echo-streams"}
_COLLECTED = re.compile(r"Collected : (\d+)")


def _valgrind(out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--trace-children=no",
    ]


def _collected(stderr: str) -> int:
    m = _COLLECTED.search(stderr)
    if not m:
        raise RuntimeError("no callgrind summary:\n" + stderr[-2000:])
    return int(m.group(1))


def scheduling(name: str, loop: str, n: int) -> int:
    """Instructions of one worker process doing C{n} operations."""
    params = {**SCHEDULING[name](n), "repeats": 1}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            *_valgrind(Path(tmp) / "cg.out"),
            sys.executable,
            str(BENCH),
            *("--worker", name, "--loop", loop, "--params", json.dumps(params)),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=3600
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return _collected(done.stderr)


def echo(name: str, loop: str, n: int) -> int:
    """Instructions of one echo server serving C{n} round trips (and its
    set-up and the warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PYTHONHASHSEED"] = "0"
        server = Proc(
            [
                *_valgrind(Path(tmp) / "cg.out"),
                sys.executable,
                str(BENCH),
                *("--serve", ECHO[name], "--loop", loop),
            ]
        )
        try:
            port = int(server.expect("@@PORT ", START_TIMEOUT_S * 20))
            # The client's warm-up is a tenth of its rally: n + n / 10
            # round trips in all (per_op divides by that).
            p = {"conns": 10, "trips": n}
            client = start_client(port, p)
            rally(client, p)
            client.stop()
            # End of stdin ends the server cleanly (then valgrind reports).
            assert server.popen.stdin is not None
            server.popen.stdin.close()
            server.popen.wait(300)
            server.stderr.seek(0)
            return _collected(server.stderr.read())
        finally:
            server.stop()


def per_op(name: str, loop: str, n: int) -> float:
    if name in SCHEDULING:
        return (scheduling(name, loop, 2 * n) - scheduling(name, loop, n)) / n
    # Each echo run is a warm-up of a tenth of its rally, then the rally.
    return (echo(name, loop, 2 * n) - echo(name, loop, n)) / (n * 1.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    names = [*SCHEDULING, *ECHO]
    parser.add_argument("--only", help=f"benchmarks ({', '.join(names)})")
    parser.add_argument("--loops", help=f"loops ({', '.join(LOOPS)})")
    parser.add_argument("--ops", type=int, default=20_000, help="N (default 20,000)")
    args = parser.parse_args(argv)
    if args.only:
        names = args.only.split(",")
    loops = args.loops.split(",") if args.loops else list(LOOPS)
    results: dict[str, dict[str, float]] = {}
    for name in names:
        results[name] = {}
        for loop in loops:
            results[name][loop] = per_op(name, loop, args.ops)
            print(
                f"{name} on {loop}: {results[name][loop]:,.0f} instructions/op",
                flush=True,
            )
    print()
    print("benchmark, instructions per operation: " + ", ".join(loops))
    for name, by in results.items():
        cells = ", ".join(f"{by[lp] / 1e3:.2f}k" for lp in loops)
        ratio = ""
        if "rust" in by and "uvloop" in by:
            ratio = f" (rust/uvloop {by['rust'] / by['uvloop']:.2f}x)"
        print(f"  {name}: {cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
