"""
Support for the command-line tests (C{test_cli.py}, C{test_threaded.py}):
C{python -m twisted_shim serve} in a subprocess, the applications it serves,
and HTTP clients over real sockets.

L{Served} starts the command in its own session (process group), collects
its stdout and stderr from reader threads, waits for its C{ready} line and
parses its C{listening on} lines. L{Served.close} kills the whole group, so
no supervisor or worker outlives a test. Every wait and socket has a timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0

READY = re.compile(r"^twisted-shim: ready \(pid (\d+), workers (\d+), threads (\d+)\)$")
LISTENING = re.compile(r"^twisted-shim: listening on (\S+)$")

#: The applications the tests serve: C{cliapp:application} routes on
#: PATH_INFO. Module-level state is per process (per worker).
APP_SOURCE = r'''
"""Applications for the twisted-shim command-line tests."""

import json
import os
import threading
import time

from twisted.internet import reactor  # the reactor installed by then
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread

REACTOR = f"{type(reactor).__module__}.{type(reactor).__qualname__}"
NOT_CALLABLE = 42

lock = threading.Lock()
active = 0
max_active = 0
started = 0  # calls of block()
closes = []  # (name, thread name) per close() of a stream iterable
produced = {"bytes": 0}


def text(start_response, body, status="200 OK"):
    body = body.encode() if isinstance(body, str) else body
    start_response(
        status,
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def pid(environ, start_response):
    return text(start_response, str(os.getpid()))


def which_reactor(environ, start_response):
    return text(start_response, REACTOR)


def env(environ, start_response):
    keys = [
        "wsgi.pause_output",
        "x-wsgiorg.pause_output",
        "x-wsgiorg.flush",
        "twisted_shim.wait",
    ]
    return text(
        start_response,
        json.dumps(
            {
                "present": [k for k in keys if k in environ],
                "multithread": environ["wsgi.multithread"],
                "multiprocess": environ["wsgi.multiprocess"],
                "thread": threading.current_thread().name,
                "main": threading.current_thread() is threading.main_thread(),
                "disconnected": environ["x-wsgiorg.client_disconnected"](),
            }
        ),
    )


def remote(environ, start_response):
    keys = ["REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "SERVER_PORT"]
    return text(start_response, json.dumps({k: environ[k] for k in keys}))


def slow(environ, start_response):
    # 0.2 s pause on the reactor thread: twisted_shim.wait + deferLater.
    delay = float(environ.get("QUERY_STRING") or 0.2)
    w = environ["twisted_shim.wait"](deferLater(reactor, delay, lambda: None))
    yield b""
    w.result()
    body = b"slow " + str(os.getpid()).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    yield body


def block(environ, start_response):
    # A blocking application (thread-pool mode): counts simultaneous calls.
    global active, max_active, started
    with lock:
        started += 1
        active += 1
        max_active = max(max_active, active)
    try:
        time.sleep(float(environ.get("QUERY_STRING") or 0.3))
    finally:
        with lock:
            active -= 1
    return text(start_response, "blocked")


def gc_state(environ, start_response):
    import gc

    threshold = gc.get_threshold()[0]
    return text(start_response, json.dumps([threshold, gc.get_freeze_count() > 0]))


def stats(environ, start_response):
    with lock:
        data = {
            "max_active": max_active,
            "active": active,
            "started": started,
            "closes": list(closes),
            "produced": produced["bytes"],
        }
    return text(start_response, json.dumps(data))


def deferred(environ, start_response):
    # blockingCallFromThread with a function returning a Deferred.
    value = blockingCallFromThread(
        reactor, lambda: deferLater(reactor, 0.05, lambda: "from the reactor")
    )
    in_reactor = blockingCallFromThread(
        reactor, lambda: threading.current_thread() is threading.main_thread()
    )
    return text(start_response, f"{value}; reactor thread: {in_reactor}")


class Stream:
    """An endless (up to 2000 chunks) slow stream; records its close()."""

    def __init__(self, name):
        self.name = name
        self.closed = 0

    def __iter__(self):
        for _ in range(2000):
            time.sleep(0.01)
            yield b"x" * 1024

    def close(self):
        self.closed += 1
        with lock:
            closes.append((self.name, threading.current_thread().name, self.closed))


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Stream(environ.get("QUERY_STRING") or "stream")


def flood(environ, start_response):
    # Produces 48 MiB as fast as it is taken: backpressure must block it.
    start_response("200 OK", [("Content-Length", str(48 * 1024 * 1024))])
    chunk = b"y" * (64 * 1024)
    for _ in range(48 * 16):
        with lock:
            produced["bytes"] += len(chunk)
        yield chunk


def write_then_iterate(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"iterated"]


def error_replaced(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("oops")
    except ValueError:
        import sys

        start_response(
            "503 Service Unavailable",
            [("Content-Type", "text/plain")],
            sys.exc_info(),
        )
    return [b"replaced"]


def fails(environ, start_response):
    raise RuntimeError("intentional-log-line: the application fails")


def echo(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return text(start_response, environ["wsgi.input"].read(length))


ROUTES = {
    "/pid": pid,
    "/reactor": which_reactor,
    "/env": env,
    "/remote": remote,
    "/slow": slow,
    "/block": block,
    "/stats": stats,
    "/gc": gc_state,
    "/deferred": deferred,
    "/stream": stream,
    "/flood": flood,
    "/write": write_then_iterate,
    "/error-replaced": error_replaced,
    "/fails": fails,
    "/echo": echo,
}


def application(environ, start_response):
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        return text(start_response, "not found", "404 Not Found")
    return route(environ, start_response)
'''


def write_app(directory: Path) -> None:
    """Write C{cliapp.py} (L{APP_SOURCE}) into C{directory}."""
    (directory / "cliapp.py").write_text(APP_SOURCE)


def command(*args: str) -> list[str]:
    """The argv of C{python -m twisted_shim serve ARGS}."""
    return [sys.executable, "-m", "twisted_shim", "serve", *args]


def alive(pid: int) -> bool:
    """Whether process C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """The live processes of process group C{pgid}."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def wait_until(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.02
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Served:
    """
    A C{twisted-shim serve} subprocess.

    @ivar stderr_lines: The lines of its stderr so far (without newlines).
    @ivar stdout_lines: Likewise for stdout.
    @ivar listeners: The C{listening on} targets, in order, once ready.
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param env: The command's environment (this process's by default);
            C{PYTHONUNBUFFERED} is set in it either way.
        """
        self.argv = list(argv) if argv is not None else command(*args)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.proc.pid
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(
                target=self._read,
                args=(self.proc.stderr, self.stderr_lines),
                daemon=True,
            ),
            threading.Thread(
                target=self._read,
                args=(self.proc.stdout, self.stdout_lines),
                daemon=True,
            ),
        ]
        for reader in self._readers:
            reader.start()
        self.listeners: list[str] = []
        self.ready_match: re.Match[str] | None = None

    def _read(self, stream: IO[bytes] | None, lines: list[str]) -> None:
        assert stream is not None
        for raw in stream:
            with self._cond:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(line + "\n" for line in self.stderr_lines)

    def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = TIMEOUT,
        stream: str = "stderr",
    ) -> re.Match[str]:
        """Wait for a line of C{stream} matching C{pattern}; return the match."""
        regex = re.compile(pattern)
        lines = self.stderr_lines if stream == "stderr" else self.stdout_lines
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matching {regex.pattern!r} within {timeout} s;"
                        f" {stream}:\n" + "\n".join(lines)
                    )
                if self.proc.poll() is not None and not any(
                    r.is_alive() for r in self._readers
                ):
                    raise AssertionError(
                        f"the server exited ({self.proc.returncode}) before a line matching"
                        f" {regex.pattern!r}; stderr:\n" + "\n".join(self.stderr_lines)
                    )
                self._cond.wait(min(left, 0.1))

    def ready(self, timeout: float = STARTUP_TIMEOUT) -> Served:
        """Wait for the C{ready} line; parse the C{listening on} lines."""
        self.ready_match = self.wait_for_line(READY, timeout)
        with self._cond:
            self.listeners = [
                m.group(1) for line in self.stderr_lines if (m := LISTENING.match(line))
            ]
        return self

    @property
    def port(self) -> int:
        """The port of the first TCP listener."""
        for target in self.listeners:
            if target.startswith("http://"):
                return int(target.rsplit(":", 1)[1])
        raise AssertionError(f"no TCP listener in {self.listeners}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to exit (and its output to be read)."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def close(self) -> None:
        """Kill the process group (supervisor and workers) if still there."""
        if self.proc.poll() is None or group_members(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Servers:
    """
    C{servers(*args, ready=True, argv=None)} starts C{twisted-shim serve
    ARGS} in C{cwd} (where it writes C{cliapp.py}); L{close} kills them all.
    """

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        write_app(cwd)
        self.started: list[Served] = []

    def __call__(
        self, *args: str, ready: bool = True, argv: Sequence[str] | None = None
    ) -> Served:
        served = Served(args, self.cwd, argv)
        self.started.append(served)
        return served.ready() if ready else served

    def close(self) -> None:
        for served in self.started:
            served.close()


@contextlib.contextmanager
def servers(cwd: Path) -> Iterator[Servers]:
    """L{Servers} in C{cwd}, all killed on exit."""
    s = Servers(cwd)
    try:
        yield s
    finally:
        s.close()


# Clients


class UnixHTTPConnection(http.client.HTTPConnection):
    """C{http.client} over a UNIX socket."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def connection(
    target: str | int, timeout: float = TIMEOUT
) -> http.client.HTTPConnection:
    """A connection to C{http://HOST:PORT}, C{unix:PATH} or a port on 127.0.0.1."""
    if isinstance(target, int):
        return http.client.HTTPConnection("127.0.0.1", target, timeout=timeout)
    if target.startswith("unix:"):
        return UnixHTTPConnection(target[len("unix:") :], timeout)
    hostport = target.removeprefix("http://")
    host, _, port = hostport.rpartition(":")
    return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)


def get(
    target: str | int,
    path: str = "/pid",
    timeout: float = TIMEOUT,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request on a new connection (C{Connection: close}): status and body."""
    conn = connection(target, timeout)
    try:
        conn.request(
            "POST" if body is not None else "GET",
            path,
            body=body,
            headers={"Connection": "close", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_json(
    target: str | int, path: str, headers: dict[str, str] | None = None
) -> Any:
    status, body = get(target, path, headers=headers)
    assert status == 200, (status, body)
    return json.loads(body)


class InFlight:
    """
    C{n} requests for C{path} sent at once on new connections; each
    thread reads its whole response, strictly (C{http.client} raises
    C{IncompleteRead} on a body shorter than its C{Content-Length}).
    """

    def __init__(self, port: int, path: str, n: int) -> None:
        self.results: list[tuple[str, Any]] = []
        self._sent = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._one, args=(port, path), daemon=True)
            for _ in range(n)
        ]
        for t in self._threads:
            t.start()

    def _one(self, port: int, path: str) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except OSError as e:
            self._sent.release()
            self._record(("connect", repr(e)))
            return
        try:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
            )
            self._sent.release()
            response = http.client.HTTPResponse(sock)
            response.begin()
            self._record(("ok", (response.status, response.read())))
        except (OSError, http.client.HTTPException) as e:
            self._record(("error", repr(e)))
        finally:
            sock.close()

    def _record(self, result: tuple[str, Any]) -> None:
        with self._lock:
            self.results.append(result)

    def wait_sent(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            assert self._sent.acquire(timeout=max(0.0, deadline - time.monotonic())), (
                "requests not sent in time"
            )

    def join(self, timeout: float = 30.0) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "clients still waiting"
        return self.results


class _ClientThreads:
    """
    C{n} client threads running C{self._loop(port, path)} until L{stop};
    outcomes are counted, by kind, in C{counts} under a lock.
    """

    def __init__(self, port: int, path: str, n: int, kinds: Sequence[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(kinds, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(port, path), daemon=True)
            for _ in range(n)
        ]
        for t in self._threads:
            t.start()

    def _loop(self, port: int, path: str) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """Stop the clients (waiting at most C{timeout}); the counts."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "clients still running"
        with self._lock:
            return dict(self.counts)


class Hammer(_ClientThreads):
    """
    C{n} threads doing requests on new connections in a loop until
    L{stop}; each result is C{ok} (a complete 200), C{refused} (the
    connection was not accepted), C{no-response} (closed or reset before
    any byte of a response) or C{broken} (anything else: a truncated or bad
    response).
    """

    def __init__(self, port: int, path: str, n: int) -> None:
        self.broken: list[str] = []
        super().__init__(port, path, n, ("ok", "refused", "no-response", "broken"))

    def _loop(self, port: int, path: str) -> None:
        while not self._stop.is_set():
            kind, detail = self._one(port, path)
            with self._lock:
                self.counts[kind] += 1
                if kind == "broken":
                    self.broken.append(detail)
            if kind == "refused":
                time.sleep(0.01)

    def _one(self, port: int, path: str) -> tuple[str, str]:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except ConnectionRefusedError:
            return "refused", ""
        except OSError as e:
            return "broken", f"connect: {e!r}"
        try:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
            )
            response = http.client.HTTPResponse(sock)
            try:
                response.begin()
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
            ):
                return "no-response", ""
            body = response.read()
            if response.status != 200 or not body.startswith(b"slow"):
                return "broken", f"{response.status} {body!r}"
            return "ok", ""
        except (ConnectionResetError, BrokenPipeError) as e:
            return "no-response", repr(e)
        except (OSError, http.client.HTTPException) as e:
            return "broken", repr(e)
        finally:
            sock.close()


class KeepAlive(_ClientThreads):
    """
    C{n} threads, each sending requests back to back on one persistent
    connection, as wrk does, and opening a new one when a response says
    C{Connection: close}, until L{stop} or the port refuses. Each request is
    C{ok} (a complete 200), C{lost} (sent on an open connection and answered
    by nothing: closed or reset before any byte of a response), or
    C{broken} (anything else); C{refused} counts connections not accepted.
    C{bodies} holds the distinct bodies of the C{ok} responses.
    """

    def __init__(self, port: int, path: str, n: int) -> None:
        self.closes = 0
        self.problems: list[str] = []
        self.bodies: set[bytes] = set()
        super().__init__(port, path, n, ("ok", "lost", "broken", "refused"))

    def _count(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.counts[kind] += 1
            if detail:
                self.problems.append(detail)

    def _loop(self, port: int, path: str) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", port), timeout=TIMEOUT
                    )
                except ConnectionRefusedError:
                    self._count("refused")
                    return
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
                conn.sock = sock
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
            ):
                self._count("lost", f"{path}: no response on a kept-alive connection")
                conn.close()
                conn = None
                continue
            except (OSError, http.client.HTTPException) as e:
                self._count("broken", repr(e))
                conn.close()
                conn = None
                continue
            if response.status == 200 and body:
                self._count("ok")
                with self._lock:
                    self.bodies.add(body)
            else:
                self._count("broken", f"{response.status} {body[:50]!r}")
            if response.will_close:
                with self._lock:
                    self.closes += 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
