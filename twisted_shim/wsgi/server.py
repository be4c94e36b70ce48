"""
L{WSGIServer}: one WSGI application served over HTTP/1.1 by the Rust host
(C{twisted_shim._core.WsgiHost}) on the reactor's own loop.

The host accepts, parses (httparse), reads whole request bodies (spooling
long ones to an unnamed temporary file), calls the application on the
reactor thread, streams its output with backpressure, and
implements the pause_output extension. This module configures it, feeds it
listening sockets, drives its timeouts and shuts it down gracefully. Its
limits are a L{ServerConfig} (L{twisted_shim.wsgi.config}, where every
default is defined); each reaches the host as the keyword argument of the
same name.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from twisted_shim import _core
from twisted_shim.wsgi._errors import ErrorStream
from twisted_shim.wsgi._wait import Waiter
from twisted_shim.wsgi.config import ServerConfig

__all__ = ["ServerConfig", "WSGIApplication", "WSGIServer"]

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_log = Logger()

#: While stopping, how often the host is asked whether the listening
#: sockets may be closed (the kernel's queue is drained in between, as
#: connections arrive).
_STOP_POLL = 0.02


class WSGIServer:
    """
    Serve C{app} on the installed L{twisted_shim.reactor.RustReactor}.

    @ivar config: The L{ServerConfig} (its defaults when none was given).
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
        # L{stop_accepting}: begun; the Deferreds to fire once the sockets
        # are closed; the next step, while one is due.
        self._stopping = False
        self._stop_waiters: list[Deferred[None]] = []
        self._stop_call: IDelayedCall | None = None
        c = self.config
        body_dir = c.body_dir if c.body_dir is not None else tempfile.gettempdir()
        if not os.path.isdir(body_dir):
            raise ValueError(f"the body directory {body_dir!r} is not a directory")
        self._core = _core.WsgiHost(
            loop,
            app,
            reactor,
            max_header=c.max_header,
            max_body=c.max_body,
            body_buffer=c.body_buffer,
            body_dir=body_dir,
            header_timeout=c.header_timeout,
            body_timeout=c.body_timeout,
            min_body_rate=c.min_body_rate,
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
        tick = min(c.header_timeout, c.body_timeout, c.keepalive_timeout) / 4
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
    def heap_trims(self) -> int:
        """How many times freed memory was given back to the system after a
        burst of connections (at least 256, shrunk to a quarter)."""
        return self._core.heap_trims()

    @property
    def active(self) -> int:
        """Requests whose response is not complete (paused ones included)."""
        return self._core.active()

    def stop_accepting(self) -> Deferred[None]:
        """
        Stop accepting new connections without losing one the kernel has
        completed, then close the listening sockets; the Deferred fires
        once they are closed (within a second or so).

        New clients get no answer: on TCP the kernel drops their SYNs, they
        retry, and are refused once the sockets are closed (or reach
        another worker's socket of the same port). What is queued, and
        handshakes already under way, are accepted until the queue has
        stayed empty for a moment; each such connection is served like the
        others (drained, when L{shutdown} drains).
        """
        stopped: Deferred[None] = Deferred()
        if self._stopping and not self._sockets:
            stopped.callback(None)
            return stopped
        self._stop_waiters.append(stopped)
        if not self._stopping:
            self._stopping = True
            self._step_stop()
        return stopped

    def _step_stop(self, now: bool = False) -> None:
        """One step of L{stop_accepting}: again later, until the host lets
        the listening sockets go (at once if C{now})."""
        self._stop_call = None
        if self._sockets and not self._core.stop_accepting(now):
            self._stop_call = self._reactor.callLater(_STOP_POLL, self._step_stop)
            return
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _close_listeners(self) -> None:
        """Stop accepting and close the listening sockets now."""
        self._stopping = True
        if self._stop_call is not None:
            self._stop_call.cancel()
        self._step_stop(now=True)

    def abort(self) -> int:
        """
        Stop accepting and abort every connection now (requests in flight
        are cut off: their iterables are closed, clients see a reset).
        Returns how many connections there were.
        """
        self._close_listeners()
        return self._core.abort_all()

    def shutdown(self, grace: float = 30.0) -> Deferred[None]:
        """
        Stop gracefully: stop accepting (L{stop_accepting}), answer every
        request already received or arriving on an open connection (paused
        ones included; the last response on each connection says
        C{Connection: close}), close connections once they are quiet
        between requests, for up to C{grace} seconds, then abort what is
        left. The Deferred fires when the listening sockets are closed and
        no connection is left.
        """
        self.stop_accepting()
        self._core.drain()
        done: Deferred[None] = Deferred()
        deadline = self._reactor.seconds() + grace

        def check() -> None:
            self._core.drain()
            if self._core.connections() == 0 and not self._sockets:
                if self._sweeper.running:
                    self._sweeper.stop()
                done.callback(None)
            elif self._reactor.seconds() >= deadline:
                self._close_listeners()
                aborted = self._core.abort_all()
                _log.warn(
                    "Shutdown grace period over: aborted {n} connections", n=aborted
                )
                self._reactor.callLater(0, check)
            else:
                self._reactor.callLater(0.02, check)

        check()
        return done
