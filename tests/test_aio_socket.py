"""
Tests for L{twisted_shim.aio_socket}: the asyncio face's native socket
transport, as CPython's C{_SelectorSocketTransport} behaves.

What the transports of C{create_connection}, C{create_server},
C{open_connection}, C{connect_accepted_socket} and the UNIX versions are;
flow control (C{set_write_buffer_limits}, C{pause_writing}/
C{resume_writing}, C{get_write_buffer_size}); C{write_eof}, C{close} with
data queued, C{abort}; C{eof_received}'s answer; C{BufferedProtocol};
errors (a protocol that raises, a reset, bad data, C{KeyboardInterrupt});
contexts; C{pause_reading}/C{resume_reading}; sendfile (native and
fallback) and C{start_tls}; descriptors (the FD set, C{sock_*} refused,
none leaked); and C{TWISTED_SHIM_TRANSPORT=python}, which gives CPython's
transports back.

Every wait is bounded (L{run} wraps each test's coroutine in C{wait_for});
peers are asyncio connections on the same loop or plain sockets.
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import gc
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted_shim import aio
from twisted_shim.aio_socket import SocketTransport

TIMEOUT = 10.0
PEM = Path(__import__("twisted.test", fromlist=["x"]).__file__).parent / "server.pem"


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def loop() -> Iterator[aio.RustEventLoop]:
    lp = aio.RustEventLoop()
    yield lp
    lp.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


class Recorder(asyncio.Protocol):
    """Records what the transport tells it; C{lost} resolves at the end."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.got: asyncio.Event = asyncio.Event()
        self.keep_open: bool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    async def until(self, size: int) -> bytes:
        while len(self.data) < size:
            self.got.clear()
            await self.got.wait()
        return bytes(self.data)


async def pair(
    loop: asyncio.AbstractEventLoop,
    server_proto: type[asyncio.BaseProtocol] = Recorder,
    client_proto: type[asyncio.BaseProtocol] = Recorder,
) -> tuple[Any, Any, asyncio.Server]:
    """A connected (server side, client side) pair of protocols."""
    accepted: asyncio.Future[Any] = loop.create_future()

    def factory() -> asyncio.BaseProtocol:
        proto = server_proto()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(client_proto, "127.0.0.1", port)
    srv = await accepted
    await asyncio.sleep(0)
    return srv, client, server


def test_the_loops_socket_transports_are_native(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        for proto in (srv, client):
            tr = proto.transport
            assert type(tr) is SocketTransport
            assert isinstance(tr, asyncio.Transport)
            assert tr.get_extra_info("socket").fileno() == tr._sock_fd
            assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
            assert tr.get_extra_info("peername")[0] == "127.0.0.1"
            assert tr.get_protocol() is proto and not tr.is_closing()
            assert tr.is_reading() and tr.can_write_eof()
            assert tr._start_tls_compatible and "read=polling" in repr(tr)
            assert loop._transports[tr._sock_fd] is tr
            sock = tr.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            with pytest.raises(RuntimeError, match="used by transport"):
                await loop.sock_recv(tr._sock, 1)
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert type(writer.transport) is SocketTransport
        writer.close()
        # A socket connected elsewhere, handed over.
        a, b = socket.socketpair()
        tr, proto = await loop.connect_accepted_socket(Recorder, a)
        assert type(tr) is SocketTransport
        b.sendall(b"over")
        assert await proto.until(4) == b"over"
        tr.close()
        b.close()
        client.transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_transports_are_native(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s")
            got: list[bytes] = []

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                got.append(await r.read(10))
                w.write(b"pong")
                await w.drain()
                w.close()

            server = await asyncio.start_unix_server(handle, path)
            reader, writer = await asyncio.open_unix_connection(path)
            assert type(writer.transport) is SocketTransport
            writer.write(b"ping")
            assert await reader.read(10) == b"pong"
            assert got == [b"ping"]
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_python_transports_with_the_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWISTED_SHIM_TRANSPORT", "python")
    lp = aio.RustEventLoop()
    try:

        async def main() -> None:
            srv, client, server = await pair(lp)
            from asyncio.selector_events import _SelectorSocketTransport

            assert type(client.transport) is _SelectorSocketTransport
            client.transport.write(b"x" * 10)
            assert await srv.until(10) == b"x" * 10
            client.transport.close()
            server.close()

        run(lp, main())
    finally:
        lp.close()


def test_flow_control_pauses_and_resumes_the_protocol(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        tr = client.transport
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        srv.transport.pause_reading()
        assert not srv.transport.is_reading()
        chunk = b"z" * 65536
        sent = 0
        while "pause" not in client.events:
            tr.write(chunk)
            sent += len(chunk)
            assert sent < 200 * 1024 * 1024, "never paused"
            await asyncio.sleep(0)
        assert tr.get_write_buffer_size() > 64 * 1024
        assert tr._protocol_paused
        srv.transport.resume_reading()
        await srv.until(sent)
        await asyncio.sleep(0.05)
        assert client.events.count("pause") == 1 and "resume" in client.events
        assert tr.get_write_buffer_size() == 0 and bytes(srv.data) == chunk * (
            sent // 65536
        )
        tr.close()
        assert await srv.lost is None
        server.close()

    run(loop, main())


def test_close_with_data_queued_sends_it_all_then_ends(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        srv.transport.pause_reading()
        payload = os.urandom(8 * 1024 * 1024)
        client.transport.write(payload)
        assert client.transport.get_write_buffer_size() > 0
        client.transport.close()
        assert client.transport.is_closing()
        assert not client.lost.done()
        srv.transport.resume_reading()
        assert await srv.until(len(payload)) == payload
        assert await client.lost is None
        assert await srv.lost is None
        assert srv.events == ["made", "eof", "lost"]
        server.close()

    run(loop, main())


def test_abort_drops_what_is_queued(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        srv.transport.pause_reading()
        client.transport.write(b"q" * (8 * 1024 * 1024))
        client.transport.abort()
        assert client.transport.get_write_buffer_size() == 0
        assert await client.lost is None
        srv.transport.resume_reading()
        exc = await srv.lost
        assert exc is None or isinstance(exc, ConnectionResetError)
        assert len(srv.data) < 8 * 1024 * 1024
        server.close()

    run(loop, main())


def test_write_eof_and_eof_received_keeping_the_connection(
    loop: aio.RustEventLoop,
) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        srv.keep_open = True
        client.transport.write(b"last")
        client.transport.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            client.transport.write(b"more")
        assert await srv.until(4) == b"last"
        while "eof" not in srv.events:
            await asyncio.sleep(0.01)
        # Kept open: the server side still writes, the client reads it.
        assert not srv.transport.is_closing()
        srv.transport.write(b"reply")
        assert await client.until(5) == b"reply"
        srv.transport.close()
        assert await srv.lost is None
        assert await client.lost is None
        assert client.events == ["made", "eof", "lost"]
        server.close()

    run(loop, main())


def test_eof_received_false_closes(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        client.transport.write_eof()
        assert await srv.lost is None
        assert srv.events == ["made", "eof", "lost"]
        assert srv.transport.is_closing()
        client.transport.close()
        server.close()

    run(loop, main())


class Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(1000)
        self.data = bytearray()
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.empty = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        assert sizehint == -1
        return bytearray() if self.empty else self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buf[:nbytes]

    def eof_received(self) -> None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


def test_buffered_protocols_read_into_their_buffer(loop: aio.RustEventLoop) -> None:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _lp, ctx: errors.append(ctx))

    async def main() -> None:
        srv, client, server = await pair(loop, server_proto=Buffered)
        payload = os.urandom(100_000)
        client.transport.write(payload)
        client.transport.write_eof()
        assert await srv.lost is None
        assert bytes(srv.data) == payload
        # An empty buffer is the protocol's error.
        srv2, client2, server2 = await pair(loop, server_proto=Buffered)
        srv2.empty = True
        client2.transport.write(b"x")
        exc = await srv2.lost
        assert isinstance(exc, RuntimeError) and "empty buffer" in str(exc)
        assert (
            errors[-1]["message"] == "Fatal error: protocol.get_buffer() call failed."
        )
        for s in (server, server2):
            s.close()

    run(loop, main())


def test_a_protocol_that_raises_loses_its_connection(loop: aio.RustEventLoop) -> None:
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _lp, ctx: errors.append(ctx))

    class Raises(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("boom")

    async def main() -> None:
        srv, client, server = await pair(loop, server_proto=Raises)
        client.transport.write(b"x")
        exc = await srv.lost
        assert isinstance(exc, ValueError)
        (ctx,) = errors
        assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
        assert ctx["exception"] is exc and ctx["transport"] is srv.transport
        assert await client.lost is None
        server.close()

    run(loop, main())


def test_a_reset_is_connection_reset_error(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        connecting = asyncio.ensure_future(
            loop.create_connection(Recorder, *listener.getsockname())
        )
        peer, _ = await loop.sock_accept(listener)
        _, proto = await connecting
        await asyncio.sleep(0)
        peer.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        peer.close()
        exc = await proto.lost
        assert isinstance(exc, ConnectionResetError)
        assert exc.errno is not None
        listener.close()

    run(loop, main())


def test_write_takes_bytes_like_objects_only(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        tr = client.transport
        with pytest.raises(
            TypeError, match="data argument must be a bytes-like object, not 'str'"
        ):
            tr.write("text")
        srv.transport.pause_reading()
        # Fill the socket so that what follows is queued, then check that
        # a queued bytearray was copied.
        while tr.get_write_buffer_size() == 0:
            tr.write(b"f" * 65536)
        mutable = bytearray(b"abc")
        tr.write(mutable)
        tr.write(memoryview(b"def"))
        tr.writelines([b"gh", bytearray(b"ij"), memoryview(b"kl")])
        mutable[:] = b"XYZ"
        size = tr.get_write_buffer_size()
        srv.transport.resume_reading()
        data = await srv.until(size + 65536 * 0)
        while not bytes(srv.data).endswith(b"abcdefghijkl"):
            srv.got.clear()
            await srv.got.wait()
        assert b"XYZ" not in bytes(srv.data)
        tr.close()
        del data
        server.close()

    run(loop, main())


def test_writes_after_the_connection_is_lost_are_dropped_and_logged(
    loop: aio.RustEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        client.transport.abort()
        await client.lost
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(7):
                client.transport.write(b"x")
        assert client.transport._conn_lost == 8
        assert caplog.text.count("socket.send() raised exception.") == 3
        server.close()

    run(loop, main())


def test_keyboard_interrupt_in_a_protocol_ends_the_run(loop: aio.RustEventLoop) -> None:
    class Interrupts(Recorder):
        def data_received(self, data: bytes) -> None:
            raise KeyboardInterrupt

    async def setup() -> tuple[Any, Any, asyncio.Server]:
        return await pair(loop, server_proto=Interrupts)

    srv, client, server = run(loop, setup())
    client.transport.write(b"x")
    with pytest.raises(KeyboardInterrupt):
        run(loop, asyncio.sleep(5))
    srv.transport.abort()
    client.transport.abort()
    server.close()
    run(loop, asyncio.sleep(0.01))


def test_protocol_callbacks_run_in_the_transports_context(
    loop: aio.RustEventLoop,
) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    class Sees(Recorder):
        def data_received(self, data: bytes) -> None:
            seen.append(var.get())
            var.set("changed")  # in the transport's copy only
            super().data_received(data)

    async def main() -> None:
        var.set("at connect")
        _, client = await loop.create_connection(Sees, *server.sockets[0].getsockname())
        var.set("later")
        peer = await accepted
        peer.transport.write(b"1")
        await client.until(1)
        peer.transport.write(b"2")
        await client.until(2)
        assert seen == ["at connect", "changed"]
        assert var.get() == "later"
        client.transport.close()

    accepted: asyncio.Future[Any]

    async def listen() -> asyncio.Server:
        nonlocal accepted
        accepted = loop.create_future()

        def factory() -> Recorder:
            p = Recorder()
            accepted.set_result(p)
            return p

        return await loop.create_server(factory, "127.0.0.1", 0)

    server = run(loop, listen())
    run(loop, main())
    server.close()


def test_pause_reading_holds_data_back(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        srv.transport.pause_reading()
        srv.transport.pause_reading()  # twice: nothing more
        client.transport.write(b"held")
        await asyncio.sleep(0.05)
        assert srv.data == b""
        srv.transport.resume_reading()
        assert await srv.until(4) == b"held"
        client.transport.close()
        server.close()

    run(loop, main())


def test_sendfile_native_and_fallback(loop: aio.RustEventLoop) -> None:
    async def main() -> None:
        srv, client, server = await pair(loop)
        payload = os.urandom(300_000)
        with tempfile.TemporaryFile() as f:
            f.write(payload)
            f.flush()
            f.seek(0)
            sent = await loop.sendfile(client.transport, f)
            assert sent == len(payload)
            # Fallback: write() of chunks read from the file.
            f.seek(0)
            sent = await loop._sendfile_fallback(client.transport, f, 0, 1000)
            assert sent == 1000
        assert await srv.until(len(payload) + 1000) == payload + payload[:1000]
        assert client.transport.is_reading()
        client.transport.write(b"after")
        assert await srv.until(len(payload) + 1005)
        client.transport.close()
        server.close()

    run(loop, main())


def test_start_tls_over_the_native_transport(loop: aio.RustEventLoop) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(PEM)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            w.write(line.upper())
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        host, port = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(host, port, ssl=client_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        writer.close()

        # start_tls on a plain connection, both sides.
        async def upgrade(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            assert await r.readline() == b"STARTTLS\n"
            w.write(b"OK\n")
            await w.drain()
            await w.start_tls(server_ctx)
            await handle(r, w)

        plain = await asyncio.start_server(upgrade, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*plain.sockets[0].getsockname())
        assert type(writer.transport) is SocketTransport
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"upgraded\n")
        assert await reader.readline() == b"UPGRADED\n"
        writer.close()
        server.close()
        plain.close()
        await server.wait_closed()

    run(loop, main())


def test_no_descriptor_is_left_behind(loop: aio.RustEventLoop) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def round_trip(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"x\n")
        assert await reader.readline() == b"x\n"
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readline())
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        await round_trip(host, port)
        registered = loop._rloop.registered()
        gc.collect()  # what earlier tests left to the collector
        before = fds()
        await asyncio.gather(*(round_trip(host, port) for _ in range(50)))
        await asyncio.sleep(0.05)
        assert fds() == before
        assert loop._rloop.registered() == registered
        server.close()
        await server.wait_closed()

    run(loop, main())
