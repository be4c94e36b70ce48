"""
Serving processes for C{twisted-shim serve} (L{twisted_shim.cli}): one
process serving on its own, or a supervisor with pre-forked workers.

With C{--workers 1} the command serves in its own process (L{serve}). With
C{--workers N} a L{Supervisor} forks N workers; each worker installs the
reactor, imports the application and listens on its own C{SO_REUSEPORT}
socket bound to the same address, so the kernel spreads new connections over
them. UNIX sockets cannot be shared that way: the supervisor listens on them
once and the workers inherit the socket. The supervisor replaces a worker that
dies, and on SIGTERM or SIGINT forwards SIGTERM to the workers and waits for
their graceful shutdown.

The supervisor never installs a reactor or imports the application: a forked
child must start with neither (the Rust loop's poller cannot be shared across
a fork), and a worker reports its startup errors to the supervisor on a pipe.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import os
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

    from twisted_shim.reactor import RustReactor
    from twisted_shim.wsgi.server import WSGIApplication, WSGIServer

__all__ = [
    "ServeOptions",
    "StartupError",
    "Supervisor",
    "TCPAddress",
    "UnixAddress",
    "load_app",
    "parse_bind",
    "serve",
]

PREFIX = "twisted-shim"


class StartupError(Exception):
    """
    The server cannot start; the message is one line, printed after
    C{twisted-shim: error: }.
    """


@dataclass(frozen=True)
class TCPAddress:
    """
    A TCP address to listen on.

    @ivar host: The host as given (an IPv6 address without its brackets).
    @ivar port: The port; 0 lets the system pick one.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar sockaddr: The address to bind, as C{getaddrinfo} gave it.
    """

    host: str
    port: int
    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{_bracket(self.host)}:{self.port}"

    def with_port(self, port: int) -> TCPAddress:
        return replace(
            self, port=port, sockaddr=(self.sockaddr[0], port, *self.sockaddr[2:])
        )


@dataclass(frozen=True)
class UnixAddress:
    """A UNIX socket path to listen on."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class ServeOptions:
    """
    What C{twisted-shim serve} was asked to do (see L{twisted_shim.cli}).

    @ivar max_pause: Seconds, or C{None} for no cap.
    """

    app: str
    binds: tuple[TCPAddress, ...] = ()
    uds: tuple[str, ...] = ()
    workers: int = 1
    threads: int = 0
    access_log: bool = False
    max_header: int = 65536
    max_body: int = 16 * 1024 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 60.0
    max_pause: float | None = 300.0
    grace: float = 30.0
    backlog: int = 1024
    log_level: str = "warn"
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _say(line: str) -> None:
    """Print one C{twisted-shim: } line to stderr, flushed."""
    try:
        sys.stderr.write(f"{PREFIX}: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# Addresses


def parse_bind(value: str) -> TCPAddress:
    """
    Parse C{HOST:PORT} or C{[IPV6]:PORT}; resolve a host name.

    @raise ValueError: with a one-line message, if C{value} is malformed or
        its host does not resolve.
    """
    expected = "expected HOST:PORT, or [IPV6]:PORT"
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"malformed address {value!r}: {expected}")
        host, port_text = value[1:end], value[end + 2 :]
        family = socket.AF_INET6
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"malformed address {value!r}: {expected}")
        if ":" in host:
            raise ValueError(
                f"malformed address {value!r}: put an IPv6 address in brackets,"
                f" as [{host}]:{port_text}"
            )
        family = socket.AF_UNSPEC
    if not host:
        raise ValueError(
            f"malformed address {value!r}: the host is missing ({expected})"
        )
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"malformed address {value!r}: the port must be 0-65535")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"cannot resolve the host of {value!r}: {e}") from None
    infos = [i for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
    if not infos:
        raise ValueError(f"cannot resolve the host of {value!r}")
    af, _, _, _, sockaddr = infos[0]
    return TCPAddress(host, port, socket.AddressFamily(af), tuple(sockaddr))


def parse_forwarded_allow_ips(text: str) -> tuple[str, ...]:
    """
    Parse C{--forwarded-allow-ips}: comma-separated addresses, CIDR networks
    or C{*} (empty: no one), checked as the host will read them.

    @raise ValueError: naming the first entry that is none of those.
    """
    from twisted_shim import _core

    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    _core.check_forwarded_allow_ips(list(entries))
    return entries


def open_tcp(
    address: TCPAddress,
    backlog: int,
    *,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    """
    A socket bound to C{address} (and listening, unless C{listen} is false).

    @raise StartupError: if it cannot be bound.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        if listen:
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {e}") from None
    return sock


def probe_tcp(address: TCPAddress) -> None:
    """
    Bind C{address} without C{SO_REUSEPORT} and close it again, so a port
    another program holds (with or without C{SO_REUSEPORT}) is reported
    rather than shared.

    @raise StartupError: if the port is in use.
    """
    open_tcp(address, 0, listen=False).close()


def hold_port(address: TCPAddress) -> socket.socket:
    """
    Bind C{address} (port 0) with C{SO_REUSEPORT} and without
    C{SO_REUSEADDR}, never listening: the port the system picks stays
    reserved for sockets of this user with C{SO_REUSEPORT} (the workers) as
    long as the socket is open.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {e}") from None
    return sock


def open_unix(path: str, backlog: int) -> socket.socket:
    """
    A UNIX socket listening at C{path}. A stale socket file (no one accepts
    on it) is removed first; a live one, or another kind of file, is an error.

    @raise StartupError: if it cannot listen there.
    """
    where = f"unix:{path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StartupError(f"cannot listen on {where}: {e}") from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(
                f"cannot listen on {where}: the file exists and is not a socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StartupError(
                    f"cannot remove the stale socket {path}: {e}"
                ) from None
        except OSError:
            pass  # bind below reports it
        else:
            raise StartupError(
                f"cannot listen on {where}: another server is listening there"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {where}: {e}") from None
    return sock


def _unlink_socket(path: str, sock_stat: os.stat_result | None) -> None:
    """Remove the socket file at C{path} if it is still the one we made."""
    if sock_stat is None:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (sock_stat.st_dev, sock_stat.st_ino):
            os.unlink(path)
    except OSError:
        pass


def listening_line(sock: socket.socket) -> str:
    """C{listening on http://HOST:PORT} or C{listening on unix:PATH}."""
    if sock.family == socket.AF_UNIX:
        return f"listening on unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"listening on http://{_bracket(host)}:{port}"


# The application


def load_app(spec: str) -> WSGIApplication:
    """
    Import C{MODULE:APP} (C{APP} may be dotted; C{MODULE} alone means
    C{MODULE:application}). The current directory is searched first.

    @raise StartupError: the module or attribute cannot be imported, or is
        not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep:
        attr = "application"
    if not module_name or not attr:
        raise StartupError(f"malformed application {spec!r}: expected MODULE:APP")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as e:
        detail = " ".join(str(e).split())
        name = type(e).__name__
        raise StartupError(
            f"cannot import {spec!r}: {name}: {detail}"
            if detail
            else f"cannot import {spec!r}: {name}"
        ) from None
    if not callable(obj):
        raise StartupError(
            f"{spec!r} is not a WSGI application: {type(obj).__name__} object is not callable"
        )
    app: WSGIApplication = obj
    return app


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


def _begin_logging(level: str) -> None:
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


# Running one server


class _Runner:
    """
    One serving process: the L{WSGIServer}, the thread pool, the signals.

    @ivar exit_code: What the process exits with once the reactor stopped.
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
    ) -> None:
        from twisted_shim.wsgi.server import ServerConfig, WSGIServer

        self._reactor = reactor
        self._options = options
        self._standalone = standalone
        self._on_ready = on_ready
        self._stopping = False
        self._stopped = False
        self._shutdown_started = 0.0
        self.exit_code = 0
        self._pool: ThreadPool | None = None
        if options.threads > 0:
            from twisted_shim.wsgi.threaded import thread_pool, threaded

            self._pool = thread_pool(options.threads)
            app = threaded(app, self._pool, reactor)
        config = ServerConfig(
            multiprocess=multiprocess,
            max_header=options.max_header,
            max_body=options.max_body,
            header_timeout=options.header_timeout,
            keepalive_timeout=options.keepalive_timeout,
            send_timeout=options.send_timeout,
            max_pause=options.max_pause,
            access_log=_access_log_writer() if options.access_log else None,
            multithread=options.threads > 0,
            # Thread-pool mode needs the pause keys: its adapter pauses the
            # request on the reactor thread and strips them from the environ
            # the application sees.
            pause_keys=True,
            forwarded_allow_ips=options.forwarded_allow_ips,
        )
        self.server: WSGIServer = WSGIServer(app, config, reactor)
        # A signal from now on stops the server gracefully once the reactor
        # runs (the reactor installs handlers of its own at startup, which
        # _started replaces).
        self._install_signal_handlers()
        for sock in sockets:
            self.server.listen(sock)
        reactor.callWhenRunning(self._started)

    def run(self) -> int:
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
                _say(f"{name} again: aborting the requests in flight")
            self.server.abort()
            self.server.shutdown(0).addBoth(self._stop_reactor)
            return
        self._stopping = True
        self._shutdown_started = time.monotonic()
        if self._standalone:
            _say(f"{name}: shutting down (grace {self._options.grace:g} s)")
        self.server.shutdown(self._options.grace).addBoth(self._stop_reactor)

    def _stop_reactor(self, result: object) -> None:
        if not self._stopped:
            self._stopped = True
            self._reactor.stop()


def _open_sockets(
    options: ServeOptions,
) -> tuple[list[socket.socket], list[tuple[str, os.stat_result | None]]]:
    """Listen on every --bind and --uds (single-process mode)."""
    sockets: list[socket.socket] = []
    made: list[tuple[str, os.stat_result | None]] = []
    try:
        for address in options.binds:
            sockets.append(open_tcp(address, options.backlog))
        for path in options.uds:
            sockets.append(open_unix(path, options.backlog))
            made.append((path, _lstat(path)))
    except StartupError:
        for sock in sockets:
            sock.close()
        for path, st in made:
            _unlink_socket(path, st)
        raise
    return sockets, made


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def serve(options: ServeOptions) -> int:
    """
    Serve in this process until SIGTERM or SIGINT; return the exit status.

    @raise StartupError: the application or an address is unusable.
    """
    import twisted_shim

    reactor = twisted_shim.install()
    _begin_logging(options.log_level)
    app = load_app(options.app)
    sockets, made = _open_sockets(options)
    lines = [listening_line(s) for s in sockets]

    def ready() -> None:
        for line in lines:
            _say(line)
        _say(f"ready (pid {os.getpid()}, workers 1, threads {options.threads})")

    try:
        runner = _Runner(
            reactor,
            app,
            options,
            sockets,
            multiprocess=False,
            on_ready=ready,
            standalone=True,
        )
        return runner.run()
    finally:
        for path, st in made:
            _unlink_socket(path, st)


# Workers


def _set_parent_death_signal() -> None:
    """Have the kernel send SIGTERM to this worker if the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run_worker(
    options: ServeOptions,
    tcp: Sequence[TCPAddress],
    unix_sockets: Sequence[socket.socket],
    status: int,
) -> int:
    """
    The body of a forked worker. Report C{ready} or C{error MESSAGE} on the
    C{status} pipe, then serve until SIGTERM.
    """

    def report(line: str) -> None:
        try:
            os.write(status, line.encode("utf-8", "replace") + b"\n")
        except OSError:
            pass

    try:
        import twisted_shim

        reactor = twisted_shim.install()
        _begin_logging(options.log_level)
        app = load_app(options.app)
        sockets = [open_tcp(a, options.backlog, reuse_port=True) for a in tcp]
    except StartupError as e:
        report(f"error {e}")
        return 1
    runner = _Runner(
        reactor,
        app,
        options,
        [*sockets, *unix_sockets],
        multiprocess=True,
        on_ready=lambda: report("ready"),
        standalone=False,
    )
    return runner.run()


@dataclass
class _Worker:
    pid: int
    status: int | None
    buffer: bytes = b""
    ready: bool = False
    error: str | None = None


def _describe(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(wait_status)}"


class Supervisor:
    """
    Fork C{options.workers} workers, keep that many running, and stop them
    gracefully on SIGTERM or SIGINT.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)

    def __init__(self, options: ServeOptions) -> None:
        self._options = options
        self._workers: dict[int, _Worker] = {}
        self._tcp: list[TCPAddress] = []
        self._holders: list[socket.socket] = []
        self._unix: list[socket.socket] = []
        self._made: list[tuple[str, os.stat_result | None]] = []
        self._wake_r = -1
        self._wake_w = -1
        self._stopping = False
        self._deadline = 0.0
        self._failures = 0
        self._respawn_at: float | None = None
        self._wanted = options.workers

    # Setting up

    def _bind(self) -> None:
        options = self._options
        try:
            for address in options.binds:
                if address.port == 0:
                    holder = hold_port(address)
                    self._holders.append(holder)
                    address = address.with_port(holder.getsockname()[1])
                else:
                    probe_tcp(address)
                self._tcp.append(address)
            for path in options.uds:
                self._unix.append(open_unix(path, options.backlog))
                self._made.append((path, _lstat(path)))
        except StartupError:
            self._close_sockets()
            raise

    def _close_sockets(self) -> None:
        for sock in self._holders + self._unix:
            sock.close()
        self._holders.clear()
        self._unix.clear()
        for path, st in self._made:
            _unlink_socket(path, st)
        self._made.clear()

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in self._SIGNALS:
            # A Python-level handler makes the signal reach the wake-up fd,
            # which the main loop reads the signal numbers from.
            signal.signal(signum, lambda signum, frame: None)

    # Workers

    def _spawn(self) -> int:
        status_r, status_w = os.pipe()
        supervisor = os.getpid()
        # Signals wait until the child has its own handlers: the
        # supervisor's would write to the supervisor's wake-up pipe.
        signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._SIGNALS)
            os.close(status_r)
            os.close(status_w)
            raise
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(status_r)
                code = self._in_child(status_w, supervisor)
                # What the interpreter would do at exit (logging.shutdown
                # and the like), without unwinding into the supervisor's
                # code, which is the parent's to run.
                atexit._run_exitfuncs()
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self._SIGNALS)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self._workers[pid] = _Worker(pid, status_r)
        return pid

    def _in_child(self, status_w: int, supervisor: int) -> int:
        _set_parent_death_signal()
        signal.set_wakeup_fd(-1)
        for signum in self._SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # The supervisor stops the workers with SIGTERM; a terminal's Ctrl-C
        # reaches the whole process group and is the supervisor's to handle.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self._SIGNALS)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for worker in self._workers.values():
            if worker.status is not None:
                os.close(worker.status)
        for holder in self._holders:
            holder.close()
        if os.getppid() != supervisor:
            return 1  # the supervisor died already
        return _run_worker(self._options, self._tcp, self._unix, status_w)

    def _read_status(self, worker: _Worker) -> None:
        assert worker.status is not None
        try:
            data = os.read(worker.status, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os.close(worker.status)
            worker.status = None
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if text == "ready":
                worker.ready = True
                self._failures = 0
            elif text.startswith("error "):
                worker.error = text[len("error ") :]

    def _reap(self) -> list[tuple[_Worker, int]]:
        dead: list[tuple[_Worker, int]] = []
        while self._workers:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            if worker.status is not None:
                self._read_status(worker)  # a last report may be pending
                if worker.status is not None:
                    os.close(worker.status)
                    worker.status = None
            dead.append((worker, wait_status))
        return dead

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self._workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # The main loop

    def _wait(self, timeout: float | None) -> list[int]:
        """Wait for a signal or a status report; return the signals seen."""
        fds = [self._wake_r] + [
            w.status for w in self._workers.values() if w.status is not None
        ]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            readable = []
        signals: list[int] = []
        if self._wake_r in readable:
            try:
                signals = list(os.read(self._wake_r, 1024))
            except BlockingIOError:
                pass
        for worker in list(self._workers.values()):
            if worker.status is not None and worker.status in readable:
                self._read_status(worker)
        return signals

    def _start(self) -> int | None:
        """
        Start the first workers; return an exit status if the supervisor
        must stop before they are all ready.
        """
        for _ in range(self._wanted):
            self._spawn()
        while True:
            signals = self._wait(None)
            for worker in self._workers.values():
                if worker.error is not None:
                    return self._abort_start(f"error: {worker.error}")
            for worker, wait_status in self._reap():
                if worker.error is not None:
                    return self._abort_start(f"error: {worker.error}")
                return self._abort_start(
                    f"error: worker {worker.pid} exited during startup ({_describe(wait_status)})"
                )
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in signals):
                self._signal_workers(signal.SIGKILL)
                self._reap_all(5.0)
                return 0
            if all(w.ready for w in self._workers.values()):
                return None

    def _abort_start(self, line: str) -> int:
        _say(line)
        self._signal_workers(signal.SIGKILL)
        self._reap_all(5.0)
        return 1

    def _reap_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._workers and time.monotonic() < deadline:
            self._reap()
            if self._workers:
                time.sleep(0.01)
        if self._workers:
            self._signal_workers(signal.SIGKILL)
            for pid in list(self._workers):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self._workers.clear()

    def _announce(self) -> None:
        for address in self._tcp:
            _say(f"listening on http://{address}")
        for sock in self._unix:
            _say(listening_line(sock))
        _say(
            f"ready (pid {os.getpid()}, workers {self._wanted},"
            f" threads {self._options.threads})"
        )

    def _serve(self) -> int:
        while True:
            now = time.monotonic()
            timeout: float | None = None
            if self._stopping:
                timeout = max(0.0, self._deadline - now)
            elif self._respawn_at is not None:
                timeout = max(0.0, self._respawn_at - now)
            signals = self._wait(timeout)
            for signum in signals:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._on_stop_signal(signal.Signals(signum).name)
            for worker, wait_status in self._reap():
                self._on_worker_exit(worker, wait_status)
            if self._stopping:
                if not self._workers:
                    return 0
                if time.monotonic() >= self._deadline:
                    left = sorted(self._workers)
                    _say(
                        f"workers {', '.join(map(str, left))} still running: killing them"
                    )
                    self._signal_workers(signal.SIGKILL)
                    self._reap_all(5.0)
                    return 0
                continue
            if self._respawn_at is not None and time.monotonic() >= self._respawn_at:
                self._respawn_at = None
                while len(self._workers) < self._wanted:
                    self._spawn()

    def _on_stop_signal(self, name: str) -> None:
        if not self._stopping:
            self._stopping = True
            grace = self._options.grace
            self._deadline = time.monotonic() + grace + 5.0
            _say(
                f"{name}: shutting down {len(self._workers)} workers (grace {grace:g} s)"
            )
            self._signal_workers(signal.SIGTERM)
            # The workers still hold the UNIX sockets and drain them.
            for sock in self._unix:
                sock.close()
            self._unix.clear()
        else:
            _say(f"{name} again: stopping the workers now")
            self._signal_workers(signal.SIGTERM)
            self._deadline = min(self._deadline, time.monotonic() + 2.0)

    def _on_worker_exit(self, worker: _Worker, wait_status: int) -> None:
        if self._stopping:
            return
        how = _describe(wait_status)
        if worker.error is not None:
            _say(f"worker {worker.pid} failed to start: {worker.error}")
        if worker.ready:
            self._failures = 0
        else:
            self._failures += 1
        if self._failures == 0:
            new = self._spawn()
            _say(f"worker {worker.pid} exited ({how}); started worker {new}")
        else:
            delay = min(0.1 * 2 ** (self._failures - 1), 10.0)
            _say(
                f"worker {worker.pid} exited ({how}); starting a new one in {delay:g} s"
            )
            if self._respawn_at is None:
                self._respawn_at = time.monotonic() + delay

    def run(self) -> int:
        """
        Bind, start the workers, supervise them until SIGTERM or SIGINT and
        return the exit status.

        @raise StartupError: an address is unusable.
        """
        self._bind()
        try:
            self._install_signals()
            status = self._start()
            if status is not None:
                return status
            self._announce()
            return self._serve()
        finally:
            for pid in list(self._workers):
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            self._workers.clear()
            self._close_sockets()
            if self._wake_w >= 0:
                signal.set_wakeup_fd(-1)
                os.close(self._wake_r)
                os.close(self._wake_w)
            for signum in self._SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
