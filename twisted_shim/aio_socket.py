"""
The asyncio face's socket transport: what C{create_connection},
C{create_server}, C{connect_accepted_socket}, C{open_connection},
C{start_server}, their UNIX versions and SSL (under C{SSLProtocol}) make on
a L{twisted_shim.aio.RustEventLoop}, in place of CPython's
C{_SelectorSocketTransport}, unless C{TWISTED_SHIM_TRANSPORT=python}.

L{SocketTransport} behaves as C{_SelectorSocketTransport} does (its rules
below are CPython's, often in its words), but its bytes move in Rust
(C{twisted_shim._core.AioStream}, C{src/aio/transport.rs}): the socket is a
native handler in the loop's FD set, whose readiness calls the protocol's
C{data_received} (or C{get_buffer}/C{buffer_updated}) in the loop's
dispatch rather than through a reader handle on the ready queue, and
C{write} (an instance attribute: the Rust method itself, no Python frame)
sends at once or queues and watches for writability.

It is an C{asyncio.Transport} (and C{transports._FlowControlMixin}, whose
C{set_write_buffer_limits}, C{_maybe_pause_protocol} and
C{_maybe_resume_protocol} it keeps), with what asyncio's own code asks of
a selector transport: C{_start_tls_compatible} (C{start_tls}),
C{_sendfile_compatible} = C{TRY_NATIVE} with C{_sock}, C{_sock_fd},
C{_make_empty_waiter} and C{_reset_empty_waiter} (C{loop.sendfile}), and
C{_protocol_paused} (the sendfile fallback). It is listed in the loop's
C{_transports} (so C{sock_*} and C{add_reader} refuse its socket) and
attached to its server.

Invariants: the Rust half holds the state the rules read (closing, end of
stream written, connection lost, reading paused, the write queue); this
class holds the socket, the protocol (as C{_protocol}, and tells the Rust
half), the server and the sendfile waiter. The socket leaves the loop's FD
set before it is closed.
"""

from __future__ import annotations

import inspect
import socket
import warnings
from asyncio import base_events, constants, futures, protocols, transports, trsock
from asyncio.log import logger
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from twisted_shim import _core

if TYPE_CHECKING:
    from twisted_shim.aio import RustEventLoop

__all__ = ["SocketTransport"]

#: Python 3.13's C{Server._attach(transport)}; before, C{_attach()}.
_ATTACH_TAKES_TRANSPORT = (
    len(inspect.signature(base_events.Server._attach).parameters) == 2
)


class SocketTransport(transports._FlowControlMixin, transports.Transport):  # type: ignore[misc]
    """
    A stream socket's transport on the Rust loop (see the module's
    docstring).

    @ivar _io: The Rust half (C{_core.AioStream}).
    @ivar _sock: The socket, until the connection is lost (then C{None}).
    @ivar _sock_fd: Its descriptor.
    @ivar _server: The server that accepted it, until the connection is
        lost.
    @ivar _empty_waiter: The future sendfile waits on for the write queue to
        empty, or C{None}.
    """

    max_size = 256 * 1024  # what one recv asks for (src/aio/transport.rs)
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    # Read by __del__ even when __init__ failed early.
    _sock: socket.socket | None = None
    _io: Any = None

    def __init__(
        self,
        loop: RustEventLoop,
        sock: socket.socket,
        protocol: protocols.BaseProtocol,
        waiter: futures.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: base_events.Server | None = None,
    ) -> None:
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._empty_waiter: futures.Future[None] | None = None
        # Protocol callbacks run in a copy of this context, as those of
        # CPython's reader handle do.
        self._io = _core.AioStream(loop._rloop, self._sock_fd, self, copy_context())
        self._io.set_water(self._high_water, self._low_water)
        # The hot calls, straight to Rust.
        self.write = self._io.write  # type: ignore[method-assign]
        self.writelines = self._io.writelines  # type: ignore[method-assign]
        self.get_write_buffer_size = self._io.get_write_buffer_size  # type: ignore[method-assign]
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        if server is not None:
            if _ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        # Small writes go out at once (asyncio's default for TCP).
        base_events._set_nodelay(sock)
        loop.call_soon(self._protocol.connection_made, self)
        # Reading starts once connection_made() has been called.
        loop.call_soon(self._io.start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if (
            self._loop is not None
            and not self._loop.is_closed()
            and self._io is not None
        ):
            reading, writing = self._io.polling()
            info.append(f"read={'polling' if reading else 'idle'}")
            state = "polling" if writing else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # The state the Rust half keeps, under CPython's names.

    @property
    def _closing(self) -> bool:
        return bool(self._io.closing)

    @property
    def _eof(self) -> bool:
        return bool(self._io.eof)

    @property
    def _paused(self) -> bool:
        return bool(self._io.paused)

    @property
    def _conn_lost(self) -> int:
        return int(self._io.conn_lost)

    # BaseTransport, ReadTransport, WriteTransport

    def set_protocol(self, protocol: protocols.BaseProtocol) -> None:
        self._protocol = protocol
        self._protocol_connected = True
        self._io.set_protocol(
            protocol, isinstance(protocol, protocols.BufferedProtocol)
        )

    def get_protocol(self) -> protocols.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return bool(self._io.closing)

    def is_reading(self) -> bool:
        return bool(self._io.is_reading())

    def pause_reading(self) -> None:
        if self._io.pause_reading() and self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._io.resume_reading() and self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        super()._set_write_buffer_limits(high, low)
        if self._io is not None:
            self._io.set_water(self._high_water, self._low_water)

    def write_eof(self) -> None:
        self._io.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._io.close():
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            if self._io is not None:
                self._io.detach()
            self._sock.close()
            if self._server is not None and _ATTACH_TAKES_TRANSPORT:
                self._server._detach(self)

    # What the Rust half calls back, and CPython's error paths.

    def _fatal_error(
        self, exc: BaseException, message: str = "Fatal error on transport"
    ) -> None:
        # Should be called from exception handler only.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._io.force_close():
            self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            # Out of the FD set before the descriptor is closed.
            self._io.detach()
            assert self._sock is not None
            self._sock.close()
            self._sock = None
            self._protocol = None  # type: ignore[assignment]
            self._loop = None
            server = self._server
            if server is not None:
                if _ATTACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            if self._empty_waiter is not None:
                self._empty_waiter.set_exception(
                    ConnectionError("Connection is closed by peer")
                )

    def _read_ready__on_eof(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            # We're keeping the connection open so the protocol can write
            # more, but we still can't receive more: no more reading.
            self._io.stop_reading()
        else:
            self.close()

    def _write_failed(self, exc: BaseException) -> None:
        self._fatal_error(exc, "Fatal write error on socket transport")
        if self._empty_waiter is not None:
            self._empty_waiter.set_exception(exc)

    def _write_drained(self) -> None:
        if self._empty_waiter is not None:
            self._empty_waiter.set_result(None)
        if self._io.closing:
            self._call_connection_lost(None)
        elif self._io.eof:
            assert self._sock is not None
            self._sock.shutdown(socket.SHUT_WR)

    # sendfile (loop.sendfile's native path waits for the queue to empty)

    def _make_empty_waiter(self) -> futures.Future[None]:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._io.set_sendfile(True)
        if not self.get_write_buffer_size():
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        self._io.set_sendfile(False)
