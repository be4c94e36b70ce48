"""
Thread-pool mode: serve a blocking WSGI application from a pool of threads,
on top of the pause_output extension.

L{threaded} wraps an application that may block (C{time.sleep}, a blocking
database driver, C{blockingCallFromThread}) into one the host runs on the
reactor thread. The real application runs in a thread of a Twisted
L{ThreadPool}; its C{start_response}, its C{write()} calls and every chunk of
its iterable travel back to the reactor thread through a bounded queue. On
the reactor side the wrapper is a generator that arms C{pause_output()} and
yields C{b""} whenever nothing is queued; the thread calls C{resume()} (safe
from any thread, it wakes the loop) when it queues something. So the host
needs nothing special, and:

  - the application's environ has no pause keys (C{wsgi.pause_output},
    C{x-wsgiorg.pause_output}, C{x-wsgiorg.flush}, C{twisted_shim.wait})
    and C{wsgi.multithread} is true;
  - a fast producer blocks its thread once the queue holds C{max_queued}
    bytes, rather than buffering without bound (and the host stops pulling
    while the client's connection is backed up);
  - the iterable's C{close()} is called in the thread, exactly once, also
    when the client disconnects (the host closes the reactor-side generator
    and the thread stops pulling); a request whose client left before a
    thread was free is not run at all;
  - an exception in the thread reaches the host on the reactor thread: a 500
    before the headers were sent, an aborted connection after.

The host must give the wrapper the pause keys (C{ServerConfig.pause_keys}
true); C{twisted-shim serve --threads N} does this.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from twisted_shim.wsgi.server import WSGIApplication

__all__ = [
    "ClientDisconnected",
    "PAUSE_KEYS",
    "threaded",
    "thread_pool",
    "stop_thread_pool",
]

_log = Logger(namespace="twisted_shim.wsgi")

#: The environ keys a thread must not see: they may be used only on the
#: reactor thread.
PAUSE_KEYS = (
    "wsgi.pause_output",
    "x-wsgiorg.pause_output",
    "x-wsgiorg.flush",
    "twisted_shim.wait",
)

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class ClientDisconnected(ConnectionError):
    """
    Raised by C{write()} in the application's thread when the response can
    no longer be sent (the client went away, or the server aborted it).
    """


class _DaemonThread(threading.Thread):
    """A pool thread that does not keep the process alive at exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


def thread_pool(size: int, name: str = "twisted-shim") -> ThreadPool:
    """
    A L{ThreadPool} of up to C{size} threads, for L{threaded}. Its threads
    are daemon threads: an application stuck in a call cannot keep the
    process from exiting once the server stopped (L{stop_thread_pool}).
    """
    pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
    pool.threadFactory = _DaemonThread
    return pool


def stop_thread_pool(pool: ThreadPool, timeout: float) -> bool:
    """
    Stop C{pool}, waiting up to C{timeout} seconds for its threads to finish
    their work. Return whether they did.
    """
    stopper = _DaemonThread(target=pool.stop, name="twisted-shim pool stopper")
    stopper.start()
    stopper.join(timeout)
    return not stopper.is_alive()


def threaded(
    app: WSGIApplication,
    pool: ThreadPool,
    reactor: Any = None,
    max_queued: int = 256 * 1024,
) -> WSGIApplication:
    """
    Run C{app} in the threads of C{pool} (started and stopped by the
    caller), behind a reactor-thread application for the WSGI host.

    @param reactor: The reactor (for C{wsgi.errors} from threads); by
        default the environ's C{twisted_shim.reactor}, else the installed
        one.
    @param max_queued: Bytes of response a thread may queue before its
        C{write()} or the pull of its next chunk blocks.
    """

    def threaded_app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        r = reactor if reactor is not None else environ.get("twisted_shim.reactor")
        if r is None:
            from twisted.internet import reactor as r
        return _Bridge(app, pool, r, environ, start_response, max_queued).pump()

    return threaded_app


# Items the thread queues for the reactor side.
_START = 0  # (_START, status, headers)
_DATA = 1  # (_DATA, bytes)
_END = 2  # (_END,)
_ERROR = 3  # (_ERROR, exception)


class _Bridge:
    """
    One request: the application in a pool thread, L{pump} on the reactor
    thread, and the queue between them.

    State shared by both sides is guarded by C{_cond}'s lock: C{_items},
    C{_queued}, C{_resume} and C{_stopped}. C{_status}, C{_headers} and
    C{_committed} belong to the thread.
    """

    def __init__(
        self,
        app: WSGIApplication,
        pool: ThreadPool,
        reactor: Any,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        max_queued: int,
    ) -> None:
        try:
            self._pause: Callable[..., Callable[[], bool]] = environ[
                "wsgi.pause_output"
            ]
        except KeyError:
            raise RuntimeError(
                "thread-pool mode needs the host's wsgi.pause_output"
                " (ServerConfig.pause_keys=True)"
            ) from None
        self._app = app
        self._pool = pool
        self._host_start_response = start_response
        self._max_queued = max_queued
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[tuple[Any, ...]] = deque()
        self._queued = 0
        self._resume: Callable[[], bool] | None = None
        self._stopped = False
        self._disconnected = False
        self._status: str | None = None
        self._headers: list[tuple[str, str]] | None = None
        self._committed = False
        env = {k: v for k, v in environ.items() if k not in PAUSE_KEYS}
        env["wsgi.multithread"] = True
        env["wsgi.errors"] = _ThreadErrors(environ["wsgi.errors"], reactor)
        env["x-wsgiorg.client_disconnected"] = self._client_disconnected
        # A host's file wrapper is for the reactor thread; PEP 3333 lets an
        # application do without.
        env.pop("wsgi.file_wrapper", None)
        self._environ = env

    # The reactor side

    def pump(self) -> Iterator[bytes]:
        """
        The iterable the host pulls from: queued chunks, and C{b""} under an
        armed pause while the thread has nothing queued.
        """
        self._pool.callInThread(self._run)
        finished = False
        try:
            while True:
                with self._cond:
                    if self._items:
                        item = self._items.popleft()
                        if item[0] == _DATA:
                            self._queued -= len(item[1])
                            self._cond.notify_all()
                    else:
                        item = None
                        self._resume = self._pause()
                if item is None:
                    yield b""  # suspended until the thread queues something
                elif item[0] == _DATA:
                    yield item[1]
                elif item[0] == _START:
                    self._host_start_response(item[1], item[2])
                elif item[0] == _END:
                    finished = True
                    return
                else:
                    finished = True
                    raise item[1]
        finally:
            with self._cond:
                self._stopped = True
                self._disconnected = not finished
                self._resume = None
                self._items.clear()
                self._queued = 0
                self._cond.notify_all()

    # The thread side

    def _client_disconnected(self) -> bool:
        return self._disconnected

    def _put(self, item: tuple[Any, ...], size: int = 0) -> None:
        """
        Queue C{item} (blocking while C{max_queued} bytes are queued) and
        wake the reactor side.

        @raise ClientDisconnected: the reactor side is gone.
        """
        with self._cond:
            while (
                self._items and self._queued >= self._max_queued and not self._stopped
            ):
                self._cond.wait()
            if self._stopped:
                raise ClientDisconnected(
                    "the response was closed (client disconnected)"
                )
            if not self._committed and item[0] in (_DATA, _END):
                if self._status is None or self._headers is None:
                    raise RuntimeError(
                        "the application sent data before calling start_response()"
                    )
                self._items.append((_START, self._status, self._headers))
                self._committed = True
            self._items.append(item)
            self._queued += size
            resume, self._resume = self._resume, None
        if resume is not None:
            resume()

    def _start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        if not isinstance(status, str):
            raise TypeError(f"status must be str, not {type(status).__name__}")
        if not isinstance(headers, list):
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        for header in headers:
            if not (
                isinstance(header, tuple)
                and len(header) == 2
                and isinstance(header[0], str)
                and isinstance(header[1], str)
            ):
                raise TypeError(
                    f"each header must be a (str, str) tuple, not {header!r}"
                )
        self._status = status
        self._headers = list(headers)
        return self._write

    def _write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self._put((_DATA, data), len(data))

    def _run(self) -> None:
        """Call the application and pull its iterable (in a pool thread)."""
        with self._cond:
            if self._stopped:
                # The client left while the request waited for a thread:
                # nobody would read the response, so the application is not
                # called (under overload, clients that time out and retry
                # would otherwise fill the pool with abandoned work).
                return
        try:
            result = self._app(self._environ, self._start_response)
        except BaseException as e:
            self._fail(e)
            return
        error: BaseException | None = None
        try:
            for chunk in result:
                if self._stopped:
                    break
                if not isinstance(chunk, bytes):
                    raise TypeError(
                        f"the application's iterable yielded {type(chunk).__name__}, not bytes"
                    )
                if chunk:
                    self._put((_DATA, chunk), len(chunk))
        except ClientDisconnected:
            pass
        except BaseException as e:
            error = e
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as e:
                if error is None:
                    error = e
                else:
                    _log.failure("Error closing the application's iterable", Failure(e))
        if error is not None:
            self._fail(error)
            return
        try:
            self._put((_END,))
        except ClientDisconnected:
            pass
        except RuntimeError as e:  # no start_response()
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        """Hand C{error} to the reactor side, which raises it to the host."""
        if not isinstance(error, Exception):
            wrapped = RuntimeError(f"the application raised {error!r}")
            wrapped.__cause__ = error
            error = wrapped
        resume: Callable[[], bool] | None = None
        with self._cond:
            delivered = not self._stopped
            if delivered:
                self._items.append((_ERROR, error))
                resume, self._resume = self._resume, None
        if resume is not None:
            resume()
        if not delivered and not isinstance(error, ClientDisconnected):
            _log.failure(
                "Error in the application after its response was closed",
                Failure(error, type(error), error.__traceback__),
            )


class _ThreadErrors(io.TextIOBase):
    """
    C{wsgi.errors} for one request in thread-pool mode: complete lines go to
    the host's stream on the reactor thread.
    """

    def __init__(self, target: Any, reactor: Any) -> None:
        self._target = target
        self._reactor = reactor
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"wsgi.errors takes str, not {type(s).__name__}")
        with self._lock:
            text = self._pending + s
            head, sep, self._pending = text.rpartition("\n")
        if sep:
            self._reactor.callFromThread(self._target.write, head + sep)
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            text, self._pending = self._pending, ""
        if text:
            self._reactor.callFromThread(self._flush, text)

    def _flush(self, text: str) -> None:
        self._target.write(text)
        self._target.flush()
