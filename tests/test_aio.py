"""
Tests for L{twisted_shim.aio}: the asyncio face of the reactor's loop.

Scheduling (asyncio's ordering, timers on the reactor's heap, cancellation,
contexts), readiness in the reactor's FD set (and what happens when Twisted
and asyncio want the same descriptor), calls from threads, the exception
handler and debug mode, the one run (the face is the running loop under
C{reactor.run()}; Twisted's work is served under C{run_until_complete}),
Twisted interop (C{asFuture}, C{fromFuture}, C{ensureDeferred}), TCP with
streams and C{sock_*}, executors, the policy and closing.

Every wait is bounded: asyncio runs go through L{run} (C{wait_for} with
L{TIMEOUT}), reactor runs have a watchdog C{callLater} that stops the
reactor, threads are joined with a timeout, and C{faulthandler} ends the
process if a test still hangs.
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.abstract import FileDescriptor

from twisted_shim import aio
from twisted_shim.reactor import RustReactor

#: The longest any single run in these tests may take.
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def loop() -> Iterator[aio.RustEventLoop]:
    lp = aio.RustEventLoop()
    yield lp
    if lp.is_running():
        lp.stop()
    lp.close()


@pytest.fixture
def reactor() -> Iterator[RustReactor]:
    r = RustReactor()
    yield r
    for dc in r.getDelayedCalls():
        dc.cancel()
    r.removeAll()
    face = r._asyncioFace
    if face is not None and not face.is_closed():
        face.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


def run_reactor(reactor: RustReactor, start: Callable[[], object]) -> None:
    """Run C{reactor} with C{start} as its first call; stopped by the test or
    by the watchdog (then the test fails)."""
    fired: list[bool] = []

    def watchdog() -> None:
        fired.append(True)
        reactor.stop()

    dog = reactor.callLater(TIMEOUT, watchdog)
    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    assert not fired, "the reactor ran until the watchdog stopped it"
    if dog.active():
        dog.cancel()


# --- scheduling --------------------------------------------------------------


def test_call_soon_fifo_and_handles_added_during_a_pass_run_in_the_next(
    loop: aio.RustEventLoop,
) -> None:
    order: list[tuple[str, int]] = []

    def note(name: str) -> None:
        order.append((name, loop._rloop.waits()))

    def first() -> None:
        note("first")
        loop.call_soon(note, "added")

    loop.call_soon(first)
    loop.call_soon(note, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends run_forever after the pass that ran it: "added" is left.
    assert [n for n, _ in order] == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [n for n, _ in order] == ["first", "second", "added"]
    # One pass per wait: the second ran in the first pass, "added" later.
    assert order[0][1] == order[1][1] < order[2][1]


def test_cancelled_handles_are_skipped(loop: aio.RustEventLoop) -> None:
    seen: list[int] = []
    h = loop.call_soon(seen.append, 1)
    loop.call_soon(seen.append, 2)
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [2]


def test_call_later_and_call_at_order_by_time_and_cancel(
    loop: aio.RustEventLoop,
) -> None:
    seen: list[str] = []
    now = loop.time()
    loop.call_later(0.03, seen.append, "c")
    t = loop.call_at(now + 0.01, seen.append, "a")
    loop.call_later(0.02, seen.append, "b")
    gone = loop.call_later(0.015, seen.append, "cancelled")
    assert isinstance(t, asyncio.TimerHandle)
    assert t.when() == pytest.approx(now + 0.01)
    gone.cancel()
    assert gone.cancelled()
    # Same time: in the order scheduled.
    loop.call_at(now + 0.04, seen.append, "d1")
    loop.call_at(now + 0.04, seen.append, "d2")
    loop.call_later(0.05, loop.stop)
    start = time.monotonic()
    loop.run_forever()
    assert seen == ["a", "b", "c", "d1", "d2"]
    assert time.monotonic() - start < TIMEOUT
    # The reactor's heap holds no asyncio timer any more.
    assert [dc for dc in loop._reactor.getDelayedCalls() if dc.active()] == []


def test_call_at_in_the_past_runs_at_once(loop: aio.RustEventLoop) -> None:
    seen: list[int] = []
    loop.call_at(loop.time() - 100, seen.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [1]


def test_timer_cancelled_from_a_callback_of_the_same_pass(
    loop: aio.RustEventLoop,
) -> None:
    seen: list[str] = []
    now = loop.time()
    later: list[asyncio.TimerHandle] = []
    loop.call_at(now, lambda: later[0].cancel())
    later.append(loop.call_at(now, seen.append, "must not run"))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == []


def test_handles_run_in_their_context(loop: aio.RustEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "mine")
    seen: list[str] = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == ["mine", "mine"]


def test_time_is_the_reactors_clock(loop: aio.RustEventLoop) -> None:
    assert abs(loop.time() - loop._reactor.seconds()) < 1.0
    assert abs(loop.time() - time.time()) < 1.0


def test_asyncio_and_twisted_timers_share_the_heap(loop: aio.RustEventLoop) -> None:
    seen: list[str] = []
    loop.call_later(0.02, seen.append, "asyncio")
    loop._reactor.callLater(0.01, seen.append, "twisted")
    assert len(loop._reactor.getDelayedCalls()) == 2

    async def main() -> None:
        await asyncio.sleep(0.05)

    run(loop, main())
    assert seen == ["twisted", "asyncio"]


# --- readiness ----------------------------------------------------------------


def test_add_reader_and_writer(loop: aio.RustEventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        got: list[bytes] = []
        writable = loop.create_future()

        def on_read() -> None:
            got.append(a.recv(100))
            loop.remove_reader(a)
            loop.stop()

        loop.add_writer(b.fileno(), lambda: writable.done() or writable.set_result(1))
        run(loop, asyncio.shield(writable))
        assert loop.remove_writer(b.fileno()) is True
        assert loop.remove_writer(b.fileno()) is False
        loop.add_reader(a, on_read)
        b.send(b"ping")
        loop.call_later(TIMEOUT, loop.stop)
        loop.run_forever()
        assert got == [b"ping"]
        assert loop.remove_reader(a) is False
        assert loop._rloop.registered() == 0
    finally:
        a.close()
        b.close()


def test_a_new_reader_replaces_and_cancels_the_old(loop: aio.RustEventLoop) -> None:
    a, b = socket.socketpair()
    try:
        old = loop._add_reader(a.fileno(), lambda: None)
        new = loop._add_reader(a.fileno(), lambda: None)
        assert old.cancelled() and not new.cancelled()
        assert loop._rloop.registered() == 1
        key = loop._selector.get_key(a.fileno())
        assert key.events == 1 and key.data == (new, None)
    finally:
        loop.remove_reader(a.fileno())
        a.close()
        b.close()


def test_a_cancelled_reader_is_dropped_not_spun(loop: aio.RustEventLoop) -> None:
    a, b = socket.socketpair()
    try:
        h = loop._add_reader(a.fileno(), pytest.fail)
        h.cancel()
        b.send(b"x")  # readable, level-triggered
        loop.call_later(0.05, loop.stop)
        waits = loop._rloop.waits()
        loop.run_forever()
        assert loop._rloop.registered() == 0
        assert loop._rloop.waits() - waits < 10, "the loop spun on a cancelled reader"
    finally:
        a.close()
        b.close()


class _Reader(FileDescriptor):
    def __init__(self, reactor: RustReactor, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.sock.recv(100)


def test_one_registration_per_descriptor_twisted_first(
    loop: aio.RustEventLoop,
) -> None:
    a, b = socket.socketpair()
    try:
        sel = _Reader(loop._reactor, a)
        loop._reactor.addReader(sel)
        with pytest.raises(FileExistsError, match="watched by the reactor"):
            loop.add_reader(a.fileno(), lambda: None)
        with pytest.raises(FileExistsError):
            loop.add_writer(a.fileno(), lambda: None)
        assert loop._reactor.getReaders() == [sel]
        assert loop._selector.get_map() == {}
        loop._reactor.removeReader(sel)
    finally:
        a.close()
        b.close()


def test_one_registration_per_descriptor_asyncio_first(
    loop: aio.RustEventLoop,
) -> None:
    a, b = socket.socketpair()
    try:
        loop.add_reader(a.fileno(), lambda: None)
        sel = _Reader(loop._reactor, a)
        with pytest.raises(OSError, match="native handler"):
            loop._reactor.addReader(sel)
        # The asyncio reader is untouched; Twisted sees no selectable.
        assert loop._reactor.getReaders() == []
        assert loop._selector.get_key(a.fileno()).events == 1
        assert loop.remove_reader(a.fileno())
    finally:
        a.close()
        b.close()


def test_twisted_selectables_and_asyncio_readers_side_by_side(
    loop: aio.RustEventLoop,
) -> None:
    t1, t2 = socket.socketpair()
    a1, a2 = socket.socketpair()
    try:
        got: list[str] = []
        sel = _Reader(loop._reactor, t1)
        sel.doRead = lambda: got.append("twisted " + t1.recv(10).decode())  # type: ignore[method-assign]
        loop._reactor.addReader(sel)
        loop.add_reader(
            a1.fileno(), lambda: got.append("asyncio " + a1.recv(10).decode())
        )
        t2.send(b"t")
        a2.send(b"a")

        async def main() -> None:
            while len(got) < 2:
                await asyncio.sleep(0.005)

        run(loop, main())
        assert sorted(got) == ["asyncio a", "twisted t"]
        loop._reactor.removeReader(sel)
        loop.remove_reader(a1.fileno())
    finally:
        for s in (t1, t2, a1, a2):
            s.close()


# --- threads, errors, debug -------------------------------------------------


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop: aio.RustEventLoop) -> None:
    fut = loop.create_future()

    def worker() -> None:
        time.sleep(0.1)
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    t = threading.Thread(target=worker)
    start = time.monotonic()
    t.start()
    # Nothing else is scheduled: only the wake-up can end the wait.
    ident = loop.run_until_complete(fut)
    t.join(TIMEOUT)
    assert ident != threading.get_ident()
    assert time.monotonic() - start < 2.0


def test_exceptions_go_to_the_exception_handler(loop: aio.RustEventLoop) -> None:
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    assert loop.get_exception_handler() is not None

    def boom() -> None:
        raise ValueError("boom")

    loop.call_soon(boom)
    loop.call_later(0, boom)
    seen: list[int] = []
    loop.call_soon(seen.append, 1)  # the pass goes on after an error
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert [type(c["exception"]) for c in contexts] == [ValueError, ValueError]
    assert seen == [1]
    # The context Handle._run gives the handler.
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "boom()" in contexts[0]["message"]
    assert isinstance(contexts[0]["handle"], asyncio.Handle)
    assert isinstance(contexts[1]["handle"], asyncio.TimerHandle)


def test_a_handle_class_with_its_own_run_keeps_it(loop: aio.RustEventLoop) -> None:
    seen: list[str] = []

    class Traced(asyncio.Handle):
        def _run(self) -> None:
            seen.append("own _run")
            super()._run()

    loop._add_callback(Traced(seen.append, ("callback",), loop))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["own _run", "callback"]


def test_the_default_handler_logs(
    loop: aio.RustEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise ValueError("logged boom")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(boom)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert "logged boom" in caplog.text


def test_keyboard_interrupt_leaves_the_rest_queued(loop: aio.RustEventLoop) -> None:
    seen: list[int] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(seen.append, 1)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert seen == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [1]


def test_debug_mode_warns_about_slow_callbacks(
    loop: aio.RustEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.01
    current: list[object] = []

    def slow() -> None:
        current.append(loop._current_handle)
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert "Executing <Handle" in caplog.text and "took" in caplog.text
    assert current and current[0] is not None
    loop.set_debug(False)


# --- the one run ----------------------------------------------------------------


def test_the_face_is_the_running_loop_in_reactor_callbacks(
    reactor: RustReactor,
) -> None:
    seen: list[object] = []

    def check() -> None:
        seen.append(asyncio.get_running_loop())
        reactor.callLater(0, later)

    def later() -> None:
        seen.append(asyncio.get_event_loop())
        reactor.stop()

    run_reactor(reactor, check)
    face = aio.loop_of(reactor)
    assert seen == [face, face]
    assert not face.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_asyncio_sleep_and_tasks_under_reactor_run(reactor: RustReactor) -> None:
    results: list[object] = []

    async def job() -> str:
        t0 = asyncio.get_running_loop().time()
        await asyncio.sleep(0.02)
        task = asyncio.ensure_future(asyncio.sleep(0.01, "inner"))
        inner = await task
        return f"{inner} {asyncio.get_running_loop().time() - t0 >= 0.02}"

    def start() -> None:
        d = defer.Deferred.fromFuture(asyncio.ensure_future(job()))
        d.addBoth(results.append)
        d.addBoth(lambda _: reactor.stop())

    run_reactor(reactor, start)
    assert results == ["inner True"]


def test_loop_stop_under_reactor_run_stops_the_reactor(reactor: RustReactor) -> None:
    def start() -> None:
        face = asyncio.get_running_loop()
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            face.run_until_complete(coro)
        coro.close()
        face.call_later(0.01, face.stop)

    run_reactor(reactor, start)
    assert not reactor.running


def test_twisted_work_is_served_while_asyncio_drives(loop: aio.RustEventLoop) -> None:
    reactor = loop._reactor
    seen: list[str] = []
    reactor.callLater(0.01, seen.append, "callLater")

    def worker() -> None:
        reactor.callFromThread(seen.append, "callFromThread")

    async def main() -> None:
        t = threading.Thread(target=worker)
        t.start()
        while len(seen) < 2:
            await asyncio.sleep(0.005)
        t.join(TIMEOUT)

    run(loop, main())
    assert sorted(seen) == ["callFromThread", "callLater"]
    assert not reactor.running


# --- Twisted interop ---------------------------------------------------------------


def test_deferred_as_future_awaited_by_a_task(reactor: RustReactor) -> None:
    results: list[object] = []

    async def task_body(d: defer.Deferred[str]) -> str:
        return "task got " + await d.asFuture(asyncio.get_running_loop())

    def start() -> None:
        d: defer.Deferred[str] = defer.Deferred()
        fut = asyncio.ensure_future(task_body(d))
        fut.add_done_callback(lambda f: (results.append(f.result()), reactor.stop()))
        reactor.callLater(0.01, d.callback, "deferred")

    run_reactor(reactor, start)
    assert results == ["task got deferred"]


def test_ensure_deferred_of_a_coroutine_awaiting_asyncio(reactor: RustReactor) -> None:
    results: list[object] = []

    async def coro() -> str:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "future")
        a = await defer.Deferred.fromFuture(fut)
        b = await defer.Deferred.fromFuture(
            asyncio.ensure_future(asyncio.sleep(0.01, "sleep"))
        )
        return f"{a} {b}"

    def start() -> None:
        d = defer.ensureDeferred(coro())
        d.addBoth(results.append)
        d.addBoth(lambda _: reactor.stop())

    run_reactor(reactor, start)
    assert results == ["future sleep"]


def test_from_future_failure_and_as_future_cancel(reactor: RustReactor) -> None:
    results: list[object] = []

    def start() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        d = defer.Deferred.fromFuture(fut)
        d.addErrback(lambda f: results.append(f.type))
        loop.call_soon(fut.set_exception, ZeroDivisionError())
        cancelled: defer.Deferred[None] = defer.Deferred()
        cancelled.addErrback(lambda f: results.append(f.type))
        af = cancelled.asFuture(loop)
        loop.call_soon(af.cancel)
        reactor.callLater(0.02, reactor.stop)

    run_reactor(reactor, start)
    assert results == [ZeroDivisionError, defer.CancelledError]


def test_deferreds_and_futures_under_run_until_complete(
    loop: aio.RustEventLoop,
) -> None:
    reactor = loop._reactor

    async def main() -> str:
        d: defer.Deferred[str] = defer.Deferred()
        reactor.callLater(0.01, d.callback, "twisted")
        return await d.asFuture(loop)

    assert run(loop, main()) == "twisted"


# --- TCP ----------------------------------------------------------------------


def test_tcp_echo_with_start_server_and_open_connection(
    loop: aio.RustEventLoop,
) -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()
        await w.wait_closed()

    async def main() -> bytes:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(1 << 20)
        w.write(payload)
        await w.drain()
        got = await r.readexactly(len(payload))
        assert got == payload
        w.write(b"bye")
        w.write_eof()
        rest = await r.read()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return rest

    assert run(loop, main()) == b"bye"
    assert loop._rloop.registered() == 0


def test_sock_calls(loop: aio.RustEventLoop) -> None:
    async def main() -> bytes:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accepting = asyncio.ensure_future(loop.sock_accept(lsock))
            await loop.sock_connect(client, lsock.getsockname())
            conn, _ = await accepting
            conn.setblocking(False)
            with conn:
                await loop.sock_sendall(client, b"x" * 100_000)
                got = b""
                while len(got) < 100_000:
                    got += await loop.sock_recv(conn, 65536)
                await loop.sock_sendall(conn, b"back")
                return await loop.sock_recv(client, 10)
        finally:
            client.close()
            lsock.close()

    assert run(loop, main()) == b"back"


def test_tcp_between_asyncio_and_twisted(loop: aio.RustEventLoop) -> None:
    from twisted.internet.protocol import Factory, Protocol

    reactor = loop._reactor

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data.upper())

    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")

    async def main() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port.getHost().port)
        w.write(b"hello")
        got = await r.readexactly(5)
        w.close()
        await w.wait_closed()
        await port.stopListening().asFuture(loop)
        return got

    assert run(loop, main()) == b"HELLO"


# --- executors, resolver, policy, closing ----------------------------------------


def test_run_in_executor_getaddrinfo_and_shutdown(loop: aio.RustEventLoop) -> None:
    async def main() -> tuple[int, Any]:
        ident = await loop.run_in_executor(None, threading.get_ident)
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        host, port = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)
        assert (host, port) in (("127.0.0.1", "http"), ("127.0.0.1", "80"))
        await loop.shutdown_default_executor()
        await loop.shutdown_asyncgens()
        return ident, infos[0][4]

    ident, addr = run(loop, main())
    assert ident != threading.get_ident()
    assert addr == ("127.0.0.1", 80)


def test_the_policy_and_runner_make_rust_loops() -> None:
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(aio.RustEventLoopPolicy())
    try:
        lp = asyncio.new_event_loop()
        assert isinstance(lp, aio.RustEventLoop)
        lp.close()

        async def main() -> type:
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is aio.RustEventLoop
    finally:
        asyncio.set_event_loop_policy(old)
    with asyncio.Runner(loop_factory=aio.new_event_loop) as r:
        assert r.run(asyncio.sleep(0, "ran")) == "ran"
        assert isinstance(r.get_loop(), aio.RustEventLoop)


def test_a_reactor_has_one_face_at_a_time(reactor: RustReactor) -> None:
    face = aio.loop_of(reactor)
    assert aio.loop_of(reactor) is face
    assert aio.RustEventLoopPolicy(reactor).new_event_loop() is face
    face.close()
    assert aio.loop_of(reactor) is not face


def test_timers_of_a_closed_face_do_not_run(reactor: RustReactor) -> None:
    face = aio.loop_of(reactor)
    seen: list[int] = []
    face.call_later(0.01, seen.append, 1)
    face.call_soon(seen.append, 2)
    face.close()
    with pytest.raises(RuntimeError, match="closed"):
        face.call_soon(seen.append, 3)
    reactor.callLater(0.03, reactor.stop)
    run_reactor(reactor, lambda: None)
    assert seen == []


def test_closing_a_face_closes_its_own_reactor() -> None:
    lp = aio.RustEventLoop()
    a, b = socket.socketpair()
    try:
        lp.add_reader(a.fileno(), lambda: None)
        lp.call_later(100, lambda: None)
        lp.close()
        assert lp._rloop.registered() == 0
        assert lp._reactor.getDelayedCalls() == []
        assert lp.is_closed()
    finally:
        a.close()
        b.close()


def test_reactor_stop_when_asyncio_drives_is_not_running(
    loop: aio.RustEventLoop,
) -> None:
    async def main() -> None:
        with pytest.raises(error.ReactorNotRunning):
            loop._reactor.stop()

    run(loop, main())


def test_unix_sockets_subprocesses_and_signals(
    loop: aio.RustEventLoop, tmp_path: Any
) -> None:
    import signal
    import sys

    path = str(tmp_path / "s.sock")

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write((await r.readline()).upper())
        await w.drain()
        w.close()

    async def main() -> tuple[bytes, bytes, int, int]:
        server = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix\n")
        line = await r.readline()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read()[::-1])",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"olleh")

        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, signal.SIGUSR1)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            signum = await got
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return line, out, proc.returncode, signum

    line, out, rc, signum = run(loop, main())
    assert (line, out, rc, signum) == (b"UNIX\n", b"hello", 0, signal.SIGUSR1)


def test_tasks_run_with_their_loop_under_reactor_iterate(reactor: RustReactor) -> None:
    face = aio.loop_of(reactor)
    seen: list[object] = []

    async def job() -> None:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0.01)
        seen.append("slept")

    task = face.create_task(job())
    deadline = time.monotonic() + TIMEOUT
    while not task.done() and time.monotonic() < deadline:
        reactor.iterate(0.005)
    assert task.done() and task.exception() is None
    assert seen == [face, "slept"]
    assert not face.is_running()


def test_handles_are_asyncios_outside_debug_mode_too(loop: aio.RustEventLoop) -> None:
    # The fast paths (handles made in Rust) make the same objects as the
    # debug mode's Python methods.
    assert loop.call_soon is not aio.RustEventLoop.call_soon
    ctx = contextvars.copy_context()
    for debug in (False, True):
        loop.set_debug(debug)
        h = loop.call_soon(print, 1, context=ctx)
        t = loop.call_later(10, print, 2)
        a = loop.call_at(loop.time() + 10, print, 3)
        ts = loop.call_soon_threadsafe(print, 4)
        for handle in (h, ts):
            assert type(handle) is asyncio.Handle
            assert handle._callback is print and not handle.cancelled()
        assert h._context is ctx
        assert h._args == (1,)
        assert "print" in repr(h)
        for timer in (t, a):
            assert isinstance(timer, asyncio.TimerHandle)
            assert timer._call.active() and timer._scheduled
            assert timer.when() == pytest.approx(loop.time() + 10, abs=1)
            timer.cancel()
            assert not timer._call.active()
        assert t < a or t.when() <= a.when()
        for handle in (h, ts):
            handle.cancel()
    loop.set_debug(False)
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)
    # A NaN time would never be due: refused (asyncio's heap takes it).
    with pytest.raises(ValueError, match="NaN"):
        loop.call_at(float("nan"), print)
    with pytest.raises(ValueError, match="NaN"):
        loop.call_later(float("nan"), print)
    loop.close()
    for call in (loop.call_soon, loop.call_soon_threadsafe):
        with pytest.raises(RuntimeError, match="closed"):
            call(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)


def test_queued_handles_leave_the_collector_and_come_back(
    loop: aio.RustEventLoop,
) -> None:
    # A handle call_soon makes is out of the collector's lists while queued
    # (with the context copied for it) and back in once it leaves the queue:
    # run, skipped as cancelled, or cleared with the loop.
    import gc

    seen: list[bool] = []

    class Owner:
        def callback(self) -> None:
            seen.append(gc.is_tracked(self.handle))

    owner = Owner()
    owner.handle = loop.call_soon(owner.callback)
    ctx = owner.handle._context
    assert not gc.is_tracked(owner.handle) and not gc.is_tracked(ctx)
    given = contextvars.copy_context()
    mine = loop.call_soon(print, context=given)
    assert gc.is_tracked(given), "a context the caller gave is left alone"
    mine.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [False]
    assert gc.is_tracked(owner.handle) and gc.is_tracked(ctx)
    assert gc.is_tracked(mine) and gc.is_tracked(mine._context)
    # A cycle through a handle that ran is garbage the collector finds.
    ref = __import__("weakref").ref(owner)
    del owner, ctx
    gc.collect()
    assert ref() is None
    cleared = loop.call_soon(print)
    loop.close()
    assert gc.is_tracked(cleared) and gc.is_tracked(cleared._context)


def test_a_pending_timer_is_out_of_the_collector_and_a_fired_one_no_cycle(
    loop: aio.RustEventLoop,
) -> None:
    # The heap holds an asyncio timer, its context and its timed call out of
    # the collector's lists; once fired, the timed call lets go of the timer
    # (which refers to it), so the timer is freed without the collector.
    import gc
    import weakref

    timer = loop.call_later(0, int)
    assert not gc.is_tracked(timer) and not gc.is_tracked(timer._call)
    assert not gc.is_tracked(timer._context)
    ref = weakref.ref(timer)
    gc.disable()
    try:
        del timer
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ref() is None
    finally:
        gc.enable()
    pending = loop.call_later(10, print)
    pending.cancel()
    assert gc.is_tracked(pending) and gc.is_tracked(pending._context)
