"""
The asyncio face of the reactor's loop: an asyncio event loop that I{is} a
L{RustReactor}'s loop, not a second loop beside it.

One Rust L{twisted_shim._core.Loop} serves both faces, with one set of
timers, one FD set, one wake-up and one run:

    - C{call_soon} pushes an asyncio C{Handle} onto the loop's ready queue
      (Rust, C{src/aio/ready.rs}); every C{runUntilCurrent} runs one pass of
      it after the reactor's due timed calls, with asyncio's ordering: FIFO,
      the handles queued when the pass starts and no more, cancelled ones
      skipped. While the queue is not empty the loop's wait is a poll.
    - C{call_later}/C{call_at} schedule a timed call on the reactor's heap
      (C{src/time.rs}, the one C{callLater} uses); when it is due it pushes
      its C{TimerHandle} onto the ready queue, so the callback runs in that
      pass, as asyncio moves due timers to C{_ready}. Cancelling the handle
      cancels the timed call.
    - C{add_reader}/C{add_writer} register a native handler in the reactor's
      FD set (C{src/aio/mod.rs}); readiness pushes the reader's, then the
      writer's handle, as asyncio's C{_process_events} does. A descriptor has
      one registration: if Twisted watches it, C{add_reader} raises
      C{FileExistsError}; if asyncio watches it, Twisted's C{addReader}
      raises C{OSError}. Neither silently replaces the other.
    - C{call_soon_threadsafe} pushes and wakes the loop through its eventfd
      (the reactor's waker): there is no self-pipe; one is made only for
      C{add_signal_handler}, whose C-level handler writes signal numbers.

The clock: C{loop.time()} is C{reactor.seconds()}, the wall clock
(C{time.time()}, or whatever replaced C{reactor.seconds}), not asyncio's
monotonic clock, because the two faces share one timer heap and a heap has
one clock. C{call_at(when)} therefore takes a time on the reactor's clock (a
value computed from C{loop.time()}, as asyncio code does); like Twisted's
timed calls, it fires early or late if the system clock is stepped.

One heap means C{reactor.getDelayedCalls()} lists asyncio's pending timers
too (trial's dirty-reactor check sees them), and a timer of a closed face
stays on the heap, inert, until it is due.

Who drives the loop:

    - C{reactor.run()} (and C{reactor.iterate()}): the face is the running
      loop of the thread for as long as it runs (L{reactor_enter}), so
      C{asyncio.get_running_loop()} in any reactor callback returns it, and
      tasks, futures and C{asyncio.sleep} work there. C{loop.stop()} then
      stops the reactor; C{run_forever} raises, as on any running loop.
    - C{loop.run_forever()} / C{run_until_complete()} / C{asyncio.Runner}:
      each pass is the reactor's own iteration (the wait and dispatch of
      C{doIteration}, then C{runUntilCurrent}), so Twisted's timed calls,
      selectables and C{callFromThread} are served too; the reactor's
      startup and shutdown events are not fired (C{reactor.running} stays
      false), as when Twisted's asyncio reactor's loop is run directly.

What is Rust now: C{call_soon}, C{call_soon_threadsafe}, C{call_later} and
C{call_at} outside debug mode (C{src/aio/handle.rs} makes the handles:
instances of CPython's own C{Handle} and C{TimerHandle} classes, their
slots written in Rust; a queued handle is out of the cycle collector's
lists until it leaves the queue, C{src/aio/ready.rs}), the ready queue and
its pass (handles run as C{Handle._run} does; debug mode aside),
C{run_forever}'s loop, the timer heap, the FD set, asyncio's readiness
dispatch, the wait and the wake-up, and the socket transports' bytes
(L{twisted_shim.aio_socket}: the transports of C{create_connection},
C{create_server}, C{connect_accepted_socket}, streams and SSL read and
write in Rust and call their protocol from the dispatch; with
C{TWISTED_SHIM_TRANSPORT=python} they are CPython's, as the reactor's are
Twisted's). What is CPython's (the classes below subclass
C{asyncio.SelectorEventLoop}): the handle classes themselves (their
C{cancel}, C{_run}, reprs; a Rust handle class cannot pass
C{isinstance(h, asyncio.Handle)}, which asyncio's own tests check), debug
mode's scheduling path, futures and tasks (C{_asyncio}), servers and
C{sock_*} (C{selector_events}), streams, the SSL protocol, subprocesses,
signals, executors and C{getaddrinfo}, the exception handler and debug
mode, async generators' shutdown.

Invariants: a reactor has at most one open face (L{loop_of}); a handle runs
only in a pass of the ready queue, and under C{run}, C{iterate} and
C{run_forever} with its face as the running loop; the face's
C{call_soon}, C{call_soon_threadsafe}, C{call_later} and C{call_at}
instance attributes (the Rust fast paths) exist exactly when debug mode is
off; every asyncio reader and writer is a registration in the reactor's FD
set, and C{_selector} only reports them.
"""

from __future__ import annotations

import socket
import sys
import threading
import time as _time
from asyncio import (
    base_events,
    constants,
    events,
    format_helpers,
    sslproto,
    unix_events,
)
from collections.abc import Callable, Coroutine, Mapping
from contextvars import Context
from selectors import (
    EVENT_READ,
    EVENT_WRITE,
    BaseSelector,
    SelectorKey,
    _fileobj_to_fd,  # type: ignore[attr-defined]
)
from typing import TYPE_CHECKING, Any, TypeVar

from twisted_shim import _core
from twisted_shim.aio_socket import SocketTransport

if TYPE_CHECKING:
    from twisted_shim.reactor import RustReactor

__all__ = [
    "RustEventLoop",
    "RustEventLoopPolicy",
    "loop_of",
    "new_event_loop",
    "reactor_enter",
    "reactor_leave",
    "run",
]

_T = TypeVar("_T")


class _ReadyView:
    """
    What C{BaseEventLoop} reads of C{self._ready}, answered by the Rust
    ready queue: its length, C{append} and C{clear}.
    """

    __slots__ = ("_core",)

    def __init__(self, core: _core.AioCore) -> None:
        self._core = core

    def __len__(self) -> int:
        return self._core.ready_len()

    def append(self, handle: events.Handle) -> None:
        self._core.push(handle)

    def clear(self) -> None:
        self._core.clear_ready()


class _FDSetView(BaseSelector):
    """
    The face's C{_selector}, read-only: asyncio's transports ask it what the
    loop watches (C{get_key} in their reprs). Registrations go through the
    loop's C{_add_reader} and friends, never through here.
    """

    def __init__(self, core: _core.AioCore) -> None:
        self._core = core

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        raise RuntimeError("register through the event loop's add_reader/add_writer")

    def unregister(self, fileobj: Any) -> SelectorKey:
        raise RuntimeError("unregister through the event loop's remove_reader/writer")

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        raise RuntimeError("the Rust loop waits; a selector view does not")

    def _key(self, fileobj: Any, fd: int) -> SelectorKey | None:
        handles = self._core.get(fd)
        if handles is None:
            return None
        reader, writer = handles
        mask = (EVENT_READ if reader else 0) | (EVENT_WRITE if writer else 0)
        return SelectorKey(fileobj, fd, mask, (reader, writer))

    def get_key(self, fileobj: Any) -> SelectorKey:
        fd = _fileobj_to_fd(fileobj)
        key = self._key(fileobj, fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        return key

    def get_map(self) -> Mapping[Any, SelectorKey]:
        keys = (self._key(fd, fd) for fd in self._core.fds())
        return {k.fd: k for k in keys if k is not None}

    def close(self) -> None:
        pass


class _TimerHandle(events.TimerHandle):
    """
    asyncio's C{TimerHandle}, plus the reactor's timed call that pushes it
    onto the ready queue when it is due.

    @ivar _call: The L{twisted_shim._core.DelayedCall}; cancelled with the
        handle.
    """

    __slots__ = ("_call",)


class RustEventLoop(unix_events.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """
    An asyncio event loop that is a L{RustReactor}'s loop (see the module's
    docstring for what that means and what is Rust).

    @ivar _reactor: The reactor whose loop this is.
    @ivar _owns_reactor: Whether the reactor was made for this face (then
        C{close} closes it) rather than given (it outlives the face).
    @ivar _core: The Rust half (C{_core.AioCore}): the ready queue's pushes,
        the asyncio registrations of the FD set.
    @ivar _driver: C{"reactor"} while C{reactor.run()} runs with this face as
        the running loop, C{"asyncio"} while C{run_forever} runs, else
        C{None}.
    """

    def __init__(self, reactor: RustReactor | None = None) -> None:
        if reactor is None:
            from twisted_shim.reactor import RustReactor

            reactor = RustReactor()
            self._owns_reactor = True
        else:
            self._owns_reactor = False
        self._reactor = reactor
        self._rloop = reactor._loop
        self._core = _core.AioCore(reactor._loop)
        self._driver: str | None = None
        # The hot calls, bound once.
        self._push = self._core.push
        self._push_threadsafe = self._core.push_threadsafe
        self._schedule = self._core.schedule_at
        self.time = self._rloop.seconds  # type: ignore[method-assign]
        self._core.bind(self, _TimerHandle)
        self._old_agen_hooks: Any = None
        super().__init__(selector=_FDSetView(self._core))
        self._ready = _ReadyView(self._core)  # type: ignore[assignment]
        self._clock_resolution = _time.get_clock_info("time").resolution

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()} "
            f"reactor={self._reactor!r}>"
        )

    # Scheduling: the ready queue and the reactor's timer heap. Outside debug
    # mode, call_soon, call_soon_threadsafe, call_later and call_at are the
    # core's (instance attributes set by set_debug: the handles are made in
    # Rust); the methods below are the debug mode's, with asyncio's checks
    # and source tracebacks.

    def call_soon(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.Handle:
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._push(handle)
        return handle

    def _call_soon(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: Context | None,
    ) -> events.Handle:
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._push(handle)
        return handle

    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.Handle:
        self._check_closed()
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = events.Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._push_threadsafe(handle)
        return handle

    def _add_callback(self, handle: events.Handle) -> None:
        if not handle._cancelled:
            self._push(handle)

    def _write_to_self(self) -> None:
        # The reactor's eventfd, safe from any thread.
        self._core.wake()

    def _timer(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: Context | None,
    ) -> _TimerHandle:
        timer = _TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-2:]
        timer._call = self._schedule(when, self._push, timer)
        timer._scheduled = True
        return timer

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_later")
        return self._timer(self.time() + delay, callback, args, context)

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        return self._timer(when, callback, args, context)

    def _timer_handle_cancelled(self, handle: events.TimerHandle) -> None:
        call = getattr(handle, "_call", None)
        if call is not None and call.active():
            call.cancel()

    # Readiness: the reactor's FD set.

    def _add_reader(
        self, fd: Any, callback: Callable[..., object], *args: Any
    ) -> events.Handle:
        self._check_closed()
        handle = events.Handle(callback, args, self, None)
        old = self._core.add_reader(_fileobj_to_fd(fd), handle)
        if old is not None:
            old.cancel()
        return handle

    def _remove_reader(self, fd: Any) -> bool:
        if self.is_closed():
            return False
        old = self._core.remove_reader(_fileobj_to_fd(fd))
        if old is None:
            return False
        old.cancel()
        return True

    def _add_writer(
        self, fd: Any, callback: Callable[..., object], *args: Any
    ) -> events.Handle:
        self._check_closed()
        handle = events.Handle(callback, args, self, None)
        old = self._core.add_writer(_fileobj_to_fd(fd), handle)
        if old is not None:
            old.cancel()
        return handle

    def _remove_writer(self, fd: Any) -> bool:
        if self.is_closed():
            return False
        old = self._core.remove_writer(_fileobj_to_fd(fd))
        if old is None:
            return False
        old.cancel()
        return True

    # Socket transports: twisted_shim.aio_socket's (bytes moved in Rust),
    # unless TWISTED_SHIM_TRANSPORT=python (then CPython's, as for the
    # reactor's TCP and UNIX transports: the reactor reads the variable).

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> Any:
        if not self._reactor._native_streams:
            return super()._make_socket_transport(
                sock, protocol, waiter, extra=extra, server=server
            )
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        if not self._reactor._native_streams:
            return super()._make_ssl_transport(
                rawsock,
                protocol,
                sslcontext,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                extra=extra,
                server=server,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        # What CPython's does, over the native transport (SSLProtocol is a
        # BufferedProtocol: it reads through get_buffer/buffer_updated).
        self._ensure_fd_no_transport(rawsock)
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # The self-pipe: only for signals (call_soon_threadsafe uses the eventfd).

    def _make_self_pipe(self) -> None:
        self._ssock: socket.socket | None = None
        self._csock: socket.socket | None = None

    def _close_self_pipe(self) -> None:
        if self._ssock is None:
            return
        super()._close_self_pipe()

    def add_signal_handler(
        self, sig: int, callback: Callable[..., object], *args: Any
    ) -> None:
        if self._ssock is None:
            self._check_closed()
            self._ssock, self._csock = socket.socketpair()
            self._ssock.setblocking(False)
            self._csock.setblocking(False)
            self._internal_fds += 1
            self._add_reader(self._ssock.fileno(), self._read_from_self)
        super().add_signal_handler(sig, callback, *args)

    # Running: the reactor's iteration.

    def _run_once(self) -> None:
        """
        One pass, in asyncio's order: wait and dispatch readiness (a Twisted
        selectable's C{doRead} runs now, an asyncio reader's handle is
        queued), then C{runUntilCurrent}: calls from threads, due timed calls
        (due C{TimerHandle}s are queued), then the pass of the ready queue.
        """
        rloop = self._rloop
        rloop.do_iteration(self._reactor, 0.0 if self._stopping else rloop.timeout())
        rloop.run_until_current(self._reactor)

    def _start_running(self, driver: str) -> None:
        """Make this face the thread's running loop (asyncio's run_forever
        setup, for either driver); L{_stop_running} undoes it."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        self._driver = driver
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        events._set_running_loop(self)

    def _stop_running(self) -> None:
        self._stopping = False
        self._thread_id = None
        self._driver = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        sys.set_asyncgen_hooks(*self._old_agen_hooks)
        self._old_agen_hooks = None

    def run_forever(self) -> None:
        self._start_running("asyncio")
        try:
            if "_run_once" in self.__dict__ or type(self)._run_once is not _RUN_ONCE:
                # A replaced _run_once (tests count iterations) is called.
                while True:
                    self._run_once()
                    if self._stopping:
                        break
            else:
                # The same iterations, the loop in Rust.
                self._rloop.run_face(self._reactor, self)
        finally:
            self._stop_running()

    def stop(self) -> None:
        """
        Stop running: after this pass under C{run_forever}; under
        C{reactor.run()}, stop the reactor (C{reactor.stop()}).
        """
        if self._driver == "reactor":
            from twisted.internet.error import ReactorNotRunning

            try:
                self._reactor.stop()
            except ReactorNotRunning:
                pass
            return
        self._stopping = True

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        super().close()
        # The sockets of its transports leave the FD set, as a closed
        # selector stops watching them.
        for transport in list(self._transports.values()):
            if isinstance(transport, SocketTransport) and transport._io is not None:
                transport._io.detach()
        self._core.close()
        if self._owns_reactor:
            pool = self._reactor.threadpool
            if pool is not None:
                pool.stop()
            self._rloop.close()

    def __del__(self, _warn: Any = None) -> None:
        if not self.__dict__.get("_owns_reactor", True):
            # A reactor's face lives and dies with its reactor, unwarned.
            if not self.is_closed():
                self._core.close()
            return
        super().__del__()

    # Debug mode: the ready queue hands each handle to _run_handle_debug.

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self._core.set_runner(self._run_handle_debug if enabled else None)
        fast = ("call_soon", "call_soon_threadsafe", "call_later", "call_at")
        for name in fast:
            if enabled:
                self.__dict__.pop(name, None)
            else:
                self.__dict__[name] = getattr(self._core, name)

    def _run_handle_debug(self, handle: events.Handle) -> None:
        try:
            self._current_handle = handle
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                # Through base_events' logger, as asyncio logs it (tests
                # patch it there).
                base_events.logger.warning(
                    "Executing %s took %.3f seconds",
                    base_events._format_handle(handle),  # type: ignore[attr-defined]
                    dt,
                )
        finally:
            self._current_handle = None


_RUN_ONCE = RustEventLoop._run_once


def _callback_failed(handle: events.Handle, exc: BaseException) -> None:
    """
    What C{Handle._run} does when the callback raised C{exc} (the Rust pass,
    C{src/aio/handle.rs}, runs handles and calls this on an exception).
    """
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context: dict[str, Any] = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def loop_of(reactor: RustReactor) -> RustEventLoop:
    """
    The asyncio face of C{reactor}, made on first use; a new one if the last
    was closed.
    """
    face: RustEventLoop | None = reactor._asyncioFace
    if face is None or face.is_closed():
        face = RustEventLoop(reactor)
        reactor._asyncioFace = face
    return face


def reactor_enter(reactor: RustReactor) -> RustEventLoop | None:
    """
    What the reactor's C{run} (and C{iterate}) does first: C{reactor}'s face
    becomes the running asyncio loop of this thread. Returns it, for
    L{reactor_leave}; or C{None}, changing nothing, if an asyncio loop runs
    here already (the face itself, when C{iterate} is called from a
    callback, or another loop, when C{reactor.run()} is called from a
    coroutine).
    """
    if events._get_running_loop() is not None:
        return None
    face = loop_of(reactor)
    face._start_running("reactor")
    return face


def reactor_leave(face: RustEventLoop | None) -> None:
    """Undo L{reactor_enter}."""
    if face is not None:
        face._stop_running()


def new_event_loop(reactor: RustReactor | None = None) -> RustEventLoop:
    """
    A loop factory for C{asyncio.Runner(loop_factory=...)} (and Python 3.12's
    C{asyncio.run}): a face on a reactor of its own, or C{reactor}'s face.
    """
    if reactor is not None:
        return loop_of(reactor)
    return RustEventLoop()


def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    reactor: RustReactor | None = None,
) -> _T:
    """C{asyncio.run(main)} on a L{RustEventLoop}."""
    import asyncio

    with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(reactor)) as r:
        return r.run(main)


class RustEventLoopPolicy(unix_events.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """
    An event loop policy whose loops are L{RustEventLoop}s:
    C{asyncio.set_event_loop_policy(RustEventLoopPolicy())} makes
    C{asyncio.new_event_loop()}, C{asyncio.run()} and test suites use them.
    Each new loop has a reactor of its own, unless C{reactor} is given: then
    every new loop is that reactor's face.
    """

    def __init__(self, reactor: RustReactor | None = None) -> None:
        super().__init__()
        self._reactor = reactor

    def new_event_loop(self) -> RustEventLoop:
        return new_event_loop(self._reactor)
