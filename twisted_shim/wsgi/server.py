"""
L{WSGIServer}: one WSGI application served over HTTP/1.1 by the Rust host
(C{twisted_shim._core.HttpServer}) on the reactor's own loop.

The host accepts, parses (httparse), reads whole request bodies, calls the
application on the reactor thread, streams its output with backpressure, and
implements the pause_output extension. This module configures it, feeds it
listening sockets, drives its timeouts and shuts it down gracefully.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from twisted_shim import _core
from twisted_shim.wsgi._errors import ErrorStream
from twisted_shim.wsgi._wait import Waiter

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_log = Logger()


@dataclass(frozen=True)
class ServerConfig:
    """
    Limits and behaviour of a L{WSGIServer}.

    @ivar max_header: Largest request line plus headers, in bytes; a larger
        head is answered 431.
    @ivar max_body: Largest request body, in bytes (de-chunked); a larger one
        is answered 413 (at once when C{Content-Length} says so).
    @ivar header_timeout: Seconds a client may take to send a request head
        once it started one (or connected); then 408 and close.
    @ivar keepalive_timeout: Seconds an idle persistent connection is kept.
    @ivar send_timeout: Seconds a client may take none of its response
        before the connection is aborted (the request's iterable is closed).
    @ivar max_pause: Server-wide cap, in seconds, on one pause of a request's
        output (C{None}: no cap); a per-call C{timeout} is capped by it.
    @ivar high_water: Bytes queued for a connection above which the host
        stops pulling from the application's iterable until it drains.
    @ivar access_log: Called with one line (common log format plus the
        request's duration) per response, or C{None}.
    @ivar url_scheme: C{wsgi.url_scheme}.
    @ivar multithread: C{wsgi.multithread} (C{True} in thread-pool mode).
    @ivar multiprocess: C{wsgi.multiprocess} (C{True} with several workers).
    @ivar pause_keys: Whether environ gets the pause_output keys (C{False}
        in thread-pool mode, where a thread may simply block).
    @ivar forwarded_allow_ips: Peers (addresses, CIDR networks, or C{"*"})
        whose C{X-Forwarded-For} and C{X-Forwarded-Proto} set C{REMOTE_ADDR}
        and C{wsgi.url_scheme}, as behind a reverse proxy; peers on a UNIX
        socket are always believed when this is not empty. Empty: the headers
        are never believed. The default, loopback, is gunicorn's and
        uvicorn's.
    """

    max_header: int = 64 * 1024
    max_body: int = 16 * 1024 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 60.0
    max_pause: float | None = 300.0
    high_water: int = 256 * 1024
    access_log: Callable[[str], None] | None = None
    url_scheme: str = "http"
    multithread: bool = False
    multiprocess: bool = False
    pause_keys: bool = True
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")


class WSGIServer:
    """
    Serve C{app} on the installed L{twisted_shim.reactor.RustReactor}.

    @ivar config: The L{ServerConfig}.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: ServerConfig | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        loop = getattr(reactor, "_loop", None)
        if not isinstance(loop, _core.Loop):
            raise TypeError(
                f"the WSGI host needs twisted_shim's reactor, not {type(reactor).__name__}:"
                " call twisted_shim.install() before importing twisted.internet.reactor"
            )
        self.config = config or ServerConfig()
        self._reactor = reactor
        self._sockets: list[socket.socket] = []
        c = self.config
        self._core = _core.HttpServer(
            loop,
            app,
            reactor,
            max_header=c.max_header,
            max_body=c.max_body,
            header_timeout=c.header_timeout,
            keepalive_timeout=c.keepalive_timeout,
            send_timeout=c.send_timeout,
            max_pause=c.max_pause,
            high_water=c.high_water,
            access_log=c.access_log,
            url_scheme=c.url_scheme,
            multithread=c.multithread,
            multiprocess=c.multiprocess,
            pause_keys=c.pause_keys,
            forwarded_allow_ips=list(c.forwarded_allow_ips),
            errors=ErrorStream(),
            waiter=Waiter,
        )
        # Header and keep-alive timeouts are checked by a sweep; a quarter of
        # the shortest timeout keeps them within 25% of their value.
        tick = min(c.header_timeout, c.keepalive_timeout) / 4
        self._sweeper = LoopingCall(self._core.sweep)
        self._sweeper.clock = reactor
        self._sweeper.start(max(0.01, min(tick, 1.0)), now=False)

    def listen(self, sock: socket.socket) -> None:
        """
        Accept connections on C{sock}, a bound and listening stream socket
        (TCP or UNIX). The server keeps it open until L{shutdown}.
        """
        sock.setblocking(False)
        self._sockets.append(sock)
        self._core.listen(sock.fileno())

    @property
    def connections(self) -> int:
        """Open client connections."""
        return self._core.connections()

    @property
    def active(self) -> int:
        """Requests whose response is not complete (paused ones included)."""
        return self._core.active()

    def stop_accepting(self) -> None:
        """Stop accepting new connections; close the listening sockets."""
        self._core.stop_accepting()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def abort(self) -> int:
        """
        Stop accepting and abort every connection now (requests in flight
        are cut off: their iterables are closed, clients see a reset).
        Returns how many connections there were.
        """
        self.stop_accepting()
        return self._core.abort_all()

    def shutdown(self, grace: float = 30.0) -> Deferred[None]:
        """
        Stop gracefully: stop accepting, close idle connections, let requests
        in flight (paused ones included) finish for up to C{grace} seconds,
        then abort what is left. The Deferred fires when no connection is
        left.
        """
        self.stop_accepting()
        self._core.close_idle()
        done: Deferred[None] = Deferred()
        deadline = self._reactor.seconds() + grace

        def check() -> None:
            self._core.close_idle()
            if self._core.connections() == 0:
                if self._sweeper.running:
                    self._sweeper.stop()
                done.callback(None)
            elif self._reactor.seconds() >= deadline:
                aborted = self._core.abort_all()
                _log.warn(
                    "Shutdown grace period over: aborted {n} connections", n=aborted
                )
                self._reactor.callLater(0, check)
            else:
                self._reactor.callLater(0.02, check)

        check()
        return done
