"""
The WSGI host as a Twisted service: L{twisted_shim.wsgi.service.WSGIService}
and the C{shim-wsgi} plugin of C{twist}/C{twistd}
(C{twisted/plugins/twisted_shim_wsgi.py}), run as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, get, write_app
from twisted.application.service import IService
from zope.interface.verify import verifyObject

from twisted_shim.reactor import RustReactor
from twisted_shim.testing import free_port
from twisted_shim.wsgi.service import WSGIService

TWIST = [sys.executable, "-m", "twisted"]


def _wait_listening(
    port: int, proc: subprocess.Popen[str], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def twist(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    write_app(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)


def _start(
    procs: list[subprocess.Popen[str]], cwd: Path, *args: str
) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{cwd}{os.pathsep}{ROOT}")
    proc = subprocess.Popen(
        [*TWIST, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(proc)
    return proc


def test_twist_serves_and_drains_on_sigterm(
    twist: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """
    C{twist --reactor=rust shim-wsgi} serves the application (paused requests
    included); SIGTERM lets a request in flight finish, then twist stops its
    reactor and exits as Twisted's runner does after a signal (it re-raises
    it: status -SIGTERM, on any reactor).
    """
    port = free_port()
    proc = _start(
        twist,
        tmp_path,
        "--reactor=rust",
        "shim-wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--access-log",
        "cliapp:application",
    )
    _wait_listening(port, proc)
    assert get(port, "/reactor") == (200, b"twisted_shim.reactor.RustReactor")
    result: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(get(port, "/slow?0.8")))
    slow.start()
    time.sleep(0.3)  # the request is paused in the server by now
    proc.send_signal(signal.SIGTERM)
    slow.join(10)
    assert result and result[0][0] == 200 and result[0][1].startswith(b"slow ")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM, (out, err)
    assert "Main loop terminated." in out + err
    assert "GET /reactor HTTP/1.1" in out + err  # --access-log, via twisted.logger


def test_twist_unix_socket(twist: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    proc = _start(
        twist, tmp_path, "--reactor=rust", "shim-wsgi", "--uds", str(path), "cliapp"
    )
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    status, body = get(f"unix:{path}", "/pid")
    assert (status, int(body)) == (200, proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM, (out, err)
    assert "Main loop terminated." in out + err
    assert not path.exists()  # removed by stopService


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shim-wsgi", "cliapp:application"], "runs on twisted_shim's reactor"),
        (["--reactor=epoll", "shim-wsgi", "cliapp:application"], "--reactor=rust"),
        (["--reactor=rust", "shim-wsgi", "nosuchmodule_x:app"], "cannot import"),
        (["--reactor=rust", "shim-wsgi", "--bind", "nowhere", "cliapp"], "HOST:PORT"),
    ],
    ids=["no-reactor", "epoll", "bad-app", "bad-bind"],
)
def test_twist_usage_errors(
    twist: list[subprocess.Popen[str]], tmp_path: Path, args: list[str], message: str
) -> None:
    proc = _start(twist, tmp_path, *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 64, (out, err)
    assert message in out + err
    assert "Traceback" not in out + err


def _flags(argv: list[str]) -> set[str]:
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    ).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out)) - {"--help", "--version"}


def test_help_lists_every_serve_limit() -> None:
    """
    C{twist shim-wsgi --help} lists every option of C{twisted-shim serve}
    but the process model (C{--workers}, C{--max-requests},
    C{--max-requests-jitter}, C{--threads}), the process's garbage collector
    (C{--gc-threshold}) and C{--log-level} (twist's own, given before the
    plugin's name).
    """
    serve = _flags([sys.executable, "-m", "twisted_shim", "serve", "--help"])
    plugin = _flags([*TWIST, "shim-wsgi", "--help"])
    assert {"--max-pause", "--send-timeout", "--header-timeout"} <= serve
    assert serve - plugin == {
        "--workers",
        "--max-requests",
        "--max-requests-jitter",
        "--threads",
        "--gc-threshold",
        "--log-level",
    }


def test_service_in_process(tmp_path: Path) -> None:
    """
    L{WSGIService} is an C{IService}: started, it listens (the real port of
    a port-0 bind is in C{addresses}); stopped, it stops accepting and
    removes its UNIX socket file, and the Deferred fires (once the listening
    sockets' queues settled and they are closed).
    """
    reactor = RustReactor()
    path = str(tmp_path / "s.sock")
    svc = WSGIService(
        lambda environ, start_response: [],
        binds=["127.0.0.1:0"],
        uds=[path],
        reactor=reactor,
    )
    verifyObject(IService, svc)
    svc.startService()
    assert svc.running
    (host, port), where = svc.addresses
    assert host == "127.0.0.1" and port > 0 and where == path
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    done: list[object] = []
    svc.stopService().addBoth(done.append)
    assert not os.path.exists(path)  # at once: new clients are refused
    for _ in range(200):
        if done:
            break
        reactor.iterate(0.02)
    assert done == [None]
    assert not svc.running and not os.path.exists(path)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_service_refuses_another_reactor() -> None:
    from twisted.internet.epollreactor import EPollReactor

    svc = WSGIService(lambda e, s: [], binds=["127.0.0.1:0"], reactor=EPollReactor())
    with pytest.raises(TypeError, match="twisted_shim's reactor"):
        svc.startService()
    assert not svc.running


def test_service_leaves_a_socket_file_that_is_not_its_own(tmp_path: Path) -> None:
    """If another server took the path meanwhile, stopping does not unlink it."""
    path = str(tmp_path / "shared.sock")
    svc = WSGIService(lambda e, s: [], uds=[path], reactor=RustReactor())
    svc.startService()
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        svc.stopService()
        assert os.path.exists(path)
