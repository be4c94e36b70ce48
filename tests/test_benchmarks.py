"""
The benchmark scripts' command lines: C{--help} works and names the options
(the benchmarks themselves run with C{make bench}/C{make bench-wsgi}, not
here: speed is never asserted in tests), and, where a script lists its
benchmarks in C{--help}, that a newer one is listed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "option"),
    [
        ("wsgi_bench.py", "--retries"),
        ("reactor_bench.py", "--quick"),
        ("latency.py", "--runs"),
        ("transport_bench.py", "--smoke"),
        ("transport_bench.py", "tls_pingpong"),
        ("transport_bench.py", "connections"),
        ("stop_under_load.py", "--scenarios"),
        ("scrapy_bench.py", "--pages"),
        ("aio_bench.py", "--smoke"),
        ("aio_bench.py", "call_soon_threadsafe"),
        ("aio_bench.py", "httpx_client"),
        ("aio_instructions.py", "--ops"),
    ],
)
def test_help(script: str, option: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert option in out.stdout
