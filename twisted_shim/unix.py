"""
UNIX stream transports whose bytes move in Rust, under Twisted's own classes.

L{Server} and L{Client} are Twisted's C{unix.Server} and C{unix.Client} with
L{twisted_shim._core.UnixStreamIO} first in their bases: C{doRead},
C{write}, C{writeSequence} and C{doWrite} are Rust, as on TCP
(L{twisted_shim.tcp}), and so is what Twisted's C{unix._SendmsgMixin} adds
to them: C{sendFileDescriptor} queues descriptors that C{doWrite} sends one
per byte of the pending data (C{sendmsg} with C{SCM_RIGHTS}), pausing a
producer past C{_fileDescriptorBufferSize} of them, and C{doRead} is one
C{recvmsg} whose control data goes to Twisted's own
C{_ancillaryLevelSOLSOCKETTypeSCMRIGHTS} (descriptors to an
C{IFileDescriptorReceiver} protocol's C{fileDescriptorReceived}, before the
bytes they came with; or logged and closed for any other protocol) and
anything else to L{_AncillaryLog}, Twisted's log line. Everything else --
connection state, producers, half-close, TLS, C{abortConnection},
C{connectionLost}, logging, C{getHost}/C{getPeer} (Twisted's: a server asks
the socket each time, a client answers from the path it connected to) --
is Twisted's code, unchanged. Twisted has no peer credentials on UNIX
sockets, so neither do these. L{Port} and L{Connector} are Twisted's,
making these transports. The reactor uses them for C{listenUNIX},
C{connectUNIX} and C{adoptStreamPort}/C{adoptStreamConnection} with
C{AF_UNIX} (and so for the endpoints built on them), unless the environment
sets C{TWISTED_SHIM_TRANSPORT=python}.

Where the descriptor paths live, and why: in Rust, in every UNIX
connection, rather than in Twisted's Python code for some connections.
Twisted asks whether the protocol is an C{IFileDescriptorReceiver} when
descriptors arrive, not when the connection is made (a protocol may change:
C{startTLS} wraps it); reading with C{recvmsg} always, as Twisted does,
keeps that, and a non-receiver's descriptors are closed and logged as
Twisted closes and logs them. Such a read is the same one system call as
C{recv} (the kernel copies a C{msghdr} in and out besides), with no Python
code; sending checks for queued descriptors with one C{is_empty} per
C{doWrite}. So a connection that never passes a descriptor pays nothing a
TCP one does not, and one that does runs Twisted's rules without a Python
frame per byte.

Invariants: the only send buffer is StreamIO's queue (TLS writes its
records through L{twisted_shim.tcp._RawWrites}, which reach it), and the
only descriptor queue is UnixStreamIO's (C{_sendmsgQueue} reads it); each
queued descriptor goes out with a byte of that queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import unix
from twisted.python import log

from twisted_shim._core import UnixStreamIO
from twisted_shim.tcp import _NativeTLS, fast_accepts

__all__ = ["Client", "Connector", "Port", "Server"]


class _AncillaryLog:
    """
    What Twisted's C{_SendmsgMixin.doRead} logs for control data other than
    descriptors (C{SCM_RIGHTS}); C{UnixStreamIO.doRead} calls it.
    """

    def _unsupportedAncillaryData(self, cmsgLevel: int, cmsgType: int) -> None:
        log.msg(
            format=(
                "%(protocolName)s (on %(hostAddress)r) "
                "received unsupported ancillary data "
                "(level=%(cmsgLevel)r, type=%(cmsgType)r) "
                "from %(peerAddress)r."
            ),
            hostAddress=self.getHost(),  # type: ignore[attr-defined]
            peerAddress=self.getPeer(),  # type: ignore[attr-defined]
            protocolName=self._getLogPrefix(self.protocol),  # type: ignore[attr-defined]
            cmsgLevel=cmsgLevel,
            cmsgType=cmsgType,
        )


class Server(UnixStreamIO, _NativeTLS, _AncillaryLog, unix.Server):
    """A connection accepted by a L{Port}, or adopted."""


class Client(UnixStreamIO, _NativeTLS, _AncillaryLog, unix.Client):
    """A connection made by a L{Connector}."""


class Port(unix.Port):
    """C{unix.Port}, accepting L{Server} connections (through
    L{twisted_shim.tcp._Listener})."""

    transport = Server

    def startListening(self) -> None:
        super().startListening()
        fast_accepts(self.socket)


class Connector(unix.Connector):
    """C{unix.Connector}, connecting with L{Client}."""

    def _makeTransport(self) -> Any:
        return Client(self.address, self, self.reactor, self.checkPID)
