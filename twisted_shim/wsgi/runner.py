"""
One serving process: L{serve} (C{twisted-shim serve} with C{--workers 1})
and L{Runner}, which a pre-forked worker runs too
(L{twisted_shim.wsgi.supervisor}).

A L{Runner} owns the L{WSGIServer}, the thread pool of C{--threads} and the
signal handlers: SIGTERM (and SIGINT when it runs alone) shuts the server
down within C{--grace}, a second signal aborts the requests in flight, and
then the reactor stops. With C{--max-requests}, a worker's L{Runner}
counts the requests its application is called for and, at its limit
(C{--max-requests} plus a random 0..C{--max-requests-jitter}, drawn once
per worker), reports it once and keeps serving until its supervisor, which
has started its replacement meanwhile, sends SIGTERM.

Invariants: the reactor is installed and the application imported before a
L{Runner} is made; the C{ready} line (or the worker's C{ready} report) is
given only once the reactor runs; a socket file made by L{serve} is
removed as its shutdown begins (new clients get "no such file", not a
connection that is never accepted) and in any case when it returns.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted_shim.wsgi.config import ServeOptions
from twisted_shim.wsgi.loading import load_app
from twisted_shim.wsgi.sockets import (
    listening_line,
    open_listeners,
    remove_socket_files,
)
from twisted_shim.wsgi.startup import say

if TYPE_CHECKING:
    import socket

    from twisted.python.threadpool import ThreadPool

    from twisted_shim.reactor import RustReactor
    from twisted_shim.wsgi.server import WSGIApplication, WSGIServer

__all__ = ["Runner", "begin_logging", "serve"]


def _access_log_writer() -> Callable[[str], None]:
    """Write each access-log line to stdout at once, in one C{write(2)}."""
    fd = sys.stdout.fileno()

    def write(line: str) -> None:
        data = (line if line.endswith("\n") else line + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass

    return write


def begin_logging(level: str) -> None:
    """Send Twisted's log events of C{level} and above to stderr."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class Runner:
    """
    One serving process: the L{WSGIServer}, the thread pool, the signals.
    Made after the reactor is installed and the application loaded; SIGTERM
    (and SIGINT when C{standalone}) stops it gracefully once made, calling
    C{on_stop} first. With C{options.max_requests} and C{on_limit}, the
    application's calls are counted, and C{on_limit} is called with the
    count once it reaches L{request_limit}.

    @ivar server: The L{WSGIServer}.
    @ivar exit_code: What the process exits with once the reactor stopped.
    @ivar request_limit: The requests after which C{on_limit} is called (0:
        never).
    @ivar requests: The requests counted so far (while C{request_limit}).
    """

    def __init__(
        self,
        reactor: RustReactor,
        app: WSGIApplication,
        options: ServeOptions,
        sockets: Sequence[socket.socket],
        *,
        multiprocess: bool,
        on_ready: Callable[[], None],
        standalone: bool,
        on_limit: Callable[[int], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        from twisted_shim.wsgi.server import WSGIServer

        settle_heap(options.gc_threshold)
        self._reactor = reactor
        self._options = options
        self._standalone = standalone
        self._on_ready = on_ready
        self._on_stop = on_stop
        self._stopping = False
        self._stopped = False
        self._shutdown_started = 0.0
        self.exit_code = 0
        self._pool: ThreadPool | None = None
        if options.threads > 0:
            from twisted_shim.wsgi.threaded import thread_pool, threaded

            self._pool = thread_pool(options.threads)
            app = threaded(app, self._pool, reactor)
        self.requests = 0
        self.request_limit = 0
        if options.max_requests > 0 and on_limit is not None:
            self.request_limit = options.max_requests + random.randint(
                0, options.max_requests_jitter
            )
            app = self._counted(app, on_limit)
        config = replace(
            options.server,
            multiprocess=multiprocess,
            access_log=_access_log_writer() if options.access_log else None,
            multithread=options.threads > 0,
            # Thread-pool mode needs the pause keys: its adapter pauses the
            # request on the reactor thread and strips them from the environ
            # the application sees.
            pause_keys=True,
        )
        self.server: WSGIServer = WSGIServer(app, config, reactor)
        # A signal from now on stops the server gracefully once the reactor
        # runs (the reactor installs handlers of its own at startup, which
        # _started replaces).
        self._install_signal_handlers()
        for sock in sockets:
            self.server.listen(sock)
        reactor.callWhenRunning(self._started)

    def _counted(
        self, app: WSGIApplication, on_limit: Callable[[int], None]
    ) -> WSGIApplication:
        """C{app}, counting its calls (one per request, on the reactor
        thread); the one that reaches the limit calls C{on_limit}."""

        def counted(
            environ: dict[str, Any], start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            self.requests += 1
            if self.requests == self.request_limit:
                on_limit(self.requests)
            return app(environ, start_response)

        return counted

    def run(self) -> int:
        """Run the reactor until the server stopped; return the exit status."""
        if self._pool is not None:
            self._pool.start()
        # Everything imported so far (Twisted, the application) lives as long
        # as the process: move it out of the collector's view, so the full
        # collections that request garbage triggers do not scan it each time
        # (they showed up as ~30 ms stalls in p99 latency).
        gc.freeze()
        self._reactor.run()
        if self._pool is not None:
            from twisted_shim.wsgi.threaded import stop_thread_pool

            left = self._shutdown_started + self._options.grace - time.monotonic()
            stop_thread_pool(self._pool, max(1.0, left))
        return self.exit_code

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._signalled)
        if self._standalone:
            # A worker leaves SIGINT to its supervisor (it ignores it).
            signal.signal(signal.SIGINT, self._signalled)

    def _started(self) -> None:
        self._install_signal_handlers()
        self._on_ready()

    def _signalled(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self._shutdown, signum)

    def _shutdown(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            if self._standalone:
                say(f"{name} again: aborting the requests in flight")
            self.server.abort()
            self.server.shutdown(0).addBoth(self._stop_reactor)
            return
        self._stopping = True
        self._shutdown_started = time.monotonic()
        if self._on_stop is not None:
            self._on_stop()
        if self._standalone:
            say(f"{name}: shutting down (grace {self._options.grace:g} s)")
        self.server.shutdown(self._options.grace).addBoth(self._stop_reactor)

    def _stop_reactor(self, result: object) -> None:
        if not self._stopped:
            self._stopped = True
            self._reactor.stop()


def settle_heap(threshold: int) -> None:
    """
    Prepare the garbage collector for serving, once the application is
    loaded: collect, then freeze what survives (the modules, the app: the
    collector never walks them again), and, unless C{threshold} is 0, set
    the young generation's threshold to it (the older ones keep theirs).

    A server that keeps thousands of requests in flight (paused on their
    Deferreds) holds that many requests' objects alive; with Python's 700
    allocations per young collection, the collector ran often enough to
    take a quarter of the process's time walking them (a profile of
    C{benchmarks/long_wait.py}), and 5,000 clients got 2,205 req/s; with
    50,000, 4,049 (same machine, runs of 25 s). Cyclic garbage waits a
    little longer to be freed: a few megabytes more at most.
    """
    gc.collect()
    gc.freeze()
    if threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)


def serve(options: ServeOptions) -> int:
    """
    Serve in this process until SIGTERM or SIGINT; return the exit status.

    @raise StartupError: the application or an address is unusable.
    """
    import twisted_shim

    reactor = twisted_shim.install()
    begin_logging(options.log_level)
    app = load_app(options.app)
    sockets, made = open_listeners(options.binds, options.uds, options.backlog)
    lines = [listening_line(s) for s in sockets]

    def ready() -> None:
        for line in lines:
            say(line)
        say(f"ready (pid {os.getpid()}, workers 1, threads {options.threads})")

    try:
        runner = Runner(
            reactor,
            app,
            options,
            sockets,
            multiprocess=False,
            on_ready=ready,
            standalone=True,
            on_stop=lambda: remove_socket_files(made),
        )
        return runner.run()
    finally:
        remove_socket_files(made)
