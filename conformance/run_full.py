"""
Run Twisted's whole test suite on our reactor and on epoll, and compare by
test id.

    python -m conformance.run_full [--jobs 2] [--suite twisted] [--only rust]

Each reactor runs as C{trial -j N --reactor=NAME --reporter=bwverbose SUITE}
in its own process, one after the other (the machine has two cores), with its
output kept in C{_trial_temp_full_NAME.log}. Prints counts and wall time per
reactor, then every test whose outcome differs, and last a line
C{N passed, N failed} for our reactor, where "failed" counts tests that pass
on epoll but not on ours and are not listed in C{expected_failures.txt}.
Exits non-zero if there is any.
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

from conformance.run_builders import load_expected

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LINE = re.compile(r"^(?P<id>\S+) \.\.\. .*\[(?P<outcome>[^\]]+)\]\s*$")
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
    Test id -> outcome, from trial's bwverbose output. A few ids occur more
    than once in Twisted's suite (a test inherited by two classes of the same
    name); their outcomes are joined, e.g. C{pass+pass}.
    """
    seen: dict[str, list[str]] = {}
    for line in log.splitlines():
        m = LINE.match(line)
        if m and m["outcome"] in OUTCOMES:
            seen.setdefault(m["id"], []).append(OUTCOMES[m["outcome"]])
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


def run(reactor: str, suite: str, jobs: int) -> tuple[dict[str, str], float, str]:
    log = ROOT / f"_trial_temp_full_{reactor}.log"
    cmd = [
        sys.executable,
        "-m",
        "twisted.trial",
        f"--reactor={reactor}",
        "--reporter=bwverbose",
        f"--temp-directory={ROOT / f'_trial_temp_full_{reactor}'}",
    ]
    if jobs > 1:
        cmd.append(f"--jobs={jobs}")
    cmd.append(suite)
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
    return parse(text), elapsed, (summary[-1] if summary else f"exit {proc.returncode}")


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
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--suite", default="twisted")
    parser.add_argument("--only", choices=["rust", "epoll"])
    parser.add_argument(
        "--from-logs",
        action="store_true",
        help="compare the logs of the last run instead of running again",
    )
    args = parser.parse_args(argv)

    reactors = [args.only] if args.only else ["epoll", "rust"]
    results: dict[str, dict[str, str]] = {}
    for reactor in reactors:
        if args.from_logs:
            text = (ROOT / f"_trial_temp_full_{reactor}.log").read_text(
                errors="replace"
            )
            outcomes, elapsed, summary = parse(text), 0.0, "from log"
        else:
            outcomes, elapsed, summary = run(reactor, args.suite, args.jobs)
        results[reactor] = outcomes
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
    c = count(ours)
    print(f"\n{c['pass']} passed, {len(regressions)} failed")
    return 1 if regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
