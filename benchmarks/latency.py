#!/usr/bin/env python
"""
Latency of work that Twisted code schedules from inside the loop, on our
reactor and on epoll, side by side (the stalls of issue 8: each took a whole
idle second on our reactor before the loop computed its timeout after the
pre-wait flush).

Usage::

    python benchmarks/latency.py [--runs 5]

Cases
-----
``connectionMade_callLater0``
    A client connects to a loopback listener outside the reactor; its
    C{connectionMade} calls C{reactor.callLater(0, f)}. Latency: from
    C{connectionMade} to C{f}.
``refused_retry``
    A client connects to a closed loopback port and, from
    C{clientConnectionFailed}, connects again (four retries). Latency: the
    mean time from one failure to the next.
``txredisapi_connect``
    C{txredisapi.Connection} to a throwaway C{redis-server} on loopback
    (skipped if there is no C{redis-server} on PATH). Latency: from the call
    to the connected handler (txredisapi hands it over with C{callLater(0)}
    from C{connectionMade}).

Method: each reactor runs in its own subprocess (a reactor installs once per
process); each case is measured C{--runs} times in one C{reactor.run()} and
the median is reported, in milliseconds, with rust minus epoll. Timing is
C{time.perf_counter()} in the reactor thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted_shim.testing import free_port

REACTORS = ("rust", "epoll")
CASES = ("connectionMade_callLater0", "refused_retry", "txredisapi_connect")

WORKER = r"""
import json, socket, statistics, sys, time
reactor_name, runs, redis_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if reactor_name == "rust":
    import twisted_shim
    twisted_shim.install()
else:
    from twisted.internet import epollreactor
    epollreactor.install()
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Protocol


def closed_port():
    from twisted_shim.testing import free_port

    return free_port()  # nothing listens there


listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)


def connection_made_call_later0():
    d = defer.Deferred()

    class P(Protocol):
        def connectionMade(self):
            t0 = time.perf_counter()

            def f():
                d.callback(time.perf_counter() - t0)
                self.transport.loseConnection()

            reactor.callLater(0, f)

    reactor.connectTCP("127.0.0.1", listener.getsockname()[1], ClientFactory.forProtocol(P))
    return d


def refused_retry():
    d = defer.Deferred()
    port = closed_port()
    gaps, last = [], []

    class F(ClientFactory):
        protocol = Protocol

        def clientConnectionFailed(self, connector, reason):
            now = time.perf_counter()
            if last:
                gaps.append(now - last[-1])
            last.append(now)
            if len(gaps) < 4:
                reactor.connectTCP("127.0.0.1", port, F())
            else:
                d.callback(statistics.mean(gaps))

    reactor.connectTCP("127.0.0.1", port, F())
    return d


async def txredisapi_connect():
    import txredisapi

    t0 = time.perf_counter()
    c = await txredisapi.Connection("127.0.0.1", redis_port, reconnect=False)
    elapsed = time.perf_counter() - t0
    await c.disconnect()
    return elapsed


async def main():
    cases = {
        "connectionMade_callLater0": connection_made_call_later0,
        "refused_retry": refused_retry,
    }
    if redis_port:
        cases["txredisapi_connect"] = lambda: defer.ensureDeferred(txredisapi_connect())
    out = {}
    for name, case in cases.items():
        await case()  # warm-up
        out[name] = [await case() for _ in range(runs)]
    print("@@RESULT " + json.dumps(out))


def go():
    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
    d.addBoth(lambda _: reactor.stop())


reactor.callWhenRunning(go)
reactor.callLater(60, reactor.stop)
reactor.run()
"""


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes] | None, int]:
    """A throwaway redis-server on loopback, or (None, 0) if there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None, 0
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, 0


def measure(reactor: str, runs: int, redis_port: int) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, reactor, str(runs), str(redis_port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in out.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line.removeprefix("@@RESULT "))
    raise SystemExit(f"{reactor}: no result\n{out.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--runs", type=int, default=5, help="measurements per case")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        redis, port = start_redis(Path(tmp))
        try:
            results = {r: measure(r, args.runs, port) for r in REACTORS}
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(10)
    print(f"median of {args.runs}, milliseconds")
    print(f"{'case':<28} | {'rust':>9} | {'epoll':>9} | rust - epoll")
    for case in CASES:
        if case not in results["rust"]:
            print(f"{case:<28} | skipped (no redis-server on PATH)")
            continue
        r, e = (statistics.median(results[x][case]) * 1000 for x in REACTORS)
        print(f"{case:<28} | {r:>9.3f} | {e:>9.3f} | {r - e:>+10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
