"""
The WSGI applications that C{benchmarks/wsgi_bench.py} serves with every
server. One module, imported by every server as C{wsgi_apps:NAME}; it needs
only the standard library, except on twisted-shim's pause path, which imports
Twisted (present wherever twisted-shim runs).

C{hello}
    C{200 OK}, C{Content-Type: text/plain}, C{Content-Length: 13}, body
    C{b"Hello, world!"}.
C{big}
    C{200 OK}, a 64 KiB (65,536-byte) body with its C{Content-Length}, one
    C{bytes} object built once at import.
C{echo}
    Reads C{CONTENT_LENGTH} bytes of C{wsgi.input} and sends them back with
    the same C{Content-Length} (the benchmark POSTs 10 KiB).
C{upstream}
    Each request makes one HTTP GET to a local "upstream" server (its URL in
    the environment variable C{WSGI_BENCH_UPSTREAM}) that answers after
    50 ms, and returns C{b"upstream: "} plus the upstream's body.
    - Where C{environ} has C{twisted_shim.wait} (twisted-shim on the reactor
      thread), the GET is made with Twisted's C{Agent} on a persistent
      C{HTTPConnectionPool}, and the request pauses its output until the
      Deferred fires: no thread waits. C{Agent} is Twisted's counterpart of
      C{http.client}, which the blocking path uses.
    - Everywhere else (the thread- or process-based servers, twisted-shim's
      thread-pool mode), the calling thread blocks in an C{http.client} GET
      on a persistent connection of its own (one per thread, reused), as an
      application using a requests.Session per thread would.
C{upstream_treq}
    The same, with treq (C{treq.client.HTTPClient} over the same kind of
    pool) instead of a bare C{Agent} on the paused path; the blocking path is
    C{upstream}'s. treq adds cookies, redirects, content decoding and
    URL handling to every request, which costs about as much CPU as the
    C{Agent} request under it.
C{count}
    Reads C{wsgi.input} in 64 KiB reads to its end and answers the number of
    bytes read, in decimal (C{upload.py} POSTs bodies of hundreds of MiB: the
    app never holds more than one read).
C{sleep}
    The same 50 ms wait without an upstream: C{twisted_shim.wait} on a
    C{deferLater(reactor, 0.05, ...)} on twisted-shim, C{time.sleep(0.05)}
    elsewhere. Not in the default set of C{wsgi_bench.py}.
C{paused}
    twisted-shim only (C{stop_under_load.py}): C{hello}'s response, sent
    after the request paused its output (C{wsgi.pause_output}) and a
    C{callLater} of C{PAUSE} seconds resumed it.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

HELLO = b"Hello, world!"
BIG = bytes(range(256)) * 256  # 64 KiB
ECHO_MAX = 1024 * 1024
UPSTREAM_DELAY = 0.05
UPSTREAM_ENV = "WSGI_BENCH_UPSTREAM"
UPSTREAM_TIMEOUT = 30.0
MAX_PERSISTENT = 20_000  # upstream connections kept by the paused path's pool
READ_SIZE = 64 * 1024
PAUSE = 0.01

assert len(HELLO) == 13 and len(BIG) == 64 * 1024


def _ok(start_response: StartResponse, body: bytes) -> list[bytes]:
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _ok(start_response, HELLO)


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _ok(start_response, BIG)


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length < 0 or length > ECHO_MAX:
        start_response("413 Payload Too Large", [("Content-Length", "0")])
        return [b""]
    body = environ["wsgi.input"].read(length) if length else b""
    return _ok(start_response, body)


# --------------------------------------------------------------------------
# upstream: the blocking path


def _upstream_url() -> tuple[str, int, str]:
    url = os.environ.get(UPSTREAM_ENV)
    if not url:
        raise RuntimeError(f"{UPSTREAM_ENV} is not set")
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"


_local = threading.local()


def _blocking_get() -> bytes:
    """GET the upstream on this thread's persistent connection."""
    host, port, path = _upstream_url()
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
            _local.conn = conn
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"upstream answered {resp.status}")
            if resp.will_close:
                conn.close()
                _local.conn = None
            return body
        except (http.client.HTTPException, OSError):
            # A kept-alive connection the upstream closed: retry once anew.
            conn.close()
            _local.conn = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# upstream: the paused path (twisted-shim on the reactor thread)

# (reactor id, treq?) -> (GET function, body reader)
_clients: dict[tuple[int, bool], tuple[Callable[[str], Any], Callable[[Any], Any]]] = {}


def _address_endpoints(reactor: Any) -> Any:
    """
    The upstream's endpoints for C{Agent}, as C{http.client} connects for the
    thread servers: a plain TCP endpoint to the URL's address (the upstream
    is an IP literal). C{Agent}'s default, C{HostnameEndpoint}, adds Happy
    Eyeballs (a C{LoopingCall} and a class declared per connection), which
    took half of the first wave of 5,000 connections in a profile of
    C{long_wait.py}; a name still gets it (plain HTTP only, as the
    upstream is). Twisted is imported here: the module also runs on servers
    without it.
    """
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    from twisted.internet.endpoints import (
        HostnameEndpoint,
        TCP4ClientEndpoint,
        TCP6ClientEndpoint,
    )
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class AddressEndpoints:
        def endpointForURI(self, uri: Any) -> Any:
            host = uri.host.decode("ascii")
            if isIPAddress(host):
                return TCP4ClientEndpoint(reactor, host, uri.port)
            if isIPv6Address(host):
                return TCP6ClientEndpoint(reactor, host, uri.port)
            return HostnameEndpoint(reactor, host, uri.port)

    return AddressEndpoints()


def _client(
    reactor: Any, treq: bool
) -> tuple[Callable[[str], Any], Callable[[Any], Any]]:
    """
    One HTTP client per reactor and kind, on a persistent pool that keeps
    every connection the concurrent requests opened (500 in C{wsgi_bench.py},
    5,000 in C{long_wait.py}; Twisted's default
    keeps 2 per host, treq's global pool too, so the others would be
    reopened for each request): a bare C{Agent}, or a
    C{treq.client.HTTPClient} over one. Returned with the function that
    reads a response's body, imported here once: C{twisted.web.client} is
    wrapped by Twisted's deprecation proxy, whose attribute lookups are
    slow enough to show in a profile when made per request.
    """
    client = _clients.get((id(reactor), treq))
    if client is None:
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = MAX_PERSISTENT
        agent = Agent.usingEndpointFactory(
            reactor, _address_endpoints(reactor), pool=pool
        )
        if treq:
            from treq import content
            from treq.client import HTTPClient

            client = (HTTPClient(agent).get, content)
        else:
            client = (lambda url: agent.request(b"GET", url.encode()), readBody)
        _clients[(id(reactor), treq)] = client
    return client


def _paused_get(environ: Environ, treq: bool) -> Any:
    host, port, path = _upstream_url()
    get, read_body = _client(environ["twisted_shim.reactor"], treq)
    d = get(f"http://{host}:{port}{path}")

    def body(response: Any) -> Any:
        if response.code != 200:
            raise RuntimeError(f"upstream answered {response.code}")
        return read_body(response)

    d.addCallback(body)
    return environ["twisted_shim.wait"](d, timeout=UPSTREAM_TIMEOUT)


def _respond_after(
    waiter: Any, start_response: StartResponse, prefix: bytes
) -> Iterator[bytes]:
    yield b""  # paused here until the Deferred fires
    body = prefix + waiter.result()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    yield body


def _upstream(
    environ: Environ, start_response: StartResponse, treq: bool
) -> Iterable[bytes]:
    if "twisted_shim.wait" in environ:
        waiter = _paused_get(environ, treq)
        return _respond_after(waiter, start_response, b"upstream: ")
    return _ok(start_response, b"upstream: " + _blocking_get())


def upstream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _upstream(environ, start_response, treq=False)


def upstream_treq(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _upstream(environ, start_response, treq=True)


def count(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    total = 0
    while chunk := stream.read(READ_SIZE):
        total += len(chunk)
    return _ok(start_response, str(total).encode())


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if "twisted_shim.wait" in environ:
        from twisted.internet.task import deferLater

        reactor = environ["twisted_shim.reactor"]
        waiter = environ["twisted_shim.wait"](
            deferLater(reactor, UPSTREAM_DELAY, lambda: b"ok")
        )
        return _respond_after(waiter, start_response, b"slept: ")
    time.sleep(UPSTREAM_DELAY)
    return _ok(start_response, b"slept: ok")


def paused(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    resume = environ["wsgi.pause_output"]()
    environ["twisted_shim.reactor"].callLater(PAUSE, resume)
    yield b""  # paused until the callLater resumes it
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))],
    )
    yield HELLO


APPS = ("hello", "big", "echo", "upstream", "upstream_treq", "count", "sleep")
