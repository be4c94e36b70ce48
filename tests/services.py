"""
Throwaway PostgreSQL and Redis servers for the integration tests
(tests/test_integration.py, tests/test_dashboard.py), started with the
executors of the pytest-postgresql and pytest-redis plugins, on loopback,
on random free ports, in temporary directories; never a developer's own
database. scripts/services.sh installs the server binaries (`make test` runs
it first).

Fixtures (import them into a test module):

- C{pg_server}: one PostgreSQL server for the whole session
  (C{pytest_postgresql.executors.PostgreSQLExecutor}), with a template
  database C{tests_tmpl}.
- C{pg_db}: a fresh database C{tests} cloned from the template for each test,
  dropped after it (the plugin's own C{postgresql} client fixture factory);
  it yields a psycopg (3) connection to it.
- C{redis_server}: one redis-server for the session
  (C{pytest_redis.executor.RedisExecutor}), listening on TCP and on a UNIX
  socket.
- C{redis_db}: a redis-py client to it, every database flushed after each
  test (the plugin's C{redisdb} fixture factory).

Running as root. PostgreSQL refuses to run as root: C{initdb}, C{pg_ctl} and
C{postgres} all check the effective uid. The plugin's own C{postgresql_proc}
factory puts the data directory under pytest's basetemp, which pytest makes
mode 0700 for the user running it, so a server run as another user could
not even reach it. So this module builds the plugin's executor itself, with
the data directory, log file and socket directory in a directory of its own
under the system temp dir, owned by the unprivileged C{postgres} user when
running as root, and hands the executor scripts/pg_ctl_unprivileged.sh as its
C{pg_ctl}: that script runs the real C{pg_ctl} through C{setpriv} as
C{postgres} when called as root, and directly otherwise. Everything else is
the plugin's code: start, readiness check, template database, per-test
database, stop. redis-server runs as root without complaint.

The servers are shared by the test modules through C{config.stash} (a
session fixture imported into two modules would otherwise be two fixtures,
and start two servers) and stopped with C{config.add_cleanup} at the end of
the session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from psycopg import Connection
from pytest_postgresql import factories as pg_factories
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from pytest_redis import factories as redis_factories
from pytest_redis.executor import RedisExecutor

from twisted_shim.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_CTL = ROOT / "scripts" / "pg_ctl_unprivileged.sh"
#: The OS user PostgreSQL runs as when the tests run as root.
PG_OS_USER = os.environ.get("PG_TEST_OS_USER", "postgres")
PG_USER = "postgres"
PG_DBNAME = "tests"
HOST = "127.0.0.1"

_PG_KEY = pytest.StashKey[PostgreSQLExecutor]()
_REDIS_KEY = pytest.StashKey[RedisExecutor]()


def _missing(what: str) -> NoReturn:
    # A failure, not a skip: a run without the services must not look green.
    pytest.fail(
        f"{what} not installed: run scripts/services.sh (as root, or"
        " `apt-get install postgresql redis-server`)",
        pytrace=False,
    )


def _own_dir(prefix: str) -> Path:
    """A fresh temp dir; owned by the PostgreSQL OS user when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            shutil.rmtree(path)
            _missing(f"the {PG_OS_USER!r} OS user (PostgreSQL's)")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _start_postgres() -> tuple[PostgreSQLExecutor, Path]:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) and not shutil.which(
        "pg_ctl"
    ):
        _missing("PostgreSQL (pg_ctl under /usr/lib/postgresql/*/bin or on PATH)")
    base = _own_dir("twisted-shim-pg-")
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host=HOST,
        port=free_port(HOST),
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname=PG_DBNAME,
        user=PG_USER,
        password=None,
        # Loopback only; enough connections for the pools and the checks.
        postgres_options=f"-c listen_addresses={HOST} -c max_connections=100",
    )
    try:
        executor.start()
        DatabaseJanitor(
            user=executor.user,
            host=executor.host,
            port=executor.port,
            dbname=executor.template_dbname,
            maintenance_dbname=executor.maintenance_dbname,
            as_template=True,
            password=executor.password,
        ).init()
    except BaseException:
        _stop(executor, base)
        raise
    return executor, base


def _stop(executor: PostgreSQLExecutor | RedisExecutor, base: Path) -> None:
    """Stop a throwaway server and remove its directory."""
    try:
        if executor.running():
            executor.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _session_server(
    request: pytest.FixtureRequest,
    key: pytest.StashKey[Any],
    start: Callable[[], tuple[Any, Path]],
) -> Any:
    """The server stored under C{key} for this session, started on first use
    and stopped (its directory removed) when the session ends."""
    config = request.config
    executor = config.stash.get(key, None)
    if executor is None:
        executor, base = start()
        config.stash[key] = executor
        config.add_cleanup(lambda: _stop(executor, base))
    return executor


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> PostgreSQLExecutor:
    """The session's PostgreSQL server (started on first use)."""
    return _session_server(request, _PG_KEY, _start_postgres)


#: A fresh database for each test: the plugin's client fixture on C{pg_server}.
pg_db = pg_factories.postgresql("pg_server")


def _start_redis() -> tuple[RedisExecutor, Path]:
    executable = shutil.which("redis-server")
    if executable is None:
        _missing("redis-server")
    base = Path(tempfile.mkdtemp(prefix="twisted-shim-redis-"))
    executor = RedisExecutor(
        executable=executable,
        databases=16,
        redis_timeout=0,  # never close idle clients
        loglevel="notice",
        host=HOST,
        port=free_port(HOST),
        save="",
        datadir=base,
    )
    try:
        executor.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return executor, base


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisExecutor:
    """The session's redis-server, on TCP and on C{.unixsocket}."""
    return _session_server(request, _REDIS_KEY, _start_redis)


#: A redis-py client; the plugin flushes every database after each test.
redis_db = redis_factories.redisdb("redis_server", decode=True)


def pg_env(db: Connection) -> dict[str, str]:
    """Environment naming the test's database (for subprocesses)."""
    info = db.info
    return {
        "TEST_PG_HOST": str(info.host),
        "TEST_PG_PORT": str(info.port),
        "TEST_PG_USER": str(info.user),
        "TEST_PG_DBNAME": str(info.dbname),
    }


def redis_env(server: RedisExecutor) -> dict[str, str]:
    """Environment naming the Redis server (for subprocesses)."""
    return {
        "TEST_REDIS_HOST": str(server.host),
        "TEST_REDIS_PORT": str(server.port),
        "TEST_REDIS_SOCKET": str(server.unixsocket),
    }


def clean_environ() -> dict[str, str]:
    """
    This process's environment without the variables that could point a
    client at a developer's own services (libpq's C{PG*}, C{DATABASE_URL},
    C{REDIS_URL}, C{UPSTREAM_URL}) or at a different set of test services.
    """
    drop = ("DATABASE_URL", "REDIS_URL", "UPSTREAM_URL")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "TEST_PG_", "TEST_REDIS_")) and k not in drop
    }
