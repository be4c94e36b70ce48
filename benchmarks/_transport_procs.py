"""
The processes C{transport_bench.py} measures, from the harness's side:
building the C floor, finding strace and wrk, starting a server on CPU 0
and a ping-pong client (C or Twisted) on CPU 1, and reading a process's
CPU time and resident memory from /proc.

Invariants: every process started here (L{Proc}) leads a session of its
own and is in C{Proc.live} until stopped, so C{Proc.stop_all()} in the
harness's C{finally} leaves nothing running; its stdout is read by a thread
into a queue, line by line (L{Proc.expect} waits with a deadline), and its
stderr goes to a temporary file whose tail goes into error messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
C_DIR = HERE / "c"
BUILD_DIR = HERE / "build"
PEERS = HERE / "_twisted_peers.py"

SERVER_CPU = "0"
CLIENT_CPU = "1"
START_TIMEOUT_S = 30.0

Params = dict[str, int]


def build_c(name: str) -> Path:
    """C{benchmarks/c/NAME.c} compiled into C{benchmarks/build/NAME}, again
    whenever the source's SHA-256 differs from the one it was built from."""
    source = C_DIR / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    binary = BUILD_DIR / name
    stamp = BUILD_DIR / f"{name}.sha256"
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return binary
    BUILD_DIR.mkdir(exist_ok=True)
    cmd = ["cc", "-O2", "-Wall", "-o", str(binary), str(source)]
    print(f"building {name}:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    stamp.write_text(digest + "\n")
    return binary


def ensure_tool(name: str) -> str | None:
    """Path to C{name}, installed with apt-get if missing (as root)."""
    path = shutil.which(name)
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print(f"{name} not found: running `apt-get install -y {name}`", flush=True)
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", name]):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
    return shutil.which(name)


# --------------------------------------------------------------------------
# Processes: each in a session of its own, so stopping one stops its tree.


class Proc:
    """A started process, its stdout lines in a queue and stderr in a file."""

    live: list[Proc] = []

    def __init__(self, cmd: list[str]) -> None:
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")
        self.popen = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        Proc.live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line starting with C{prefix}."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                message = f"no {prefix!r} in {timeout:.0f} s"
                raise RuntimeError(message + self.tail()) from None
            if line is None:
                raise RuntimeError(f"exited before {prefix!r}" + self.tail())
            if line.startswith(prefix):
                return line[len(prefix) :]

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def tail(self, lines: int = 15) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().rstrip().splitlines()[-lines:]
        return "".join(f"\n  | {line}" for line in text)

    def stop(self) -> None:
        """SIGTERM to its session, SIGKILL after 5 s."""
        if self in Proc.live:
            Proc.live.remove(self)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.stderr.close()

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.live):
            proc.stop()


def cpu_s(pid: int) -> float:
    """
    CPU seconds process C{pid}'s threads have run, in nanoseconds'
    resolution (the sum of /proc/PID/task/*/schedstat; /proc/PID/stat
    counts in clock ticks of 10 ms, too coarse for a smoke run).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that exited meanwhile
    return total / 1e9


def user_system_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process C{pid} (10 ms ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(kind: str, role: str = "echo", *flags: str) -> tuple[Proc, int]:
    """Server C{kind} (c, rust, epoll) on CPU 0; the process and its port.
    C{role} and C{flags} (e.g. C{--tls}) are C{_twisted_peers.py}'s."""
    pin = ["taskset", "-c", SERVER_CPU]
    if kind == "c":
        proc = Proc([*pin, str(build_c("echo_epoll"))])
        return proc, int(proc.expect("", START_TIMEOUT_S))
    proc = Proc([*pin, sys.executable, str(PEERS), role, "--reactor", kind, *flags])
    return proc, int(proc.expect("@@PORT ", START_TIMEOUT_S))


def start_client(port: int, p: Params, program: str = "pingpong_client") -> Proc:
    """A C load generator on CPU 1, warmed up: C{benchmarks/c/PROGRAM.c},
    the ping-pong client (C{pingpong_client}) or the connection-rate one
    (C{connect_client}), which speak the same protocol on stdin/stdout."""
    proc = Proc(
        [
            *("taskset", "-c", CLIENT_CPU, str(build_c(program))),
            *(str(port), str(p["conns"]), str(p["trips"])),
        ]
    )
    proc.expect("@@READY", START_TIMEOUT_S + p["trips"] / 1000)
    return proc


def start_twisted_client(
    port: int, p: Params, reactor: str = "rust", *flags: str
) -> tuple[Proc, dict[str, str] | None]:
    """
    C{_twisted_peers.py pingpong} on C{reactor} on CPU 1, connected and
    warmed up; with C{--tls} in C{flags}, its handshakes done, and the
    protocol version and cipher it negotiated (else C{None}).
    """
    proc = Proc(
        [
            *("taskset", "-c", CLIENT_CPU, sys.executable, str(PEERS), "pingpong"),
            *("--reactor", reactor, "--port", str(port)),
            *("--conns", str(p["conns"]), "--trips", str(p["trips"]), *flags),
        ]
    )
    timeout = START_TIMEOUT_S + p["trips"] / 1000
    tls = json.loads(proc.expect("@@TLS ", timeout)) if "--tls" in flags else None
    proc.expect("@@READY", timeout)
    return proc, tls


def rally(client: Proc, p: Params) -> float:
    """Seconds the client took for one rally of C{p['trips']} round trips."""
    client.send("go")
    run = json.loads(client.expect("@@RUN ", 60 + p["trips"] / 100))
    return float(run["seconds"])
