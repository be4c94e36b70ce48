"""
The WSGI host as a Twisted service.

L{WSGIService} is an C{IService}: it listens when started and shuts down
gracefully when stopped (its C{stopService} Deferred fires once the requests
in flight, paused ones included, have finished or the grace period is over),
so the host can run under C{twist}/C{twistd} (C{twisted_shim.wsgi.tap}, the
C{shim-wsgi} plugin) or next to other services in one Twisted application:

    from twisted.application.service import Application
    from twisted_shim.wsgi.service import WSGIService

    application = Application("web")
    WSGIService(app, binds=["127.0.0.1:8080"]).setServiceParent(application)

It needs twisted_shim's reactor (the host's connections are native handlers
of its loop). Invariants: started, it listens on every address or on none;
stopped, it removes only the socket files it made that are still its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed

from twisted_shim.wsgi.addresses import TCPAddress, parse_bind
from twisted_shim.wsgi.config import ServeOptions, default_of
from twisted_shim.wsgi.server import ServerConfig, WSGIApplication, WSGIServer
from twisted_shim.wsgi.sockets import SocketFile, open_listeners, remove_socket_files

__all__ = ["WSGIService"]


class WSGIService(service.Service):
    """
    Serve C{app} on C{binds} (C{HOST:PORT}, or parsed addresses) and C{uds}
    (UNIX socket paths). C{grace} and C{backlog} default to the command
    lines' defaults (L{twisted_shim.wsgi.config.ServeOptions}).

    @ivar server: The running L{WSGIServer}, or C{None} when stopped.
    @ivar addresses: What the service listens on, once started: C{(host,
        port)} tuples for TCP (the real port when 0 was asked for) and paths.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        binds: Sequence[str | TCPAddress] = (),
        uds: Sequence[str] = (),
        config: ServerConfig | None = None,
        grace: float = default_of(ServeOptions, "grace"),
        backlog: int = default_of(ServeOptions, "backlog"),
        reactor: Any = None,
    ) -> None:
        self.app = app
        self.binds = [b if isinstance(b, TCPAddress) else parse_bind(b) for b in binds]
        self.uds = list(uds)
        self.config = config
        self.grace = grace
        self.backlog = backlog
        self._reactor = reactor
        self.server: WSGIServer | None = None
        self.addresses: list[tuple[str, int] | str] = []
        # The socket files made, with what they were, so that stopping removes
        # only a file that is still ours.
        self._made: list[SocketFile] = []

    def startService(self) -> None:
        """
        Listen on every address.

        @raise twisted_shim.wsgi.startup.StartupError: an address is unusable
            (nothing is left listening then).
        @raise TypeError: the reactor is not twisted_shim's.
        """
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        server = WSGIServer(self.app, self.config, reactor)
        try:
            sockets, self._made = open_listeners(self.binds, self.uds, self.backlog)
        except Exception:
            server.abort()
            raise
        self.addresses = []
        for sock in sockets:
            name = sock.getsockname()
            self.addresses.append(name if isinstance(name, str) else name[:2])
            server.listen(sock)
        self.server = server
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop accepting, let requests in flight finish within C{grace}."""
        super().stopService()
        server, self.server = self.server, None
        if server is None:
            return succeed(None)
        # New clients of a UNIX socket are refused from now on; those queued
        # are drained.
        self._remove_socket_files()
        return server.shutdown(self.grace)

    def _remove_socket_files(self) -> None:
        remove_socket_files(self._made)
        self._made.clear()
