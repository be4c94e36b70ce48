"""
C{twisted_shim.wait(deferred, timeout=None)}: pause a request until a
Deferred fires.

    w = environ["twisted_shim.wait"](treq.get(url), timeout=10.0)
    yield b""
    response = w.result()
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure


class Waiter:
    """
    The result of a Deferred a paused request waits for.

    The host arms a pause and builds a C{Waiter} with the Deferred and the
    pause's C{resume}. When the Deferred fires, the request is resumed. When
    the pause times out or the client disconnects, the host calls
    L{_interrupt}, which cancels the Deferred.
    """

    def __init__(self, deferred: Deferred[Any], resume: Any) -> None:
        self._resume = resume
        self._deferred = deferred
        self._done = False
        self._value: Any = None
        self._failure: Failure | None = None
        deferred.addBoth(self._fired)

    def _fired(self, result: Any) -> None:
        self._done = True
        if isinstance(result, Failure):
            self._failure = result
        else:
            self._value = result
        self._resume()
        return None

    def _interrupt(self) -> None:
        """The pause ended without the Deferred: cancel it."""
        if not self._done:
            self._deferred.cancel()

    @property
    def timed_out(self) -> bool:
        return bool(self._resume.timed_out)

    def done(self) -> bool:
        """Whether the Deferred has fired."""
        return self._done

    def result(self) -> Any:
        """
        The Deferred's result.

        @raise TimeoutError: the pause timed out first.
        @raise BaseException: the exception the Deferred failed with.
        @raise RuntimeError: called before the Deferred fired.
        """
        if self._resume.timed_out and (
            not self._done
            or (self._failure is not None and self._failure.check(CancelledError))
        ):
            raise TimeoutError("timed out waiting for the Deferred")
        if not self._done:
            raise RuntimeError("Waiter.result() called before the Deferred fired")
        if self._failure is not None:
            self._failure.raiseException()
        return self._value
