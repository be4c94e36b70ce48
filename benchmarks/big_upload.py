#!/usr/bin/env python
"""
One very large upload to C{twisted-shim serve}: issue 10's check that a body
of several GiB is taken in bounded memory and leaves nothing on disk.

Usage::

    python benchmarks/big_upload.py [--size-gib 4] [--max-body 8G]

Starts C{twisted-shim serve benchmarks.wsgi_apps:count --max-body 8G} (the
app reads C{wsgi.input} in 64 KiB reads and answers the count), sends one
POST of C{--size-gib} GiB streamed from a 1 MiB block, and reports: the
answer (it must be the exact byte count), time and MiB/s, the server's
peak RSS (sampled every 100 ms, and VmHWM), every file the server had open
during the upload (the spooled body shows as C{/tmp/#INODE (deleted)}: an
C{O_TMPFILE} file, never named), its descriptors before and after, and the
free space of the body directory before and after. Exits 1 if the answer
is wrong, the peak RSS is over C{--rss-limit-mib} (100), a descriptor is
left open, or a body file is left in the directory.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--max-body", default="8G")
    parser.add_argument("--rss-limit-mib", type=int, default=100)
    args = parser.parse_args()
    size = int(args.size_gib * 1024) * MiB
    port = free_port()
    body_dir = tempfile.gettempdir()
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "twisted-shim"),
            "serve",
            "benchmarks.wsgi_apps:count",
            "--bind",
            f"127.0.0.1:{port}",
            "--max-body",
            args.max_body,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return run(proc, port, size, body_dir, args.rss_limit_mib)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(
    proc: subprocess.Popen[bytes], port: int, size: int, body_dir: str, limit: int
) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)

    def files() -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
            except OSError:
                pass
        return out

    before = files()
    names_before = set(os.listdir(body_dir))
    free_before = os.statvfs(body_dir).f_bavail
    peak = 0
    opened: set[str] = set()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
            opened.update(x for x in files() if x.startswith("/"))
            done.wait(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    block = bytes(range(256)) * (MiB // 256)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(
            f"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        for _ in range(size // MiB):
            s.sendall(block)
        resp = b""
        while b"\r\n\r\n" not in resp or len(resp.split(b"\r\n\r\n", 1)[1]) < len(
            str(size)
        ):
            data = s.recv(65536)
            if not data:
                break
            resp += data
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    done.set()
    sampler.join()
    with open(f"/proc/{proc.pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    after = files()
    free_after = os.statvfs(body_dir).f_bavail
    left = set(os.listdir(body_dir)) - names_before
    frsize = os.statvfs(body_dir).f_frsize
    status, body = resp.partition(b"\r\n")[0], resp.partition(b"\r\n\r\n")[2]
    ok_answer = status.startswith(b"HTTP/1.1 200") and body == str(size).encode()
    print(f"answer: {status.decode()} {body.decode()!r} (expected {size})")
    print(f"time {elapsed:.1f} s, {size / MiB / elapsed:.0f} MiB/s")
    print(
        f"peak RSS sampled {peak / 1024:.0f} MiB, VmHWM {hwm / 1024:.0f} MiB (limit {limit})"
    )
    print(f"files open during the upload: {sorted(opened)}")
    print(f"descriptors before/after: {len(before)} {len(after)}")
    print(
        f"{body_dir} free before/after: {(free_after - free_before) * frsize / MiB:+.1f} MiB;"
        f" new names: {sorted(left)}"
    )
    return (
        0
        if ok_answer and hwm <= limit * 1024 and len(after) <= len(before) and not left
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
