"""
Tests for the UNIX transports of L{twisted_shim.unix}: Twisted's
C{unix.Server} and C{unix.Client} with their bytes, and the file
descriptors they carry, moved by L{twisted_shim._core.UnixStreamIO}.

Twisted's own C{test_unix} builders run on these transports and on
Twisted's Python ones (C{make conformance}); the tests here pin what
UnixStreamIO takes over, on both kinds: the interfaces of the transports,
ports and connectors (each checked with C{verifyObject}), the switch,
C{write}'s checks, producers paused at C{bufferSize} and at
C{_fileDescriptorBufferSize}, the end of a connection after its queue
drains, half-close, descriptors sent (each with its byte, in order; more
descriptors than bytes is C{FileDescriptorOverrun}) and received (by an
C{IFileDescriptorReceiver} before the bytes they came with, several per
message and per read; closed and logged for any other protocol; other
control data logged), and the adopted ports and connections. Each test
builds its own reactor and drives it a bounded number of iterations; a
peer is a plain blocking socket.
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import error, interfaces, protocol
from twisted.internet import unix as twisted_unix
from twisted.internet.address import UNIXAddress
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.verify import verifyObject

from twisted_shim import unix as shim_unix
from twisted_shim.reactor import TRANSPORT_ENV, RustReactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Iterations a test may drive before it fails (each returns on any event).
MAX_ITERATIONS = 2000
#: Seconds a test waits for something to happen before it fails.
DEADLINE = 10.0
#: Seconds a blocking peer socket waits before the test fails.
PEER_TIMEOUT = 10


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


@pytest.fixture
def path() -> Iterator[str]:
    """A socket path short enough for sun_path (pytest's tmp_path may not
    be), removed afterwards."""
    d = tempfile.mkdtemp(prefix="shim-unix-")
    yield os.path.join(d, "s")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """The events logged through twisted.python.log during the test."""
    events: list[dict[str, Any]] = []
    log.addObserver(events.append)
    yield events
    log.removeObserver(events.append)


def run_until(reactor: RustReactor, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    for _ in range(MAX_ITERATIONS):
        if done():
            return
        if time.monotonic() > deadline:
            break
        reactor.iterate(0.05)
    raise AssertionError(f"not within {DEADLINE} s: {what}")


class Recorder(protocol.Protocol):
    """Records what happens to it."""

    def __init__(self) -> None:
        self.received = b""
        self.events: list[Any] = []
        self.lost: Any = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.events.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


@implementer(interfaces.IFileDescriptorReceiver)
class Receiver(Recorder):
    """Records the descriptors it receives, among its other events."""

    def __init__(self) -> None:
        super().__init__()
        self.fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)
        self.events.append(("fd", descriptor))


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


def listen(reactor: RustReactor, path: str, proto: Recorder) -> Any:
    factory = protocol.ServerFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    return reactor.listenUNIX(path, factory)


def accepted(
    reactor: RustReactor, path: str, proto: Recorder
) -> tuple[Any, socket.socket]:
    """Listen on C{path}, connect a blocking peer, and return (the
    server-side transport, the peer)."""
    port = listen(reactor, path, proto)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.settimeout(PEER_TIMEOUT)
    peer.connect(path)
    run_until(reactor, lambda: proto.made, "the connection accepted")
    port.stopListening()
    return proto.transport, peer


def connected(
    reactor: RustReactor, path: str, proto: Recorder
) -> tuple[Any, Any, socket.socket]:
    """A blocking listener on C{path}, C{connectUNIX} to it: (the
    connector, the client transport, the accepted peer)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    factory = protocol.ClientFactory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    connector = reactor.connectUNIX(path, factory)
    run_until(reactor, lambda: proto.made, "the client connected")
    listener.settimeout(PEER_TIMEOUT)
    peer, _ = listener.accept()
    peer.settimeout(PEER_TIMEOUT)
    listener.close()
    return connector, proto.transport, peer


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
            peer.settimeout(PEER_TIMEOUT)
            return bytes(got)
        got += chunk
    raise AssertionError(f"no end of stream after {len(got)} bytes")


def receive_with_fds(
    reactor: RustReactor, peer: socket.socket, nbytes: int
) -> list[tuple[bytes, list[int]]]:
    """(bytes, descriptors) of each C{recvmsg} until C{nbytes} bytes came,
    iterating the reactor between reads."""
    got: list[tuple[bytes, list[int]]] = []
    total = 0
    peer.settimeout(0)
    for _ in range(MAX_ITERATIONS):
        if total >= nbytes:
            peer.settimeout(PEER_TIMEOUT)
            return got
        reactor.iterate(0.01)
        try:
            data, fds, _flags, _addr = socket.recv_fds(peer, 1 << 16, 300)
        except BlockingIOError:
            continue
        if not data:
            break
        got.append((data, fds))
        total += len(data)
    raise AssertionError(f"{total} of {nbytes} bytes: {got}")


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def is_native(reactor: RustReactor) -> bool:
    return reactor._native_streams


def test_transports_are_native_by_default(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """listenUNIX's port, its connections and connectUNIX's connector and
    transports are twisted_shim.unix's."""
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    reactor = RustReactor()
    proto = Recorder()
    port = listen(reactor, path, proto)
    assert type(port) is shim_unix.Port
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(path)
    run_until(reactor, lambda: proto.made, "the connection accepted")
    assert type(proto.transport) is shim_unix.Server
    port.stopListening()
    client = Recorder()
    connector, transport, other = connected(reactor, path + "c", client)
    assert type(connector) is shim_unix.Connector
    assert type(transport) is shim_unix.Client
    connector.disconnect()
    for s in (peer, other):
        s.close()
    for sel in reactor.removeAll():
        sel.connectionLost(Failure(error.ConnectionDone()))


def test_the_switch_chooses_twisteds_transports() -> None:
    """With TWISTED_SHIM_TRANSPORT=python the reactor makes Twisted's own
    unix.Port (of unix.Server) and unix.Connector."""
    code = textwrap.dedent(
        """
        import os, tempfile
        from twisted.internet import protocol, unix
        from twisted_shim.reactor import RustReactor
        r = RustReactor()
        path = os.path.join(tempfile.mkdtemp(), "s")
        p = r.listenUNIX(path, protocol.ServerFactory())
        c = r.connectUNIX(path, protocol.ClientFactory())
        print(type(p) is unix.Port, p.transport is unix.Server,
              type(c) is unix.Connector)
        c.stopConnecting()
        p.stopListening()
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
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


TRANSPORT_INTERFACES = [
    interfaces.IUNIXTransport,
    interfaces.ITransport,
    interfaces.IConsumer,
    interfaces.IPushProducer,
    interfaces.ISystemHandle,
    interfaces.ILoggingContext,
    interfaces.IReadWriteDescriptor,
    interfaces.ITLSTransport,
]


def test_interfaces(reactor: RustReactor, path: str) -> None:
    """The server and client transports provide every interface Twisted's
    unix.Server and unix.Client provide, each verified (methods and
    attributes); the port is an IListeningPort, the connector an
    IConnector, and a receiving protocol an IFileDescriptorReceiver."""
    receiver = Receiver()
    port = listen(reactor, path, receiver)
    verifyObject(interfaces.IListeningPort, port)
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(path)
    run_until(reactor, lambda: receiver.made, "the connection accepted")
    port.stopListening()
    client = Recorder()
    connector, client_transport, other = connected(reactor, path + "c", client)
    verifyObject(interfaces.IConnector, connector)
    verifyObject(interfaces.IFileDescriptorReceiver, receiver)
    for transport, twisteds in [
        (receiver.transport, twisted_unix.Server),
        (client_transport, twisted_unix.Client),
    ]:
        theirs = set(providedBy(object.__new__(twisteds)))
        ours = set(providedBy(transport))
        assert theirs <= ours, theirs - ours
        for iface in TRANSPORT_INTERFACES + sorted(theirs, key=str):
            assert iface in ours, iface
            verifyObject(iface, transport)
    for s in (peer, other):
        s.close()


def test_addresses_are_twisteds(reactor: RustReactor, path: str) -> None:
    """getHost() and getPeer() answer as Twisted's: the server's host is
    its path and its peer unnamed; the client's peer is the path it
    connected to and its host unnamed."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    assert transport.getHost() == UNIXAddress(path.encode())
    assert transport.getPeer() == UNIXAddress(None)
    client = Recorder()
    _, client_transport, other = connected(reactor, path + "c", client)
    assert client_transport.getPeer() == UNIXAddress((path + "c").encode())
    assert client_transport.getHost() == UNIXAddress(None)
    for s in (peer, other):
        s.close()


def test_write_checks_its_argument(reactor: RustReactor, path: str) -> None:
    """write() and writeSequence() refuse anything but bytes with
    Twisted's TypeError, and writeSequence queues nothing when one item is
    wrong."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
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
    reactor: RustReactor, path: str
) -> None:
    """A streaming producer is paused when the queue exceeds bufferSize,
    once, and resumed once the queue is written; stopped when the
    connection is lost."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
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


def test_producer_paused_over_descriptor_buffer_size(
    reactor: RustReactor, path: str
) -> None:
    """More than _fileDescriptorBufferSize descriptors queued pause a
    streaming producer (at the sendFileDescriptor that passes it, and at
    each write while that many wait, as Twisted's _maybePauseProducer
    does); once all went, with their bytes, it is resumed."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    limit = transport._fileDescriptorBufferSize
    producer = PushProducer()
    transport.registerProducer(producer, True)
    r, w = os.pipe()
    try:
        transport.write(b"x" * (limit + 2))
        for _ in range(limit):
            transport.sendFileDescriptor(r)
        assert producer.paused == 0
        assert not transport._isSendBufferFull()
        assert transport._sendmsgQueue == [r] * limit
        transport.sendFileDescriptor(r)
        assert producer.paused == 1
        assert transport._isSendBufferFull()
        transport.write(b"y")
        assert producer.paused == 2
        got = receive_with_fds(reactor, peer, limit + 3)
        received = [fd for _, fds in got for fd in fds]
        assert len(received) == limit + 1
        assert all(identity(fd) == identity(r) for fd in received)
        for fd in received:
            os.close(fd)
        assert b"".join(d for d, _ in got) == b"x" * (limit + 2) + b"y"
        run_until(reactor, lambda: producer.resumed == 1, "the producer resumed")
        assert transport._sendmsgQueue == []
    finally:
        os.close(r)
        os.close(w)
    peer.close()


def test_pull_producer_asked_each_time_the_queue_drains(
    reactor: RustReactor, path: str
) -> None:
    """A pull producer is asked for more when registered and each time what
    it gave has been written, as FileDescriptor.doWrite does."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)

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


def test_lose_connection_sends_the_queue_first(reactor: RustReactor, path: str) -> None:
    """loseConnection() after a large write: every byte arrives, then the
    end of the stream; the protocol sees ConnectionDone; a write after
    connectionLost is dropped without an error."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
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


def test_half_close(reactor: RustReactor, path: str) -> None:
    """loseWriteConnection(): the peer reads the end of the stream after the
    queued bytes, the protocol is told writeConnectionLost and still
    receives; the peer's own end then reaches readConnectionLost."""
    proto = HalfCloser()
    transport, peer = accepted(reactor, path, proto)
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


def test_descriptors_go_one_per_byte_in_order(reactor: RustReactor, path: str) -> None:
    """Several descriptors queued before the bytes: each arrives with one
    byte, in the order they were queued, and the rest of the bytes follow;
    the sender's descriptors stay its own."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    files = [tempfile.TemporaryFile() for _ in range(3)]
    try:
        for f in files:
            transport.sendFileDescriptor(f.fileno())
        transport.write(b"abc")
        transport.write(b"defgh")
        got = receive_with_fds(reactor, peer, 8)
        received = [fd for _, fds in got for fd in fds]
        assert [identity(fd) for fd in received] == [
            identity(f.fileno()) for f in files
        ]
        # One byte carries one descriptor: no message has two.
        assert all(len(fds) <= 1 for _, fds in got)
        carried = b"".join(d[:1] for d, fds in got if fds)
        assert carried == b"abc"
        assert b"".join(d for d, _ in got) == b"abcdefgh"
        for fd in received:
            os.close(fd)
        for f in files:
            os.fstat(f.fileno())  # still open here
    finally:
        for f in files:
            f.close()
    peer.close()


def test_more_descriptors_than_bytes_is_an_overrun(
    reactor: RustReactor, path: str
) -> None:
    """A descriptor with no byte to carry it: the connection is lost with
    FileDescriptorOverrun, as Twisted's writeSomeData returns it."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    r, w = os.pipe()
    try:
        transport.sendFileDescriptor(r)
        run_until(reactor, lambda: proto.lost is not None, "connectionLost")
        assert proto.lost.check(error.FileDescriptorOverrun)
    finally:
        os.close(r)
        os.close(w)
    peer.close()


def test_a_client_sends_descriptors_too(reactor: RustReactor, path: str) -> None:
    """connectUNIX's transport sends descriptors with its bytes."""
    client = Recorder()
    connector, transport, peer = connected(reactor, path, client)
    with tempfile.TemporaryFile() as f:
        transport.sendFileDescriptor(f.fileno())
        transport.write(b"hi")
        got = receive_with_fds(reactor, peer, 2)
        (fd,) = [fd for _, fds in got for fd in fds]
        assert identity(fd) == identity(f.fileno())
        os.close(fd)
    connector.disconnect()
    peer.close()


def send_fds(peer: socket.socket, data: bytes, *messages: list[int]) -> None:
    """One sendmsg of C{data} with an SCM_RIGHTS control message for each
    list of descriptors."""
    ancillary = [
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())
        for fds in messages
    ]
    peer.sendmsg([data], ancillary)


def test_receiver_gets_descriptors_before_their_bytes(
    reactor: RustReactor, path: str
) -> None:
    """An IFileDescriptorReceiver gets every descriptor of a message (one
    control message of several, or several of one), in order, before the
    bytes that came with them; then a message with bytes only."""
    proto = Receiver()
    transport, peer = accepted(reactor, path, proto)
    files = [tempfile.TemporaryFile() for _ in range(4)]
    try:
        fds = [f.fileno() for f in files]
        send_fds(peer, b"one", fds[:2])
        run_until(reactor, lambda: proto.received == b"one", "the first message")
        send_fds(peer, b"two", fds[2:3], fds[3:4])
        run_until(reactor, lambda: proto.received == b"onetwo", "the second")
        peer.sendall(b"three")
        run_until(reactor, lambda: proto.received == b"onetwothree", "the third")
        assert [e if isinstance(e, bytes) else e[0] for e in proto.events] == [
            "fd",
            "fd",
            b"one",
            "fd",
            "fd",
            b"two",
            b"three",
        ]
        assert [identity(fd) for fd in proto.fds] == [identity(fd) for fd in fds]
        assert not set(proto.fds) & set(fds)
    finally:
        for fd in proto.fds:
            os.close(fd)
        for f in files:
            f.close()
    peer.close()


def test_receiver_gets_the_most_descriptors_a_message_holds(
    reactor: RustReactor, path: str
) -> None:
    """Linux's limit of descriptors in one message (SCM_MAX_FD, 253) fits
    the control buffer: none is cut off."""
    proto = Receiver()
    transport, peer = accepted(reactor, path, proto)
    r, w = os.pipe()
    try:
        send_fds(peer, b"many", [r] * 253)
        run_until(reactor, lambda: proto.received == b"many", "the message")
        assert len(proto.fds) == 253
        assert all(identity(fd) == identity(r) for fd in proto.fds)
    finally:
        for fd in proto.fds:
            os.close(fd)
        os.close(r)
        os.close(w)
    peer.close()


def test_non_receiver_closes_descriptors_and_says_so(
    reactor: RustReactor, path: str, logged: list[dict[str, Any]]
) -> None:
    """A protocol that is not an IFileDescriptorReceiver: the descriptors
    that arrive are closed (the only other copy of a pipe's write end
    gone, its read end sees the end) with Twisted's log line; the bytes
    still reach dataReceived."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    r, w = os.pipe()
    try:
        send_fds(peer, b"junk", [w])
        os.close(w)
        run_until(reactor, lambda: proto.received == b"junk", "the bytes")
        os.set_blocking(r, False)
        assert os.read(r, 10) == b""
    finally:
        os.close(r)
    messages = [
        e for e in logged if "does not provide IFileDescriptorReceiver" in e["format"]
    ]
    assert len(messages) == 1, logged
    assert messages[0]["protocolName"] == "Recorder"
    assert messages[0]["hostAddress"] == transport.getHost()
    peer.close()


def test_receiving_is_decided_when_descriptors_arrive(
    reactor: RustReactor, path: str
) -> None:
    """Whether the protocol receives descriptors is asked when they arrive
    (as Twisted asks): a transport whose protocol became a receiver after
    the connection was made delivers them."""
    proto = Recorder()
    transport, peer = accepted(reactor, path, proto)
    receiver = Receiver()
    transport.protocol = receiver
    with tempfile.TemporaryFile() as f:
        send_fds(peer, b"x", [f.fileno()])
        run_until(reactor, lambda: receiver.received == b"x", "the bytes")
        assert [identity(fd) for fd in receiver.fds] == [identity(f.fileno())]
        os.close(receiver.fds[0])
    peer.close()


def test_other_control_data_is_logged(
    reactor: RustReactor, path: str, logged: list[dict[str, Any]]
) -> None:
    """Control data other than descriptors (credentials, with SO_PASSCRED
    on the socket) is logged as Twisted logs it, and the bytes delivered."""
    proto = Receiver()
    transport, peer = accepted(reactor, path, proto)
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    peer.sendall(b"hello")
    run_until(reactor, lambda: proto.received == b"hello", "the bytes")
    assert proto.fds == []
    unsupported = [
        e for e in logged if "received unsupported ancillary data" in e["format"]
    ]
    assert unsupported, logged
    assert unsupported[0]["cmsgLevel"] == socket.SOL_SOCKET
    assert unsupported[0]["cmsgType"] == socket.SCM_CREDENTIALS
    peer.close()


def test_adopted_connection(reactor: RustReactor) -> None:
    """adoptStreamConnection with AF_UNIX: a transport of the kind the
    reactor makes, with bytes and descriptors both ways."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    peer.settimeout(PEER_TIMEOUT)
    proto = Receiver()
    factory = protocol.Factory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    transport = reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)
    ours.close()  # the reactor has its own duplicate
    expected = shim_unix.Server if is_native(reactor) else twisted_unix.Server
    assert type(transport) is expected
    assert proto.made and proto.transport is transport
    with tempfile.TemporaryFile() as f:
        send_fds(peer, b"in", [f.fileno()])
        run_until(reactor, lambda: proto.received == b"in", "the bytes")
        assert [identity(fd) for fd in proto.fds] == [identity(f.fileno())]
        transport.sendFileDescriptor(proto.fds[0])
        transport.write(b"out")
        got = receive_with_fds(reactor, peer, 3)
        (fd,) = [fd for _, fds in got for fd in fds]
        assert identity(fd) == identity(f.fileno())
        os.close(fd)
        os.close(proto.fds[0])
    transport.loseConnection()
    assert receive_all(reactor, peer) == b""
    peer.close()


def test_adopted_port(reactor: RustReactor, path: str) -> None:
    """adoptStreamPort with AF_UNIX: a port of the kind the reactor makes,
    accepting connections of that kind."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(5)
    listener.setblocking(False)
    proto = Recorder()
    factory = protocol.Factory()
    factory.protocol = lambda: proto  # type: ignore[assignment]
    port = reactor.adoptStreamPort(listener.fileno(), socket.AF_UNIX, factory)
    listener.close()
    native = is_native(reactor)
    assert type(port) is (shim_unix.Port if native else twisted_unix.Port)
    verifyObject(interfaces.IListeningPort, port)
    peer = socket.socket(socket.AF_UNIX)
    peer.settimeout(PEER_TIMEOUT)
    peer.connect(path)
    run_until(reactor, lambda: proto.made, "the connection accepted")
    assert type(proto.transport) is (
        shim_unix.Server if native else twisted_unix.Server
    )
    peer.sendall(b"ping")
    run_until(reactor, lambda: proto.received == b"ping", "the bytes")
    port.stopListening()
    peer.close()


@pytest.mark.parametrize("receives", [True, False], ids=["receiver", "non-receiver"])
def test_descriptors_between_two_transports(
    reactor: RustReactor, path: str, receives: bool
) -> None:
    """A server transport sends several descriptors, then bytes, to a
    client transport of the same reactor: a receiving client gets each
    (the same files) before the byte it came with; any other client's
    copies are closed (a pipe's write end sent and closed here leaves no
    writer), and it still gets the bytes."""
    server = Recorder()
    factory = protocol.ServerFactory()
    factory.protocol = lambda: server  # type: ignore[assignment]
    port = reactor.listenUNIX(path, factory)
    client = Receiver() if receives else Recorder()
    cfactory = protocol.ClientFactory()
    cfactory.protocol = lambda: client  # type: ignore[assignment]
    reactor.connectUNIX(path, cfactory)
    run_until(reactor, lambda: server.made and client.made, "both ends connected")
    port.stopListening()
    pipes = [os.pipe() for _ in range(3)]
    try:
        for _, w in pipes:
            server.transport.sendFileDescriptor(w)
        server.transport.write(b"abc")
        server.transport.write(b"def")
        run_until(reactor, lambda: client.received == b"abcdef", "the bytes")
        sent = [identity(w) for _, w in pipes]
        for _, w in pipes:
            os.close(w)
        if receives:
            # Each descriptor came with one byte, before it.
            flat = "".join(
                e.decode() if isinstance(e, bytes) else "F" for e in client.events
            )
            assert flat == "FaFbFcdef"
            assert [identity(fd) for fd in client.fds] == sent
            for fd in client.fds:
                os.close(fd)
        for r, _ in pipes:
            os.set_blocking(r, False)
            assert os.read(r, 1) == b""
    finally:
        for r, _ in pipes:
            os.close(r)
    server.transport.loseConnection()
    run_until(reactor, lambda: client.lost is not None, "the client's end")
