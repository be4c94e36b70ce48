"""
TCP transports whose bytes move in Rust, under Twisted's own classes.

L{Server} and L{Client} are Twisted's C{tcp.Server} and C{tcp.Client} with
L{twisted_shim._core.StreamIO} first in their bases: C{doRead}, C{write},
C{writeSequence} and C{doWrite} are Rust (one C{recv} into a reusable
buffer, C{bytes} queued without copying and sent with C{writev}; the local
address is read once per connection), and
everything else -- connection state, producers, half-close, TLS,
C{abortConnection}, C{connectionLost}, logging, addresses -- is Twisted's
code, unchanged. L{Port} and L{Connector} are Twisted's, making these
transports; the Port's listening socket accepts through L{_Listener}.
The reactor uses them for C{listenTCP}, C{connectTCP},
C{adoptStreamPort} and C{adoptStreamConnection} (and so for the endpoints
and C{listenSSL}/C{connectSSL} built on them), unless the environment sets
C{TWISTED_SHIM_TRANSPORT=python}.

Invariant: the only send buffer is StreamIO's queue. TLS writes its records
through L{_RawWrites} (the "bypass" of C{twisted.internet._newtls}), which
reaches that queue, never C{FileDescriptor}'s list.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any

from twisted.internet import _newtls, abstract, tcp

from twisted_shim._core import StreamIO

__all__ = ["Client", "Connector", "Port", "Server"]


class _RawWrites:
    """
    What TLS writes its records with: the transport's own writes, under the
    TLS layer (C{_newtls._BypassTLS} calls these with the transport).
    """

    write = StreamIO._raw_write
    writeSequence = StreamIO._raw_write_sequence
    loseConnection = abstract.FileDescriptor.loseConnection
    registerProducer = abstract.FileDescriptor.registerProducer
    unregisterProducer = abstract.FileDescriptor.unregisterProducer


class _NativeTLS:
    """C{startTLS} with the bypass that reaches StreamIO's queue."""

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        _newtls.startTLS(self, ctx, normal, _RawWrites)


class _LocalAddress:
    """
    C{getHost()} asked of the socket once per connection: a connected
    socket's local address does not change, and twisted.web asks for it
    with every request (C{getsockname} and a new address object were 9% of
    a profile of a C{Site} under wrk). Before the connection is made and
    after it is lost, Twisted's own C{getHost} answers (or raises) as ever.
    """

    _host: Any = None

    def getHost(self) -> Any:
        host = self._host
        if host is None or not self.connected:  # type: ignore[attr-defined]
            host = super().getHost()  # type: ignore[misc]
            if self.connected:  # type: ignore[attr-defined]
                self._host = host
        return host


class Server(StreamIO, _NativeTLS, _LocalAddress, tcp.Server):
    """A connection accepted by a L{Port}."""


class Client(StreamIO, _NativeTLS, _LocalAddress, tcp.Client):
    """A connection made by a L{Connector}."""


_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__

#: The standard library's socket class, which L{_Listener} extends: a
#: listener of exactly this class is made a L{_Listener}.
_PLAIN_SOCKET = socket.socket


class _Listener(_PLAIN_SOCKET):
    """
    A listening socket whose C{accept()} is C{socket.accept}'s without the
    two enum conversions (C{self.family} and C{self.type} are properties
    that build an C{AddressFamily} and a C{SocketKind} per call: a third of
    C{accept}'s Python cost). The accepted socket is the same: a
    C{socket.socket} of the listener's family, type and protocol, blocking
    only if the default timeout is C{None} and the listener has a timeout.
    """

    __slots__ = ()

    def accept(self) -> tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]
        sock = socket.socket(_family(self), _type(self), self.proto, fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, address


def fast_accepts(listener: socket.socket) -> None:
    """Make C{listener} (a plain C{socket.socket}) a L{_Listener}: the same
    object and descriptor, with the cheaper C{accept}. Any other class is
    left alone: a subclass's C{accept} may be its own, and so may that of a
    class put in C{socket.socket}'s place after this module was imported
    (as PySocks' C{socksocket} is, whose layout differs too)."""
    if type(listener) is _PLAIN_SOCKET:
        listener.__class__ = _Listener


class Port(tcp.Port):
    """C{tcp.Port}, accepting L{Server} connections (through L{_Listener})."""

    transport = Server

    def startListening(self) -> None:
        super().startListening()
        fast_accepts(self.socket)


class Connector(tcp.Connector):
    """C{tcp.Connector}, connecting with L{Client}."""

    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)
