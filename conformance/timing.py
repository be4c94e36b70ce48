"""
Time as part of conformance: a test that passes on our reactor but takes
longer than on epoll is a bug until explained.

The runners (C{run_builders}, C{run_full}, C{run_peers}) record each test's
duration on both reactors in the same run and hand them here. A test is
I{slow on rust} when it took at least L{SLOW_FLOOR} seconds on rust and at
least L{SLOW_RATIO} times its time on epoll. This machine has two cores and
other work on it, so one slow reading can be noise (some of Twisted's TLS
tests take anywhere from 40 to 180 ms from one run to the next): every test
found slow is run again L{CONFIRM_RUNS} times on each reactor, alternately,
and stays slow only if even its fastest run on rust meets both bounds
against its median on epoll. A stall (a wait that sleeps over due work) is
in every run and stays; noise is not. Tests seen slow once but not confirmed
are printed too, as information.

Epoll is the reference reactor for the Twisted suites; a runner comparing
with another one (C{run_asyncio_peers}: Twisted's asyncio reactor) names it
with C{reference=}, and the same bounds hold against it.

Tests that are slow for a reason we accept are listed in
C{conformance/expected_slow.txt}, one per line::

    test id | rust seconds | epoll seconds | reason

Any other slow test fails the run that found it. The two thresholds and the
file are defined here only.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from conformance import tables

HERE = Path(__file__).resolve().parent
EXPECTED_SLOW = HERE / "expected_slow.txt"

#: A test shorter than this on rust is never called slow (seconds).
SLOW_FLOOR = 0.100
#: ...nor one that took less than this many times its time on epoll.
SLOW_RATIO = 1.5
#: Reruns per reactor of each test found slow, to tell a bug from noise.
CONFIRM_RUNS = 5

#: What trial's C{--reporter=timing} prints after each test's result line.
_TIMED = re.compile(r"^\((?P<secs>\d+\.\d+) secs\)\s*$")
_RESULT = re.compile(r"^(?P<id>\S+) \.\.\. ")


@dataclass(frozen=True)
class Slow:
    """
    A test slower on rust than on epoll (or the runner's reference reactor),
    with both durations (seconds).
    """

    test_id: str
    rust: float
    epoll: float

    @property
    def ratio(self) -> float:
        return self.rust / self.epoll if self.epoll > 0 else float("inf")

    def line(self, reference: str = "epoll") -> str:
        ratio = "inf" if self.epoll <= 0 else f"{self.ratio:.1f}x"
        return (
            f"  {self.test_id}: rust {self.rust * 1000:.0f} ms, "
            f"{reference} {self.epoll * 1000:.0f} ms ({ratio})"
        )


def durations(log: str) -> dict[str, float]:
    """
    Test id -> seconds, from the output of trial's C{--reporter=timing}
    (each result line, C{id ... [OK]}, followed by C{(0.012 secs)}). A test
    id that occurs twice (inherited by two classes of one name) gets the
    sum. Under C{trial -j} every duration is 0: its distributed reporter
    replays each test's events at once.
    """
    found: dict[str, float] = {}
    last: str | None = None
    for line in log.splitlines():
        m = _RESULT.match(line)
        if m:
            last = m["id"]
            continue
        t = _TIMED.match(line)
        if t and last is not None:
            found[last] = found.get(last, 0.0) + float(t["secs"])
            last = None
    return found


def ran_on_both(
    durations: Mapping[str, Mapping[str, float]],
    outcomes: Mapping[str, Mapping[str, str]],
    reference: str = "epoll",
) -> dict[str, dict[str, float]]:
    """
    The durations of the tests that ran on both reactors: a skip takes no
    time, so a test skipped on either side is not compared.
    """
    both = {
        test_id
        for test_id, outcome in outcomes.get("rust", {}).items()
        if "skip" not in outcome
        and "skip" not in outcomes.get(reference, {}).get(test_id, "skip")
    }
    return {
        reactor: {t: secs for t, secs in per_test.items() if t in both}
        for reactor, per_test in durations.items()
    }


def is_slow(rust: float, epoll: float) -> bool:
    return rust >= SLOW_FLOOR and rust >= SLOW_RATIO * epoll


def find_slow(rust: Mapping[str, float], epoll: Mapping[str, float]) -> list[Slow]:
    """Tests run on both reactors that are slow on rust, slowest first."""
    slow = [
        Slow(test_id, rust[test_id], epoll[test_id])
        for test_id in rust.keys() & epoll.keys()
        if is_slow(rust[test_id], epoll[test_id])
    ]
    return sorted(slow, key=lambda s: s.rust - s.epoll, reverse=True)


Rerun = Callable[[str, list[str]], Mapping[str, float]]


def confirm(
    slow: list[Slow], rerun: Rerun, reference: str = "epoll"
) -> tuple[list[Slow], list[Slow]]:
    """
    Run the tests in C{slow} again, L{CONFIRM_RUNS} times on each reactor
    (C{rerun(reactor, test_ids)} returns their durations), the reference
    (epoll) and rust alternately.

    @return: the tests still slow (their fastest time on rust against their
        median on epoll), and those that were not (as first measured).
    """
    if not slow:
        return [], []
    ids = [s.test_id for s in slow]
    seen: dict[str, dict[str, list[float]]] = {"rust": {}, reference: {}}
    for _ in range(CONFIRM_RUNS):
        for reactor in (reference, "rust"):
            for test_id, secs in rerun(reactor, ids).items():
                seen[reactor].setdefault(test_id, []).append(secs)
    confirmed, noise = [], []
    for s in slow:
        r, e = seen["rust"].get(s.test_id), seen[reference].get(s.test_id)
        if not r or not e:
            # It did not run alone (a rerun cannot select it): keep the
            # reading we have rather than call it noise.
            confirmed.append(s)
            continue
        rust, epoll = min(r), statistics.median(e)
        if is_slow(rust, epoll):
            confirmed.append(Slow(s.test_id, rust, epoll))
        else:
            noise.append(s)
    return confirmed, noise


def load_expected_slow(path: Path = EXPECTED_SLOW) -> dict[str, str]:
    """Test id -> why it is slower on rust, with the timings recorded."""
    if not path.exists():
        return {}
    return {
        test_id: f"{reason} (recorded: rust {rust} s, epoll {epoll} s)"
        for test_id, rust, epoll, reason in tables.rows(path, 4)
    }


def wall_table(
    rows: Iterable[tuple[str, float, float]], reference: str = "epoll"
) -> None:
    """Print each suite's wall time on both reactors side by side."""
    rows = list(rows)
    if not rows:
        return
    width = max(12, *(len(name) for name, _, _ in rows))
    print(f"{'time':<{width}} | {'rust':>9} | {reference:>9} | rust/{reference}")
    for name, rust, epoll in rows:
        ratio = f"{rust / epoll:.2f}" if epoll > 0 else "-"
        print(f"{name:<{width}} | {rust:>8.2f}s | {epoll:>8.2f}s | {ratio:>10}")
    print()


def report(
    slow: list[Slow],
    expected: Mapping[str, str],
    where: str = "",
    noise: Iterable[Slow] = (),
    reference: str = "epoll",
) -> list[str]:
    """
    Print the slow tests, expected or not, and those seen slow once but not
    confirmed (C{noise}); return the ids of the confirmed ones not listed in
    C{expected_slow.txt} (the run fails on them).
    """
    label = f" ({where})" if where else ""
    unexpected = [s for s in slow if s.test_id not in expected]
    known = [s for s in slow if s.test_id in expected]
    noise = list(noise)
    if not slow:
        print(
            f"No test slower on rust{label}: none took >= {SLOW_FLOOR * 1000:.0f} ms"
            f" and >= {SLOW_RATIO}x its time on {reference}"
            + (" in every rerun." if noise else ".")
        )
    if known:
        print(f"Slower on rust, expected{label} (conformance/expected_slow.txt):")
        for s in known:
            print(s.line(reference) + f"  [{expected[s.test_id]}]")
    if unexpected:
        print(
            f"Slower on rust{label}: >= {SLOW_FLOOR * 1000:.0f} ms and "
            f">= {SLOW_RATIO}x {reference} in all {CONFIRM_RUNS} reruns"
            f" (fastest on rust, median on {reference}):"
        )
        for s in unexpected:
            print(s.line(reference))
    if noise:
        print(f"Seen slower once{label}, not in {CONFIRM_RUNS} reruns (noise):")
        for s in noise:
            print(s.line(reference))
    print()
    return [s.test_id for s in unexpected]
