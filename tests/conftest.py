"""
Fixtures for the WSGI host tests: a real server in a subprocess.

C{wsgi_server(app="wsgi_apps:app", **options)} starts C{tests/wsgi_harness.py}
with the application and options (C{max_header=4096} becomes
C{--max-header 4096}), waits for its C{PORT} line and returns a L{Server}.
Servers with the same application and options are shared by the tests of a
session, unless C{fresh=True}. After each test, for every server it used, the
fixture fails the test if the server died, or if it wrote to stderr, during
the test, a traceback, a C{wsgiref.validate} warning or an "unclosed
iterator" message, unless the test said C{expect_errors=True} (which also
gives it a fresh server, so that expected errors stay with their test). A
fresh server is stopped after its test with SIGTERM, and must exit with 0.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from wsgi_client import TIMEOUT, get

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
HARNESS = TESTS / "wsgi_harness.py"
DEFAULT_APP = "wsgi_apps:app"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

#: Lines written to wsgi.errors on purpose contain this; other error-level
#: log lines mean something went wrong.
INTENTIONAL = "intentional-log-line"

#: Text in the server's stderr that means something went wrong.
BAD_OUTPUT = (
    "Traceback (most recent call last)",
    "WSGI-VALIDATOR-WARNING",
    "Exception ignored",
    "garbage collected without being closed",
    "Unhandled Error",
    "Unhandled error",
    "panicked",
)


def bad_output(log: str) -> list[str]:
    """What in C{log} says the server met an error: the L{BAD_OUTPUT}
    markers, and error-level C{twisted.logger} events (C{[namespace#error]})
    that were not written on purpose (L{INTENTIONAL})."""
    bad = [marker for marker in BAD_OUTPUT if marker in log]
    for line in log.splitlines():
        if ("#error]" in line or "#critical]" in line) and INTENTIONAL not in line:
            bad.append(line)
            break
    return bad


class ServerProcess:
    """One running harness process and the file its stderr goes to."""

    def __init__(self, app: str, options: dict[str, Any], logdir: Path, n: int) -> None:
        self.app = app
        self.options = options
        self.stderr_path = logdir / f"server-{n}.stderr"
        argv = [sys.executable, "-u", str(HARNESS), app]
        for name, value in sorted(options.items()):
            argv += [
                "--" + name.replace("_", "-"),
                "none" if value is None else str(value),
            ]
        self.argv = argv
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(
                    f"server did not print PORT in time: {self.stderr_tail()}"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(STOP_TIMEOUT)
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} before listening:\n"
                        f"{self.stderr_tail()}"
                    )
                data += chunk
        line = data.split(b"\n", 1)[0].decode()
        assert line.startswith("PORT "), line
        return int(line.split()[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size

    def stderr_text(self, start: int = 0) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def stderr_tail(self, start: int = 0, limit: int = 6000) -> str:
        text = self.stderr_text(start)
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status, or C{None} if it had to be
        killed."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def describe(self) -> str:
        return " ".join(self.argv[2:])


class Server:
    """
    A test's view of a server process.

    @ivar port: Where it listens, on 127.0.0.1.
    @ivar mark: Size of its stderr when the test started using it.
    """

    def __init__(
        self, process: ServerProcess, fresh: bool, expect_errors: bool
    ) -> None:
        self.process = process
        self.port = process.port
        self.pid = process.pid
        self.fresh = fresh
        self.expect_errors = expect_errors
        self.mark = process.stderr_size()

    def log(self) -> str:
        """What the server wrote to stderr since this test started using it."""
        return self.process.stderr_text(self.mark)

    def wait_for_log(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server's log:\n{log}")
            time.sleep(0.02)
        return log

    def fd_count(self) -> int:
        """Open descriptors of the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fds(self) -> dict[str, str]:
        """Open descriptors of the server process and what they name (for
        assertion messages: which descriptor was left behind)."""
        out = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out[fd] = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                pass
        return out

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def state(self, key: str) -> dict[str, Any]:
        """What the applications recorded under C{key} (C{/state})."""
        from wsgi_client import get_json

        return get_json(self.port, f"/state?key={key}")


class StartServer(Protocol):
    def __call__(
        self,
        app: str = ...,
        *,
        fresh: bool = ...,
        expect_errors: bool = ...,
        **options: Any,
    ) -> Server: ...


class ServerPool:
    """Server processes of a session, shared by application and options."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.shared: dict[tuple[Any, ...], ServerProcess] = {}
        self.started = 0

    def start(self, app: str, options: dict[str, Any]) -> ServerProcess:
        self.started += 1
        return ServerProcess(app, options, self.logdir, self.started)

    def get(self, app: str, options: dict[str, Any]) -> ServerProcess:
        key = (app, tuple(sorted(options.items())))
        process = self.shared.get(key)
        if process is None or not process.alive():
            process = self.shared[key] = self.start(app, options)
        return process

    def discard(self, process: ServerProcess) -> None:
        for key, p in list(self.shared.items()):
            if p is process:
                del self.shared[key]

    def stop_all(self) -> list[str]:
        problems = []
        for process in self.shared.values():
            mark = process.stderr_size()
            rc = process.stop()
            if rc != 0:
                problems.append(
                    f"server {process.describe()} exited with {rc} on SIGTERM:\n{process.stderr_tail(mark)}"
                )
        self.shared.clear()
        return problems


@pytest.fixture(scope="session")
def _wsgi_server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("wsgi-servers"))
    yield pool
    problems = pool.stop_all()
    if problems:
        pytest.fail("\n".join(problems))


def _problems(handle: Server, pool: ServerPool) -> list[str]:
    process = handle.process
    where = f"server `{process.describe()}` (pid {process.pid})"
    if not process.alive():
        pool.discard(process)
        return [
            f"{where} died with status {process.proc.returncode}:\n{process.stderr_tail(handle.mark)}"
        ]
    problems = []
    if not handle.expect_errors:
        # One round trip, so that what the test's traffic made the server log
        # is most likely written by now.
        try:
            get(process.port, "/hello", timeout=5)
        except Exception as e:
            problems.append(f"{where} does not answer after the test: {e!r}")
        bad = bad_output(handle.log())
        if bad:
            problems.append(
                f"{where} wrote {bad} to stderr:\n{handle.process.stderr_tail(handle.mark)}"
            )
    if handle.fresh:
        mark = process.stderr_size()
        rc = process.stop()
        if rc != 0:
            problems.append(
                f"{where} exited with {rc} on SIGTERM (0 expected):\n{process.stderr_tail(mark)}"
            )
    return problems


@pytest.fixture
def wsgi_server(_wsgi_server_pool: ServerPool) -> Iterator[StartServer]:
    """
    Start (or reuse) a harness server: C{wsgi_server(app, fresh=...,
    expect_errors=..., **options)} returns a L{Server}. The test fails if the
    server crashed, or logged a traceback or a validator warning it did not
    expect.
    """
    handles: list[Server] = []

    def start(
        app: str = DEFAULT_APP,
        *,
        fresh: bool = False,
        expect_errors: bool = False,
        **options: Any,
    ) -> Server:
        fresh = fresh or expect_errors
        if fresh:
            process = _wsgi_server_pool.start(app, options)
        else:
            process = _wsgi_server_pool.get(app, options)
        handle = Server(process, fresh, expect_errors)
        handles.append(handle)
        return handle

    yield start
    problems: list[str] = []
    for handle in handles:
        problems += _problems(handle, _wsgi_server_pool)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def server(wsgi_server: StartServer) -> Server:
    """The shared server with the default options."""
    return wsgi_server()


#: Options of the shared server with small limits and timeouts.
LIMITS: dict[str, Any] = {
    "max_header": 4096,
    "max_body": 65536,
    "header_timeout": 0.5,
    "body_timeout": 0.5,
    "keepalive_timeout": 0.5,
}


@pytest.fixture
def limited(wsgi_server: StartServer) -> Server:
    """The shared server with small limits and timeouts (L{LIMITS})."""
    return wsgi_server(**LIMITS)
