"""
The bundled examples work as documented: examples/hello.py, and
examples/upstream.py fetching from an upstream with treq while paused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(
    code: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


SERVE = """
    import socket, sys, threading, http.client, concurrent.futures
    import twisted_shim
    reactor = twisted_shim.install()
    from twisted_shim.wsgi import WSGIServer
    from examples.{module} import application
    server = WSGIServer(application)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    server.listen(sock)
    port = sock.getsockname()[1]

    def get(path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()

    def clients():
        try:
            with concurrent.futures.ThreadPoolExecutor({concurrency}) as ex:
                results = list(ex.map(get, [f"/item{{i}}" for i in range({n})]))
            for status, body in results:
                print(status, body.decode().strip())
            upstream = getattr(sys.modules["examples.{module}"], "local_upstream", None)
            if upstream is not None:
                print("max pending", upstream.max_pending)
        finally:
            reactor.callFromThread(reactor.stop)

    threading.Thread(target=clients).start()
    reactor.run()
"""


def test_hello() -> None:
    result = run(SERVE.format(module="hello", concurrency=4, n=8))
    lines = result.stdout.splitlines()
    assert lines == ["200 Hello, world!"] * 8, result.stderr


def test_upstream_example_serves_concurrent_requests_while_paused() -> None:
    """
    200 concurrent requests, each paused while treq waits on the upstream,
    which answers none of them until all 200 are pending at once: one
    thread (the reactor's) holds them all. Had the host served them one at
    a time, nothing would ever be answered (and the test would time out).
    """
    code = SERVE.format(module="upstream", concurrency=200, n=200)
    result = run(code, env={"UPSTREAM_HOLD_UNTIL": "200", "UPSTREAM_DELAY": "0"})
    lines = result.stdout.splitlines()
    assert len(lines) == 201, result.stderr
    for i, line in enumerate(lines[:200]):
        assert line == f'200 {{"upstream": "ok", "path": "/item{i}"}}', line
    assert lines[200] == "max pending 200"
