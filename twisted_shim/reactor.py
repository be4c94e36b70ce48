"""
The twisted_shim reactor: Twisted's posix reactor with a Rust event loop.

L{RustReactor} is a plain Python class (so Twisted's test builders can swap
it in for the global reactor) that owns a L{twisted_shim._core.Loop}. The
loop, the timers, the file-descriptor set and the C{callFromThread} queue are
Rust; everything Twisted builds above a poll-like reactor (TCP, UDP, UNIX,
TLS, processes, the thread pool, the resolver, signals, system events) is
Twisted's own code running on it, unmodified but for the bytes of stream
connections: TCP and UNIX transports are Twisted's classes with their
reads and writes in Rust (L{twisted_shim.tcp}, L{twisted_shim.unix}).

Install it with L{install}, C{installReactor("rust")}, C{trial --reactor=rust}
or C{twist --reactor=rust}.

Every L{RustReactor} is also an asyncio reactor: its loop has an asyncio face
(L{twisted_shim.aio}), so the class is a subclass of Twisted's
L{AsyncioSelectorReactor} and code that looks for that reactor finds ours:
C{isinstance(reactor, AsyncioSelectorReactor)} (Daphne, Scrapy's
C{is_asyncio_reactor_installed}), C{type(reactor) == AsyncioSelectorReactor}
(Scrapy's C{verify_installed_reactor}, through L{_AsyncioReactorType}) and
C{reactor._asyncioEventloop} (the face, L{twisted_shim.aio.loop_of}). None of
AsyncioSelectorReactor's code runs on ours: its C{__init__} (which would make
an asyncio selector loop) is skipped, and every name it defines resolves on
L{RustReactor} to what it would without that base (ours, else
C{PosixReactorBase}'s; L{_without_asyncio_reactor}).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error, posixbase
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFDSet,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.logger import Logger
from zope.interface import classImplements, implementer

from twisted_shim import _core
from twisted_shim import aio as _aio
from twisted_shim import tcp as _tcp
from twisted_shim import unix as _unix
from twisted_shim.resolver import NumericHostResolver

_log = Logger(namespace="twisted.internet.base")

classImplements(_core.DelayedCall, IDelayedCall)

__all__ = ["RustReactor", "install"]


#: The environment variable that chooses the stream transports: "native"
#: (the default: twisted_shim.tcp and twisted_shim.unix) or "python"
#: (Twisted's own tcp and unix Server and Client, unchanged).
TRANSPORT_ENV = "TWISTED_SHIM_TRANSPORT"


def native_streams() -> bool:
    """Whether reactors made now use the native stream transports; a value of
    L{TRANSPORT_ENV} other than "native" or "python" is an error."""
    value = os.environ.get(TRANSPORT_ENV, "native")
    if value not in ("native", "python"):
        raise ValueError(f"{TRANSPORT_ENV} must be 'native' or 'python', not {value!r}")
    return value == "native"


class _LoopWaker:
    """
    The reactor's C{waker}: wakes the Rust loop through its poller's notifier
    (an eventfd), so there is no pipe to read and no internal reader.
    """

    def __init__(self, loop: _core.Loop) -> None:
        self._loop = loop

    def wakeUp(self) -> None:
        self._loop.wake()

    def connectionLost(self, reason: object) -> None:
        pass


class _AsyncioReactorType(type):
    """
    The metaclass of L{RustReactor}: the class compares equal to
    L{AsyncioSelectorReactor} as well as to itself.

    Code that wants Twisted's asyncio reactor may check the installed one's
    class by equality rather than with C{isinstance}: Scrapy's
    C{verify_installed_reactor(path)} is C{type(reactor) == load_object(path)},
    and Scrapy's default C{TWISTED_REACTOR} (and C{AsyncCrawlerProcess},
    always) names C{AsyncioSelectorReactor}. Our reactor is one, with the
    asyncio loop on its own Rust loop, so it answers to that name too. C{==}
    is symmetric, so C{AsyncioSelectorReactor == RustReactor} holds as well.

    Only C{==} and C{!=} change: the hash stays the identity hash (a dict or
    set holds the two classes as two keys, and never compares them), and
    C{is}, C{isinstance} and C{issubclass} are Python's.
    """

    def __eq__(cls, other: object) -> bool:
        if cls is other or other is AsyncioSelectorReactor:
            return True
        return NotImplemented

    __hash__ = type.__hash__


@implementer(IReactorFDSet)
class RustReactor(AsyncioSelectorReactor, metaclass=_AsyncioReactorType):
    """
    A Twisted reactor whose event loop is L{twisted_shim._core.Loop}; an
    L{AsyncioSelectorReactor} whose asyncio loop is that loop's face (see the
    module's docstring).

    @ivar _loop: The Rust loop. It holds every registered descriptor (a
        selectable is in C{getReaders()} exactly when the loop watches its
        descriptor for input), every pending timed call and the queue of
        calls from other threads.
    @ivar _continuousPolling: Selectables epoll cannot watch (regular files),
        polled on every iteration instead, as in C{epollreactor}.
    @ivar callLater: The loop's C{call_later}, bound on the instance so a
        call costs no Python frame; likewise C{callFromThread} and
        C{getDelayedCalls}.
    @ivar _asyncioFace: The L{twisted_shim.aio.RustEventLoop} on this
        reactor's loop (L{twisted_shim.aio.loop_of}), made on first use: the
        running asyncio loop while C{mainLoop} runs.
    @ivar _asyncioEventloop: The same face, under the name
        L{AsyncioSelectorReactor} gives its loop (Scrapy and Daphne read it).
    """

    _asyncioFace: _aio.RustEventLoop | None = None

    # Event bits the loop reports, for code that reads them as epoll's.
    _POLL_DISCONNECTED = _core.POLL_HUP | _core.POLL_ERR
    _POLL_IN = _core.POLL_IN
    _POLL_OUT = _core.POLL_OUT

    def __init__(self) -> None:
        self._loop = _core.Loop()
        loop = self._loop
        # The hot entry points go straight to Rust.
        self.callLater = loop.call_later
        self.getDelayedCalls = loop.get_delayed_calls
        self.callFromThread = loop.call_from_thread
        self._continuousPolling = posixbase._ContinuousPolling(self)
        self._wakeupFD: int | None = None
        #: Whether TCP and UNIX connections use twisted_shim.tcp's and
        #: twisted_shim.unix's transports.
        self._native_streams = native_streams()
        # Not AsyncioSelectorReactor.__init__: there is no asyncio selector
        # loop to make; the face is made on first use.
        posixbase.PosixReactorBase.__init__(self)

    @property
    def _asyncioEventloop(self) -> _aio.RustEventLoop:
        return _aio.loop_of(self)

    # IReactorTime

    def _getSeconds(self) -> Callable[[], float]:
        clock = self._loop.get_clock()
        return self._loop.seconds if clock is None else clock

    def _setSeconds(self, clock: Callable[[], float]) -> None:
        # Assigning reactor.seconds (as Twisted's own tests do) changes the
        # clock callLater and DelayedCall use, as it does on ReactorBase.
        self._loop.set_clock(None if clock == self._loop.seconds else clock)

    def _delSeconds(self) -> None:
        self._loop.set_clock(None)

    seconds = property(_getSeconds, _setSeconds, _delSeconds)  # type: ignore[assignment]

    def timeout(self) -> float | None:
        return self._loop.timeout()

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:  # type: ignore[override]
        return self._loop.get_delayed_calls()

    # IReactorCore

    def installWaker(self) -> None:
        if not self.waker:
            self.waker = _LoopWaker(self._loop)

    def wakeUp(self) -> None:
        self._loop.wake()

    def runUntilCurrent(self) -> None:
        self._loop.run_until_current(self)

    def doIteration(self, delay: float | None) -> None:
        self._loop.do_iteration(self, delay)

    doPoll = doIteration

    def iterate(self, delay: float = 0.0) -> None:
        if self._asyncioFace is None:
            self._loop.run_until_current(self)
            self._loop.do_iteration(self, delay)
            return
        # asyncio's handles run in this pass: with their loop running.
        face = _aio.reactor_enter(self)
        try:
            self._loop.run_until_current(self)
            self._loop.do_iteration(self, delay)
        finally:
            _aio.reactor_leave(face)

    def mainLoop(self) -> None:
        # The face is the running asyncio loop (already, when called from
        # run()).
        face = _aio.reactor_enter(self)
        try:
            self._loop.run(self)
        finally:
            _aio.reactor_leave(face)
        _log.info("Main loop terminated.")

    def run(self, installSignalHandlers: bool = True) -> None:
        # asyncio.get_running_loop() in any callback (the startup triggers,
        # callWhenRunning, included) is this loop's face.
        face = _aio.reactor_enter(self)
        try:
            self.startRunning(installSignalHandlers=installSignalHandlers)
            self._installWakeupFD()
            try:
                self.mainLoop()
            finally:
                self._signals.uninstall()
                self._uninstallWakeupFD()
        finally:
            _aio.reactor_leave(face)

    def _installWakeupFD(self) -> None:
        """
        Make signals wake the loop even when Twisted installed no handlers of
        its own, so Ctrl-C interrupts a sleeping reactor as it does
        C{epollreactor} (whose C{epoll.poll} returns on C{EINTR}).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        fd = self._loop.signal_fd()
        previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        if previous != -1:
            # Someone (Twisted's SIGCHLD handling) has one already: keep it.
            signal.set_wakeup_fd(previous)
            return
        self._wakeupFD = fd

    def _uninstallWakeupFD(self) -> None:
        if self._wakeupFD is None:
            return
        if threading.current_thread() is threading.main_thread():
            current = signal.set_wakeup_fd(-1)
            if current != self._wakeupFD:
                signal.set_wakeup_fd(current)
        self._wakeupFD = None

    # IReactorFDSet

    # IReactorPluggableNameResolver: IP literals answered on the loop
    # (twisted_shim.resolver), other names by Twisted's GAIResolver.

    def _initThreads(self) -> None:
        super()._initThreads()
        self.installNameResolver(NumericHostResolver(self, self.nameResolver))

    # IReactorTCP, IReactorUNIX's stream half and IReactorSocket's: Twisted's
    # ports and connectors, making the transports of twisted_shim.tcp and
    # twisted_shim.unix (bytes moved in Rust), unless
    # TWISTED_SHIM_TRANSPORT=python.

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        if not self._native_streams:
            return super().listenTCP(port, factory, backlog, interface)
        p = _tcp.Port(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> Any:
        if not self._native_streams:
            return super().connectTCP(host, port, factory, timeout, bindAddress)
        c = _tcp.Connector(host, port, factory, timeout, bindAddress, self)
        c.connect()
        return c

    def listenUNIX(
        self,
        address: Any,
        factory: Any,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> Any:
        if not self._native_streams:
            return super().listenUNIX(address, factory, backlog, mode, wantPID)
        p = _unix.Port(address, factory, backlog, mode, self, wantPID)
        p.startListening()
        return p

    def connectUNIX(
        self, address: Any, factory: Any, timeout: float = 30, checkPID: int = 0
    ) -> Any:
        if not self._native_streams:
            return super().connectUNIX(address, factory, timeout, checkPID)
        c = _unix.Connector(address, factory, timeout, self, checkPID)
        c.connect()
        return c

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: Any
    ) -> Any:
        if not self._native_streams:
            return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
        if addressFamily == socket.AF_UNIX:
            p = _unix.Port._fromListeningDescriptor(self, fileDescriptor, factory)
            p.startListening()
            return p
        if addressFamily not in self._supportedAddressFamilies:
            raise error.UnsupportedAddressFamily(addressFamily)
        p = _tcp.Port._fromListeningDescriptor(
            self, fileDescriptor, addressFamily, factory
        )
        p.startListening()
        return p

    def adoptStreamConnection(
        self, fileDescriptor: int, addressFamily: int, factory: Any
    ) -> Any:
        if not self._native_streams:
            return super().adoptStreamConnection(fileDescriptor, addressFamily, factory)
        if addressFamily == socket.AF_UNIX:
            return _unix.Server._fromConnectedSocket(fileDescriptor, factory, self)
        if addressFamily not in self._supportedAddressFamilies:
            raise error.UnsupportedAddressFamily(addressFamily)
        return _tcp.Server._fromConnectedSocket(
            fileDescriptor, addressFamily, factory, self
        )

    def addReader(self, reader: IReadDescriptor) -> None:
        if not self._loop.add_reader(reader):
            self._continuousPolling.addReader(reader)

    def addWriter(self, writer: IWriteDescriptor) -> None:
        if not self._loop.add_writer(writer):
            self._continuousPolling.addWriter(writer)

    def removeReader(self, reader: IReadDescriptor) -> None:
        if not self._loop.remove_reader(reader):
            if self._continuousPolling.isReading(reader):
                self._continuousPolling.removeReader(reader)

    def removeWriter(self, writer: IWriteDescriptor) -> None:
        if not self._loop.remove_writer(writer):
            if self._continuousPolling.isWriting(writer):
                self._continuousPolling.removeWriter(writer)

    def removeAll(self) -> list[IReadDescriptor | IWriteDescriptor]:
        return (
            self._removeAll(self._loop.readers(), self._loop.writers())
            + self._continuousPolling.removeAll()
        )

    def getReaders(self) -> list[IReadDescriptor]:
        return self._loop.readers() + self._continuousPolling.getReaders()

    def getWriters(self) -> list[IWriteDescriptor]:
        return self._loop.writers() + self._continuousPolling.getWriters()


class _NotOurs:
    """
    What a name stands for on L{RustReactor} when only
    L{AsyncioSelectorReactor} defines it (its own machinery: C{_onTimer},
    C{_readOrWrite}, ...): nothing. Reading it raises C{AttributeError}, as
    on a reactor without that base.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        raise AttributeError(
            f"{self._name!r} is AsyncioSelectorReactor's own; RustReactor has none"
        )


#: What AsyncioSelectorReactor's class dictionary holds that is not an
#: attribute of the reactor: the class's own module and docstring, and
#: zope.interface's declarations (RustReactor has its own).
_CLASS_BOOKKEEPING = frozenset(
    {"__module__", "__doc__", "__dict__", "__weakref__"}
    | {"__implemented__", "__provides__", "__providedBy__"}
)


def _without_asyncio_reactor(cls: type) -> None:
    """
    Make every name L{AsyncioSelectorReactor} defines resolve on C{cls} as
    if C{cls} did not have it as a base: to C{cls}'s own attribute, else to
    C{PosixReactorBase}'s, else to nothing (L{_NotOurs}). So no attribute of
    our reactor is AsyncioSelectorReactor's (its C{callLater}, C{stop},
    C{crash}, C{_moveCallLaterSooner}, ... schedule on an asyncio loop), and
    nothing resolves differently from before it was a base. (A method of
    C{RustReactor} that wants the base's version of one of these names calls
    C{posixbase.PosixReactorBase}'s by name: C{super()} would find
    AsyncioSelectorReactor's.)
    """
    for name in vars(AsyncioSelectorReactor):
        if name in _CLASS_BOOKKEEPING or name in vars(cls):
            continue
        try:
            value = inspect.getattr_static(posixbase.PosixReactorBase, name)
        except AttributeError:
            value = _NotOurs(name)
        setattr(cls, name, value)


_without_asyncio_reactor(RustReactor)


def install() -> RustReactor:
    """
    Install a L{RustReactor} as C{twisted.internet.reactor}, and make its
    asyncio face the current event loop of this thread
    (C{asyncio.set_event_loop}), as Twisted's C{asyncioreactor.install()}
    does with its loop: C{asyncio.get_event_loop()} before the reactor runs
    is the loop it will run.

    @raise twisted.internet.error.ReactorAlreadyInstalledError: if a reactor
        is installed already.
    """
    reactor = RustReactor()
    from twisted.internet.main import installReactor

    installReactor(reactor)
    asyncio.set_event_loop(_aio.loop_of(reactor))
    return reactor
