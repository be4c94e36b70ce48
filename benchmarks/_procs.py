"""
How the WSGI benchmark scripts start, watch and stop the processes they run
(servers, the upstream, wrk): each in a session of its own, so the whole
process tree can be measured and killed as one.

Used by C{wsgi_bench.py}, C{long_wait.py} and C{upload.py}. Invariants:
every process started with L{start} is the leader of a new session (its
pid is the session id) and stays in L{LIVE} until L{stop} has seen the
whole session gone; L{stop_all} (on error, Ctrl-C, SIGTERM or SIGHUP, see
L{install_signal_handlers}) stops every one of them; a session's CPU time
and memory are read from /proc for the processes in it at that moment
(the process tree: none of these servers leaves its session).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "LIVE",
    "RssSampler",
    "busy_cpu_s",
    "install_signal_handlers",
    "own_cpu_s",
    "raise_nofile",
    "session_cpu_s",
    "session_hwm",
    "session_members",
    "session_rss",
    "start",
    "stop",
    "stop_all",
    "tail",
    "wait_port",
]

STOP_GRACE_S = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")

#: pid -> process, for every session started and not yet stopped.
LIVE: dict[int, subprocess.Popen[bytes]] = {}


def session_members(sid: int) -> list[int]:
    """Pids of the processes whose session id is C{sid}."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            out.append(int(entry))
    return out


def session_cpu_s(sid: int) -> float:
    """User + system CPU seconds of the live processes of session C{sid}."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in session_members(sid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def busy_cpu_s() -> float:
    """
    CPU seconds all cores spent in processes since boot (user, nice and
    system time from /proc/stat; interrupts and softirqs, where much of
    loopback TCP's work is accounted, left out as no process is charged).
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def session_rss(sid: int) -> int:
    """
    Resident bytes of the live processes of session C{sid}, summed (pages a
    forked worker shares with its parent count in both, as C{ps} shows).
    """
    total = 0
    for pid in session_members(sid):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * _PAGE


def session_hwm(sid: int) -> int:
    """
    The resident high-water marks (VmHWM) of the live processes of session
    C{sid}, summed: each process's own peak, however short, so an upper
    bound of the session's peak that no sampling interval can miss.
    """
    total = 0
    for pid in session_members(sid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024  # kB
                break
    return total


class RssSampler:
    """
    A thread that reads a session's resident memory every C{interval}
    seconds and keeps the peak; past C{limit} bytes (if given) it kills the
    session, so a server that would exhaust a shared machine's memory is
    stopped and reported instead.

    @ivar peak: the largest sum seen, in bytes (0 before the first sample).
    @ivar killed_at: the sum that made it kill the session, or C{None}.
    @ivar hwm: L{session_hwm} when the sampler stopped (0 before).
    """

    def __init__(self, sid: int, interval: float = 0.2, limit: int | None = None):
        self.sid = sid
        self.interval = interval
        self.limit = limit
        self.peak = 0
        self.killed_at: int | None = None
        self.hwm = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5.0)
        self.hwm = session_hwm(self.sid)

    def _run(self) -> None:
        while True:
            rss = session_rss(self.sid)
            self.peak = max(self.peak, rss)
            if self.limit is not None and rss > self.limit and self.killed_at is None:
                self.killed_at = rss
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.sid, signal.SIGKILL)
            if self._done.wait(self.interval):
                return


def start(
    cmd: list[str],
    log: Path | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start C{cmd} in a new session, its stdout and stderr into C{log}."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        if log:
            out.close()
    LIVE[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> str | None:
    """
    Stop C{proc}'s session: SIGTERM, then SIGKILL after C{grace} seconds,
    then SIGKILL whatever is left in the session. Returns a note if it had
    to kill.
    """
    sid = proc.pid
    note = None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            note = f"did not exit {grace:.0f} s after SIGTERM; killed"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + grace
    while True:
        left = session_members(sid)
        if not left:
            break
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            note = (note or "") + f" {len(left)} process(es) left in session; killed"
            time.sleep(0.1)
            if not session_members(sid):
                break
        time.sleep(0.05)
    LIVE.pop(proc.pid, None)
    return note


def stop_all() -> None:
    """Stop every session started and not stopped yet."""
    for proc in list(LIVE.values()):
        stop(proc, grace=2.0)


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """
    Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt (SIGINT too when
    a non-interactive shell started the script with it ignored), so the
    script's C{finally} stops what it started.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def raise_nofile(need: int) -> int:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit (the processes
    it starts inherit it); returns the new soft limit. Raises L{RuntimeError}
    if the hard limit is below C{need}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(
            f"RLIMIT_NOFILE hard limit is {hard}, below the {need} descriptors "
            "this benchmark needs (raise it: ulimit -Hn, or limits.conf)"
        )
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float
) -> str | None:
    """Wait until C{port} accepts; an error message if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before listening"
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return None
        time.sleep(0.05)
    return f"not listening on {host}:{port} after {timeout:.0f} s"


def tail(path: Path, lines: int = 15) -> str:
    """The last C{lines} lines of the file at C{path} ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
