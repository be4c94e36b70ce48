"""
Tests for the command line, C{twisted-shim serve} (L{twisted_shim.cli}):
startup errors, listeners, the reactor the application sees, pre-forked
workers and their replacement, and graceful shutdown on SIGTERM and SIGINT.

Each test runs C{python -m twisted_shim serve} in a subprocess (its own
process group, killed after the test) and talks to it over real sockets.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    ROOT,
    TIMEOUT,
    Hammer,
    InFlight,
    KeepAlive,
    Servers,
    alive,
    command,
    get,
    get_json,
    servers,
    wait_until,
    write_app,
)

EADDRINUSE = f"[Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
#: A fresh interpreter's young-generation threshold (what --gc-threshold 0
#: keeps): 700 on Python 3.11 and 3.12, 2000 on 3.13.
PYTHON_GC_THRESHOLD = int(
    subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Servers]:
    with servers(tmp_path) as s:
        yield s


def run(
    args: list[str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m twisted_shim serve ARGS} to completion (in its own
    process group, all killed if it outlives C{timeout}).
    """
    argv = command(*args)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], expected: str | re.Pattern[str]
) -> None:
    """Exit status 1, and stderr is exactly one C{twisted-shim: error:} line."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(lines[0]), lines[0]
    else:
        assert lines[0] == f"twisted-shim: error: {expected}"


def pids_seen(port: int, want: int, attempts: int = 400) -> set[int]:
    """Ask C{/pid} on new connections until C{want} pids answered."""
    pids: set[int] = set()
    for _ in range(attempts):
        status, body = get(port, "/pid")
        assert status == 200
        pids.add(int(body))
        if len(pids) >= want:
            break
    return pids


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Startup errors


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "app, expected",
    [
        (
            "no_such_module_xyz:app",
            "cannot import 'no_such_module_xyz:app': ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        (
            "cliapp:missing",
            "cannot import 'cliapp:missing': AttributeError: module 'cliapp' has no attribute 'missing'",
        ),
        (
            "cliapp:NOT_CALLABLE",
            "'cliapp:NOT_CALLABLE' is not a WSGI application: int object is not callable",
        ),
        (
            "broken:application",
            "cannot import 'broken:application': ZeroDivisionError: division by zero",
        ),
    ],
)
def test_application_errors(
    tmp_path: Path, workers: str, app: str, expected: str
) -> None:
    """
    An application that cannot be imported, is missing or is not callable
    is one error line and exit status 1, in a worker too (reported once).
    """
    write_app(tmp_path)
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    result = run([app, "--bind", "127.0.0.1:0", "--workers", workers], tmp_path)
    assert_one_error_line(result, expected)


@pytest.mark.parametrize(
    "bind, expected",
    [
        (
            "127.0.0.1",
            "malformed address '127.0.0.1': expected HOST:PORT, or [IPV6]:PORT",
        ),
        (
            "127.0.0.1:http",
            "malformed address '127.0.0.1:http': the port must be 0-65535",
        ),
        (
            "127.0.0.1:70000",
            "malformed address '127.0.0.1:70000': the port must be 0-65535",
        ),
        (
            ":8000",
            "malformed address ':8000': the host is missing (expected HOST:PORT, or [IPV6]:PORT)",
        ),
        (
            "::1:8000",
            "malformed address '::1:8000': put an IPv6 address in brackets, as [::1]:8000",
        ),
        (
            "[::1:8000",
            "malformed address '[::1:8000': expected HOST:PORT, or [IPV6]:PORT",
        ),
    ],
)
def test_malformed_bind(tmp_path: Path, bind: str, expected: str) -> None:
    write_app(tmp_path)
    result = run(["cliapp:application", "--bind", bind], tmp_path)
    assert_one_error_line(result, f"argument --bind: {expected}")


def test_usage_error(tmp_path: Path) -> None:
    result = run(["cliapp:application", "--workers", "0"], tmp_path)
    assert_one_error_line(result, "argument --workers: '0' is not a positive integer")
    for flag in ("--max-requests", "--max-requests-jitter"):
        for bad in ("-1", "x", "1.5"):
            result = run(["cliapp:application", flag, bad], tmp_path)
            assert_one_error_line(
                result, f"argument {flag}: {bad!r} is not a non-negative integer"
            )
    result = run([], tmp_path)
    assert_one_error_line(result, "the following arguments are required: MODULE:APP")


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuseport"])
def test_port_in_use(tmp_path: Path, workers: str, reuse_port: bool) -> None:
    """
    A port another program listens on is reported, also when that program
    uses SO_REUSEPORT (the workers' probe binds without it).
    """
    write_app(tmp_path)
    with socket.socket() as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run(
            ["cliapp:application", "--bind", f"127.0.0.1:{port}", "--workers", workers],
            tmp_path,
        )
    assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}: {EADDRINUSE}")


def test_unix_socket_in_use(tmp_path: Path) -> None:
    write_app(tmp_path)
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        other.listen()
        result = run(["cliapp:application", "--uds", path], tmp_path)
    assert_one_error_line(
        result, f"cannot listen on unix:{path}: another server is listening there"
    )


# Listening and serving


def test_bind_port_zero(serve: Servers) -> None:
    """Port 0: the listening line has the real port, which serves."""
    server = serve("cliapp:application", "--bind", "127.0.0.1:0")
    assert server.listeners == [f"http://127.0.0.1:{server.port}"]
    assert server.port != 0
    assert server.ready_match is not None
    assert server.ready_match.groups() == (str(server.pid), "1", "0")
    assert get(server.port, "/pid") == (200, str(server.pid).encode())
    lines = server.stderr.splitlines()
    assert lines == [
        f"twisted-shim: listening on http://127.0.0.1:{server.port}",
        f"twisted-shim: ready (pid {server.pid}, workers 1, threads 0)",
    ]


def test_default_bind(tmp_path: Path) -> None:
    """Without --bind or --uds it listens on 127.0.0.1:8000."""
    write_app(tmp_path)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000 is in use")
    with servers(tmp_path) as serve:
        server = serve("cliapp:application")
        assert server.listeners == ["http://127.0.0.1:8000"]
        assert get(8000, "/pid") == (200, str(server.pid).encode())


def test_two_binds(serve: Servers) -> None:
    binds = ["--bind", "127.0.0.1:0", "--bind", "127.0.0.1:0"]
    if has_ipv6():
        binds += ["--bind", "[::1]:0"]
    server = serve("cliapp:application", *binds)
    assert len(server.listeners) == len(binds) // 2
    assert len(set(server.listeners)) == len(server.listeners)
    if has_ipv6():
        assert re.fullmatch(r"http://\[::1\]:\d+", server.listeners[2])
    for target in server.listeners:
        assert get(target, "/pid") == (200, str(server.pid).encode())


def test_unix_socket(serve: Servers, tmp_path: Path) -> None:
    """--uds serves; a stale socket file is replaced; the file is removed at exit."""
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the file, with no one listening
    server = serve("cliapp:application", "--uds", path, "--bind", "127.0.0.1:0")
    assert server.listeners == [f"http://127.0.0.1:{server.port}", f"unix:{path}"]
    assert get(f"unix:{path}", "/pid") == (200, str(server.pid).encode())
    assert get(f"unix:{path}", "/echo", body=b"over a unix socket") == (
        200,
        b"over a unix socket",
    )
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not os.path.exists(path)


def test_console_script(serve: Servers) -> None:
    """
    The C{twisted-shim} script ([project.scripts]) runs the same CLI. Until
    the package is reinstalled the script may be missing: then its entry
    point is called as the script would call it.
    """
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"twisted-shim": "twisted_shim.cli:main"}
    script = Path(sys.executable).parent / "twisted-shim"
    if script.exists():
        argv = [str(script)]
    else:
        argv = [
            sys.executable,
            "-c",
            "import sys; from twisted_shim.cli import main; sys.exit(main())",
        ]
    server = serve(argv=[*argv, "serve", "cliapp:application", "--bind", "127.0.0.1:0"])
    assert get(server.port, "/pid") == (200, str(server.pid).encode())


def test_help(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_shim", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0
    for option in [
        "--bind",
        "--uds",
        "--workers",
        "--threads",
        "--access-log",
        "--max-header",
        "--max-body",
        "--header-timeout",
        "--keepalive-timeout",
        "--max-pause",
        "--grace",
        "--backlog",
    ]:
        assert option in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_app_sees_our_reactor(serve: Servers, workers: str) -> None:
    """
    The reactor is installed before the application is imported: its
    module-level C{from twisted.internet import reactor} gets ours.
    """
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", workers)
    assert get(server.port, "/reactor") == (200, b"twisted_shim.reactor.RustReactor")


@pytest.mark.parametrize(
    ("args", "threshold"),
    [
        ((), 50_000),
        # Python's own: 700 on 3.11 and 3.12, 2000 on 3.13 (this
        # interpreter's default, read before anything here changed it).
        (("--gc-threshold", "0"), PYTHON_GC_THRESHOLD),
        (("--gc-threshold", "9000", "--workers", "2"), 9000),
    ],
)
def test_gc_threshold(serve: Servers, args: tuple[str, ...], threshold: int) -> None:
    """The serving process (each worker) freezes what the application's
    import left and sets the young generation's threshold: 50,000 by
    default, Python's own with --gc-threshold 0."""
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", *args)
    status, body = get(server.port, "/gc")
    assert status == 200
    assert json.loads(body) == [threshold, True]


def test_access_log(serve: Servers) -> None:
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--access-log")
    for _ in range(3):
        assert get(server.port, "/pid")[0] == 200
    assert get(server.port, "/nowhere")[0] == 404
    server.wait_for_line(r"GET /nowhere HTTP/1\.1\" 404", stream="stdout")
    assert sum("GET /pid" in line for line in server.stdout_lines) == 3


def test_environ_single_process(serve: Servers) -> None:
    server = serve("cliapp:application", "--bind", "127.0.0.1:0")
    env = get_json(server.port, "/env")
    assert env["multithread"] is False
    assert env["multiprocess"] is False
    assert env["main"] is True
    assert env["present"] == [
        "wsgi.pause_output",
        "x-wsgiorg.pause_output",
        "x-wsgiorg.flush",
        "twisted_shim.wait",
    ]


# Workers


def test_workers_serve_from_two_processes(serve: Servers) -> None:
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", "2")
    assert server.ready_match is not None
    assert server.ready_match.groups() == (str(server.pid), "2", "0")
    # The supervisor announces once; the workers print nothing of the sort.
    assert server.listeners == [f"http://127.0.0.1:{server.port}"]
    assert sum("listening on" in line for line in server.stderr_lines) == 1
    pids = pids_seen(server.port, 2)
    assert len(pids) == 2, pids
    assert server.pid not in pids
    env = get_json(server.port, "/env")
    assert env["multiprocess"] is True
    assert env["present"] == [
        "wsgi.pause_output",
        "x-wsgiorg.pause_output",
        "x-wsgiorg.flush",
        "twisted_shim.wait",
    ]


def test_workers_unix_socket(serve: Servers, tmp_path: Path) -> None:
    """The workers share the supervisor's UNIX socket."""
    path = str(tmp_path / "w.sock")
    server = serve("cliapp:application", "--uds", path, "--workers", "2")
    assert server.listeners == [f"unix:{path}"]
    pids: set[int] = set()
    for _ in range(400):
        status, body = get(f"unix:{path}", "/pid")
        assert status == 200
        pids.add(int(body))
        if len(pids) == 2:
            break
    # Which worker accepts is up to the kernel: one may take them all.
    assert pids and server.pid not in pids
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not os.path.exists(path)


def test_dead_worker_is_replaced(serve: Servers) -> None:
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", "2")
    pids = pids_seen(server.port, 2)
    assert len(pids) == 2
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    m = server.wait_for_line(
        rf"^twisted-shim: worker {victim} exited \(killed by SIGKILL\); started worker (\d+)$"
    )
    new = int(m.group(1))
    assert new not in pids

    def new_worker_serves() -> bool:
        try:
            status, body = get(server.port, "/pid", timeout=2)
        except OSError:
            return False
        return status == 200 and int(body) == new

    assert wait_until(new_worker_serves, timeout=20, interval=0)
    assert not alive(victim)
    assert server.proc.poll() is None


def test_supervisor_killed_takes_workers_down(serve: Servers) -> None:
    """Workers do not outlive a supervisor killed with SIGKILL."""
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", "2")
    pids = pids_seen(server.port, 2)
    server.signal(signal.SIGKILL)
    server.wait()
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=TIMEOUT)


# Graceful shutdown


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_graceful_shutdown(
    serve: Servers, workers: str, signum: signal.Signals
) -> None:
    """
    On SIGTERM or SIGINT every request in flight (paused, 0.2 s) gets its
    whole 200 response, then the process exits 0; requests made during the
    shutdown are either served completely or not accepted, never cut.
    """
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", workers)
    worker_pids = pids_seen(server.port, int(workers)) if workers != "1" else set()
    hammer = Hammer(server.port, "/slow?0.05", 10)
    time.sleep(0.3)
    in_flight = InFlight(server.port, "/slow", 50)
    in_flight.wait_sent()
    time.sleep(0.05)
    if signum == signal.SIGINT and workers != "1":
        os.killpg(server.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
    else:
        server.signal(signum)
    results = in_flight.join()
    assert server.wait() == 0, server.stderr
    counts = hammer.stop()
    assert len(results) == 50
    bad = [
        r
        for r in results
        if r[0] != "ok" or r[1][0] != 200 or not r[1][1].startswith(b"slow ")
    ]
    assert not bad, bad[:5]
    # A new connection is answered completely or refused (its SYN dropped
    # while the server settles, then refused): never accepted and dropped.
    assert counts["broken"] == 0 and counts["no-response"] == 0, (
        counts,
        hammer.broken[:5],
    )
    assert counts["ok"] > 0, counts
    name = signal.Signals(signum).name
    assert f"twisted-shim: {name}: shutting down" in server.stderr
    assert "Traceback" not in server.stderr
    assert "again" not in server.stderr  # no second signal seen
    for pid in worker_pids:
        assert not alive(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()


@pytest.mark.parametrize("run", range(2))
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("path", ["/pid", "/slow?0.01"], ids=["hello", "paused"])
def test_shutdown_loses_no_request_on_kept_alive_connections(
    serve: Servers, run: int, workers: str, path: str
) -> None:
    """
    SIGTERM while 20 clients send requests back to back on persistent
    connections: every request sent gets its complete response (the last on
    each connection with Connection: close), none is met by a close or a
    reset; then the port refuses and the process exits 0.
    """
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", workers)
    clients = KeepAlive(server.port, path, 20)
    assert wait_until(lambda: clients.counts["ok"] > 200, timeout=TIMEOUT)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr
    counts = clients.stop()
    assert counts["lost"] == 0 and counts["broken"] == 0, (counts, clients.problems[:5])
    assert counts["ok"] > 200, counts
    assert clients.closes >= 1, "no response said Connection: close"


def test_shutdown_answers_pipelined_requests(serve: Servers) -> None:
    """
    Three requests pipelined behind a slow one, on one connection, when
    SIGTERM arrives: all four are answered, in order, the last with
    Connection: close, then the connection closes.
    """
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", "1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    request = "GET {} HTTP/1.1\r\nHost: t\r\n\r\n"
    sock.sendall((request.format("/slow?0.5") + request.format("/pid") * 3).encode())
    time.sleep(0.2)
    server.signal(signal.SIGTERM)
    got = b""
    sock.settimeout(TIMEOUT)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.close()
    assert server.wait() == 0, server.stderr
    assert got.count(b"HTTP/1.1 200 OK") == 4, got
    assert got.count(b"Connection: close") == 1, got
    last = got.rindex(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in got[last:], got


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grace_period_is_bounded(serve: Servers, workers: str) -> None:
    """Requests still paused when --grace runs out are aborted; exit 0."""
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--grace",
        "0.5",
    )
    in_flight = InFlight(server.port, "/slow?30", 5)
    in_flight.wait_sent()
    time.sleep(0.2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    results = in_flight.join()
    assert all(kind == "error" for kind, _ in results), results


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_signal_forces(serve: Servers, workers: str) -> None:
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--grace",
        "60",
    )
    in_flight = InFlight(server.port, "/slow?30", 3)
    in_flight.wait_sent()
    time.sleep(0.2)
    server.signal(signal.SIGTERM)
    server.wait_for_line("shutting down")
    time.sleep(0.2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "SIGTERM again" in server.stderr
    in_flight.join()


def test_signal_during_startup(tmp_path: Path) -> None:
    """SIGTERM before the workers are ready stops everything."""
    write_app(tmp_path)
    (tmp_path / "slowimport.py").write_text(
        "import time\ntime.sleep(30)\ndef application(e, s): pass\n"
    )
    with servers(tmp_path) as serve:
        server = serve(
            "slowimport:application",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            ready=False,
        )
        time.sleep(1.0)
        children = [
            int(p)
            for p in Path(f"/proc/{server.pid}/task/{server.pid}/children")
            .read_text()
            .split()
        ]
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
        assert wait_until(lambda: not any(alive(p) for p in children))


# Reverse-proxy headers (--forwarded-allow-ips)

PROXIED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_proxy_headers_from_loopback_are_believed_by_default(
    serve: Servers, workers: str
) -> None:
    """
    As gunicorn and uvicorn: a proxy on loopback sets the client address and
    the scheme (in every worker).
    """
    server = serve("cliapp:application", "--bind", "127.0.0.1:0", "--workers", workers)
    for _ in range(int(workers) * 4):
        seen = get_json(server.port, "/remote", PROXIED)
        assert seen["REMOTE_ADDR"] == "203.0.113.7"
        assert seen["REMOTE_PORT"] == "0"
        assert seen["wsgi.url_scheme"] == "https"
        assert seen["SERVER_PORT"] == str(server.port)
    plain = get_json(server.port, "/remote")
    assert plain["REMOTE_ADDR"] == "127.0.0.1"
    assert plain["REMOTE_PORT"] != "0"
    assert plain["wsgi.url_scheme"] == "http"


@pytest.mark.parametrize("allow", ["", "10.0.0.0/8,192.0.2.1"])
def test_proxy_headers_from_untrusted_peers_are_ignored(
    serve: Servers, allow: str
) -> None:
    server = serve(
        "cliapp:application", "--bind", "127.0.0.1:0", "--forwarded-allow-ips", allow
    )
    seen = get_json(server.port, "/remote", PROXIED)
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["REMOTE_PORT"] != "0"
    assert seen["wsgi.url_scheme"] == "http"


def test_proxy_chain_and_bad_values(serve: Servers) -> None:
    """
    The client is the first untrusted hop from the right (a spoofed leftmost
    entry is not believed); values that are not an address or a scheme we
    serve leave the connection's own.
    """
    server = serve(
        "cliapp:application",
        "--bind",
        "127.0.0.1:0",
        "--forwarded-allow-ips",
        "127.0.0.1, 10.0.0.0/8",
    )
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.2.3"}
    assert get_json(server.port, "/remote", chain)["REMOTE_ADDR"] == "203.0.113.7"
    for bad in ({"X-Forwarded-For": "unknown"}, {"X-Forwarded-Proto": "ftp"}):
        seen = get_json(server.port, "/remote", bad)
        assert seen["REMOTE_ADDR"] == "127.0.0.1"
        assert seen["wsgi.url_scheme"] == "http"
    v6 = get_json(server.port, "/remote", {"X-Forwarded-For": "[2001:db8::5]"})
    assert v6["REMOTE_ADDR"] == "2001:db8::5"


def test_proxy_headers_over_a_unix_socket(serve: Servers, tmp_path: Path) -> None:
    """A UNIX-socket peer (nginx's usual link) is believed unless told otherwise."""
    path = str(tmp_path / "proxy.sock")
    server = serve("cliapp:application", "--uds", path)
    seen = get_json(f"unix:{path}", "/remote", PROXIED)
    assert seen["REMOTE_ADDR"] == "203.0.113.7"
    assert seen["wsgi.url_scheme"] == "https"
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    path2 = str(tmp_path / "noproxy.sock")
    server = serve("cliapp:application", "--uds", path2, "--forwarded-allow-ips", "")
    seen = get_json(f"unix:{path2}", "/remote", PROXIED)
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["REMOTE_ADDR"] != "203.0.113.7"


def test_bad_forwarded_allow_ips(tmp_path: Path) -> None:
    result = run(
        ["cliapp:application", "--forwarded-allow-ips", "127.0.0.1,localhost"],
        tmp_path,
    )
    assert_one_error_line(
        result,
        'argument --forwarded-allow-ips: invalid forwarded-allow-ips entry "localhost": '
        "expected an IP address, a network such as 10.0.0.0/8, or *",
    )


def test_server_config_rejects_bad_forwarded_allow_ips() -> None:
    """The Python API names the bad entry too (no server is started)."""
    from twisted_shim.reactor import RustReactor
    from twisted_shim.wsgi import ServerConfig, WSGIServer

    config = ServerConfig(forwarded_allow_ips=("::1", "10.0.0.0/40"))
    with pytest.raises(ValueError, match=r'entry "10\.0\.0\.0/40"'):
        WSGIServer(lambda environ, start_response: [], config, RustReactor())


def test_module_alone_means_application(serve: Servers) -> None:
    """C{serve MODULE} serves C{MODULE:application}."""
    server = serve("cliapp", "--bind", "127.0.0.1:0")
    assert get(server.port, "/pid") == (200, str(server.pid).encode())
