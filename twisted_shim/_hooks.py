"""
Python functions the Rust core calls back into.

The core turns an exception raised by application code (a timed call, a call
from a thread, a selectable's C{doRead}) into a call here, so the event that
reaches C{twisted.logger} is the one Twisted's own reactors emit.
"""

from __future__ import annotations

from types import TracebackType

from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure

_log = Logger(namespace="twisted.internet.base")


def _failure(exc: BaseException, tb: TracebackType | None) -> Failure:
    return Failure(exc, type(exc), tb if tb is not None else exc.__traceback__)


def log_failure(why: str, exc: BaseException, tb: TracebackType | None) -> None:
    """
    Log C{exc} as C{Logger.failureHandler(why)} does in
    L{twisted.internet.base}.
    """
    _log.failure(why, _failure(exc, tb))


_http_log = Logger(namespace="twisted_shim.http")


def log_error(message: str) -> None:
    """
    Log one line at error level for the HTTP server (a condition, not an
    exception: no traceback), e.g. a request body that could not be spooled.
    """
    _http_log.error("{message}", message=message)


def log_err(
    exc: BaseException, tb: TracebackType | None, system: str | None = None
) -> None:
    """
    Log C{exc} as L{twisted.python.log.err} does inside C{callWithLogger}.
    """
    if system is None:
        log.err(_failure(exc, tb))
    else:
        log.err(_failure(exc, tb), system=system)
