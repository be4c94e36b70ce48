"""
Promptness: whatever Python code the loop runs, what that code schedules
takes effect within the next iteration, as on epollreactor, never after an
idle wait.

The loop runs Python code in several phases: C{runUntilCurrent} (timed calls,
calls from threads, the shutdown event's triggers), the dispatch of a wait
(C{doRead}, C{doWrite}, C{connectionLost}), the optimistic flush before a wait
(C{doWrite}/C{doConnect} of readers that started writing), the disconnection
of descriptors closed underneath their registration, Python signal handlers,
and native handlers that call an application (the WSGI host). From each, each
kind of work (C{callLater(0)}, C{callFromThread}, a new reader with data
ready, C{reactor.stop()}, C{reactor.crash()}) must be acted on in at most one
more wait, and that wait must not sleep: its timeout is zero, or, for a new
reader, it returns the reader's event.

Time is measured by counting: the loop counts its waits and, while a test
asks (C{Loop.record_waits}), records each wait's timeout and how many events
it returned. No assertion here reads a clock. Each run is bounded by a guard
timer that crashes the reactor, so a test that misses its event fails in
seconds instead of hanging.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_redis.executor import RedisExecutor
from services import redis_server  # noqa: F401 (fixture)
from test_reactor import Reader, python
from twisted.internet import defer, error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import ClientFactory, Protocol

from twisted_shim.reactor import RustReactor
from twisted_shim.testing import free_port

#: Seconds after which a run that has not finished is crashed (a failure).
GUARD = 10.0

KINDS = ("callLater0", "callFromThread", "newReader", "stop", "crash")


@pytest.fixture
def reactor() -> Iterator[RustReactor]:
    r = RustReactor()
    r._loop.record_waits(True)
    yield r
    r._loop.record_waits(False)
    for dc in r.getDelayedCalls():
        dc.cancel()
    r.removeAll()
    r._loop.close()


def run_guarded(reactor: RustReactor) -> None:
    """Run C{reactor} until it stops, or crash it after L{GUARD} seconds."""
    guard = threading.Timer(GUARD, reactor.callFromThread, (reactor.crash,))
    guard.start()
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        guard.cancel()


class Probe:
    """
    Schedules one kind of work from the phase under test and records, in
    waits of the loop, when it was scheduled and when it took effect.

    @ivar mark: C{Loop.waits()} when the work was scheduled.
    @ivar effect: C{Loop.waits()} when it took effect, or C{None}.
    @ivar finish: What ends the run once the work took effect (by default
        C{reactor.stop}; the shutdown-trigger phase replaces it).
    """

    def __init__(self, reactor: RustReactor, kind: str) -> None:
        self.reactor = reactor
        self.kind = kind
        self.mark: int | None = None
        self.effect: int | None = None
        self.finish: Callable[[], object] = reactor.stop
        self._sockets: list[socket.socket] = []

    def _waits(self) -> int:
        return self.reactor._loop.waits()

    def _took_effect(self) -> None:
        if self.effect is None:
            self.effect = self._waits()

    def _effect_then_finish(self) -> None:
        self._took_effect()
        self.finish()

    def schedule(self) -> None:
        """Schedule the work; called from the phase under test, once."""
        if self.mark is not None:
            return
        self.mark = self._waits()
        r = self.reactor
        if self.kind == "callLater0":
            r.callLater(0, self._effect_then_finish)
        elif self.kind == "callFromThread":
            r.callFromThread(self._effect_then_finish)
        elif self.kind == "newReader":
            a, b = socket.socketpair()
            self._sockets += [a, b]
            b.send(b"ready")
            probe = self

            class NewReader(Reader):
                def doRead(self) -> None:
                    r.removeReader(self)
                    probe._effect_then_finish()

            r.addReader(NewReader(r, a))
        elif self.kind == "stop":
            r.addSystemEventTrigger("during", "shutdown", self._took_effect)
            r.stop()
        elif self.kind == "crash":
            r.crash()
        else:
            raise ValueError(self.kind)

    def after_run(self) -> None:
        """Called once C{run()} returned."""
        if self.kind == "crash" and self.effect is None and self.mark is not None:
            self.effect = self._waits()
        for s in self._sockets:
            s.close()

    def check(self) -> None:
        """The work took effect within one more wait, and no wait slept."""
        assert self.mark is not None, "the phase under test never ran"
        assert self.effect is not None, f"{self.kind} never took effect"
        recorded = self.reactor._loop.recorded_waits()
        # The record starts with the fixture, as does the count, so a count
        # is an index into the record.
        between = recorded[self.mark : self.effect]
        assert len(between) <= 1, (
            f"{self.kind} took effect after {len(between)} waits: {between}"
        )
        for timeout, events in between:
            if self.kind == "newReader":
                assert events > 0 or timeout == 0, (
                    f"the wait before the new reader's event slept: {between}"
                )
            else:
                assert timeout == 0, (
                    f"the wait before {self.kind} took effect could sleep "
                    f"{timeout} s: {between}"
                )


# --- phases ---------------------------------------------------------------------
#
# Each sets up the reactor so that probe.schedule() is called from one phase
# of the loop, then the run starts.


def from_timed_call(reactor: RustReactor, probe: Probe) -> None:
    reactor.callLater(0, probe.schedule)


def from_doRead(reactor: RustReactor, probe: Probe) -> None:
    a, b = socket.socketpair()
    probe._sockets += [a, b]

    class R(Reader):
        def doRead(self) -> None:
            self.sock.recv(100)
            reactor.removeReader(self)
            probe.schedule()

    reactor.addReader(R(reactor, a))
    b.send(b"x")


class WriteOnly(FileDescriptor):
    """A selectable watched for writing only (so never flushed early)."""

    def __init__(self, reactor: RustReactor, sock: socket.socket, then: Any) -> None:
        FileDescriptor.__init__(self, reactor)
        self.sock = sock
        self.then = then

    def fileno(self) -> int:
        return self.sock.fileno()

    def doWrite(self) -> None:
        self.reactor.removeWriter(self)
        self.then()

    def connectionLost(self, reason: object) -> None:
        pass


def from_doWrite_of_a_wait(reactor: RustReactor, probe: Probe) -> None:
    a, b = socket.socketpair()
    probe._sockets += [a, b]
    reactor.addWriter(WriteOnly(reactor, a, probe.schedule))


def from_doWrite_of_the_flush(reactor: RustReactor, probe: Probe) -> None:
    """A reader that starts writing is flushed before the next wait."""
    a, b = socket.socketpair()
    probe._sockets += [a, b]

    class RW(Reader):
        def doWrite(self) -> None:
            reactor.removeWriter(self)
            probe.schedule()

    rw = RW(reactor, a)
    reactor.addReader(rw)
    reactor.callLater(0, reactor.addWriter, rw)


def from_doConnect_of_the_flush(reactor: RustReactor, probe: Probe) -> None:
    """
    A TCP connection refused: Twisted's doConnect starts reading and
    writing, so the loop flushes it, and clientConnectionFailed runs there.
    """
    port = closed_port()

    class F(ClientFactory):
        protocol = Protocol

        def clientConnectionFailed(self, connector: object, reason: object) -> None:
            probe.schedule()

    reactor.callLater(0, reactor.connectTCP, "127.0.0.1", port, F())


def from_connectionLost(reactor: RustReactor, probe: Probe) -> None:
    a, b = socket.socketpair()
    probe._sockets += [a]

    class R(Reader):
        def connectionLost(self, reason: object) -> None:
            probe.schedule()

    reactor.addReader(R(reactor, a))
    b.close()


def from_lost_descriptor(reactor: RustReactor, probe: Probe) -> None:
    """
    The idle sweep finds a descriptor closed underneath (after ~1 s). Its
    number is made to name another file (as when it is reused), so no later
    descriptor of the test gets that number while the table still holds it.
    """
    a, b = socket.socketpair()
    probe._sockets += [a, b]

    class R(Reader):
        def connectionLost(self, reason: object) -> None:
            assert reason.check(error.ConnectionFdescWentAway)  # type: ignore[attr-defined]
            probe.schedule()

    reactor.addReader(R(reactor, a))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, a.fileno())
    os.close(devnull)


def from_callFromThread(reactor: RustReactor, probe: Probe) -> None:
    def other() -> None:
        reactor.callFromThread(probe.schedule)

    reactor.callWhenRunning(lambda: threading.Thread(target=other).start())


def from_signal_handler(reactor: RustReactor, probe: Probe) -> None:
    """A Python signal handler, run by the loop after a wait it ended."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: probe.schedule())
    probe._restore = lambda: signal.signal(signal.SIGUSR1, previous)  # type: ignore[attr-defined]
    send = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    reactor.callWhenRunning(send.start)


def from_shutdown_trigger(reactor: RustReactor, probe: Probe) -> None:
    """A 'before shutdown' trigger, fired by the loop's runUntilCurrent."""
    done: defer.Deferred[None] = defer.Deferred()

    def trigger() -> defer.Deferred[None]:
        probe.schedule()
        return done

    probe.finish = lambda: done.called or done.callback(None)
    reactor.addSystemEventTrigger("before", "shutdown", trigger)
    reactor.callWhenRunning(reactor.stop)


def from_native_handler(reactor: RustReactor, probe: Probe) -> None:
    """A WSGI application, called by the host's native handler."""
    from twisted_shim.wsgi.server import WSGIServer

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        probe.schedule()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = WSGIServer(app, reactor=reactor)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    server.listen(lsock)
    client = socket.create_connection(lsock.getsockname())
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    probe._sockets.append(client)
    probe._server = server  # type: ignore[attr-defined]


PHASES = {
    "timed_call": from_timed_call,
    "doRead": from_doRead,
    "doWrite_of_a_wait": from_doWrite_of_a_wait,
    "doWrite_of_the_flush": from_doWrite_of_the_flush,
    "doConnect_of_the_flush": from_doConnect_of_the_flush,
    "connectionLost": from_connectionLost,
    "lost_descriptor": from_lost_descriptor,
    "callFromThread": from_callFromThread,
    "signal_handler": from_signal_handler,
    "shutdown_trigger": from_shutdown_trigger,
    "native_handler": from_native_handler,
}

# stop() while the reactor is already stopping raises ReactorNotRunning.
CASES = [
    (phase, kind)
    for phase in PHASES
    for kind in KINDS
    if not (phase == "shutdown_trigger" and kind == "stop")
]


@pytest.mark.parametrize(("phase", "kind"), CASES)
def test_scheduled_work_takes_effect_at_once(
    reactor: RustReactor, phase: str, kind: str
) -> None:
    probe = Probe(reactor, kind)
    PHASES[phase](reactor, probe)
    try:
        run_guarded(reactor)
    finally:
        probe.after_run()
        if hasattr(probe, "_restore"):
            probe._restore()
        if hasattr(probe, "_server"):
            probe._server.abort()
    probe.check()


# --- iterate(delay) and the flush ---------------------------------------------


def test_iterate_with_a_pending_flush_does_not_sleep(reactor: RustReactor) -> None:
    """
    iterate(delay) with a reader that started writing: epoll's wait would
    return at once with that writer, so ours does not sleep either after
    the flush served it.
    """
    a, b = socket.socketpair()
    written: list[bool] = []

    class RW(Reader):
        def doWrite(self) -> None:
            reactor.removeWriter(self)
            written.append(True)

    rw = RW(reactor, a)
    reactor.addReader(rw)
    reactor.addWriter(rw)
    reactor.iterate(30)
    assert written == [True]
    assert reactor._loop.recorded_waits() == [(0.0, 0)]
    a.close()
    b.close()


def test_iterate_without_flush_work_waits_its_delay(reactor: RustReactor) -> None:
    """The other side of the rule: with nothing to do, iterate(delay) waits."""
    reactor.iterate(0.02)
    [(timeout, events)] = reactor._loop.recorded_waits()
    assert timeout == pytest.approx(0.02) and events == 0


# --- the reproducers of the stall ---------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


def idle_sleeps(reactor: RustReactor) -> list[tuple[float | None, int]]:
    """Waits that slept to a non-zero timeout and returned nothing."""
    return [(t, n) for t, n in reactor._loop.recorded_waits() if n == 0 and t != 0]


def test_callLater0_from_connectionMade(reactor: RustReactor) -> None:
    """
    A client whose connectionMade calls callLater(0, f), connecting to a
    listener outside the reactor: f ran a second late (the loop's idle sweep)
    when the timeout was computed before the flush that ran connectionMade.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    marks: dict[str, int] = {}

    class P(Protocol):
        def connectionMade(self) -> None:
            marks["made"] = reactor._loop.waits()
            reactor.callLater(0, self.later)

        def later(self) -> None:
            marks["later"] = reactor._loop.waits()
            self.transport.loseConnection()  # type: ignore[union-attr]
            reactor.stop()

    reactor.connectTCP(
        "127.0.0.1", listener.getsockname()[1], ClientFactory.forProtocol(P)
    )
    run_guarded(reactor)
    listener.close()
    assert marks["later"] - marks["made"] <= 1
    assert idle_sleeps(reactor) == []


def test_reconnect_from_clientConnectionFailed(reactor: RustReactor) -> None:
    """Five refused connections, each retried from clientConnectionFailed."""
    port = closed_port()
    failures: list[int] = []

    class F(ClientFactory):
        protocol = Protocol

        def clientConnectionFailed(self, connector: object, reason: Any) -> None:
            assert reason.check(error.ConnectionRefusedError)
            failures.append(reactor._loop.waits())
            if len(failures) < 5:
                reactor.connectTCP("127.0.0.1", port, F())
            else:
                reactor.stop()

    reactor.callWhenRunning(reactor.connectTCP, "127.0.0.1", port, F())
    run_guarded(reactor)
    assert len(failures) == 5
    assert idle_sleeps(reactor) == []
    gaps = [b - a for a, b in zip(failures, failures[1:], strict=False)]
    assert max(gaps) <= 3, gaps


def test_retry_with_callLater0_from_an_endpoint_errback(reactor: RustReactor) -> None:
    """The same retry through an endpoint's errback and callLater(0)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    port = closed_port()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    failures: list[int] = []

    def attempt() -> None:
        d = endpoint.connect(ClientFactory.forProtocol(Protocol))
        d.addErrback(failed)

    def failed(f: Any) -> None:
        f.trap(error.ConnectionRefusedError)
        failures.append(reactor._loop.waits())
        if len(failures) < 5:
            reactor.callLater(0, attempt)
        else:
            reactor.stop()

    reactor.callWhenRunning(attempt)
    run_guarded(reactor)
    assert len(failures) == 5
    assert idle_sleeps(reactor) == []


def test_txredisapi_connects_without_idle_waits(
    redis_server: RedisExecutor,  # noqa: F811
) -> None:
    """
    txredisapi hands its connection over with callLater(0) from
    connectionMade: five connections to a real Redis, each within a few
    waits, none of them an idle sleep.
    """
    result = python(
        f"""
        import twisted_shim
        reactor = twisted_shim.install()
        reactor._loop.record_waits(True)
        import txredisapi
        from twisted.internet import defer

        async def main():
            for _ in range(5):
                before = reactor._loop.waits()
                c = await txredisapi.Connection(
                    "127.0.0.1", {redis_server.port}, reconnect=False
                )
                assert await c.ping() == "PONG"
                print("waits", reactor._loop.waits() - before)
                await c.disconnect()
            idle = [w for w in reactor._loop.recorded_waits() if w[1] == 0 and w[0] != 0]
            print("idle", idle)

        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())
        reactor.callLater(30, reactor.stop)
        reactor.run()
        """,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    waits = [int(line.split()[1]) for line in lines if line.startswith("waits")]
    assert len(waits) == 5, result.stdout + result.stderr
    assert max(waits) <= 10, waits
    assert "idle []" in lines, result.stdout
