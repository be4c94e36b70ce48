"""
What the trial modules here read from their environment: which reactor they
must be running on, and where the throwaway services are
(tests/services.py puts them there). A module run without them (by hand,
outside tests/test_integration.py) skips its tests.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg2.extensions import make_dsn
from twisted.trial.unittest import SkipTest

#: C{trial --reactor=NAME} -> the class that reactor's C{install} installs.
REACTOR_CLASSES = {"rust": "RustReactor", "epoll": "EPollReactor"}


def expected_reactor() -> str | None:
    """The reactor name tests/test_integration.py asked trial for."""
    return os.environ.get("TEST_REACTOR")


def check_reactor(reactor: Any) -> None:
    """Fail unless the installed reactor is the one asked for."""
    name = expected_reactor()
    if name is None:
        raise SkipTest("TEST_REACTOR not set (run through tests/test_integration.py)")
    actual = type(reactor).__name__
    if actual != REACTOR_CLASSES[name]:
        raise AssertionError(f"running on {actual}, not the {name!r} reactor")


def pg_params() -> dict[str, str]:
    """libpq parameters of the test's database."""
    try:
        return {
            "host": os.environ["TEST_PG_HOST"],
            "port": os.environ["TEST_PG_PORT"],
            "user": os.environ["TEST_PG_USER"],
            "dbname": os.environ["TEST_PG_DBNAME"],
        }
    except KeyError as e:
        raise SkipTest(f"{e.args[0]} not set: no test database") from None


def pg_dsn(application_name: str = "twisted_shim tests") -> str:
    """A libpq connection string for the test's database."""
    return make_dsn(**pg_params(), application_name=application_name)


def redis_address() -> tuple[str, int, str]:
    """(host, port, UNIX socket path) of the test's Redis server."""
    try:
        return (
            os.environ["TEST_REDIS_HOST"],
            int(os.environ["TEST_REDIS_PORT"]),
            os.environ["TEST_REDIS_SOCKET"],
        )
    except KeyError as e:
        raise SkipTest(f"{e.args[0]} not set: no test Redis server") from None
