"""
Run Twisted's ReactorBuilder suites on our reactor and on EPollReactor, side
by side, and compare.

    python -m conformance.run_builders [--only rust|epoll] [--module test_unix ...] [--log FILE]

Prints a table (one row per Twisted test module: passed/failed/skipped on
each reactor), every difference between the two, and last a line
C{N passed, N failed} for our reactor. Exits non-zero when a test that passes
on EPollReactor does not pass on ours, when ours skips a test epoll runs, or
when ours fails a test not listed in C{expected_failures.txt}.

Failures listed there (with their reason and their result on epoll) are
reported as expected, not counted as failed.

Time is part of the comparison (see L{conformance.timing}): each test's
duration is recorded on both reactors, each Twisted module's total is printed
side by side, and a test slower on rust (confirmed by reruns) that is not in
C{expected_slow.txt} fails the run like a test that fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from conformance import tables, timing

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected_failures.txt"


def load_expected(path: Path = EXPECTED) -> dict[str, str]:
    """
    Read the expected-failures file: C{id | result on epoll | reason} per
    line, where C{id} is a reactor-neutral test id (see L{neutral_id}).
    """
    return {
        test_id: f"{reason} (on epoll: {on_epoll})"
        for test_id, on_epoll, reason in tables.rows(path, 3)
    }


def neutral_id(test_id: str) -> tuple[str, str]:
    """
    Split C{conformance.builders.TCPClientTestsBuilder_RustReactorTests.test_x}
    into the reactor (C{rust}) and C{TCPClientTestsBuilder.test_x}.
    """
    from conformance.builders import SUFFIX

    cls, method = test_id.split(".")[-2:]
    for name, suffix in SUFFIX.items():
        if cls.endswith("_" + suffix):
            return name, cls[: -len(suffix) - 1] + "." + method
    raise ValueError(f"not a generated builder test: {test_id}")


Outcomes = dict[str, dict[str, str]]
Durations = dict[str, dict[str, float]]


def install_global_reactor() -> None:
    """EPollReactor as the global reactor (as C{trial --reactor=epoll})."""
    from twisted.internet import epollreactor

    epollreactor.install()


def run(
    reactors: Iterable[str],
    log: Path,
    only: Iterable[str] | None = None,
    modules: Iterable[str] | None = None,
) -> tuple[Outcomes, Durations]:
    """
    Run the generated classes for C{reactors} under trial, in this process
    (L{install_global_reactor} first). With C{only} (neutral test ids), run
    just those tests; with C{modules} (Twisted's short module names, such as
    C{test_unix}), just the builders of those modules.

    @return: reactor name -> neutral test id -> outcome (C{pass}, C{fail},
        C{error}, C{skip}, C{xfail}, C{xpass}); and reactor name -> neutral
        test id -> seconds.
    """
    from twisted.trial import reporter, runner

    outcomes: Outcomes = defaultdict(dict)
    durations: Durations = defaultdict(dict)

    class Collector(reporter.VerboseTextReporter):
        def _record(self, test: object, outcome: str) -> None:
            name, nid = neutral_id(test.id())  # type: ignore[attr-defined]
            outcomes[name][nid] = outcome

        def startTest(self, test):  # type: ignore[no-untyped-def]
            self._started = time.perf_counter()
            super().startTest(test)

        def stopTest(self, test):  # type: ignore[no-untyped-def]
            super().stopTest(test)
            name, nid = neutral_id(test.id())
            durations[name][nid] = time.perf_counter() - self._started

        def addSuccess(self, test):  # type: ignore[no-untyped-def]
            super().addSuccess(test)
            self._record(test, "pass")

        def addFailure(self, test, fail):  # type: ignore[no-untyped-def]
            super().addFailure(test, fail)
            self._record(test, "fail")

        def addError(self, test, error):  # type: ignore[no-untyped-def]
            super().addError(test, error)
            self._record(test, "error")

        def addSkip(self, test, reason):  # type: ignore[no-untyped-def]
            super().addSkip(test, reason)
            self._record(test, "skip")

        def addExpectedFailure(self, test, failure, todo=None):  # type: ignore[no-untyped-def]
            super().addExpectedFailure(test, failure, todo)
            self._record(test, "xfail")

        def addUnexpectedSuccess(self, test, todo=None):  # type: ignore[no-untyped-def]
            super().addUnexpectedSuccess(test, todo)
            self._record(test, "xpass")

    from conformance import builders

    wanted = {builders.SUFFIX[r] for r in reactors}
    chosen = None if modules is None else set(modules)
    loader = runner.TestLoader()
    if only is None:
        suite = loader.suiteFactory(
            [
                loader.loadClass(cls)
                for name, cls in sorted(vars(builders).items())
                if isinstance(cls, type)
                and any(name.endswith("_" + w) for w in wanted)
                and (chosen is None or getattr(cls, "_twistedModule", None) in chosen)
            ]
        )
    else:
        suite = loader.suiteFactory(
            [
                loader.loadByName(f"conformance.builders.{full_id(r, nid)}")
                for nid in only
                for r in reactors
            ]
        )
    with log.open("w") as stream:
        trial = runner.TrialRunner(
            Collector,
            stream=stream,
            workingDirectory=str(HERE.parent / "_trial_temp_builders"),
        )
        trial.run(suite)
    return outcomes, durations


def full_id(reactor: str, nid: str) -> str:
    """The inverse of L{neutral_id}, without the module."""
    from conformance.builders import SUFFIX

    cls, method = nid.split(".")
    return f"{cls}_{SUFFIX[reactor]}.{method}"


def time_report(
    durations: Mapping[str, Mapping[str, float]],
    outcomes: Mapping[str, Mapping[str, str]],
    log: Path,
) -> list[str]:
    """
    Print each Twisted module's total time on both reactors and the tests
    slower on rust (each confirmed by reruns in this process); return the
    slow ones not listed in C{expected_slow.txt}.
    """
    ours, ref = durations.get("rust", {}), durations.get("epoll", {})
    if not ours or not ref:
        return []
    compared = timing.ran_on_both(durations, outcomes)
    # Time spent in the tests that ran on both (a skip takes none).
    per_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for nid, secs in compared["rust"].items():
        per_module[module_of(nid)][0] += secs
    for nid, secs in compared["epoll"].items():
        per_module[module_of(nid)][1] += secs
    rows = [(mod, r, e) for mod, (r, e) in sorted(per_module.items())]
    rows.append(("total", sum(r for _, r, _ in rows), sum(e for _, _, e in rows)))
    timing.wall_table(rows)

    def rerun(reactor: str, nids: list[str]) -> dict[str, float]:
        return dict(
            run([reactor], log.with_suffix(".rerun.log"), only=nids)[1][reactor]
        )

    found = timing.find_slow(compared["rust"], compared["epoll"])
    confirmed, noise = timing.confirm(found, rerun)
    return timing.report(
        confirmed, timing.load_expected_slow(), "ReactorBuilder suites", noise
    )


def module_of(nid: str) -> str:
    from conformance import builders

    cls = nid.split(".")[0]
    for name, value in vars(builders).items():
        if name.startswith(cls + "_") and hasattr(value, "_twistedModule"):
            return value._twistedModule
    return "?"


def report(
    outcomes: dict[str, dict[str, str]],
    expected: dict[str, str],
    slow: Iterable[str] = (),
) -> int:
    """
    Print the outcome table and the differences; C{slow} are tests found
    slower on rust and not expected to be, each counted as failed.
    """
    ours = outcomes.get("rust", {})
    ref = outcomes.get("epoll", {})
    reactors = [r for r in ("rust", "epoll") if r in outcomes]

    table: dict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: defaultdict(Counter)
    )
    for r in reactors:
        for nid, outcome in outcomes[r].items():
            table[module_of(nid)][r][outcome] += 1

    def cell(c: Counter[str]) -> str:
        return f"{c['pass']:>4} {c['fail'] + c['error']:>3} {c['skip']:>3}"

    head = "".join(f" | {r + ' pass fail skip':>20}" for r in reactors)
    print(f"{'module':<22}{head}")
    print("-" * (22 + 23 * len(reactors)))
    totals = {r: Counter() for r in reactors}
    for mod in sorted(table):
        row = "".join(f" | {cell(table[mod][r]):>20}" for r in reactors)
        print(f"{mod:<22}{row}")
        for r in reactors:
            totals[r].update(table[mod][r])
    print("-" * (22 + 23 * len(reactors)))
    print(f"{'total':<22}" + "".join(f" | {cell(totals[r]):>20}" for r in reactors))
    print()

    problems: list[str] = []
    expected_hits: list[str] = []
    for nid, outcome in sorted(ours.items()):
        other = ref.get(nid)
        if outcome in ("fail", "error"):
            if nid in expected:
                expected_hits.append(f"  {nid}: {expected[nid]}")
            else:
                problems.append(f"  {nid}: {outcome} on rust, {other} on epoll")
        elif outcome == "skip" and other not in (None, "skip"):
            problems.append(f"  {nid}: skipped on rust, {other} on epoll")
    if ref:
        for nid, outcome in sorted(ref.items()):
            if outcome == "pass" and ours and ours.get(nid) != "pass":
                line = f"  {nid}: passes on epoll, {ours.get(nid)} on rust"
                if line not in problems and not any(
                    p.startswith(f"  {nid}:") for p in problems
                ):
                    problems.append(line)
        gained = sorted(
            n for n, o in ours.items() if o == "pass" and ref.get(n) != "pass"
        )
        if gained:
            print("Passing on rust but not on epoll:")
            for nid in gained:
                print(f"  {nid}: {ref.get(nid)} on epoll")
            print()
    if expected_hits:
        print(
            f"{len(expected_hits)} expected failures (conformance/expected_failures.txt):"
        )
        print("\n".join(expected_hits))
        print()
    for nid in slow:
        problems.append(f"  {nid}: slower on rust than on epoll (see above)")
    if problems:
        print("Differences from EPollReactor:")
        print("\n".join(problems))
        print()

    if not ours:
        return 0 if ref else 1
    c = Counter(ours.values())
    if c["pass"] == 0:
        problems.append("no test passed: the reactor probably failed to build")
    print(f"rust: {len(expected_hits)} expected failures, {c['skip']} skipped")
    print(f"{c['pass']} passed, {len(problems)} failed")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["rust", "epoll"], help="run one reactor")
    parser.add_argument(
        "--module",
        action="append",
        dest="modules",
        metavar="NAME",
        help="run only this Twisted test module's builders (test_unix, ...); repeatable",
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=HERE.parent / "_trial_temp_builders.log",
        help="where trial's verbose output goes",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    os.environ.setdefault("PYTHONPATH", str(HERE.parent))
    reactors = [args.only] if args.only else ["rust", "epoll"]
    install_global_reactor()
    if args.modules:
        from conformance.builders import MODULES

        known = {m.rsplit(".", 1)[-1] for m in MODULES}
        unknown = set(args.modules) - known
        if unknown:
            parser.error(f"unknown module(s) {sorted(unknown)}; known: {sorted(known)}")
    outcomes, durations = run(reactors, args.log, modules=args.modules)
    print(f"trial log: {args.log}")
    slow = time_report(durations, outcomes, args.log)
    return report(outcomes, load_expected(), slow)


if __name__ == "__main__":
    raise SystemExit(main())
