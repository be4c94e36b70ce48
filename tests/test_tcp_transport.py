"""
Tests for the TCP transports of L{twisted_shim.tcp}: Twisted's C{tcp.Server}
and C{tcp.Client} with their bytes moved by L{twisted_shim._core.StreamIO}.

Twisted's own suites (C{make conformance}: the ReactorBuilder modules, the
core TCP tests, treq, twisted.web, txpostgres, txredisapi) run on these
transports and on Twisted's Python ones; the tests here pin what StreamIO
itself takes over: the interfaces the transports provide (each checked with
C{verifyObject}), the switch, C{write}'s checks, producers paused and resumed
at C{bufferSize}, the end of a connection after its queue drains, and
half-close. Each test builds its own reactor and drives it a bounded number
of iterations; a peer is a plain blocking socket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import error, interfaces, protocol
from twisted.internet import tcp as twisted_tcp
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.verify import verifyObject

from twisted_shim import tcp as shim_tcp
from twisted_shim.reactor import TRANSPORT_ENV, RustReactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Iterations a test may drive before it fails (each returns on any event).
MAX_ITERATIONS = 2000


@pytest.fixture(params=["native", "python"])
def reactor(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RustReactor]:
    """A reactor with each kind of transport: the behaviour tests hold for
    both (Twisted's own transports are the reference)."""
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    r = RustReactor()
    yield r
    for sel in r.removeAll():
        sel.connectionLost(Failure(error.ConnectionDone()))


def run_until(reactor: RustReactor, done: Callable[[], bool], what: str) -> None:
    for _ in range(MAX_ITERATIONS):
        if done():
            return
        reactor.iterate(0.05)
    raise AssertionError(f"not within {MAX_ITERATIONS} iterations: {what}")


class Recorder(protocol.Protocol):
    """Records what happens to it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Any = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


@implementer(interfaces.IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.read_lost = False
        self.write_lost = False

    def readConnectionLost(self) -> None:
        self.read_lost = True

    def writeConnectionLost(self) -> None:
        self.write_lost = True


def accepted(
    reactor: RustReactor, proto: Recorder, transport: type | None = None
) -> tuple[Any, socket.socket]:
    """Listen (with C{transport} as the port's transport class, if given),
    connect a blocking peer, and return (the server-side transport, the
    peer)."""
    factory = protocol.ServerFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    if transport is not None:
        port.transport = transport
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
    run_until(reactor, lambda: proto.made, "the connection accepted")
    port.stopListening()
    return proto.transport, peer


def receive_all(reactor: RustReactor, peer: socket.socket) -> bytes:
    """What the peer receives until the end of the stream, iterating the
    reactor between reads."""
    got = bytearray()
    peer.settimeout(0)
    for _ in range(MAX_ITERATIONS):
        reactor.iterate(0.01)
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError(f"no end of stream after {len(got)} bytes")


def test_transports_are_native_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """listenTCP's port, its connections and connectTCP's transports are
    twisted_shim.tcp's."""
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    reactor = RustReactor()
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    assert type(transport) is shim_tcp.Server
    client = Recorder()
    factory = protocol.ClientFactory()
    factory.protocol = lambda: client  # type: ignore[assignment]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    connector = reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)
    run_until(reactor, lambda: client.made, "the client connected")
    assert type(client.transport) is shim_tcp.Client
    connector.disconnect()
    listener.close()
    peer.close()
    for sel in reactor.removeAll():
        sel.connectionLost(Failure(error.ConnectionDone()))


def test_the_switch_chooses_twisteds_transports() -> None:
    """With TWISTED_SHIM_TRANSPORT=python the reactor makes Twisted's own
    tcp.Port and tcp.Connector; any other value than native or python is
    refused, naming the variable."""
    code = textwrap.dedent(
        """
        from twisted.internet import protocol, tcp
        from twisted_shim.reactor import RustReactor
        r = RustReactor()
        p = r.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        print(type(p) is tcp.Port, p.transport is tcp.Server)
        """
    )
    env = {**os.environ, TRANSPORT_ENV: "python"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stdout.split() == ["True", "True"], out.stderr
    env[TRANSPORT_ENV] = "rust"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode != 0
    assert TRANSPORT_ENV in out.stderr and "'rust'" in out.stderr


def test_interfaces(reactor: RustReactor) -> None:
    """A transport provides every interface Twisted's tcp.Server provides,
    and each is verified (methods and attributes, with their signatures)."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    theirs = set(providedBy(object.__new__(twisted_tcp.Server)))
    ours = set(providedBy(transport))
    assert theirs <= ours, theirs - ours
    for iface in [
        interfaces.ITCPTransport,
        interfaces.ITransport,
        interfaces.IConsumer,
        interfaces.IPushProducer,
        interfaces.ISystemHandle,
        interfaces.ILoggingContext,
        interfaces.IReadWriteDescriptor,
        interfaces.ITLSTransport,
    ]:
        assert iface in ours, iface
        verifyObject(iface, transport)
    peer.close()


def test_write_checks_its_argument(reactor: RustReactor) -> None:
    """write() and writeSequence() refuse anything but bytes with
    Twisted's TypeError, and writeSequence queues nothing when one item is
    wrong."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    with pytest.raises(TypeError, match="Data must be bytes"):
        transport.write("text")
    with pytest.raises(TypeError, match="Data must be bytes"):
        transport.writeSequence([b"ok", "text"])
    transport.writeSequence([b"a", b"", b"bc"])
    transport.write(b"d")
    transport.loseConnection()
    assert receive_all(reactor, peer) == b"abcd"
    peer.close()


@implementer(interfaces.IPushProducer)
class PushProducer:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.stopped = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        self.stopped += 1


def test_streaming_producer_paused_over_buffer_size_and_resumed(
    reactor: RustReactor,
) -> None:
    """A streaming producer is paused when the queue exceeds bufferSize,
    once, and resumed once the queue is written; stopped when the
    connection is lost."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    producer = PushProducer()
    transport.registerProducer(producer, True)
    transport.write(b"x" * transport.bufferSize)
    assert producer.paused == 0
    transport.write(b"y")
    assert producer.paused == 1
    assert transport._isSendBufferFull()
    total = transport.bufferSize + 1
    got = 0
    peer.settimeout(0)
    for _ in range(MAX_ITERATIONS):
        if got == total:
            break
        reactor.iterate(0.01)
        try:
            got += len(peer.recv(1 << 20))
        except BlockingIOError:
            pass
    assert got == total
    run_until(reactor, lambda: producer.resumed == 1, "the producer resumed")
    assert not transport._isSendBufferFull()
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")
    assert producer.stopped == 1


def test_pull_producer_asked_each_time_the_queue_drains(reactor: RustReactor) -> None:
    """A pull producer is asked for more when registered and each time what
    it gave has been written, as FileDescriptor.doWrite does."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)

    @implementer(interfaces.IPullProducer)
    class Pull:
        calls = 0

        def resumeProducing(self) -> None:
            self.calls += 1
            if self.calls <= 3:
                transport.write(b"%d" % self.calls)
            else:
                transport.unregisterProducer()

        def stopProducing(self) -> None:
            pass

    pull = Pull()
    transport.registerProducer(pull, False)
    run_until(reactor, lambda: pull.calls == 4, "the producer asked four times")
    transport.loseConnection()
    assert receive_all(reactor, peer) == b"123"
    peer.close()


def test_lose_connection_sends_the_queue_first(reactor: RustReactor) -> None:
    """loseConnection() after a large write: every byte arrives, then the
    end of the stream (a write made before the queue drained still goes, as
    with Twisted's FileDescriptor); the protocol sees ConnectionDone; a
    write after connectionLost is dropped without an error."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    data = bytes(range(256)) * 4096  # 1 MiB
    transport.write(data)
    transport.loseConnection()
    transport.write(b"after")
    assert receive_all(reactor, peer) == data + b"after"
    run_until(reactor, lambda: proto.lost is not None, "connectionLost")
    assert proto.lost.check(error.ConnectionDone)
    transport.write(b"too late")
    transport.writeSequence([b"too", b"late"])
    peer.close()


def test_half_close(reactor: RustReactor) -> None:
    """loseWriteConnection(): the peer reads the end of the stream after the
    queued bytes, the protocol is told writeConnectionLost and still
    receives; the peer's own end then reaches readConnectionLost."""
    proto = HalfCloser()
    transport, peer = accepted(reactor, proto)
    transport.write(b"last words")
    transport.loseWriteConnection()
    run_until(reactor, lambda: proto.write_lost, "writeConnectionLost")
    got = b""
    while True:
        chunk = peer.recv(100)
        if not chunk:
            break
        got += chunk
    assert got == b"last words"
    peer.sendall(b"still reading")
    run_until(
        reactor, lambda: proto.received == b"still reading", "data after half-close"
    )
    peer.shutdown(socket.SHUT_WR)
    run_until(reactor, lambda: proto.read_lost, "readConnectionLost")
    peer.close()


def test_get_host_is_stable_and_lost_with_the_connection(reactor: RustReactor) -> None:
    """getHost() answers the socket's local address, the same each time
    while connected; once the connection is lost it answers as Twisted's
    transport does (which has no socket left to ask)."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    host = transport.getHost()
    assert host == twisted_address(peer.getpeername())
    assert transport.getHost() == host
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "connectionLost")
    with pytest.raises(AttributeError):
        transport.getHost()


def twisted_address(sockaddr: tuple[str, int]) -> Any:
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", *sockaddr)


def test_overridden_doRead_and_doWrite_are_called(reactor: RustReactor) -> None:
    """The loop calls StreamIO's byte paths directly only where they are
    the transport's own: a subclass's doRead, an instance's doWrite (as a
    connecting tcp.Client sets) and a subclass's logPrefix are honoured."""
    calls: list[str] = []
    prefixes: list[str] = []

    def record_prefix() -> None:
        from twisted.python import context, log

        prefixes.append(context.get(log.ILogContext)["system"])

    base: Any = type(accepted(reactor, Recorder())[0])

    class Counting(base):  # type: ignore[misc, valid-type]
        def doRead(self) -> Any:
            calls.append("read")
            record_prefix()
            return super().doRead()

        def logPrefix(self) -> str:
            return "Counting"

    proto = Recorder()
    transport, peer = accepted(reactor, proto, Counting)
    peer.sendall(b"ping")
    run_until(reactor, lambda: proto.received == b"ping", "ping read")
    assert calls == ["read"] and prefixes == ["Counting"]

    def instance_doWrite() -> Any:
        calls.append("write")
        return type(transport).doWrite(transport)

    transport.doWrite = instance_doWrite  # type: ignore[union-attr]
    transport.write(b"pong")  # type: ignore[union-attr]
    run_until(reactor, lambda: "write" in calls, "doWrite called")
    peer.settimeout(10)
    assert peer.recv(4) == b"pong"
    del transport.doWrite  # type: ignore[union-attr]
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")
    assert proto.lost.check(error.ConnectionDone)


def test_a_class_modified_later_is_seen(reactor: RustReactor) -> None:
    """What the loop keeps of a transport class holds only until the class
    (or a base) is modified: a doRead or logPrefix assigned to the class
    after its connections were served is called from the next event on."""
    base: Any = type(accepted(reactor, Recorder())[0])

    class Plain(base):  # type: ignore[misc, valid-type]
        pass

    proto = Recorder()
    _, peer = accepted(reactor, proto, Plain)
    peer.sendall(b"one")
    run_until(reactor, lambda: proto.received == b"one", "the first read")

    seen: list[str] = []

    def doRead(self: Any) -> Any:
        from twisted.python import context, log

        seen.append(context.get(log.ILogContext)["system"])
        return base.doRead(self)

    Plain.doRead = doRead
    Plain.logPrefix = lambda self: "Plain, modified"
    # Any attribute lookup gives the modified class a new version tag.
    assert proto.transport.connected  # type: ignore[union-attr]
    peer.sendall(b"two")
    run_until(reactor, lambda: proto.received == b"onetwo", "the second read")
    assert seen == ["Plain, modified"]
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")


def test_large_and_small_reads_arrive_intact(reactor: RustReactor) -> None:
    """Reads that fill the buffer (received straight into their bytes
    object) and small ones after them (through the shared read buffer)
    deliver every byte in order."""
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    big = os.urandom(4 << 20)
    peer.setblocking(True)
    sender = threading.Thread(target=peer.sendall, args=(big,))
    sender.start()
    run_until(reactor, lambda: len(proto.received) >= len(big), "4 MiB read")
    sender.join(10)
    for i in range(5):
        peer.sendall(b"small%d" % i)
        expected = big + b"".join(b"small%d" % j for j in range(i + 1))
        run_until(reactor, lambda e=expected: proto.received == e, f"small read {i}")
    assert proto.received[: len(big)] == big
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")


def test_abort_in_dataReceived_sends_nothing_more(reactor: RustReactor) -> None:
    """abortConnection() in dataReceived, on an event that is readable and
    writable at once (data queued, the peer reading), stops the write of
    the same event, as Twisted's abortConnection (doWrite replaced on the
    instance) does: nothing written after the abort reaches the peer, and
    the connection is lost with ConnectionAborted."""
    lost: list[Any] = []

    class Aborting(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.socket.setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
            )
            self.transport.write(b"x" * (1 << 20))  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.transport.abortConnection()  # type: ignore[union-attr]
            self.transport.write(b"Y" * 10000)  # type: ignore[union-attr]

        def connectionLost(self, reason: Any) -> None:
            lost.append(reason)

    proto = Aborting()
    proto.transport = None
    factory = protocol.ServerFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    peer.connect(("127.0.0.1", port.getHost().port))
    run_until(reactor, lambda: proto.transport is not None, "the connection accepted")
    port.stopListening()
    peer.setblocking(False)
    got = bytearray()

    def drain() -> None:
        try:
            while chunk := peer.recv(65536):
                got.extend(chunk)
        except (BlockingIOError, ConnectionResetError):
            pass

    def pending() -> int:
        t: Any = proto.transport
        if hasattr(t, "_queued"):
            return int(t._queued())
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    # Let the queue shrink to what one write can send, so the socket is
    # writable; then make the next event readable too.
    for _ in range(MAX_ITERATIONS):
        reactor.iterate(0.005)
        drain()
        if pending() <= 24576:
            break
    assert pending() <= 24576
    assert not lost, lost
    peer.send(b"abort")
    time.sleep(0.05)
    drain()
    # One iteration dispatches the readable-and-writable event; what it
    # wrote is read before the next one resets the connection.
    reactor.iterate(0)
    time.sleep(0.05)
    drain()
    run_until(reactor, lambda: bool(lost), "the connection lost")
    drain()
    peer.close()
    assert got.count(b"Y") == 0
    assert lost[0].check(error.ConnectionAborted)


def test_instance_logPrefix_is_called(reactor: RustReactor) -> None:
    """A logPrefix set on a transport instance names its log context, as
    Twisted's callWithLogger asks the instance."""
    seen: list[str] = []

    class Recording(Recorder):
        def dataReceived(self, data: bytes) -> None:
            from twisted.python import context, log

            seen.append(context.get(log.ILogContext)["system"])
            super().dataReceived(data)

    proto = Recording()
    transport, peer = accepted(reactor, proto)
    transport.logPrefix = lambda: "on the instance"
    peer.sendall(b"x")
    run_until(reactor, lambda: proto.received == b"x", "x read")
    assert seen == ["on the instance"]
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_accepted_sockets_are_what_socket_accept_makes(family: int) -> None:
    """
    The native Port's listener accepts through L{shim_tcp._Listener}, which
    skips C{socket.accept}'s enum conversions; what it makes is the same: a
    C{socket.socket} whose C{family} and C{type} are the enum members, the
    listener's protocol, non-blocking once Twisted's C{Connection} took it,
    and the peer's address as Twisted reports it.
    """
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    r = RustReactor()
    proto = Recorder()
    factory = protocol.ServerFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    port = r.listenTCP(0, factory, interface=host)
    try:
        assert type(port.socket) is shim_tcp._Listener
        peer = socket.create_connection((host, port.getHost().port), timeout=10)
        run_until(r, lambda: proto.made, "the connection accepted")
        skt = proto.transport.getHandle()
        assert type(skt) is socket.socket
        assert skt.family is socket.AddressFamily(family)
        assert skt.type is socket.SOCK_STREAM
        assert skt.proto == port.socket.proto
        assert skt.getblocking() is False
        assert proto.transport.getPeer().port == peer.getsockname()[1]
        assert proto.transport.getPeer().host == peer.getsockname()[0]
        peer.close()
    finally:
        port.stopListening()
        for sel in r.removeAll():
            sel.connectionLost(Failure(error.ConnectionDone()))


def test_a_listener_subclass_keeps_its_own_accept() -> None:
    """Only a plain C{socket.socket} becomes a L{shim_tcp._Listener}."""

    class Mine(socket.socket):
        pass

    plain, mine = socket.socket(), Mine()
    try:
        shim_tcp.fast_accepts(plain)
        shim_tcp.fast_accepts(mine)
        assert type(plain) is shim_tcp._Listener
        assert type(mine) is Mine
    finally:
        plain.close()
        mine.close()


class SocketReader:
    """A plain reader of a socket, registered with C{addReader}."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "SocketReader"

    def doRead(self) -> None:
        self.data += self.sock.recv(65536)

    def connectionLost(self, reason: Any) -> None:
        pass


def socket_on(fd: int) -> tuple[socket.socket, socket.socket]:
    """A connected pair whose first socket has descriptor C{fd} (free)."""
    a, b = socket.socketpair()
    for mine, other in ((a, b), (b, a)):
        if mine.fileno() == fd:
            return mine, other
    os.dup2(a.fileno(), fd)
    a.close()
    return socket.socket(fileno=fd), b


def test_a_transport_closed_in_its_callback_leaves_its_old_descriptor_alone(
    reactor: RustReactor,
) -> None:
    """
    A transport closed inside its own dataReceived (connectionLost called
    there) has no descriptor any more: its stopReading() and startReading()
    after that do not touch whatever now has its old descriptor number (a
    reader added in the same callback), as Twisted asks fileno(), which
    says -1 (stopReading finds nothing; startReading raises).
    """
    box: dict[str, Any] = {}

    class Closing(Recorder):
        def dataReceived(self, data: bytes) -> None:
            t: Any = self.transport
            fd = t.fileno()
            t.connectionLost(Failure(error.ConnectionDone()))
            box["pair"] = a, _ = socket_on(fd)
            box["reader"] = SocketReader(a)
            reactor.addReader(box["reader"])
            t.stopReading()
            try:
                t.startReading()
            except Exception as e:
                box["start"] = e
            box["readers"] = reactor.getReaders()

    proto = Closing()
    transport, peer = accepted(reactor, proto)
    peer.sendall(b"x")
    try:
        run_until(reactor, lambda: "readers" in box, "dataReceived")
        assert isinstance(box.get("start"), OSError)
        assert box["readers"] == [box["reader"]]
        box["pair"][1].sendall(b"hello")
        for _ in range(100):
            if box["reader"].data:
                break
            reactor.iterate(0.02)
        assert box["reader"].data == b"hello"
    finally:
        reactor.removeReader(box["reader"])
        for s in box.get("pair", ()):
            s.close()
        peer.close()


def test_an_instance_stopWriting_is_called_by_doWrite(reactor: RustReactor) -> None:
    """
    A C{stopWriting} set on a transport instance is what C{doWrite} calls
    when the queue empties, as Twisted's C{self.stopWriting()} finds it:
    on the loop's dispatch and on a C{doWrite} called from Python.
    """
    calls: list[str] = []
    proto = Recorder()
    transport, peer = accepted(reactor, proto)
    own = transport.stopWriting

    def stopWriting() -> None:
        calls.append("stopWriting")
        own()

    transport.stopWriting = stopWriting  # type: ignore[union-attr]
    peer.settimeout(10)
    transport.write(b"one")  # type: ignore[union-attr]
    run_until(reactor, lambda: bool(calls), "stopWriting called")
    assert peer.recv(3) == b"one"
    # doWrite called from Python (through an instance doWrite).
    transport.doWrite = lambda: type(transport).doWrite(transport)  # type: ignore[union-attr]
    transport.write(b"two")  # type: ignore[union-attr]
    run_until(reactor, lambda: len(calls) == 2, "stopWriting called again")
    assert peer.recv(3) == b"two"
    del transport.doWrite  # type: ignore[union-attr]
    del transport.stopWriting  # type: ignore[union-attr]
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")


def test_a_socket_class_patched_in_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    With C{socket.socket} replaced by a subclass (as PySocks' C{socksocket}
    is, to proxy a process's connections), the Port listens on that class,
    as on Twisted's Port, and its connections are accepted through the
    class's own C{accept}.
    """

    class Patched(socket.socket):
        accepts = 0

        def accept(self) -> tuple[socket.socket, Any]:
            accepted = super().accept()
            Patched.accepts += 1
            return accepted

    monkeypatch.setattr(socket, "socket", Patched)
    r = RustReactor()
    proto = Recorder()
    factory = protocol.ServerFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    port = r.listenTCP(0, factory, interface="127.0.0.1")
    try:
        assert type(port.socket) is Patched
        monkeypatch.undo()
        peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        run_until(r, lambda: proto.made, "the connection accepted")
        assert Patched.accepts == 1
        peer.close()
    finally:
        port.stopListening()
        for sel in r.removeAll():
            sel.connectionLost(Failure(error.ConnectionDone()))


def test_a_finalizer_run_by_the_state_cache_may_write() -> None:
    """
    What the transport keeps of a class's state attributes holds them; when
    it lets go of one the class no longer holds (a C{bufferSize} replaced,
    then eight fresh class versions later), that object's C{__del__} runs
    and may write to a transport, which reads that state again: the write
    goes through (in a child process: this would hang it).
    """
    code = textwrap.dedent(
        """
        import socket
        from twisted.internet import protocol
        from twisted_shim import tcp as shim_tcp
        from twisted_shim.reactor import RustReactor

        r = RustReactor()
        made = []

        class P(protocol.Protocol):
            def connectionMade(self):
                made.append(self)

        class Sub(shim_tcp.Server):
            pass

        f = protocol.ServerFactory()
        f.protocol = P
        port = r.listenTCP(0, f, interface="127.0.0.1")
        port.transport = Sub
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        for _ in range(200):
            if made:
                break
            r.iterate(0.05)
        t = made[0].transport

        class Dying:
            def __del__(self):
                t.write(b"from __del__")
                print("written", flush=True)

        Sub.bufferSize = Dying()
        t.write(b"")
        Sub.bufferSize = 65536
        for i in range(10):
            Sub.x = i
            assert t.connected  # the modified class gets a fresh version
            t.write(b"")
        print("done", t._queued(), flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stdout.split() == ["written", "done", "12"], out.stderr


def test_a_class_attribute_whose_type_becomes_a_descriptor_is_seen(
    reactor: RustReactor,
) -> None:
    """
    A class's C{bufferSize} that is an object of a user class is read as
    attribute lookup reads it after that class gains a C{__get__} (which
    modifies that class, not the transport's): the read size follows.
    """

    class Size:
        def __index__(self) -> int:
            return 3

    class Chunks(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def dataReceived(self, data: bytes) -> None:
            self.sizes.append(len(data))
            super().dataReceived(data)

    base: Any = type(accepted(reactor, Recorder())[0])

    class Sized(base):  # type: ignore[misc, valid-type]
        bufferSize = Size()

    proto = Chunks()
    transport, peer = accepted(reactor, proto, Sized)
    peer.sendall(b"x" * 12)
    run_until(reactor, lambda: len(proto.received) == 12, "12 bytes read")
    Size.__get__ = lambda self, obj, owner=None: 5  # type: ignore[attr-defined]
    assert transport.bufferSize == 5  # type: ignore[union-attr]
    proto.sizes.clear()
    peer.sendall(b"y" * 20)
    run_until(reactor, lambda: len(proto.received) == 32, "20 more bytes read")
    assert max(proto.sizes) == 5, proto.sizes
    peer.close()
    run_until(reactor, lambda: proto.lost is not None, "the connection lost")
