"""
An upstream HTTP service for the example applications' tests
(C{tests/test_dashboard.py}, C{tests/test_aio_dashboard.py}): a
C{ThreadingHTTPServer} in a thread of the test process, on loopback, that
can hold its answers until a number of requests wait at once (which only a
server serving that many at once can bring about), or never answer; and
L{eventually}, the bounded poll the tests wait with.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def eventually(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Poll C{probe} until C{done(value)}, at most C{timeout} seconds; the last value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = probe()
    return value


class _Server(ThreadingHTTPServer):
    # Room for a few hundred connections arriving at once (socketserver's
    # default backlog is 5: the rest would wait for SYN retransmits).
    request_queue_size = 1024


class Upstream:
    """
    The upstream HTTP service, in a thread of this process.

    - C{/slow/...}: never answers; the handler waits until the client
      closes the connection.
    - anything else: C{{"upstream": "ok", "path": PATH}}; while C{hold_until}
      is set, answers are held until that many requests wait at once (then
      it is cleared).

    C{pending} counts requests being handled, C{max_pending} its maximum;
    C{connections} the connections open (accepted, not yet closed by either
    side).
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.pending = 0
        self.max_pending = 0
        self.connections = 0
        self.requests = 0
        self.hold_until: int | None = None
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                with upstream.lock:
                    upstream.connections += 1
                super().setup()

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with upstream.lock:
                        upstream.connections -= 1

            def do_GET(self) -> None:
                with upstream.lock:
                    upstream.requests += 1
                    upstream.pending += 1
                    upstream.max_pending = max(upstream.max_pending, upstream.pending)
                    upstream.lock.notify_all()
                try:
                    if self.path.startswith("/slow/"):
                        # Until the client goes away (at most a minute).
                        select.select([self.connection], [], [], 60)
                        self.close_connection = True
                        return
                    with upstream.lock:
                        if upstream.hold_until is not None:
                            if upstream.pending >= upstream.hold_until:
                                upstream.hold_until = None
                                upstream.lock.notify_all()
                            else:
                                upstream.lock.wait_for(
                                    lambda: upstream.hold_until is None, timeout=30
                                )
                    body = json.dumps({"upstream": "ok", "path": self.path}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with upstream.lock:
                        upstream.pending -= 1

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    yield u
    u.close()
