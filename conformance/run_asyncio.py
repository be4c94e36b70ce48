"""
Run modules of CPython's own C{test.test_asyncio} on the default asyncio loop
and on L{twisted_shim.aio.RustEventLoop}, side by side, and compare by test
id.

    python -m conformance.run_asyncio [--fast] [--modules test_events ...]
                                      [--only default|rust] [--per-test S]
                                      [--module-timeout S] [--log DIR]

Each module runs in a child process per loop. On C{rust} the child selects
our loop the ways test suites do: the event loop policy
(C{asyncio.set_event_loop_policy(RustEventLoopPolicy())}, and
C{asyncio.DefaultEventLoopPolicy} replaced so that a test's
C{set_event_loop_policy(None)} comes back to it), and
C{asyncio.SelectorEventLoop} replaced by a subclass of our loop that takes
and ignores a selector (test_events, test_sock_lowlevel and test_server make
their loops with it, one class per selector). Tests that build a mock loop
(C{test_utils.TestLoop}) or a bare C{BaseEventLoop} test CPython's code on
both sides alike.

Nothing can hang: each test has a time limit (C{--per-test}, 60 s: then
C{faulthandler} dumps every thread's stack into the log and ends the child;
the test counts as C{hang} and the child is restarted on the tests not yet
run), and each module and loop a total (C{--module-timeout}, 900 s: the
tests not run by then count as C{timeout}).

Prints per module: tests passing on default, on ours, and every difference;
last a line C{N passed, N failed} for our loop, as the other runners do
("failed": passing on the default loop, not on ours, not expected).
Exits non-zero when a test that passes on the default loop does not pass on
ours and is not listed in C{expected_asyncio.txt} (C{id | result on rust |
reason}); listed tests that pass now are reported, to be removed.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conformance import tables

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXPECTED = HERE / "expected_asyncio.txt"

#: The modules issue 12 starts with, then every other module that runs on
#: Linux (test_proactor_events and the Windows ones test Windows' loop).
MODULES = [
    "test_events",
    "test_base_events",
    "test_tasks",
    "test_futures",
    "test_streams",
    "test_sock_lowlevel",
    "test_server",
    "test_sendfile",
    "test_subprocess",
    "test_unix_events",
    "test_ssl",
    "test_sslproto",
    "test_locks",
    "test_queues",
    "test_timeouts",
    "test_waitfor",
    "test_taskgroups",
    "test_runners",
    "test_pep492",
    "test_context",
    "test_buffered_proto",
    "test_threads",
    "test_futures2",
    "test_protocols",
    "test_transports",
    "test_selector_events",
]

#: The subset `make conformance` runs: about a minute and a half on both
#: loops (test_tasks alone would add as much).
FAST = [
    "test_events",
    "test_base_events",
    "test_futures",
    "test_streams",
    "test_sock_lowlevel",
    "test_server",
]

PASSING = {"pass", "xfail"}

#: How many RustEventLoops the child has made (see L{use_rust_loop}).
LOOPS_MADE = 0


# --- the child: one module on one loop ------------------------------------------


def use_rust_loop() -> None:
    """Make asyncio's loop-making entry points make L{RustEventLoop}s."""
    import asyncio

    from twisted_shim import aio

    class RustSelectorEventLoop(aio.RustEventLoop):
        """C{asyncio.SelectorEventLoop(selector)} on our loop: the selector
        is not used (the Rust loop waits with epoll)."""

        def __init__(self, selector: object = None) -> None:
            if selector is not None:
                close = getattr(selector, "close", None)
                if close is not None:
                    close()
            super().__init__()

    # Count the loops made, so that each test's record says whether it ran
    # on one of ours (many tests build a mock loop or a bare BaseEventLoop).
    made = aio.RustEventLoop.__init__

    def counting_init(self: aio.RustEventLoop, *args: Any, **kw: Any) -> None:
        global LOOPS_MADE
        LOOPS_MADE += 1
        made(self, *args, **kw)

    aio.RustEventLoop.__init__ = counting_init  # type: ignore[method-assign]
    asyncio.DefaultEventLoopPolicy = aio.RustEventLoopPolicy  # type: ignore[misc]
    asyncio.SelectorEventLoop = RustSelectorEventLoop  # type: ignore[misc]
    asyncio.set_event_loop_policy(aio.RustEventLoopPolicy())


def iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


class _Recorder(unittest.TestResult):
    """Writes one JSON line per test outcome as soon as it is known."""

    def __init__(self, out, per_test: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.out = out
        self.per_test = per_test
        # Python 3.12 may stop a test it never started (a skipped class).
        self.t0 = time.monotonic()
        self.loops0 = LOOPS_MADE
        self.detail = ""
        self.outcome: dict[str, str] = {}

    def _note(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        # A failed subTest is the test's failure.
        tid = test.id() if not hasattr(test, "test_case") else test.test_case.id()  # type: ignore[attr-defined]
        if self.outcome.get(tid) in ("fail", "error"):
            return
        self.outcome[tid] = outcome
        self.detail = detail

    def startTest(self, test: unittest.TestCase) -> None:
        # The per-test limit: faulthandler dumps every stack and ends the
        # child (the parent restarts it on the tests left).
        faulthandler.dump_traceback_later(self.per_test, exit=True)
        super().startTest(test)
        self.detail = ""
        self.t0 = time.monotonic()
        self.loops0 = LOOPS_MADE
        self.out.write(json.dumps({"start": test.id()}) + "\n")
        self.out.flush()

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        tid = test.id()
        outcome = self.outcome.get(tid, "pass")
        self.out.write(
            json.dumps(
                {
                    "end": tid,
                    "outcome": outcome,
                    "detail": self.detail[-2000:],
                    "seconds": round(time.monotonic() - self.t0, 3),
                    "ours": LOOPS_MADE > self.loops0,
                }
            )
            + "\n"
        )
        self.out.flush()

    def addError(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addError(test, err)
        self._note(test, "error", self._exc_info_to_string(err, test))

    def addFailure(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addFailure(test, err)
        self._note(test, "fail", self._exc_info_to_string(err, test))

    def addSubTest(self, test, subtest, err) -> None:  # type: ignore[no-untyped-def]
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._note(test, kind, self._exc_info_to_string(err, test))

    def addSkip(self, test, reason) -> None:  # type: ignore[no-untyped-def]
        super().addSkip(test, reason)
        self._note(test, "skip", reason)

    def addExpectedFailure(self, test, err) -> None:  # type: ignore[no-untyped-def]
        super().addExpectedFailure(test, err)
        self._note(test, "xfail")

    def addUnexpectedSuccess(self, test) -> None:  # type: ignore[no-untyped-def]
        super().addUnexpectedSuccess(test)
        self._note(test, "xpass")


def child(
    module: str, loop: str, out_path: str, skip_path: str, per_test: float
) -> None:

    # Both children import Twisted and our loop, so that their heaps are
    # alike: the suites' gc.collect() calls take 40 ms each with Twisted's
    # modules loaded, which is not the loop's time.
    import twisted_shim.aio  # noqa: F401
    import twisted_shim.reactor  # noqa: F401

    if loop == "rust":
        use_rust_loop()
    import asyncio

    # Which loop this child's tests get (checked by the parent).
    probe = asyncio.new_event_loop()
    kind = type(probe).__module__
    probe.close()
    with open(out_path, "a") as out:
        out.write(json.dumps({"loop": kind}) + "\n")
    skip = set(Path(skip_path).read_text().split()) if skip_path else set()
    name = f"test.test_asyncio.{module}"
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    tests = [t for t in iter_tests(suite) if t.id() not in skip]
    with open(out_path, "a") as out:
        result = _Recorder(out, per_test)
        # One suite, so that module and class fixtures run once, as in
        # unittest's own runs.
        unittest.TestSuite(tests)(result)
        out.write(json.dumps({"done": len(tests)}) + "\n")
        out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads a test left behind must not keep the child alive.
    os._exit(0)


# --- the parent: children, comparison, report -------------------------------------


def run_module(
    module: str, loop: str, per_test: float, budget: float, log_dir: Path
) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Outcome and detail per test id of C{module} on C{loop}, and the ids of
    the tests that made a L{RustEventLoop}."""
    results: dict[str, tuple[str, str]] = {}
    durations: dict[str, float] = {}
    ours: set[str] = set()
    deadline = time.monotonic() + budget
    log = open(log_dir / f"{module}.{loop}.log", "w")
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "out.jsonl")
        skip_path = os.path.join(tmp, "skip.txt")
        while True:
            Path(skip_path).write_text("\n".join(results))
            Path(out_path).write_text("")
            remaining = deadline - time.monotonic()
            done = False
            timed_out = False
            cmd = [
                sys.executable,
                "-m",
                "conformance.run_asyncio",
                "--child",
                module,
                "--only",
                loop,
                "--out",
                out_path,
                "--skip",
                skip_path,
                "--per-test",
                str(per_test),
            ]
            try:
                subprocess.run(
                    cmd,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(remaining, 1.0),
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                timed_out = True
            pending: str | None = None
            for line in Path(out_path).read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "start" in rec:
                    pending = rec["start"]
                elif "end" in rec:
                    results[rec["end"]] = (rec["outcome"], rec["detail"])
                    pending = None
                elif "done" in rec:
                    done = True
                elif "loop" in rec:
                    want = (
                        "twisted_shim.aio" if loop == "rust" else "asyncio.unix_events"
                    )
                    if rec["loop"] != want:
                        raise SystemExit(f"{module} on {loop}: loops are {rec['loop']}")
                if "seconds" in rec:
                    durations[rec["end"]] = rec["seconds"]
                if rec.get("ours"):
                    ours.add(rec["end"])
            if done:
                break
            if pending is not None and not timed_out:
                # faulthandler ended the child on this test (or it crashed):
                # count it and go on with the rest.
                results[pending] = ("hang", "per-test limit or crash; see the log")
                log.write(f"\n--- {pending}: hung or crashed; restarting ---\n")
                log.flush()
                continue
            if timed_out:
                if pending is not None:
                    results[pending] = ("timeout", "module time limit")
                results["<rest of module>"] = ("timeout", "module time limit")
            else:
                results["<child>"] = ("error", "the child died between tests")
            break
    slowest = sorted(durations.items(), key=lambda kv: -kv[1])[:10]
    log.write(f"\n--- slowest tests (all: {sum(durations.values()):.1f} s) ---\n")
    for tid, sec in slowest:
        log.write(f"{sec:8.3f} {tid}\n")
    (log_dir / f"{module}.{loop}.durations.json").write_text(
        json.dumps(durations, indent=0, sort_keys=True)
    )
    log.write("\n--- tests that did not pass ---\n")
    for tid, (outcome, detail) in sorted(results.items()):
        if outcome not in PASSING and outcome != "skip":
            log.write(f"\n{outcome}: {tid}\n{detail}\n")
    log.close()
    return results, ours


def load_expected(path: Path = EXPECTED) -> dict[str, str]:
    if not path.exists():
        return {}
    return {
        test_id: f"{reason} (on rust: {on_rust})"
        for test_id, on_rust, reason in tables.rows(path, 3)
    }


def short(test_id: str) -> str:
    return test_id.removeprefix("test.test_asyncio.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="*", default=None)
    parser.add_argument("--fast", action="store_true", help=f"only {FAST}")
    parser.add_argument("--only", choices=["default", "rust"], default=None)
    parser.add_argument("--per-test", type=float, default=60.0)
    parser.add_argument("--module-timeout", type=float, default=900.0)
    parser.add_argument("--log", type=Path, default=ROOT / "_asyncio_conformance")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.only or "default", args.out, args.skip, args.per_test)
        return 0
    modules = args.modules or (FAST if args.fast else MODULES)
    loops = [args.only] if args.only else ["default", "rust"]
    args.log.mkdir(exist_ok=True)
    expected = load_expected()
    unexpected: list[str] = []
    resolved: list[str] = []
    everything: dict[str, dict[str, dict[str, tuple[str, str]]]] = {}
    rows = []
    on_ours: dict[str, set[str]] = {}
    for module in modules:
        per_loop: dict[str, dict[str, tuple[str, str]]] = {}
        for loop in loops:
            t0 = time.monotonic()
            per_loop[loop], made = run_module(
                module, loop, args.per_test, args.module_timeout, args.log
            )
            if loop == "rust":
                on_ours[module] = made
            took = time.monotonic() - t0
            counts = Counter(o for o, _ in per_loop[loop].values())
            print(
                f"{module} on {loop}: {sum(counts[o] for o in PASSING)} passed, "
                f"{counts['fail'] + counts['error']} failed, {counts['skip']} skipped, "
                f"{counts['hang'] + counts['timeout']} hung ({took:.0f} s)",
                flush=True,
            )
        everything[module] = per_loop
        if len(loops) < 2:
            continue
        default, rust = per_loop["default"], per_loop["rust"]
        diffs = []
        for tid in sorted(set(default) | set(rust)):
            d = default.get(tid, ("absent", ""))[0]
            r = rust.get(tid, ("absent", ""))[0]
            if (d in PASSING) == (r in PASSING) and (d == "skip") == (r == "skip"):
                continue
            diffs.append((tid, d, r))
            if d in PASSING and r not in PASSING:
                if tid in expected:
                    continue
                unexpected.append(f"{short(tid)}: {d} on default, {r} on rust")
                detail = rust.get(tid, ("", ""))[1]
                if detail:
                    unexpected.append("    " + detail.strip().splitlines()[-1][:300])
        for tid in expected:
            if tid in rust and rust[tid][0] in PASSING:
                resolved.append(short(tid))
        rows.append((module, default, rust, diffs))
    if rows:
        print()
        # "on ours": the tests that made a RustEventLoop (the others test
        # CPython's classes on a mock loop, alike on both sides).
        print(
            f"{'module':<22} {'default':>10} {'rust':>10} {'on ours':>14} "
            f"{'differences':>12}"
        )
        for module, default, rust, diffs in rows:

            def cell(res: dict[str, tuple[str, str]]) -> str:
                c = Counter(o for o, _ in res.values())
                return f"{sum(c[o] for o in PASSING)}/{len(res)}"

            mine = on_ours.get(module, set())
            passed = sum(1 for t in mine if rust.get(t, ("", ""))[0] in PASSING)
            print(
                f"{module:<22} {cell(default):>10} {cell(rust):>10} "
                f"{f'{passed}/{len(mine)}':>14} {len(diffs):>12}"
            )
        print()
        for _module, _, _, diffs in rows:
            for tid, d, r in diffs:
                mark = "expected" if tid in expected else ""
                print(f"  {short(tid)}: default {d}, rust {r} {mark}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    m: {
                        **{
                            lp: {t: o for t, (o, _) in r.items()} for lp, r in v.items()
                        },
                        "on_ours": sorted(on_ours.get(m, ())),
                    }
                    for m, v in everything.items()
                },
                indent=1,
            )
        )
    if resolved:
        print("\nListed in expected_asyncio.txt but passing now (remove them):")
        for tid in resolved:
            print("  " + tid)
    if unexpected:
        print("\nPassing on the default loop, not on rust, not expected:")
        for line in unexpected:
            print("  " + line)
    # The closing line of the other runners: what passes on our loop, and
    # what fails there that passes on the default loop and is not expected.
    passing = sum(1 for _, _, rust, _ in rows for o, _ in rust.values() if o in PASSING)
    failed = sum(1 for line in unexpected if not line.startswith(" "))
    print(f"\n{passing} passed, {failed} failed")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
