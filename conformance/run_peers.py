"""
Run the test suites that Twisted libraries ship on our reactor and on epoll,
side by side, and compare them by test id.

    python -m conformance.run_peers [--only SUITE] [--from-logs]

Suites (SUITE is one of these names; C{--only} may be repeated):

    treq           treq's own tests, from the sdist of the installed treq
    twisted.web    Twisted's, from the installed Twisted
    twisted.names  Twisted's, from the installed Twisted
    txpostgres     txpostgres's tests, from its sdist, against PostgreSQL
    txredisapi     txredisapi's tests, from the sdist of the installed
                   txredisapi, against Redis
    test_adbapi    twisted.test.test_adbapi, copied out of the installed
                   Twisted and patched so its psycopg tests reach the same
                   PostgreSQL server (run as the top-level C{test_adbapi})

Peer code is never part of the repository: the sdists are downloaded with
C{pip download --no-binary :all: --no-deps} into C{_peers/sdists/} (kept
between runs, ignored by git), extracted afresh into C{_peers/src/}, patched
where they need it (each patch is printed: file, line, change and why), and
their tests run from there with the extracted package first on
C{PYTHONPATH}. The installed packages are never modified.

The suites that need Redis get a throwaway C{redis-server} on 127.0.0.1 (a
free port) and on a unix socket in a temporary directory, emptied
(C{FLUSHALL}) before each run; the trial processes reach it through
C{TXREDISAPI_TEST_HOST}/C{_PORT}/C{_SOCKET}, which the patched tests read.

The suites that need PostgreSQL get a throwaway server: C{initdb} into a new
temporary directory, C{pg_ctl start} listening on 127.0.0.1 on a free port
with its unix socket in that directory, database C{twisted_test} owned by
user C{twisted_test} (password C{twisted_test}), which is what both
txpostgres's tests and Twisted's C{test_adbapi} connect to; the user is a
superuser, which one txpostgres test needs (it skips otherwise). Run as root, the
server runs as the C{postgres} system user (or C{nobody} if there is none)
because PostgreSQL refuses to run as root; the temporary directory belongs to
that user. Before each run of such a suite the database is dropped and
created again, so both reactors start from the same empty database. The
server is stopped and its directory deleted on the way out, also on failure,
Ctrl-C or SIGTERM. The trial processes reach it through C{PGHOST}/C{PGPORT}
and C{TXPOSTGRES_TEST_*}.

Each (suite, reactor) run is
C{python -m twisted.trial --reactor=NAME --reporter=timing TARGET}, epoll
first, with its output kept in C{_peers/logs/SUITE_REACTOR.log}. Every suite
runs in one trial process (no C{-j}), because C{trial -j} reports no
per-test durations, and because some suites cannot share a run between
workers anyway:

    - txpostgres and test_adbapi: their tests share one database and its
      tables (e.g. C{simple}), which two workers would trample;
    - treq: a C{trial -j} worker runs each test as a suite of its own and
      fires the reactor's C{shutdown} event after it, which kills the httpbin
      server treq's integration tests start once per class (a "before
      shutdown" trigger), so all but the first of them are refused.

Time is compared as in L{conformance.timing}: each suite's wall time on both
reactors, and the tests slower on rust (confirmed by reruns of those tests
alone), which count as failed unless listed in C{expected_slow.txt}.

Prints a table of counts (pass/fail/error/skip and wall time) per suite and
reactor, the tests slower on rust, every test whose outcome differs between the two reactors with the
traceback excerpt from rust's log, and last a line C{N passed, N failed} for
rust, where "failed" counts tests whose outcome on rust is worse than on
epoll (see L{conformance.run_full.worse}; a test missing on rust, or failing
on rust but absent on epoll, is worse) and that are not listed in
C{expected_failures.txt}. Exits non-zero if there is any.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from conformance import timing
from conformance.run_builders import load_expected
from conformance.run_full import OUTCOMES, count, parse, worse
from twisted_shim.testing import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ROOT / "_peers"
SDISTS = PEERS / "sdists"
SOURCES = PEERS / "src"
LOGS = PEERS / "logs"
TEMP = PEERS / "_trial_temp"

REACTORS = ("epoll", "rust")

# txpostgres has had no release since 1.7.0 (2018); pinned so the patch below
# keeps applying.
TXPOSTGRES_VERSION = "1.7.0"

# What Twisted's test_adbapi (DBTestConnector) and txpostgres's tests
# (TXPOSTGRES_TEST_* defaults) connect as.
DB_NAME = "twisted_test"
DB_USER = "twisted_test"
DB_PASS = "twisted_test"


@dataclass(frozen=True)
class Patch:
    """A textual fix applied to a peer's file before its tests run."""

    path: str  # relative to the prepared source directory
    pattern: str  # regular expression
    replacement: str  # for re.sub
    what: str  # the change, for people
    why: str


@dataclass(frozen=True)
class Sdist:
    """A peer's sdist: downloaded, extracted, patched; its tests run there."""

    name: str
    version: Callable[[], str]
    pythonpath: str = "."  # what goes first on PYTHONPATH, relative
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class Copied:
    """
    One test module of an installed distribution, copied out of the venv so
    that it can be patched (the venv itself is never touched) and run as a
    top-level module.
    """

    dist: str
    module: str  # its dotted name where installed
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    target: str  # what trial is given
    source: Sdist | Copied | None = None  # None: the installed package
    needs_db: bool = False
    needs_redis: bool = False
    # Modules the suite's tests import; checked up front, because a missing
    # one would only turn the tests into errors or skips on both reactors.
    requires: tuple[str, ...] = ()
    # Tests (ids containing one of these) that must not skip on epoll: they
    # skip silently when they cannot reach the database.
    must_run: tuple[str, ...] = ()
    note: str = ""


def _installed(dist: str) -> Callable[[], str]:
    return lambda: importlib.metadata.version(dist)


_PSYCOPG3 = (
    "the module named `psycopg` is psycopg 3 now, which calls it `dbname` "
    "(`database` was psycopg 1's): unpatched, PsycopgConnector never connects "
    "and its tests skip"
)

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "treq",
            "treq",
            source=Sdist("treq", _installed("treq"), pythonpath="src"),
            requires=("httpbin", "werkzeug"),
            note="a worker fires 'shutdown' after each test: it kills httpbin",
        ),
        Suite("twisted.web", "twisted.web", requires=("httpx",)),
        Suite("twisted.names", "twisted.names"),
        Suite(
            "txpostgres",
            "test",
            source=Sdist(
                "txpostgres",
                lambda: TXPOSTGRES_VERSION,
                patches=(
                    Patch(
                        "test/test_txpostgres.py",
                        r"\bc\.async\b(?!_)",
                        "c.async_",
                        "`c.async` -> `c.async_`",
                        "`async` is a keyword since Python 3.7 (a SyntaxError "
                        "otherwise); psycopg2 names the attribute `async_`",
                    ),
                ),
            ),
            needs_db=True,
            requires=("psycopg2",),
            must_run=("test.test_txpostgres.",),
            note="one shared database",
        ),
        Suite(
            "test_adbapi",
            "test_adbapi",
            source=Copied(
                "twisted",
                "twisted.test.test_adbapi",
                patches=(
                    Patch(
                        "test_adbapi.py",
                        r"(psycopg\.connect\(\s*)database=",
                        r"\1dbname=",
                        "`psycopg.connect(database=...)` -> `dbname=` "
                        "in PsycopgConnector.can_connect",
                        _PSYCOPG3,
                    ),
                    Patch(
                        "test_adbapi.py",
                        r'(args = \("psycopg",\)\s*kw = \{\s*)"database"',
                        r'\1"dbname"',
                        '`"database":` -> `"dbname":` in PsycopgConnector.getPoolArgs',
                        _PSYCOPG3,
                    ),
                ),
            ),
            needs_db=True,
            requires=("psycopg",),
            must_run=("Psycopg",),
            note="one shared database",
        ),
        Suite(
            "txredisapi",
            "tests",
            source=Sdist(
                "txredisapi",
                _installed("txredisapi"),
                patches=(
                    Patch(
                        "tests/mixins.py",
                        r'REDIS_HOST = "localhost"',
                        'REDIS_HOST = os.environ.get("TXREDISAPI_TEST_HOST", '
                        '"localhost")',
                        "REDIS_HOST from TXREDISAPI_TEST_HOST",
                        "the tests hard-code localhost; ours is a throwaway "
                        "server on 127.0.0.1",
                    ),
                    Patch(
                        "tests/mixins.py",
                        r"REDIS_PORT = 6379",
                        'REDIS_PORT = int(os.environ.get("TXREDISAPI_TEST_PORT", '
                        '"6379"))',
                        "REDIS_PORT from TXREDISAPI_TEST_PORT",
                        "the tests hard-code port 6379; ours listens on a free port",
                    ),
                    Patch(
                        "tests/test_unix_connection.py",
                        r'redis_sock = "/tmp/redis.sock"',
                        'redis_sock = __import__("os").environ.get('
                        '"TXREDISAPI_TEST_SOCKET", "/tmp/redis.sock")',
                        "redis_sock from TXREDISAPI_TEST_SOCKET",
                        "the tests hard-code /tmp/redis.sock",
                    ),
                ),
            ),
            needs_redis=True,
            must_run=("test_unix_connection.", "test_basics."),
            note="one shared Redis",
        ),
    )
}


# --- peer sources -------------------------------------------------------------


def prepare(source: Sdist | Copied) -> Path:
    """
    Make a fresh, patched copy of C{source} under L{SOURCES}; return the
    directory to put first on C{PYTHONPATH}.
    """
    if isinstance(source, Sdist):
        dest = fetch(source)
        path = dest / source.pythonpath
    else:
        version = importlib.metadata.version(source.dist)
        leaf = source.module.rpartition(".")[2]
        dest = SOURCES / f"{source.dist}-{version}-{leaf}"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        spec = importlib.util.find_spec(source.module)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{source.module} is not installed")
        shutil.copy(spec.origin, dest / f"{leaf}.py")
        print(f"copied {spec.origin} to {dest.relative_to(ROOT)}/", flush=True)
        path = dest
    for patch in source.patches:
        apply(dest, patch)
    return path.resolve()


def fetch(sdist: Sdist) -> Path:
    """
    Download C{sdist} unless it is already in L{SDISTS}, extract a fresh
    copy into L{SOURCES}, and return the extracted directory.
    """
    version = sdist.version()
    SDISTS.mkdir(parents=True, exist_ok=True)
    stem = f"{sdist.name}-{version}"
    archives = [p for p in SDISTS.glob(stem + ".*") if _is_archive(p)]
    if not archives:
        print(f"downloading the sdist of {sdist.name}=={version}", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "--dest",
                str(SDISTS),
                f"{sdist.name}=={version}",
            ],
            check=True,
        )
        archives = [p for p in SDISTS.glob(stem + ".*") if _is_archive(p)]
        if not archives:
            raise SystemExit(f"pip download left no {stem}.* in {SDISTS}")
    SOURCES.mkdir(parents=True, exist_ok=True)
    dest = SOURCES / stem
    if dest.exists():
        shutil.rmtree(dest)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(SOURCES, filter="data")
    if not dest.is_dir():
        raise SystemExit(f"{archives[0].name} did not extract to {dest}")
    return dest


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tar.bz2", ".tgz", ".tar.xz"))


def apply(root: Path, patch: Patch) -> None:
    path = root / patch.path
    text = path.read_text()
    lines = [
        text.count("\n", 0, m.start()) + 1 for m in re.finditer(patch.pattern, text)
    ]
    if not lines:
        raise SystemExit(f"patch for {path} no longer applies: /{patch.pattern}/")
    path.write_text(re.sub(patch.pattern, patch.replacement, text))
    where = ", ".join(str(n) for n in lines)
    print(
        f"patched {path.relative_to(ROOT)}, line {where}: {patch.what}; "
        f"because {patch.why}",
        flush=True,
    )


# --- PostgreSQL ---------------------------------------------------------------


def _pg_bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise SystemExit("no PostgreSQL server binaries (pg_ctl) found: install postgresql")


def _db_account() -> pwd.struct_passwd | None:
    """
    The account to run PostgreSQL as: None (ourselves) unless we are root,
    which PostgreSQL refuses; then the C{postgres} system user the server
    package creates, else C{nobody}.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SystemExit("running as root and there is no postgres or nobody user")


class PostgreSQL:
    """A throwaway PostgreSQL server, see L{postgres}."""

    def __init__(
        self, bindir: Path, base: Path, port: int, account: pwd.struct_passwd | None
    ):
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.port = port
        self.account = account

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server's account."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "LC_ALL": "C.UTF-8",
        }
        account = self.account
        proc = subprocess.run(
            cmd,
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            start_new_session=True,  # keep Ctrl-C for us: we stop it ourselves
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def sql(self, statement: str) -> None:
        """Run C{statement} as the superuser over the unix socket."""
        self.run(
            "psql",
            "--no-psqlrc",
            "--quiet",
            "--host",
            str(self.base),
            "--port",
            str(self.port),
            "--username",
            "postgres",
            "--dbname",
            "postgres",
            "--set",
            "ON_ERROR_STOP=1",
            "--command",
            statement,
        )

    def reset_database(self) -> None:
        """Drop and create again the database the suites use."""
        self.sql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        self.sql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")

    def env(self) -> dict[str, str]:
        """What a trial process needs in its environment to reach us."""
        return {
            # libpq (psycopg2 in txpostgres, psycopg in test_adbapi)
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            # txpostgres's tests
            "TXPOSTGRES_TEST_HOST": "127.0.0.1",
            "TXPOSTGRES_TEST_DATABASE": DB_NAME,
            "TXPOSTGRES_TEST_USER": DB_USER,
            "TXPOSTGRES_TEST_PASSWORD": DB_PASS,
        }


@contextmanager
def postgres() -> Iterator[PostgreSQL]:
    """
    Start a throwaway PostgreSQL server with the C{twisted_test} user, stop
    it and delete its files when done, whatever happens.
    """
    bindir = _pg_bindir()
    account = _db_account()
    if account is not None and not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        # initdb and pg_ctl redirect to /dev/null, as an unprivileged user.
        raise SystemExit(
            f"{os.devnull} is not a device (a LogFile rotated it?): PostgreSQL "
            f"cannot run as {account.pw_name}; restore it with "
            f"mknod -m 666 {os.devnull} c 1 3"
        )
    base = Path(tempfile.mkdtemp(prefix="run_peers_pg_"))
    try:
        if account is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
        os.chmod(base, 0o700)
        server = PostgreSQL(bindir, base, free_port(), account)
        server.run(
            "initdb",
            "--pgdata",
            str(server.data),
            "--username",
            "postgres",
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# conformance/run_peers.py: a throwaway server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {server.port}\n"
                f"unix_socket_directories = '{base}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        who = account.pw_name if account else "ourselves"
        print(
            f"starting PostgreSQL ({bindir.parent.name}) on 127.0.0.1:{server.port} "
            f"as {who}, in {base}",
            flush=True,
        )
        try:
            server.run(
                "pg_ctl",
                "--pgdata",
                str(server.data),
                "--log",
                str(base / "server.log"),
                "--wait",
                "start",
            )
            # SUPERUSER: txpostgres's test_terminatedConnection calls
            # pg_terminate_backend (it skips otherwise); the server is ours.
            server.sql(f"CREATE ROLE {DB_USER} SUPERUSER LOGIN PASSWORD '{DB_PASS}'")
            server.reset_database()
            yield server
        finally:
            stopped = server.run(
                "pg_ctl",
                "--pgdata",
                str(server.data),
                "--mode",
                "immediate",
                "--wait",
                "stop",
                check=False,
            )
            if stopped.returncode == 0:
                print("stopped PostgreSQL", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Redis:
    """A throwaway redis-server, see L{redis}."""

    def __init__(self, port: int, unix_socket: Path) -> None:
        self.port = port
        self.unix_socket = unix_socket

    def flush(self) -> None:
        """Empty every database (C{FLUSHALL}), so each run starts alike."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"FLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise SystemExit(f"redis-server answered FLUSHALL with {reply!r}")

    def env(self) -> dict[str, str]:
        """What a trial process needs in its environment to reach us."""
        return {
            "TXREDISAPI_TEST_HOST": "127.0.0.1",
            "TXREDISAPI_TEST_PORT": str(self.port),
            "TXREDISAPI_TEST_SOCKET": str(self.unix_socket),
        }


@contextmanager
def redis() -> Iterator[Redis]:
    """
    Start a throwaway redis-server (no persistence) on 127.0.0.1 and a unix
    socket; stop it and delete its directory when done, whatever happens.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server on PATH: make services installs it")
    base = Path(tempfile.mkdtemp(prefix="run_peers_redis_"))
    server = Redis(free_port(), base / "redis.sock")
    cmd = [binary, "--port", str(server.port), "--bind", "127.0.0.1"]
    cmd += ["--unixsocket", str(server.unix_socket), "--unixsocketperm", "700"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(base)]
    log = (base / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.flush()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "redis-server did not start: "
                        + (base / "server.log").read_text(errors="replace")[-500:]
                    ) from None
                time.sleep(0.05)
        print(f"started redis-server on 127.0.0.1:{server.port}", flush=True)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print("stopped redis-server", flush=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Services:
    """The throwaway servers of a run (C{None} where no suite needs one)."""

    pg: PostgreSQL | None = None
    redis: Redis | None = None

    def prepare(self, suite: Suite) -> dict[str, str]:
        """Reset what C{suite} uses; return the environment that reaches it."""
        env: dict[str, str] = {}
        if suite.needs_db and self.pg is not None:
            self.pg.reset_database()
            env.update(self.pg.env())
        if suite.needs_redis and self.redis is not None:
            self.redis.flush()
            env.update(self.redis.env())
        return env


def check_db(server: PostgreSQL) -> None:
    """
    Connect the way the suites' tests do, so a broken setup fails here
    instead of turning their tests into skips on both reactors.
    """
    env = {**os.environ, **server.env()}
    probe = (
        "import psycopg, psycopg2\n"
        f"psycopg.connect(dbname={DB_NAME!r}, user={DB_USER!r}, password={DB_PASS!r}).close()\n"
        f"psycopg2.connect(host='127.0.0.1', dbname={DB_NAME!r}, user={DB_USER!r}, "
        f"password={DB_PASS!r}).close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"cannot reach the test database:\n{proc.stderr}")


# --- running and comparing ----------------------------------------------------


@dataclass
class Result:
    outcomes: dict[str, str]
    elapsed: float
    summary: str
    log: Path
    durations: dict[str, float]


def log_path(suite: Suite, reactor: str) -> Path:
    return LOGS / f"{suite.name}_{reactor}.log"


def run(
    suite: Suite,
    reactor: str,
    pythonpath: Path | None,
    services: Services,
    tests: list[str] | None = None,
) -> Result:
    """
    Run C{suite} on C{reactor}, or only C{tests} of it (test ids; their log
    is C{SUITE_REACTOR.rerun.log}).
    """
    log = log_path(suite, reactor)
    if tests is not None:
        log = log.with_suffix(".rerun.log")
    LOGS.mkdir(parents=True, exist_ok=True)
    TEMP.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "twisted.trial",
        f"--reactor={reactor}",
        "--reporter=timing",
        f"--temp-directory={TEMP / f'{suite.name}_{reactor}'}",
    ]
    cmd.extend(tests if tests is not None else [suite.target])
    env = dict(os.environ)
    # Twisted's tests start helper scripts from PATH (as in run_full).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p
        )
    env.update(services.prepare(suite))
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    elapsed = time.monotonic() - start
    return _result(log, elapsed, f"exit {proc.returncode}")


TAGS = re.compile(r"^(?P<id>\S+) \.\.\. .*?(?P<tags>(?:\[[^\]]+\])+)\s*$")
TAG = re.compile(r"\[([^\]]+)\]")


def parse_log(text: str) -> dict[str, str]:
    """
    L{conformance.run_full.parse}, plus the outcomes it drops when trial
    reports two for one test on one line, e.g. C{[FAILURE][ERROR]} for a test
    that failed and left the reactor dirty: the result is C{error+fail}, and
    the counts match trial's summary line.
    """
    outcomes = parse(text)
    for line in text.splitlines():
        m = TAGS.match(line)
        if not m or m["id"] not in outcomes:
            continue
        earlier = [OUTCOMES[t] for t in TAG.findall(m["tags"])[:-1] if t in OUTCOMES]
        if earlier:
            joined = outcomes[m["id"]].split("+") + earlier
            outcomes[m["id"]] = "+".join(sorted(joined))
    return outcomes


def _result(log: Path, elapsed: float, fallback: str) -> Result:
    text = log.read_text(errors="replace")
    summary = [ln for ln in text.splitlines() if ln.startswith(("PASSED", "FAILED"))]
    return Result(
        parse_log(text),
        elapsed,
        summary[-1] if summary else fallback,
        log,
        timing.durations(text),
    )


SEPARATOR = "=" * 79


def excerpt(log: Path, test_id: str, limit: int = 25) -> list[str]:
    """
    The failure report trial printed for C{test_id} at the end of C{log}:
    the outcome tag and the last C{limit} lines of the traceback.
    """
    text = log.read_text(errors="replace")
    for block in text.split(SEPARATOR):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].startswith("["):
            continue
        if test_id in (ln.strip() for ln in lines[-4:]):
            body = [ln for ln in lines[1:] if ln.strip() and ln.strip() != test_id]
            cut = body[-limit:]
            return [lines[0], *(["..."] if len(body) > limit else []), *cut]
    return []


def compare(
    ref: dict[str, str], ours: dict[str, str], expected: dict[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """
    @return: test ids that regressed on rust, lines for differences that
        are allowed, lines for differences that are regressions.
    """
    regressed: list[str] = []
    allowed: list[str] = []
    regressions: list[str] = []
    for test_id in sorted(set(ref) | set(ours)):
        theirs, mine = ref.get(test_id), ours.get(test_id)
        if theirs == mine:
            continue
        line = f"  {test_id}: {theirs} on epoll, {mine} on rust"
        if theirs is None:
            bad = any(o in ("fail", "error") for o in (mine or "").split("+"))
        else:
            bad = worse(theirs, mine)
        if bad and test_id not in expected:
            regressed.append(test_id)
            regressions.append(line)
        else:
            reason = f"  [{expected[test_id]}]" if test_id in expected else ""
            allowed.append(line + reason)
    return regressed, allowed, regressions


def cell(result: Result | None) -> str:
    if result is None:
        return f"{'-':>22}"
    c = count(result.outcomes)
    return (
        f"{c['pass']:>5} {c['fail']:>4} {c['error']:>5} {c['skip']:>4} "
        f"{result.elapsed:>4.0f}s"
    )


def table(names: list[str], results: dict[str, dict[str, Result]]) -> None:
    head = "  pass fail error skip  time"
    print()
    print(f"{'suite':<15}" + "".join(f" | {r:<6}{head}" for r in REACTORS))
    print("-" * (15 + len(REACTORS) * (9 + len(head))))
    for name in names:
        row = "".join(f" | {'':<6}{cell(results[name].get(r))}" for r in REACTORS)
        print(f"{name:<15}{row}")
    print()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SUITES),
        metavar="SUITE",
        help=f"run only this suite (repeatable): {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--from-logs",
        action="store_true",
        help="compare the logs of the last run instead of running again",
    )
    args = parser.parse_args(argv)
    names: list[str] = list(dict.fromkeys(args.only or SUITES))
    suites = [SUITES[n] for n in names]
    signal.signal(signal.SIGTERM, _interrupt)

    results: dict[str, dict[str, Result]] = {n: {} for n in names}
    # Per suite: the tests slower on rust, confirmed and not (see timing).
    slow: dict[str, tuple[list[timing.Slow], list[timing.Slow]]] = {}
    if args.from_logs:
        for suite in suites:
            for reactor in REACTORS:
                log = log_path(suite, reactor)
                if log.exists():
                    results[suite.name][reactor] = _result(log, 0.0, "from log")
    else:
        missing = [m for s in suites for m in s.requires if not _importable(m)]
        if missing:
            raise SystemExit(
                f"missing test dependencies {', '.join(missing)}: "
                "pip install -r requirements-dev.txt"
            )
        paths = {
            s.name: None if s.source is None else prepare(s.source) for s in suites
        }
        with ExitStack() as stack:
            services = Services()
            if any(s.needs_db for s in suites):
                services.pg = stack.enter_context(postgres())
                check_db(services.pg)
            if any(s.needs_redis for s in suites):
                services.redis = stack.enter_context(redis())
            for suite in suites:
                for reactor in REACTORS:
                    note = f" ({suite.note})" if suite.note else ""
                    print(f"{suite.name} on {reactor}{note} ...", end=" ", flush=True)
                    result = run(suite, reactor, paths[suite.name], services)
                    results[suite.name][reactor] = result
                    print(f"{result.elapsed:.0f} s, {result.summary}", flush=True)
            for suite in suites:
                slow[suite.name] = confirm_slow(
                    suite, results[suite.name], paths[suite.name], services
                )

    table(names, results)
    timing.wall_table(
        (n, results[n]["rust"].elapsed, results[n]["epoll"].elapsed)
        for n in names
        if len(results[n]) == 2
    )

    expected = load_expected()
    failed: list[str] = []
    for suite in suites:
        ref = results[suite.name].get("epoll")
        ours = results[suite.name].get("rust")
        if ref is None or ours is None:
            absent = [r for r in REACTORS if r not in results[suite.name]]
            print(f"{suite.name}: no results on {' and '.join(absent)}")
            failed.append(f"{suite.name}: not run")
            continue
        regressed, allowed, regressions = compare(ref.outcomes, ours.outcomes, expected)
        confirmed, noise = slow.get(suite.name) or (
            found_slow(ref, ours),  # from logs: no reruns
            [],
        )
        failed.extend(
            timing.report(confirmed, timing.load_expected_slow(), suite.name, noise)
        )
        for problem in setup_problems(suite, ref.outcomes):
            print(f"{suite.name}: {problem}")
            failed.append(f"{suite.name}: {problem}")
        both = failing_on_both(ref.outcomes, ours.outcomes, expected)
        if both:
            print(f"{suite.name}: failing the same way on both reactors:")
            print("\n".join(both))
        if allowed:
            print(f"{suite.name}: other differences (allowed):")
            print("\n".join(allowed))
        if regressions:
            print(f"{suite.name}: worse on rust than on epoll:")
            for test_id, line in zip(regressed, regressions, strict=True):
                print(line)
                for ln in excerpt(ours.log, test_id):
                    print(f"      {ln}")
            failed.extend(regressed)
        if both or allowed or regressions:
            print()
    passed = sum(
        count(r["rust"].outcomes)["pass"] for r in results.values() if "rust" in r
    )
    print(f"logs: {LOGS.relative_to(ROOT)}/")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


def found_slow(ref: Result, ours: Result) -> list[timing.Slow]:
    """The tests that ran on both reactors and were slower on rust."""
    compared = timing.ran_on_both(
        {"rust": ours.durations, "epoll": ref.durations},
        {"rust": ours.outcomes, "epoll": ref.outcomes},
    )
    return timing.find_slow(compared["rust"], compared["epoll"])


def confirm_slow(
    suite: Suite,
    results: dict[str, Result],
    pythonpath: Path | None,
    services: Services,
) -> tuple[list[timing.Slow], list[timing.Slow]]:
    """Rerun the tests of C{suite} found slower on rust; see L{timing.confirm}."""
    if len(results) < 2:
        return [], []

    def rerun(reactor: str, tests: list[str]) -> dict[str, float]:
        return run(suite, reactor, pythonpath, services, tests).durations

    return timing.confirm(found_slow(results["epoll"], results["rust"]), rerun)


def failing_on_both(
    ref: dict[str, str], ours: dict[str, str], expected: dict[str, str]
) -> list[str]:
    """Lines for tests that fail or error identically on both reactors."""
    lines: list[str] = []
    for test_id, outcome in sorted(ours.items()):
        bad = {"fail", "error"} & set(outcome.split("+"))
        if bad and ref.get(test_id) == outcome:
            why = expected.get(test_id, "not in expected_failures.txt")
            lines.append(f"  {test_id}: {outcome}  [{why}]")
    return lines


def setup_problems(suite: Suite, ref: dict[str, str]) -> list[str]:
    """
    Signs in epoll's results that the suite itself did not run as meant
    (which would look the same, hence green, on rust).
    """
    problems: list[str] = []
    if count(ref)["pass"] == 0:
        problems.append("no test passed on epoll: the suite did not run")
    skipped = sorted(
        test_id
        for test_id, outcome in ref.items()
        if "skip" in outcome.split("+") and any(m in test_id for m in suite.must_run)
    )
    if skipped:
        problems.append(
            f"{len(skipped)} tests that need PostgreSQL skipped on epoll "
            f"(e.g. {skipped[0]}): they did not get the database they need"
        )
    return problems


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
