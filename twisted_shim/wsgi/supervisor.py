"""
The pre-fork supervisor of C{twisted-shim serve --workers N} (and of any
C{--max-requests}, even with one worker): L{Supervisor} forks N workers,
keeps that many running, recycles them, and stops them gracefully.

Each worker installs the reactor, imports the application and listens on
its own C{SO_REUSEPORT} socket bound to the same address, so the kernel
spreads new connections over them; then it serves as a single process does
(L{twisted_shim.wsgi.runner.Runner}). UNIX sockets cannot be shared that
way: the supervisor listens on them once and the workers inherit the
socket. The supervisor replaces a worker that dies (with a growing delay
while workers fail to start), and on SIGTERM or SIGINT forwards SIGTERM to
the workers and waits for their graceful shutdown (C{--grace} plus 5 s,
then SIGKILL); before that it removes the UNIX socket files, so that new
clients are refused by the path while the workers drain the queue.

Recycling (C{--max-requests}): a worker that served its limit reports
C{recycle COUNT} and keeps serving; the supervisor forks its replacement,
and once that one reports C{ready} (it accepts on its own C{SO_REUSEPORT}
socket, or on the shared UNIX socket), sends the old one SIGTERM: it stops
as on any SIGTERM, losing nothing (L{twisted_shim.wsgi.server.WSGIServer.stop_accepting}
then its drain). A replacement that fails to start is retried with the
same growing delay as a dead worker's; meanwhile the old worker serves on.

Invariants: the supervisor never installs a reactor or imports the
application: a forked child must start with neither (the Rust loop's poller
cannot be shared across a fork); a worker reports C{ready} or
C{error MESSAGE} on its status pipe, and the supervisor announces
C{ready} only once every first worker has; a port-0 bind is held (not
listened on) by the supervisor, so that every worker gets the same port;
the workers that fill the N places are those neither retiring (sent
SIGTERM by a recycle) nor a replacement that is not yet ready.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from twisted_shim.wsgi.addresses import TCPAddress
from twisted_shim.wsgi.config import ServeOptions
from twisted_shim.wsgi.loading import load_app
from twisted_shim.wsgi.runner import Runner, begin_logging
from twisted_shim.wsgi.sockets import (
    SocketFile,
    hold_port,
    listening_line,
    open_tcp,
    open_unix,
    probe_tcp,
    remove_socket_files,
    socket_file,
)
from twisted_shim.wsgi.startup import StartupError, say

__all__ = ["Supervisor"]


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
        begin_logging(options.log_level)
        app = load_app(options.app)
        sockets = [open_tcp(a, options.backlog, reuse_port=True) for a in tcp]
    except StartupError as e:
        report(f"error {e}")
        return 1
    runner = Runner(
        reactor,
        app,
        options,
        [*sockets, *unix_sockets],
        multiprocess=True,
        on_ready=lambda: report("ready"),
        standalone=False,
        on_limit=lambda count: report(f"recycle {count}"),
    )
    return runner.run()


@dataclass
class _Worker:
    """
    A forked worker as the supervisor knows it.

    @ivar status: The read end of its status pipe (C{None} once closed).
    @ivar served: The requests it served when it asked to be recycled, or
        C{None} if it has not.
    @ivar replacement: The pid of the worker started to replace it.
    @ivar replaces: The pid of the worker it replaces, until it is ready.
    @ivar retire_by: When it was sent SIGTERM to retire, the time
        (C{time.monotonic}) after which it is killed; else C{None}.
    """

    pid: int
    status: int | None
    buffer: bytes = b""
    ready: bool = False
    error: str | None = None
    served: int | None = None
    replacement: int | None = None
    replaces: int | None = None
    retire_by: float | None = None


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
        self._made: list[SocketFile] = []
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
                self._made.append(socket_file(path))
        except StartupError:
            self._close_sockets()
            raise

    def _close_sockets(self) -> None:
        for sock in self._holders + self._unix:
            sock.close()
        self._holders.clear()
        self._unix.clear()
        remove_socket_files(self._made)
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
            elif text.startswith("recycle "):
                count = text[len("recycle ") :]
                worker.served = int(count) if count.isdigit() else 0

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
        say(line)
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
            say(f"listening on http://{address}")
        for sock in self._unix:
            say(listening_line(sock))
        say(
            f"ready (pid {os.getpid()}, workers {self._wanted},"
            f" threads {self._options.threads})"
        )

    def _serve(self) -> int:
        while True:
            now = time.monotonic()
            due = [w.retire_by for w in self._workers.values() if w.retire_by]
            if self._stopping:
                due = [self._deadline]
            elif self._respawn_at is not None:
                due.append(self._respawn_at)
            timeout = max(0.0, min(due) - now) if due else None
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
                    say(
                        f"workers {', '.join(map(str, left))} still running: killing them"
                    )
                    self._signal_workers(signal.SIGKILL)
                    self._reap_all(5.0)
                    return 0
                continue
            if self._respawn_at is not None and time.monotonic() >= self._respawn_at:
                self._respawn_at = None
                while self._filled() < self._wanted:
                    self._spawn()
            self._recycle()

    def _filled(self) -> int:
        """How many of the N places are taken (see the invariants)."""
        return sum(
            1
            for w in self._workers.values()
            if w.retire_by is None and w.replaces is None
        )

    def _recycle(self) -> None:
        """
        For each worker that asked to be recycled: start its replacement
        (unless starts are being delayed after failures); once that one is
        ready, send the old one SIGTERM. Kill a retiring worker still
        running after C{--grace} plus 5 s.
        """
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.retire_by is not None:
                if now >= worker.retire_by:
                    say(f"worker {worker.pid} still running: killing it")
                    self._kill(worker.pid, signal.SIGKILL)
                    worker.retire_by = now + 5.0
                continue
            if worker.served is None:
                continue
            new = None
            if worker.replacement is not None:
                new = self._workers.get(worker.replacement)
            if new is None:
                if self._respawn_at is None:
                    pid = self._spawn()
                    self._workers[pid].replaces = worker.pid
                    worker.replacement = pid
            elif new.ready:
                new.replaces = None
                worker.retire_by = now + self._options.grace + 5.0
                self._kill(worker.pid, signal.SIGTERM)
                say(
                    f"worker {worker.pid} served {worker.served} requests"
                    f" (--max-requests): replaced by worker {new.pid}, stopping"
                )

    def _kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _on_stop_signal(self, name: str) -> None:
        if not self._stopping:
            self._stopping = True
            grace = self._options.grace
            self._deadline = time.monotonic() + grace + 5.0
            say(
                f"{name}: shutting down {len(self._workers)} workers (grace {grace:g} s)"
            )
            # New clients of a UNIX socket are refused from now on ("no such
            # file"); those queued are the workers' to accept.
            remove_socket_files(self._made)
            self._signal_workers(signal.SIGTERM)
            # The workers still hold the UNIX sockets and drain them.
            for sock in self._unix:
                sock.close()
            self._unix.clear()
        else:
            say(f"{name} again: stopping the workers now")
            self._signal_workers(signal.SIGTERM)
            self._deadline = min(self._deadline, time.monotonic() + 2.0)

    def _on_worker_exit(self, worker: _Worker, wait_status: int) -> None:
        if self._stopping:
            return
        how = _describe(wait_status)
        if worker.retire_by is not None:
            if not (os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0):
                say(f"retired worker {worker.pid} exited ({how})")
            return
        old = self._workers.get(worker.replaces) if worker.replaces else None
        if old is not None:
            # A replacement that did not get ready: the old worker serves
            # on, and gets another replacement after the delay.
            old.replacement = None
            self._failures += 1
            delay = min(0.1 * 2 ** (self._failures - 1), 10.0)
            why = f": {worker.error}" if worker.error is not None else ""
            say(
                f"worker {worker.pid}, replacing worker {old.pid}, exited ({how}){why};"
                f" another in {delay:g} s"
            )
            if self._respawn_at is None:
                self._respawn_at = time.monotonic() + delay
            return
        heir = self._workers.get(worker.replacement) if worker.replacement else None
        if heir is not None:
            heir.replaces = None  # it takes the place now
            say(f"worker {worker.pid} exited ({how}); worker {heir.pid} replaces it")
            return
        if worker.error is not None:
            say(f"worker {worker.pid} failed to start: {worker.error}")
        if worker.ready:
            self._failures = 0
        else:
            self._failures += 1
        if self._failures == 0:
            new = self._spawn()
            say(f"worker {worker.pid} exited ({how}); started worker {new}")
        else:
            delay = min(0.1 * 2 ** (self._failures - 1), 10.0)
            say(
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
