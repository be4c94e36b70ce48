"""
Twisted client libraries run unmodified on the rust reactor, exactly as on
epoll: each trial module of tests/integration/ (treq and Agent, txpostgres,
adbapi with psycopg2, txredisapi) runs in its own subprocess under
C{trial --reactor=rust} and under C{trial --reactor=epoll}, against
throwaway PostgreSQL and Redis servers (tests/services.py) whose addresses
it gets from its environment, and must pass every test, skip none and leave
the reactor clean (trial fails a test that leaves connections or timers
behind). The modules' docstrings say what each proves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg import Connection
from pytest_redis.executor import RedisExecutor
from services import (  # noqa: F401 (fixtures)
    clean_environ,
    pg_db,
    pg_env,
    pg_server,
    redis_db,
    redis_env,
    redis_server,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
REACTORS = ["rust", "epoll"]
#: One trial run; the whole module, however many tests it has.
TRIAL_TIMEOUT = 240.0

_SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)$", re.M)


def run_trial(
    module: str, reactor: str, env: dict[str, str], tmp_path: Path
) -> dict[str, int]:
    """
    Run C{integration.MODULE} under C{trial --reactor=REACTOR}; fail unless
    every test passed. Return trial's counts (C{{"successes": N}}).
    """
    environ = clean_environ()
    environ.update(env)
    environ["TEST_REACTOR"] = reactor
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    argv = [
        sys.executable,
        "-m",
        "twisted.trial",
        f"--reactor={reactor}",
        f"--temp-directory={tmp_path / '_trial_temp'}",
        f"integration.{module}",
    ]
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TRIAL_TIMEOUT,
    )
    output = result.stdout + result.stderr
    summary = _SUMMARY.findall(output)
    assert summary, f"no trial summary (exit {result.returncode}):\n{output}"
    verdict, counts_text = summary[-1]
    counts = {
        k: int(v) for k, v in (item.split("=") for item in counts_text.split(", "))
    }
    print(f"{module} on {reactor}: {verdict} {counts}")
    assert verdict == "PASSED" and result.returncode == 0, output
    assert set(counts) == {"successes"}, (
        f"skips or expected failures: {counts}\n{output}"
    )
    assert counts["successes"] > 0, output
    return counts


@pytest.mark.parametrize("reactor", REACTORS)
def test_http_clients(reactor: str, tmp_path: Path) -> None:
    """treq and Agent: see tests/integration/test_http_clients.py."""
    run_trial("test_http_clients", reactor, {}, tmp_path)


@pytest.mark.parametrize("reactor", REACTORS)
def test_txpostgres(reactor: str, pg_db: Connection, tmp_path: Path) -> None:  # noqa: F811
    """txpostgres: see tests/integration/test_txpostgres.py."""
    run_trial("test_txpostgres", reactor, pg_env(pg_db), tmp_path)


@pytest.mark.parametrize("reactor", REACTORS)
def test_adbapi(reactor: str, pg_db: Connection, tmp_path: Path) -> None:  # noqa: F811
    """adbapi with psycopg2: see tests/integration/test_adbapi.py."""
    run_trial("test_adbapi", reactor, pg_env(pg_db), tmp_path)


@pytest.mark.parametrize("reactor", REACTORS)
def test_txredisapi(
    reactor: str,
    redis_server: RedisExecutor,  # noqa: F811
    redis_db: object,  # noqa: F811 (flushed after the test)
    tmp_path: Path,
) -> None:
    """txredisapi over TCP and UNIX: see tests/integration/test_txredisapi.py."""
    run_trial("test_txredisapi", reactor, redis_env(redis_server), tmp_path)
