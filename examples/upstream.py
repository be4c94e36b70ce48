"""
A WSGI application that, for each request, fetches a page from an upstream
HTTP server with treq while its output is paused: no thread is held while
the upstream answers, so one process serves many such requests at once.

    UPSTREAM_URL=http://127.0.0.1:8001/ twisted-shim serve examples.upstream:application

Without C{UPSTREAM_URL}, the example starts its own upstream on the same
reactor (a twisted.web resource on an ephemeral loopback port that answers
after C{UPSTREAM_DELAY} seconds, 0.05 by default), so it runs on its own.
C{UPSTREAM_HOLD_UNTIL=N} makes that upstream answer nothing until N requests
are waiting on it at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import treq
from twisted.internet import reactor, task
from twisted.web import resource, server

_upstream_url: str | None = os.environ.get("UPSTREAM_URL")
#: The upstream started here when C{UPSTREAM_URL} is not set.
local_upstream: _SlowUpstream | None = None


class _SlowUpstream(resource.Resource):
    """
    Answers after C{delay} seconds; counts requests pending at once. With
    C{hold_until}, it answers nothing until that many are pending (a
    demonstration, and a test, that the WSGI host keeps them all paused).
    """

    isLeaf = True

    def __init__(self, delay: float, hold_until: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.hold_until = hold_until
        self.pending = 0
        self.max_pending = 0
        self._held: list[Callable[[], None]] = []

    def render_GET(self, request: server.Request) -> Any:
        self.pending += 1
        self.max_pending = max(self.max_pending, self.pending)
        done = False

        def answer() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.pending -= 1
            request.setHeader(b"content-type", b"application/json")
            request.write(
                json.dumps({"upstream": "ok", "path": request.path.decode()}).encode()
            )
            request.finish()

        def gone(_: object) -> None:
            nonlocal done
            if not done:
                done = True
                self.pending -= 1

        request.notifyFinish().addErrback(gone)
        if self.hold_until is None:
            reactor.callLater(self.delay, answer)  # type: ignore[attr-defined]
        else:
            self._held.append(answer)
            if self.pending >= self.hold_until:
                held, self._held = self._held, []
                for release in held:
                    reactor.callLater(self.delay, release)  # type: ignore[attr-defined]
        return server.NOT_DONE_YET


def upstream_url() -> str:
    """The upstream to call: C{UPSTREAM_URL}, or one started here on first use."""
    global _upstream_url, local_upstream
    if _upstream_url is None:
        hold = os.environ.get("UPSTREAM_HOLD_UNTIL")
        local_upstream = _SlowUpstream(
            float(os.environ.get("UPSTREAM_DELAY", "0.05")),
            int(hold) if hold else None,
        )
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, server.Site(local_upstream), interface="127.0.0.1"
        )
        _upstream_url = f"http://127.0.0.1:{port.getHost().port}/"
    return _upstream_url


def _fetch(url: str) -> Any:
    d = treq.get(url, timeout=10)
    d.addCallback(lambda response: task.ensureDeferred(_read(response)))
    return d


async def _read(response: Any) -> tuple[int, bytes]:
    body = await treq.content(response)
    return response.code, body


def application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterator[bytes]:
    wait = environ["twisted_shim.wait"]
    waiter = wait(_fetch(upstream_url() + environ["PATH_INFO"].lstrip("/")), timeout=15)
    yield b""  # paused here until treq's Deferred fires
    try:
        code, body = waiter.result()
    except TimeoutError:
        start_response("504 Gateway Timeout", [("Content-Type", "text/plain")])
        yield b"upstream timed out\n"
        return
    except Exception as e:  # connection refused, DNS, ...
        start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
        yield f"upstream failed: {e}\n".encode()
        return
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body) + 1))],
    )
    yield body + b"\n"
