"""
Run Twisted's whole test suite (or some of its modules) on our reactor and on
epoll, and compare by test id, in outcome and in time.

    python -m conformance.run_full [--suite twisted ...] [--jobs 1] [--only rust]

Each reactor runs as C{trial --reactor=NAME --reporter=timing SUITE...} in its
own process, one after the other, with its output kept in
C{_trial_temp_full_NAME.log}. Prints counts and wall time per reactor, every
test whose outcome differs, and the tests slower on rust (see
L{conformance.timing}: each is run again alone on both reactors to confirm
it); last a line C{N passed, N failed} for our reactor, where "failed" counts
tests that pass on epoll but not on ours and are not listed in
C{expected_failures.txt}, and tests slower on ours not listed in
C{expected_slow.txt}. Exits non-zero if there is any.

The default is one trial process per reactor (C{--jobs 1}): C{trial -j}'s
distributed reporter reports no durations, so with C{--jobs 2} (about half
the wall time) only outcomes are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conformance import timing
from conformance.run_builders import load_expected

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

START = re.compile(r"^(?P<id>\S+) \.\.\. ")
TAG = re.compile(r"\[([^\]]+)\]")
OUTCOMES = {
    "OK": "pass",
    "FAIL": "fail",
    "FAILURE": "fail",
    "ERROR": "error",
    "SKIPPED": "skip",
    "TODO": "xfail",
    "SUCCESS!?!": "xpass",
    "UNEXPECTED SUCCESS": "xpass",
    "EXPECTED FAILURE": "xfail",
}


def parse(log: str) -> dict[str, str]:
    """
    Test id -> outcome, from trial's verbose output (C{bwverbose} or
    C{timing}): C{id ... [OK]}, where whatever the test printed comes
    between the two, over as many lines as it printed, and warnings written
    to stderr may follow on the same line. A few ids occur more
    than once in Twisted's suite (a test inherited by two classes of the same
    name); their outcomes are joined, e.g. C{pass+pass}.
    """
    seen: dict[str, list[str]] = {}
    current: str | None = None
    for line in log.splitlines():
        m = START.match(line)
        if m:
            current, line = m["id"], line[m.end() :]
        if current is None:
            continue
        tags = [t for t in TAG.findall(line) if t in OUTCOMES]
        if tags:
            seen.setdefault(current, []).append(OUTCOMES[tags[-1]])
            current = None
    return {test_id: "+".join(sorted(o)) for test_id, o in seen.items()}


def count(outcomes: dict[str, str]) -> Counter[str]:
    """How many tests had each outcome, duplicates included."""
    c: Counter[str] = Counter()
    for joined in outcomes.values():
        c.update(joined.split("+"))
    return c


def _keep_dev_null_mode() -> Callable[[], None]:
    """
    Some test in Twisted's suite, run as root, leaves /dev/null mode 0555,
    which breaks every non-root program afterwards (PostgreSQL's initdb,
    for one). Returns a function that puts the mode back.
    """
    try:
        mode = os.stat("/dev/null").st_mode & 0o777
    except OSError:
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError):
            if os.stat("/dev/null").st_mode & 0o777 != mode:
                os.chmod("/dev/null", mode)
                print(f"(restored /dev/null's mode to {mode:o} after the suite)")

    return restore


def run(
    reactor: str, suites: list[str], jobs: int, name: str = "full"
) -> tuple[dict[str, str], float, str, dict[str, float]]:
    """
    Run C{suites} (trial test names) on C{reactor}.

    @return: outcomes by test id, wall time, trial's summary line, and
        durations by test id (empty with C{jobs > 1}).
    """
    log = ROOT / f"_trial_temp_{name}_{reactor}.log"
    cmd = [
        sys.executable,
        # A crash of the trial process (a signal) leaves every thread's
        # Python stack in the log, so it can be traced to a test.
        "-X",
        "faulthandler",
        "-m",
        "twisted.trial",
        f"--reactor={reactor}",
        "--reporter=timing",
        f"--temp-directory={ROOT / f'_trial_temp_{name}_{reactor}'}",
    ]
    if jobs > 1:
        cmd.append(f"--jobs={jobs}")
    cmd.extend(suites)
    env = dict(os.environ)
    # Twisted's tests start helper scripts (ckeygen, ...) from PATH.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    restore = _keep_dev_null_mode()
    start = time.monotonic()
    try:
        with log.open("w") as out:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
    finally:
        restore()
    elapsed = time.monotonic() - start
    text = log.read_text(errors="replace")
    summary = [ln for ln in text.splitlines() if ln.startswith(("PASSED", "FAILED"))]
    return (
        parse(text),
        elapsed,
        (summary[-1] if summary else f"exit {proc.returncode}"),
        timing.durations(text) if jobs == 1 else {},
    )


def worse(ref: str, mine: str | None) -> bool:
    """
    Whether our outcome is a regression from epoll's: fewer passes, or a skip
    where epoll ran the test.
    """
    r = Counter(ref.split("+"))
    m = Counter((mine or "").split("+"))
    return m["pass"] < r["pass"] or m["skip"] > r["skip"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trial -j per reactor (with more than 1, no per-test durations)",
    )
    parser.add_argument(
        "--suite",
        nargs="+",
        default=["twisted"],
        help="trial test names (default: twisted, the whole suite)",
    )
    parser.add_argument(
        "--name",
        default="full",
        help="names the logs: _trial_temp_NAME_REACTOR.log",
    )
    parser.add_argument("--only", choices=["rust", "epoll"])
    parser.add_argument(
        "--from-logs",
        action="store_true",
        help="compare the logs of the last run instead of running again",
    )
    args = parser.parse_args(argv)

    reactors = [args.only] if args.only else ["epoll", "rust"]
    results: dict[str, dict[str, str]] = {}
    durations: dict[str, dict[str, float]] = {}
    walls: dict[str, float] = {}
    for reactor in reactors:
        if args.from_logs:
            text = (ROOT / f"_trial_temp_{args.name}_{reactor}.log").read_text(
                errors="replace"
            )
            outcomes, elapsed, summary = parse(text), 0.0, "from log"
            durations[reactor] = timing.durations(text)
        else:
            outcomes, elapsed, summary, durations[reactor] = run(
                reactor, args.suite, args.jobs, args.name
            )
        results[reactor] = outcomes
        walls[reactor] = elapsed
        c = count(outcomes)
        print(
            f"{reactor:>6}: {sum(c.values())} tests in {elapsed:.0f} s: "
            f"{c['pass']} pass, {c['fail']} fail, {c['error']} error, "
            f"{c['skip']} skip, {c['xfail']} xfail, {c['xpass']} xpass  ({summary})",
            flush=True,
        )
    if "rust" not in results:
        return 0
    ours = results["rust"]
    ref = results.get("epoll", {})
    expected = load_expected()

    regressions: list[str] = []
    allowed: list[str] = []
    for test_id, outcome in sorted(ref.items()):
        mine = ours.get(test_id)
        if outcome == mine:
            continue
        line = f"  {test_id}: {outcome} on epoll, {mine} on rust"
        if worse(outcome, mine):
            (allowed if test_id in expected else regressions).append(line)
        else:
            allowed.append(line)
    missing = sorted(set(ours) - set(ref)) if ref else []

    if allowed:
        print(
            "\nOther differences (allowed: see expected_failures.txt or epoll did not pass):"
        )
        print("\n".join(allowed))
    if missing:
        print(f"\n{len(missing)} tests ran only on rust")
    if regressions:
        print("\nPass on epoll, not on rust:")
        print("\n".join(regressions))
    slow: list[str] = []
    if ref and durations.get("rust") and durations.get("epoll"):
        print()
        suite = " ".join(args.suite)
        compared = timing.ran_on_both(durations, {"rust": ours, "epoll": ref})
        # Each suite's time in the tests that ran on both, then the whole
        # trial process's (start-up and reactor installation included).
        rows = [
            (
                name,
                *(
                    sum(
                        t
                        for i, t in compared[r].items()
                        if i == name or i.startswith(name + ".")
                    )
                    for r in ("rust", "epoll")
                ),
            )
            for name in args.suite
        ]
        rows.append(("trial process", walls["rust"], walls["epoll"]))
        timing.wall_table(rows)

        def rerun(reactor: str, ids: list[str]) -> dict[str, float]:
            return run(reactor, ids, 1, f"{args.name}_rerun")[3]

        found = timing.find_slow(compared["rust"], compared["epoll"])
        confirmed, noise = timing.confirm(found, rerun)
        slow = timing.report(confirmed, timing.load_expected_slow(), suite, noise)
    elif ref:
        print("\n(no per-test durations with --jobs > 1: time not compared)")
    c = count(ours)
    failed = len(regressions) + len(slow)
    print(f"\n{c['pass']} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
