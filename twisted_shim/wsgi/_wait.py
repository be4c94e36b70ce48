"""
C{twisted_shim.wait(awaited, timeout=None)}: pause a request until a
Deferred fires, or until an asyncio awaitable is done.

    w = environ["twisted_shim.wait"](treq.get(url), timeout=10.0)
    yield b""
    response = w.result()

    w = environ["twisted_shim.wait"](fetch(url))  # an async def's coroutine
    yield b""
    response = w.result()

What it waits for:

    - a L{Deferred}: until it fires;
    - a coroutine (or any other awaitable but a future): it is run as an
      asyncio C{Task} on the asyncio face of the host's reactor
      (L{twisted_shim.aio.loop_of}), the loop the reactor runs, until the
      task is done;
    - an asyncio future or task: until it is done. It must belong to that
      face (C{asyncio.get_running_loop()} on the reactor thread, while the
      reactor runs): one of another loop is refused with C{ValueError},
      since that loop cannot run while the reactor does.

Anything else is refused with C{TypeError}, and no pause is left armed (the
host disarms it). When the pause ends without a result (its timeout, the
server's C{max_pause}, or the client going away), the host calls
L{Waiter._interrupt}, which cancels what is waited for: C{Deferred.cancel()},
or C{Future.cancel()} (a task's coroutine gets C{CancelledError} at its
C{await}, and runs its C{finally} blocks and C{async with} exits on the
loop, after the request). Whatever the outcome, it is taken from the
Deferred or the future, so a failure after the request is over is not
logged as unhandled.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from twisted_shim import aio

if TYPE_CHECKING:
    from twisted_shim.reactor import RustReactor

#: What a cancellation ends with: Twisted's (a Deferred) and asyncio's.
_CANCELLED = (CancelledError, asyncio.CancelledError)


class Waiter:
    """
    The outcome of what a paused request waits for.

    The host arms a pause and builds a C{Waiter} with the Deferred or
    awaitable, the pause's C{resume} and the reactor. When the Deferred
    fires, or the future is done, the request is resumed. When the pause
    times out or the client disconnects, the host calls L{_interrupt}, which
    cancels it.

    @ivar _awaited: What is waited for: the Deferred, or the future (a
        coroutine's task); both have C{cancel()}.
    @ivar _done: Whether the outcome is in (C{_value} or C{_failure}).
    """

    def __init__(
        self,
        awaited: Deferred[Any] | Awaitable[Any],
        resume: Any,
        reactor: RustReactor,
    ) -> None:
        self._resume = resume
        self._done = False
        self._value: Any = None
        self._failure: Failure | None = None
        if isinstance(awaited, Deferred):
            self._awaited: Deferred[Any] | asyncio.Future[Any] = awaited
            awaited.addBoth(self._fired)
            return
        future = _as_future(awaited, reactor)
        self._awaited = future
        future.add_done_callback(self._future_done)

    def _fired(self, result: Any) -> None:
        self._done = True
        if isinstance(result, Failure):
            self._failure = result
        else:
            self._value = result
        self._resume()
        return None

    def _future_done(self, future: asyncio.Future[Any]) -> None:
        try:
            value = future.result()
        except BaseException:
            self._fired(Failure())
        else:
            self._fired(value)

    def _interrupt(self) -> None:
        """The pause ended without the outcome: cancel what it waits for."""
        if not self._done:
            self._awaited.cancel()

    @staticmethod
    def discard(awaited: object) -> None:
        """
        C{wait()} was refused before it took C{awaited} (the pause could not
        be armed): close it if it is a coroutine that never started, which
        nothing will run now (so it does not warn that it was never awaited).
        """
        if (
            inspect.iscoroutine(awaited)
            and inspect.getcoroutinestate(awaited) == inspect.CORO_CREATED
        ):
            awaited.close()

    @property
    def timed_out(self) -> bool:
        return bool(self._resume.timed_out)

    def done(self) -> bool:
        """Whether the Deferred has fired (the future is done)."""
        return self._done

    def result(self) -> Any:
        """
        The Deferred's result, or the future's.

        @raise TimeoutError: the pause timed out first (what was waited for
            was cancelled).
        @raise BaseException: the exception the Deferred failed with, or the
            future's (C{asyncio.CancelledError} if it was cancelled, not by
            the host).
        @raise RuntimeError: called before the outcome is in.
        """
        if self._resume.timed_out and (
            not self._done
            or (self._failure is not None and self._failure.check(*_CANCELLED))
        ):
            raise TimeoutError("timed out waiting for the Deferred or awaitable")
        if not self._done:
            raise RuntimeError(
                "Waiter.result() called before the Deferred fired (the awaitable was done)"
            )
        if self._failure is not None:
            self._failure.raiseException()
        return self._value


def _as_future(awaited: Awaitable[Any], reactor: RustReactor) -> asyncio.Future[Any]:
    """
    C{awaited} as a future of C{reactor}'s asyncio face: a future or task of
    that face as it is, a coroutine (or other awaitable) as a new task.

    @raise TypeError: C{awaited} is neither a Deferred nor awaitable.
    @raise ValueError: it is a future of another event loop.
    """
    if not inspect.isawaitable(awaited):
        hint = (
            " (a concurrent.futures.Future: wrap it with asyncio.wrap_future)"
            if hasattr(awaited, "add_done_callback")
            else ""
        )
        raise TypeError(
            "twisted_shim.wait() takes a Deferred, a coroutine or an asyncio"
            f" future, not {type(awaited).__qualname__}{hint}"
        )
    face = aio.loop_of(reactor)
    if asyncio.isfuture(awaited) and awaited.get_loop() is not face:
        raise ValueError(
            f"twisted_shim.wait() was given a future of {awaited.get_loop()!r}, not"
            " of the reactor's asyncio loop: it could not run while the reactor does"
        )
    try:
        return asyncio.ensure_future(awaited, loop=face)
    except BaseException:
        Waiter.discard(awaited)
        raise
