"""
Tests for L{twisted_shim.reactor.RustReactor}: interfaces, installation, the
core loop, timed calls, calls from threads, the descriptor set and errors.

Each test builds its own reactor (the global one is never installed in this
process); installation paths run in a child process.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from twisted.internet import error, interfaces, posixbase
from twisted.internet.abstract import FileDescriptor
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.epollreactor import EPollReactor
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from twisted_shim import aio
from twisted_shim.reactor import RustReactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_INTERFACES = [
    interfaces.IReactorCore,
    interfaces.IReactorFDSet,
    interfaces.IReactorTime,
    interfaces.IReactorTCP,
    interfaces.IReactorUDP,
    interfaces.IReactorUNIX,
    interfaces.IReactorSSL,
    interfaces.IReactorThreads,
    interfaces.IReactorProcess,
    interfaces.IReactorPluggableResolver,
    interfaces.IReactorSocket,
]


def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run C{code} in a fresh interpreter (a reactor installs once per process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def reactor() -> Iterator[RustReactor]:
    r = RustReactor()
    yield r
    for dc in r.getDelayedCalls():
        dc.cancel()
    r.removeAll()


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def failures(events: list[dict]) -> list[BaseException]:
    return [e["log_failure"].value for e in events if "log_failure" in e]


# --- interfaces and installation -------------------------------------------


@pytest.mark.parametrize("iface", ALL_INTERFACES, ids=lambda i: i.__name__)
def test_provides(reactor: RustReactor, iface: type) -> None:
    assert verifyObject(iface, reactor)


def test_installReactor_by_name() -> None:
    """installReactor("rust") finds the plugin and installs our reactor."""
    result = python(
        """
        from twisted.application.reactors import installReactor
        from twisted.internet import interfaces
        from zope.interface.verify import verifyObject
        r = installReactor("rust")
        from twisted.internet import reactor
        assert reactor is r, (reactor, r)
        for name in %r:
            verifyObject(getattr(interfaces, name), r)
        print(type(r).__module__ + "." + type(r).__name__)
        """
        % [i.__name__ for i in ALL_INTERFACES]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "twisted_shim.reactor.RustReactor"


def test_install_twice_raises() -> None:
    result = python(
        """
        import twisted_shim
        from twisted.internet.error import ReactorAlreadyInstalledError
        twisted_shim.install()
        try:
            twisted_shim.install()
        except ReactorAlreadyInstalledError:
            print("refused")
        """
    )
    assert result.stdout.strip() == "refused", result.stderr


def test_install_after_another_reactor_raises() -> None:
    result = python(
        """
        from twisted.internet import epollreactor
        epollreactor.install()
        import twisted_shim
        from twisted.internet.error import ReactorAlreadyInstalledError
        try:
            twisted_shim.install()
        except ReactorAlreadyInstalledError:
            print("refused")
        """
    )
    assert result.stdout.strip() == "refused", result.stderr


def test_trial_reactor_option(tmp_path: os.PathLike[str]) -> None:
    """trial --reactor=rust runs a test module on our reactor."""
    mod = os.path.join(tmp_path, "test_on_rust.py")
    with open(mod, "w") as f:
        f.write(
            textwrap.dedent(
                """
                from twisted.internet import reactor, task
                from twisted.trial import unittest

                class T(unittest.TestCase):
                    def test_reactor(self):
                        self.assertEqual(type(reactor).__name__, "RustReactor")
                        return task.deferLater(reactor, 0.01, lambda: None)
                """
            )
        )
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "--reactor=rust", "test_on_rust"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "PASSED (successes=1)" in result.stdout, result.stdout + result.stderr


def test_twist_web_on_rust() -> None:
    """twist --reactor=rust web serves requests."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "twist"),
            "--reactor=rust",
            "web",
            "--wsgi",
            "examples.hello.application",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = python(
            f"""
            import time, urllib.request
            for _ in range(200):
                try:
                    body = urllib.request.urlopen("http://127.0.0.1:{port}/").read()
                    break
                except OSError:
                    time.sleep(0.05)
            print(body.decode())
            """
        )
        assert result.stdout.strip() == "Hello, world!", result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # twist re-raises the signal that stopped it, as on every reactor.
    assert proc.returncode == -signal.SIGTERM, out
    assert "Received SIGTERM, shutting down." in out
    assert "Main loop terminated." in out


# --- recognised as Twisted's asyncio reactor -----------------------------------


def test_is_an_asyncio_reactor(reactor: RustReactor) -> None:
    """What code that wants Twisted's asyncio reactor checks: isinstance
    (Daphne, Scrapy's is_asyncio_reactor_installed) and class equality
    (Scrapy's verify_installed_reactor)."""
    assert isinstance(reactor, AsyncioSelectorReactor)
    cls = type(reactor)
    assert cls == AsyncioSelectorReactor
    assert AsyncioSelectorReactor == cls
    assert not cls != AsyncioSelectorReactor
    assert cls == RustReactor
    assert cls != EPollReactor
    assert cls is not AsyncioSelectorReactor
    # Still two classes as keys: the hash is the identity hash.
    assert len({RustReactor, AsyncioSelectorReactor}) == 2
    assert {AsyncioSelectorReactor: 1}.get(RustReactor) is None


def test_asyncioEventloop_is_the_face(reactor: RustReactor) -> None:
    face = reactor._asyncioEventloop
    assert face is aio.loop_of(reactor)
    assert isinstance(face, aio.RustEventLoop)
    assert face._rloop is reactor._loop
    face.close()
    again = reactor._asyncioEventloop
    assert again is not face and not again.is_closed()
    assert again._rloop is reactor._loop


def test_making_a_reactor_makes_no_asyncio_loop() -> None:
    """AsyncioSelectorReactor.__init__ (an asyncio selector loop, set as the
    thread's loop) does not run; the face waits for its first use."""
    r = RustReactor()
    assert r._asyncioFace is None
    assert "_asyncioEventloop" not in vars(r)


def test_no_attribute_is_the_asyncio_reactors() -> None:
    """
    Every name AsyncioSelectorReactor defines resolves on RustReactor to our
    own method, or to PosixReactorBase's (what it resolved to before
    AsyncioSelectorReactor was a base), or to nothing: none of its code runs
    on our reactor.
    """
    bookkeeping = {"__module__", "__doc__", "__implemented__", "__provides__"}
    for name, theirs in vars(AsyncioSelectorReactor).items():
        if name in bookkeeping:
            continue
        ours = inspect.getattr_static(RustReactor, name)
        assert ours is not theirs, name
        if hasattr(posixbase.PosixReactorBase, name):
            own = getattr(ours, "__qualname__", "").startswith("RustReactor.")
            base = inspect.getattr_static(posixbase.PosixReactorBase, name)
            assert own or ours is base, name
        else:
            assert not hasattr(RustReactor(), name), name


def test_install_makes_the_face_the_event_loop() -> None:
    """twisted_shim.install(), then what Daphne's server module checks before
    deciding to keep the installed reactor, and the loop asyncio code gets
    before and while the reactor runs."""
    result = python(
        """
        import asyncio, sys
        import twisted_shim
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
        r = twisted_shim.install()
        installed = sys.modules["twisted.internet.reactor"]
        assert installed is r and isinstance(installed, AsyncioSelectorReactor)
        assert asyncio.get_event_loop() is r._asyncioEventloop
        seen = []
        def running():
            seen.append(asyncio.get_running_loop() is r._asyncioEventloop)
            r.stop()
        r.callWhenRunning(running)
        r.run()
        print(seen)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[True]"


# --- the core loop ------------------------------------------------------------


def test_stop_when_not_running_raises(reactor: RustReactor) -> None:
    with pytest.raises(error.ReactorNotRunning):
        reactor.stop()


def test_run_and_stop(reactor: RustReactor) -> None:
    order: list[str] = []
    reactor.callWhenRunning(order.append, "running")
    reactor.addSystemEventTrigger("before", "shutdown", order.append, "shutdown")
    reactor.callLater(0, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert order == ["running", "shutdown"]
    assert not reactor.running


def test_iterate_zero_does_not_wait(reactor: RustReactor) -> None:
    """
    iterate(0) returns without waiting for the next event: a call scheduled
    by another thread a little later has not run when it returns.
    """
    ran: list[bool] = []
    release = threading.Event()

    def later() -> None:
        release.wait(30)
        reactor.callFromThread(ran.append, True)

    t = threading.Thread(target=later)
    t.start()
    reactor.callLater(60, lambda: None)
    reactor.iterate(0)
    reactor.iterate()
    assert ran == []
    release.set()
    t.join()
    while not ran:
        reactor.iterate(1)
    assert ran == [True]


def test_callFromThread_wakes_the_loop(reactor: RustReactor) -> None:
    """
    A call from another thread is run while the loop sleeps with nothing else
    to do (no timers, no descriptors): the loop is woken, not polled.
    """
    started = threading.Event()
    reactor.callWhenRunning(started.set)

    def other() -> None:
        started.wait(30)
        reactor.callFromThread(reactor.stop)

    t = threading.Thread(target=other)
    t.start()
    reactor.run(installSignalHandlers=False)
    t.join()
    assert not reactor.running


def test_callFromThread_many_threads(reactor: RustReactor) -> None:
    results: list[int] = []
    n, per = 4, 2500

    def worker(k: int) -> None:
        for i in range(per):
            reactor.callFromThread(results.append, k * per + i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]

    def check() -> None:
        if len(results) == n * per:
            reactor.stop()
        else:
            reactor.callLater(0.001, check)

    reactor.callWhenRunning(lambda: [t.start() for t in threads])
    reactor.callLater(0, check)
    reactor.run(installSignalHandlers=False)
    for t in threads:
        t.join()
    assert sorted(results) == list(range(n * per))


def test_callFromThread_requires_callable(reactor: RustReactor) -> None:
    with pytest.raises(AssertionError):
        reactor.callFromThread(42)  # type: ignore[arg-type]


def test_exception_in_callback_is_logged_and_loop_goes_on(
    reactor: RustReactor, logged: list[dict]
) -> None:
    ran: list[str] = []

    def boom() -> None:
        raise ZeroDivisionError("timed")

    reactor.callLater(0, boom)
    reactor.callFromThread(lambda: 1 / 0)
    reactor.callLater(0.01, ran.append, "after")
    reactor.callLater(0.02, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert ran == ["after"]
    kinds = [type(f) for f in failures(logged)]
    assert kinds.count(ZeroDivisionError) == 2
    messages = [e.get("log_format") for e in logged if "log_failure" in e]
    assert "while handling timed call" in messages
    assert "while calling from thread" in messages


# --- IReactorTime -----------------------------------------------------------


def test_delayed_call_provides_IDelayedCall(reactor: RustReactor) -> None:
    dc = reactor.callLater(1, lambda: None)
    assert verifyObject(interfaces.IDelayedCall, dc)


def test_callLater_negative_delay(reactor: RustReactor) -> None:
    with pytest.raises(AssertionError, match="-1 is not greater than or equal to 0"):
        reactor.callLater(-1, lambda: None)
    with pytest.raises(AssertionError):
        reactor.callLater(float("nan"), lambda: None)


def test_delayed_call_lifecycle(reactor: RustReactor) -> None:
    calls: list[tuple[object, ...]] = []
    dc = reactor.callLater(0, lambda *a, **kw: calls.append((a, kw)), 1, x=2)
    assert dc.active()
    assert dc.args == (1,) and dc.kw == {"x": 2}
    assert dc in reactor.getDelayedCalls()
    reactor.iterate(0)
    assert calls == [((1,), {"x": 2})]
    assert not dc.active() and dc.called
    assert dc not in reactor.getDelayedCalls()
    with pytest.raises(error.AlreadyCalled):
        dc.cancel()
    with pytest.raises(error.AlreadyCalled):
        dc.reset(1)
    with pytest.raises(error.AlreadyCalled):
        dc.delay(1)


def test_cancel(reactor: RustReactor) -> None:
    ran: list[int] = []
    dc = reactor.callLater(0, ran.append, 1)
    dc.cancel()
    assert dc.cancelled and not dc.active()
    assert reactor.getDelayedCalls() == []
    with pytest.raises(error.AlreadyCancelled):
        dc.cancel()
    with pytest.raises(error.AlreadyCancelled):
        dc.reset(0)
    with pytest.raises(AttributeError):
        dc.func  # noqa: B018
    reactor.iterate(0)
    assert ran == []


def test_pending_calls_are_out_of_the_collector_until_they_leave(
    reactor: RustReactor,
) -> None:
    # A call and its arguments tuple are untracked while the heap holds
    # them (src/collector.rs), and tracked again once the call runs, is
    # cancelled, or the reactor lets go of it; a cycle through a call that
    # ran is found by the collector as before.
    import gc
    import weakref

    class Owner:
        def tick(self, *args: object) -> None:
            self.ran = args

    owner = Owner()
    owner.call = reactor.callLater(0, owner.tick, [1])
    cancelled = reactor.callLater(10, print, [2])
    later = reactor.callLater(10, print, [3])
    for dc in (owner.call, cancelled, later):
        assert not gc.is_tracked(dc) and not gc.is_tracked(dc.args)
    cancelled.cancel()
    assert gc.is_tracked(cancelled)
    reactor.iterate(0)
    assert owner.ran == ([1],)
    assert gc.is_tracked(owner.call) and gc.is_tracked(owner.call.args)
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
    args = later.args
    reactor._loop.close()
    assert gc.is_tracked(later) and gc.is_tracked(args)


def test_reset_and_delay_move_the_call(reactor: RustReactor) -> None:
    now = reactor.seconds()
    dc = reactor.callLater(10, lambda: None)
    assert dc.getTime() == pytest.approx(now + 10, abs=0.5)
    dc.delay(5)
    assert dc.getTime() == pytest.approx(now + 15, abs=0.5)
    dc.reset(100)
    assert dc.getTime() == pytest.approx(now + 100, abs=0.5)
    dc.reset(0)
    assert dc.getTime() == pytest.approx(now, abs=0.5)
    assert reactor.getDelayedCalls() == [dc]
    reactor.iterate(0)
    assert dc.called


def test_reset_sooner_fires_once(reactor: RustReactor) -> None:
    """A call moved earlier leaves no stale copy behind to fire again."""
    ran: list[str] = []
    dc = reactor.callLater(0.05, ran.append, "x")
    reactor.iterate(0)  # the call is now in the heap
    dc.reset(0)
    reactor.iterate(0)
    assert ran == ["x"]
    reactor.callLater(0.1, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert ran == ["x"]


def test_timed_calls_order(reactor: RustReactor) -> None:
    ran: list[int] = []
    for i, delay in enumerate([0.03, 0.01, 0.02, 0.01, 0]):
        reactor.callLater(delay, ran.append, i)
    reactor.callLater(0.05, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert ran == [4, 1, 3, 2, 0]


def test_call_scheduled_by_timed_call_waits_a_pass(reactor: RustReactor) -> None:
    """As in ReactorBase: a callLater(0) made by a timed call runs next pass."""
    ran: list[str] = []
    reactor.callLater(0, lambda: reactor.callLater(0, ran.append, "inner"))
    reactor.runUntilCurrent()
    assert ran == []
    reactor.runUntilCurrent()
    assert ran == ["inner"]


def test_many_cancellations_are_compacted(reactor: RustReactor) -> None:
    calls = [reactor.callLater(100 + i, lambda: None) for i in range(1000)]
    reactor.iterate(0)
    for dc in calls[:600]:
        dc.cancel()
    reactor.iterate(0)
    assert reactor.getDelayedCalls() == calls[600:]
    # Cancelled calls do not make the loop wake up early.
    assert reactor.timeout() == pytest.approx(700, abs=1)


def test_seconds_can_be_replaced(reactor: RustReactor) -> None:
    """Assigning reactor.seconds changes the clock callLater uses."""
    original = reactor.seconds
    reactor.seconds = lambda: 100  # type: ignore[method-assign]
    try:
        dc = reactor.callLater(5, lambda: None)
        assert dc.getTime() == 105
        assert dc.seconds() == 100
    finally:
        reactor.seconds = original  # type: ignore[method-assign]
    assert reactor.seconds() > 1e9
    dc.cancel()


def test_delayed_call_repr(reactor: RustReactor) -> None:
    def named(a: int, b: str = "") -> None:
        pass

    dc = reactor.callLater(1, named, 1, b="x")
    text = repr(dc)
    assert text.startswith("<DelayedCall 0x")
    assert "called=0 cancelled=0" in text
    assert "named(1, b='x')>" in text


@pytest.fixture
def delayed_call_debug() -> Iterator[None]:
    from twisted.internet import base

    base.DelayedCall.debug = True
    try:
        yield
    finally:
        base.DelayedCall.debug = False


def _schedule_from_here(reactor: RustReactor) -> object:
    return reactor.callLater(1, len, "abc")


def test_delayed_call_debug_records_the_creator(
    reactor: RustReactor, delayed_call_debug: None
) -> None:
    """
    With Twisted's C{base.DelayedCall.debug} set, a call records the stack
    that scheduled it, ending at the caller of C{callLater}, and its repr
    shows it as Twisted's does.
    """
    dc = _schedule_from_here(reactor)
    assert dc.debug
    creator = dc.creator
    assert isinstance(creator, list) and all(isinstance(f, str) for f in creator)
    assert "in _schedule_from_here" in creator[-1]
    assert 'reactor.callLater(1, len, "abc")' in creator[-1]
    text = repr(dc)
    assert "len('abc')\n\ntraceback at creation: \n\n" in text
    assert "_schedule_from_here" in text
    dc.cancel()
    # Twisted keeps the repr taken at cancel time, function and all.
    frozen = repr(dc)
    assert "called=0 cancelled=1 len('abc')" in frozen
    assert "_schedule_from_here" in frozen
    assert repr(dc) == frozen
    assert not dc.active()


def test_delayed_call_without_debug_records_nothing(reactor: RustReactor) -> None:
    dc = _schedule_from_here(reactor)
    assert not dc.debug
    assert dc.creator is None
    assert "traceback at creation" not in repr(dc)
    dc.cancel()
    assert "cancelled=1" in repr(dc)


# --- IReactorFDSet -----------------------------------------------------------


class Reader(FileDescriptor):
    def __init__(self, reactor: RustReactor, sock: socket.socket) -> None:
        FileDescriptor.__init__(self, reactor)
        self.sock = sock
        self.data = b""
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            from twisted.internet.main import CONNECTION_DONE

            return CONNECTION_DONE  # type: ignore[return-value]
        self.data += chunk
        return None

    def connectionLost(self, reason: object) -> None:
        self.lost.append(reason)


def test_add_remove_readers_and_writers(reactor: RustReactor) -> None:
    a, b = socket.socketpair()
    r = Reader(reactor, a)
    reactor.addReader(r)
    reactor.addReader(r)
    assert reactor.getReaders() == [r]
    reactor.addWriter(r)
    assert reactor.getWriters() == [r]
    reactor.removeWriter(r)
    assert reactor.getWriters() == [] and reactor.getReaders() == [r]
    reactor.removeReader(r)
    reactor.removeReader(r)
    assert reactor.getReaders() == []
    reactor.addReader(r)
    reactor.addWriter(r)
    assert reactor.removeAll() == [r]
    assert reactor.getReaders() == [] and reactor.getWriters() == []
    a.close()
    b.close()


def test_reader_gets_data_then_clean_close(reactor: RustReactor) -> None:
    a, b = socket.socketpair()
    r = Reader(reactor, a)
    reactor.addReader(r)
    b.sendall(b"hello")
    b.close()
    for _ in range(10):
        reactor.iterate(0.1)
        if r.lost:
            break
    assert r.data == b"hello"
    assert r.lost[0].check(error.ConnectionDone)
    assert reactor.getReaders() == []
    a.close()


class ContextReader(Reader):
    """A reader that records the log context its doRead and doWrite run in."""

    seen: list[tuple[str, dict, int]]

    def logPrefix(self) -> str:
        return "ContextReader,7"

    def _record(self, what: str) -> None:
        from twisted.python import context, log

        self.seen.append(
            (
                what,
                dict(context.get(log.ILogContext)),
                len(context.theContextTracker.currentContext().contexts),
            )
        )

    def doRead(self) -> None:
        self._record("read")
        self.reactor.removeReader(self)
        self.reactor.addWriter(self)

    def doWrite(self) -> None:
        self._record("write")
        self.reactor.removeWriter(self)


@pytest.mark.parametrize("kind", ["rust", "epoll"])
def test_callbacks_run_in_twisteds_log_context(kind: str) -> None:
    """
    doRead and doWrite run with C{{ILogContext: {..., "system":
    logPrefix()}}} pushed on the context stack, as Twisted's
    C{callWithLogger} pushes it: the innermost ILogContext on the stack
    (not only the top dictionary's) copied with "system" set, other keys
    kept; one dictionary more on the stack, nothing left on it afterwards.
    """
    from twisted.internet.epollreactor import EPollReactor
    from twisted.python import context, log

    r = RustReactor() if kind == "rust" else EPollReactor()
    a, b = socket.socketpair()
    reader = ContextReader(r, a)
    reader.seen = []
    outer = dict(context.get(log.ILogContext), extra="kept")
    depth = len(context.theContextTracker.currentContext().contexts)

    def drive() -> None:
        r.addReader(reader)
        b.sendall(b"x")
        for _ in range(20):
            r.iterate(0.05)
            if len(reader.seen) == 2:
                break

    # The innermost dictionary has no ILogContext: it is found beneath.
    context.call({log.ILogContext: outer}, context.call, {"unrelated": 1}, drive)
    try:
        assert [s[0] for s in reader.seen] == ["read", "write"]
        for _, ctx, inner_depth in reader.seen:
            assert ctx == dict(outer, system="ContextReader,7")
            assert inner_depth == depth + 3
        assert len(context.theContextTracker.currentContext().contexts) == depth
    finally:
        r.removeAll()
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["rust", "epoll"])
def test_keyboard_interrupt_from_log_prefix_goes_up(kind: str) -> None:
    """
    A C{KeyboardInterrupt} raised by C{logPrefix()} is not logged as a
    buggy prefix: it leaves the iteration, as Twisted's C{callWithLogger}
    re-raises it; C{doRead} is not called.
    """
    from twisted.internet.epollreactor import EPollReactor

    class Interrupting(Reader):
        def logPrefix(self) -> str:
            raise KeyboardInterrupt()

    r = RustReactor() if kind == "rust" else EPollReactor()
    a, b = socket.socketpair()
    reader = Interrupting(r, a)
    r.addReader(reader)
    b.sendall(b"x")
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(20):
                r.iterate(0.05)
        assert reader.data == b""
    finally:
        r.removeAll()
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["rust", "epoll"])
def test_a_broken_log_context_escapes_the_iteration(kind: str) -> None:
    """
    When the log context cannot be pushed (the ILogContext on the stack is
    not a dictionary, so it cannot be copied), the selectable is not
    called and the error leaves the iteration: Twisted's C{callWithLogger}
    logs it with C{err()}, which fails on the same context and raises. Once
    the context is sane again, the selectable is served.
    """
    from twisted.internet.epollreactor import EPollReactor
    from twisted.python import context, log

    r = RustReactor() if kind == "rust" else EPollReactor()
    a, b = socket.socketpair()
    reader = Reader(r, a)
    r.addReader(reader)
    b.sendall(b"x")

    def drive() -> None:
        for _ in range(20):
            r.iterate(0.05)
            if reader.data:
                break

    try:
        # epoll: the AttributeError of err()'s own copy; rust: the TypeError
        # of the copy it makes to push the context.
        with pytest.raises((AttributeError, TypeError)):
            context.call({log.ILogContext: 42}, drive)
        assert reader.data == b""
        drive()
        assert reader.data == b"x"
    finally:
        r.removeAll()
        a.close()
        b.close()


def test_an_overridden_stop_writing_is_called_by_do_write() -> None:
    """
    A transport class that overrides C{stopWriting} has it called when
    C{doWrite} empties the queue, as Twisted's C{doWrite} calls
    C{self.stopWriting()}, on the native transport too.
    """
    from twisted.internet.protocol import Factory, Protocol

    from twisted_shim import tcp as native_tcp

    calls: list[str] = []

    class Server(native_tcp.Server):
        def stopWriting(self) -> None:
            calls.append("stopWriting")
            super().stopWriting()

    class Port(native_tcp.Port):
        transport = Server

    class Hello(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hello")

    r = RustReactor()
    port = Port(0, Factory.forProtocol(Hello), 5, "127.0.0.1", r)
    port.startListening()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(5)
    try:
        for _ in range(40):
            r.iterate(0.05)
            if calls:
                break
        assert client.recv(5) == b"hello"
        assert calls == ["stopWriting"]
    finally:
        client.close()
        port.stopListening()
        r.removeAll()


def test_fileno_minus_one_is_a_clear_error(reactor: RustReactor) -> None:
    class NoFD(Reader):
        def fileno(self) -> int:
            return -1

    a, b = socket.socketpair()
    with pytest.raises(OSError, match="fileno\\(\\) returned -1"):
        reactor.addReader(NoFD(reactor, a))
    assert reactor.getReaders() == []
    a.close()
    b.close()


def test_fileno_garbage_is_a_clear_error(reactor: RustReactor) -> None:
    class BadFD(Reader):
        def fileno(self) -> int:
            return -7

    a, b = socket.socketpair()
    with pytest.raises(OSError, match="invalid file descriptor: -7"):
        reactor.addReader(BadFD(reactor, a))
    a.close()
    b.close()


def test_descriptor_closed_underneath_is_disconnected(reactor: RustReactor) -> None:
    """
    A socket closed without removeReader is noticed once the loop is idle and
    its selectable disconnected with ConnectionFdescWentAway; the loop does
    not spin on it meanwhile.
    """
    a, b = socket.socketpair()
    r = Reader(reactor, a)
    reactor.addReader(r)
    a.close()
    iterations = 0
    while not r.lost and iterations < 10:
        reactor.iterate(5)
        iterations += 1
    assert r.lost and r.lost[0].check(error.ConnectionFdescWentAway)
    assert iterations <= 3
    assert reactor.getReaders() == []
    b.close()


def _reuse_number(sock: socket.socket, other: socket.socket) -> socket.socket:
    """
    Close C{sock}'s descriptor underneath it and give its number to a
    duplicate of C{other}, as when a number is reused; returns a socket
    object for that number.
    """
    fd = sock.fileno()
    os.dup2(other.fileno(), fd)
    sock.detach()
    return socket.socket(fileno=fd)


def test_reused_descriptor_number_is_registered_afresh(reactor: RustReactor) -> None:
    """
    A selectable whose descriptor was closed underneath it, and whose number
    now names another socket registered by another selectable: the old one
    is disconnected with ConnectionFdescWentAway at the next iteration, and
    the new one gets its events (the old entry neither hides the new file
    from epoll nor makes the idle sweep take the new selectable for lost).
    """
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    old = Reader(reactor, a)
    reactor.addReader(old)
    reused = _reuse_number(a, c)
    new = Reader(reactor, reused)
    reactor.addReader(new)
    d.sendall(b"to the new one")
    reactor.iterate(5)
    assert old.lost and old.lost[0].check(error.ConnectionFdescWentAway)
    assert new.data == b"to the new one"
    assert reactor.getReaders() == [new]
    # An idle second later, the sweep leaves the new selectable alone.
    reactor.iterate(1.1)
    assert new.lost == [] and reactor.getReaders() == [new]
    reactor.removeAll()
    for s in (reused, b, c, d):
        s.close()


def test_reused_descriptor_number_can_go_to_a_native_handler(
    reactor: RustReactor,
) -> None:
    """
    The same, when the number goes to a native handler (the WSGI host's
    listener): registering it does not fail, and the old selectable is told.
    """
    from twisted_shim.wsgi.server import WSGIServer

    a, b = socket.socketpair()
    old = Reader(reactor, a)
    reactor.addReader(old)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    reused = _reuse_number(a, listener)
    listener.close()

    def app(environ: dict, start_response: object) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])  # type: ignore[operator]
        return [b"ok"]

    server = WSGIServer(app, reactor=reactor)
    server.listen(reused)
    client = socket.create_connection(reused.getsockname(), timeout=10)
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    client.setblocking(False)
    got = b""
    for _ in range(100):
        reactor.iterate(0.05)
        try:
            got += client.recv(65536)
        except BlockingIOError:
            continue
        if got.endswith(b"ok"):
            break
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok"), got
    assert old.lost and old.lost[0].check(error.ConnectionFdescWentAway)
    server.abort()
    client.close()
    b.close()


def test_regular_file_is_polled_continuously(reactor: RustReactor, tmp_path) -> None:
    """epoll cannot watch regular files; they fall back as in epollreactor."""
    path = tmp_path / "f"
    path.write_bytes(b"data")

    class FileReader(FileDescriptor):
        def __init__(self, reactor: RustReactor) -> None:
            FileDescriptor.__init__(self, reactor)
            self.f = open(path, "rb")
            self.got = b""

        def fileno(self) -> int:
            return self.f.fileno()

        def doRead(self) -> None:
            self.got += self.f.read()

    fr = FileReader(reactor)
    reactor.addReader(fr)
    assert fr in reactor.getReaders()
    reactor.callLater(0.05, reactor.stop)
    reactor.run(installSignalHandlers=False)
    assert fr.got == b"data"
    reactor.removeReader(fr)
    assert reactor.getReaders() == []
    fr.f.close()


# --- signals --------------------------------------------------------------------


def test_sigint_stops_an_idle_reactor() -> None:
    """SIGINT reaches a reactor asleep with nothing to do and stops it."""
    result = python(
        """
        import os, signal, threading
        import twisted_shim
        reactor = twisted_shim.install()
        send = lambda: os.kill(os.getpid(), signal.SIGINT)
        reactor.callWhenRunning(lambda: threading.Timer(0.2, send).start())
        reactor.run()
        print("stopped")
        """,
        timeout=30,
    )
    assert result.stdout.strip() == "stopped", result.stderr


def test_sigint_without_handlers_interrupts_the_wait() -> None:
    """
    Without Twisted's handlers, Python's KeyboardInterrupt is raised while the
    loop sleeps (not at its next event), and reported as epollreactor does:
    logged as an unexpected error in the main loop.
    """
    result = python(
        """
        import os, signal, threading
        import twisted_shim
        from twisted.logger import globalLogPublisher
        reactor = twisted_shim.install()
        def seen(event):
            f = event.get("log_failure")
            if f is not None and f.check(KeyboardInterrupt):
                print("interrupted:", event["log_format"])
                reactor.stop()
        globalLogPublisher.addObserver(seen)
        send = lambda: os.kill(os.getpid(), signal.SIGINT)
        reactor.callWhenRunning(lambda: threading.Timer(0.2, send).start())
        reactor.run(installSignalHandlers=False)
        """,
        timeout=30,
    )
    assert result.stdout.strip() == "interrupted: Unexpected error in main loop", (
        result.stderr
    )


class SocketWriter(Reader):
    """A reader that also writes through FileDescriptor's buffering."""

    def writeSomeData(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0


def test_writer_of_a_reader_flushes_and_waits_for_writability(
    reactor: RustReactor,
) -> None:
    """
    A connected reader that writes is flushed on the next iteration (before
    the loop waits); what the socket does not take stays queued, the
    selectable stays in getWriters(), and is written as the peer reads —
    the same bytes in the same order, and it leaves getWriters() when done.
    """
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    w = SocketWriter(reactor, a)
    w.connected = True
    reactor.addReader(w)
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB: more than the socket takes
    w.write(payload)
    assert w in reactor.getWriters()
    reactor.iterate(0)
    assert w in reactor.getWriters(), "the socket cannot have taken 4 MiB at once"
    got = bytearray()
    for _ in range(10_000):
        try:
            got += b.recv(1 << 20)
        except BlockingIOError:
            pass
        reactor.iterate(0.01)
        if len(got) == len(payload):
            break
    assert bytes(got) == payload
    reactor.iterate(0)
    assert w not in reactor.getWriters()
    assert w in reactor.getReaders()
    reactor.removeAll()
    a.close()
    b.close()


def test_unreachable_epoll_entry_does_not_spin_the_loop(reactor: RustReactor) -> None:
    """
    A socket closed without removeReader while a duplicate keeps its file
    open leaves an epoll entry no epoll_ctl can reach. Its selectable is
    disconnected (fileno() is -1), and the loop then rebuilds its poller
    rather than wake up for that entry forever.
    """
    a, b = socket.socketpair()
    r = Reader(reactor, a)
    reactor.addReader(r)
    dup = os.dup(a.fileno())
    a.close()  # the registration's fd is gone; the file lives on through dup
    b.sendall(b"x")  # ...and is readable: level-triggered, it stays ready
    for _ in range(10):
        reactor.iterate(0.01)
    assert r.lost and r.lost[0].check(error.ConnectionFdescWentAway)
    assert reactor.getReaders() == []
    rebuilds = reactor._loop.poller_rebuilds()
    assert rebuilds >= 1
    # Quiet now: more iterations do not find the entry again.
    for _ in range(10):
        reactor.iterate(0.01)
    assert reactor._loop.poller_rebuilds() == rebuilds
    os.close(dup)
    b.close()
