"""
Run the test suites of Scrapy and Daphne, Twisted applications that want
Twisted's asyncio reactor, on that reactor and on ours side by side, and
compare them by test id.

    python -m conformance.run_asyncio_peers [--only SUITE] [--jobs N]
                                            [--timeout S]
                                            [--from-logs [--rerun-slow]]

Suites (SUITE; C{--only} may be repeated):

    scrapy   Scrapy's tests in its asyncio mode (pytest-twisted,
             C{--reactor=asyncio}, Scrapy's default), from the sdist of the
             pinned Scrapy
    daphne   Daphne's tests, from the sdist of the pinned Daphne

Reactors, in this order:

    asyncio  Twisted's C{AsyncioSelectorReactor} on asyncio's default loop,
             installed the way each suite installs it by itself: the
             reference
    rust     L{twisted_shim.reactor.RustReactor}, installed in its place by
             the plugin L{conformance.pytest_peer}: for Scrapy, as what
             pytest-twisted's C{--reactor=asyncio} installs, so that the
             suite still runs in its asyncio mode and its C{only_asyncio}
             tests run; for Daphne, in the pytest process before any test
             imports C{daphne.server} (which keeps an installed reactor only
             if it is an C{AsyncioSelectorReactor}, and replaces it
             otherwise), and in every server process Daphne's testing module
             starts (patched below). Each process checks that the reactor it
             ends with is the one asked for.

Before the suites, L{conformance.peer_recognition} makes Scrapy's and
Daphne's own checks for the asyncio reactor against ours.

Everything runs in C{.venv-peers}, made from C{requirements-peers.txt} (the
peers, their test dependencies, pinned) plus the Twisted pin of
C{requirements-dev.txt}, when it is missing or either changed; never in
C{.venv}, whose tests would see pytest-twisted and pytest-asyncio. Scrapy's
proxy tests run mitmproxy's C{mitmdump} (C{MITMDUMP}) from a virtualenv of
its own, C{_peers/mitmproxy-venv} (C{requirements-mitmproxy.txt}).
twisted_shim comes from the tree (C{PYTHONPATH}; C{make build} builds it).
The suites run from their sdists, as in L{conformance.run_peers}: downloaded
into C{_peers/sdists/}, extracted afresh into C{_peers/src/}, patched where
they need it (each patch printed with its reason); the output of each
(suite, reactor) run is C{_peers/logs/SUITE_REACTOR.log}, its outcomes
C{SUITE_REACTOR.json} (see L{conformance.pytest_peer}).

Nothing can hang: every test has a time limit (pytest-timeout, C{--timeout},
120 s). Scrapy's suite runs under pytest-xdist (C{--jobs}, 2) with the
C{thread} method: a test over its limit has every thread's stack dumped into
the log and its worker ended, xdist counts the test failed and goes on in a
new worker. Daphne's runs in one process (its tests share two fixed files in
the temporary directory) with the C{signal} method. Each run as a whole is
killed after L{RUN_TIMEOUT}; the tests it did not report count as not run.
Scrapy's tests that need the Internet (marked C{requires_internet}) are not
run: this machine has none, and the rest must not try.

Time is conformance as in L{conformance.timing}, with Twisted's asyncio
reactor as the reference: each test's seconds (setup, call and teardown) on
both, the tests slower on rust confirmed by reruns of those tests alone, and
failing unless listed in C{expected_slow.txt}.

Prints a table per suite and reactor (pass, fail, error, skip, xfail, and
the C{only_asyncio} tests: how many ran, how many skipped), the wall times,
the slow tests, every test whose outcome differs, and last a line C{N
passed, N failed} for rust: "failed" counts the tests whose outcome on rust
is worse than on Twisted's asyncio reactor (L{conformance.run_full.worse}: a
pass that is not one, or a skip where it ran) and that are not listed in
C{expected_asyncio_peers.txt} (C{test id | result on rust | reason}), plus
the recognition checks that failed and any sign that a suite did not run as
meant. Exits non-zero if there is any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from conformance import tables, timing
from conformance.run_full import worse
from conformance.run_peers import LOGS, ROOT, Patch, Sdist, prepare

HERE = Path(__file__).resolve().parent
VENV = ROOT / ".venv-peers"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = ROOT / "requirements-peers.txt"
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
#: Where Scrapy's proxy tests find mitmdump (see requirements-mitmproxy.txt).
MITM_VENV = ROOT / "_peers" / "mitmproxy-venv"
MITM_REQUIREMENTS = ROOT / "requirements-mitmproxy.txt"
MITMDUMP = MITM_VENV / "bin" / "mitmdump"
EXPECTED = HERE / "expected_asyncio_peers.txt"

REFERENCE = "asyncio"
REACTORS = (REFERENCE, "rust")
#: The class each run's processes must end with.
REACTOR_CLASSES = {
    REFERENCE: "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    "rust": "twisted_shim.reactor.RustReactor",
}

#: Per test (pytest-timeout), seconds.
TEST_TIMEOUT = 120
#: Per (suite, reactor) run, seconds.
RUN_TIMEOUT = 3600


def pinned(name: str, path: Path = REQUIREMENTS) -> str:
    """The version C{path} pins C{name} to (C{name==version})."""
    for line in path.read_text().splitlines():
        m = re.match(rf"\s*{re.escape(name)}(\[[^\]]*\])?==(\S+)", line, re.I)
        if m:
            return m[2]
    raise SystemExit(f"{path.name} pins no {name}")


def twisted_requirement() -> str:
    """requirements-dev.txt's Twisted line: one pin for both virtualenvs."""
    for line in DEV_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if re.match(r"twisted(\[|==)", line, re.I):
            return line
    raise SystemExit(f"{DEV_REQUIREMENTS.name} pins no Twisted")


# Daphne's testing module starts each server in a forked process and first
# installs Twisted's asyncio reactor there, whatever the parent had; this
# makes it install ours when the run is on ours, and check that
# daphne.server, imported again, keeps it.
_DAPHNE_CHILD = r"""\1if os.environ.get("TWISTED_SHIM_PEER_REACTOR") == "rust":
        import twisted_shim

        ours = twisted_shim.install()
        import daphne.server  # noqa: F401  (its reactor check runs now)

        if sys.modules.get("twisted.internet.reactor") is not ours:
            raise RuntimeError("daphne.server replaced twisted_shim's reactor")
        return

    """


@dataclass(frozen=True)
class Suite:
    name: str
    sdist: Sdist
    args: tuple[str, ...]  # pytest's, before the target
    target: str = "tests"
    #: Whether the whole suite runs under pytest-xdist (C{--jobs} workers);
    #: reruns for timing never do.
    xdist: bool = False
    note: str = ""


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "scrapy",
            Sdist("scrapy", lambda: pinned("scrapy")),
            args=(
                "--reactor=asyncio",
                # pytest-asyncio (for Daphne) is not in Scrapy's test
                # environment; loaded, it would change its coroutine tests.
                "-p",
                "no:asyncio",
                "-m",
                "not requires_internet",
                "--timeout-method=thread",
            ),
            xdist=True,
            note="pytest-xdist",
        ),
        Suite(
            "daphne",
            Sdist(
                "daphne",
                lambda: pinned("daphne"),
                patches=(
                    Patch(
                        "daphne/testing.py",
                        r"(def _reinstall_reactor\(\):\n(?:.*\n)*?"
                        r'        del sys\.modules\["daphne\.server"\]\n\n    )',
                        _DAPHNE_CHILD,
                        "_reinstall_reactor installs twisted_shim's reactor when "
                        "TWISTED_SHIM_PEER_REACTOR=rust",
                        "Daphne's test servers (forked processes) install "
                        "Twisted's asyncio reactor unconditionally; on the rust "
                        "run they must be on ours, as the pytest process is",
                    ),
                ),
            ),
            args=(
                # pytest-twisted would install a reactor of its own in the
                # pytest process (it is not in Daphne's test environment).
                "-p",
                "no:twisted",
                "--timeout-method=signal",
            ),
            note="one process",
        ),
    )
}


# --- the virtualenv -----------------------------------------------------------


def ensure_venv(venv: Path, requirements: Path, *more: str) -> None:
    """
    Make or refresh C{venv} from C{requirements} and the requirement
    specifiers C{more}, when it is missing or they changed.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    text = "\n".join([requirements.read_text(), *more])
    digest = hashlib.sha256(text.encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    print(f"setting up {venv.relative_to(ROOT)} from {requirements.name} ...")
    sys.stdout.flush()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(requirements), *more], check=True)
    stamp.write_text(digest + "\n")


def ensure_venvs() -> None:
    """.venv-peers (with Twisted at the project's pin), and mitmproxy's."""
    ensure_venv(VENV, REQUIREMENTS, twisted_requirement())
    ensure_venv(MITM_VENV, MITM_REQUIREMENTS)


# --- running ------------------------------------------------------------------


@dataclass
class Result:
    #: Test id -> outcome (conformance.run_full's words, joined with "+").
    outcomes: dict[str, str]
    durations: dict[str, float]
    only_asyncio: set[str]
    skips: dict[str, str]
    reactors: list[str | None]
    elapsed: float
    summary: str
    log: Path


def paths(suite: Suite, reactor: str, rerun: bool = False) -> tuple[Path, Path]:
    stem = f"{suite.name}_{reactor}" + (".rerun" if rerun else "")
    return LOGS / f"{stem}.log", LOGS / f"{stem}.json"


def run(
    suite: Suite,
    reactor: str,
    source: Path,
    jobs: int,
    timeout: int,
    tests: list[str] | None = None,
) -> Result:
    """
    Run C{suite} on C{reactor}; or only C{tests} (node ids), one process,
    for timing.
    """
    log, report = paths(suite, reactor, rerun=tests is not None)
    LOGS.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    cmd = [
        str(PYTHON),
        "-m",
        "pytest",
        "-p",
        "conformance.pytest_peer",
        f"--peer-reactor={reactor}",
        f"--peer-report={report}",
        "-p",
        "no:cacheprovider",
        f"--timeout={timeout}",
        "-q",
        "--tb=short",
        "-rfE",
        *suite.args,
    ]
    if tests is None:
        if suite.xdist:
            cmd += ["-n", str(jobs)]
        cmd.append(suite.target)
    else:
        cmd += ["-p", "no:xdist", *tests]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(source), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("TWISTED_SHIM_PEER_REACTOR", None)
    env["MITMDUMP"] = str(MITMDUMP)
    start = time.monotonic()
    summary = ""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=source,
            start_new_session=True,
        )
        try:
            proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            summary = f"killed after {RUN_TIMEOUT} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    elapsed = time.monotonic() - start
    return load(log, report, elapsed, summary or f"exit {proc.returncode}")


#: pytest's closing line, with or without its rules (C{-q}).
_SUMMARY = re.compile(r"^=*\s*(\d+ \w+.* in [\d.]+s\b.*?)\s*=*$")


def load(log: Path, report: Path, elapsed: float, fallback: str) -> Result:
    data = json.loads(report.read_text()) if report.exists() else {}
    tests = data.get("tests", {})
    lines = (
        [
            m[1]
            for ln in log.read_text(errors="replace").splitlines()
            if (m := _SUMMARY.match(ln))
        ]
        if log.exists()
        else []
    )
    if not elapsed and lines:
        # From logs: pytest's own count of the run's seconds.
        m = re.search(r" in ([\d.]+)s\b", lines[-1])
        elapsed = float(m[1]) if m else 0.0
    return Result(
        outcomes={t: e["outcome"] for t, e in tests.items()},
        durations={t: e["seconds"] for t, e in tests.items()},
        only_asyncio={t for t, e in tests.items() if e["only_asyncio"]},
        skips=data.get("skips", {}),
        reactors=data.get("reactors", []),
        elapsed=elapsed,
        summary=lines[-1] if lines else fallback,
        log=log,
    )


# --- comparing ----------------------------------------------------------------


def load_expected(path: Path = EXPECTED) -> dict[str, str]:
    """Test id -> why its result on rust may be worse (C{id | result | why})."""
    if not path.exists():
        return {}
    return {
        test_id: f"{why} (on rust: {result})"
        for test_id, result, why in tables.rows(path, 3)
    }


def counts(outcomes: dict[str, str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for joined in outcomes.values():
        c.update(joined.split("+"))
    return c


def ran(outcome: str | None) -> bool:
    return outcome is not None and "skip" not in outcome.split("+")


def compare(
    ref: dict[str, str], ours: dict[str, str], expected: dict[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """
    @return: the ids worse on rust and not expected; lines for those; lines
        for the other differences (allowed).
    """
    regressed: list[str] = []
    bad_lines: list[str] = []
    allowed: list[str] = []
    for test_id in sorted(set(ref) | set(ours)):
        theirs, mine = ref.get(test_id), ours.get(test_id)
        if theirs == mine:
            continue
        line = f"  {test_id}: {theirs} on {REFERENCE}, {mine} on rust"
        if theirs is None:
            bad = not ran(mine) or "pass" not in (mine or "").split("+")
        else:
            bad = worse(theirs, mine)
        if bad and test_id not in expected:
            regressed.append(test_id)
            bad_lines.append(line)
        else:
            why = f"  [{expected[test_id]}]" if test_id in expected else ""
            allowed.append(line + why)
    return regressed, bad_lines, allowed


def setup_problems(suite: Suite, results: dict[str, Result]) -> list[str]:
    """Signs that a run did not run as meant (which could look green)."""
    problems: list[str] = []
    ref = results[REFERENCE]
    if counts(ref.outcomes)["pass"] == 0:
        problems.append(f"no test passed on {REFERENCE}: the suite did not run")
    for reactor, result in results.items():
        wrong = {r for r in result.reactors if r != REACTOR_CLASSES[reactor]}
        if wrong or not result.reactors:
            problems.append(
                f"the {reactor} run ended on {sorted(map(str, wrong)) or 'no reactor'},"
                f" not {REACTOR_CLASSES[reactor]}"
            )
    ours = results["rust"]
    asked = {t for t in ref.only_asyncio if ran(ref.outcomes.get(t))}
    if asked and not any(ran(ours.outcomes.get(t)) for t in ours.only_asyncio):
        problems.append("no only_asyncio test ran on rust")
    return problems


def failure_lines(result: Result, test_id: str) -> list[str]:
    """pytest's short summary line(s) for C{test_id} in C{result}'s log."""
    if not result.log.exists():
        return []
    found = []
    for line in result.log.read_text(errors="replace").splitlines():
        if line.startswith(("FAILED ", "ERROR ")) and test_id in line:
            found.append(line[:300])
    return found


# --- printing -----------------------------------------------------------------


HEAD = "  pass fail error skip xfail  only_asyncio ran/skip  time"


def cell(result: Result | None) -> str:
    if result is None:
        return f"{'-':>50}"
    c = counts(result.outcomes)
    only = [result.outcomes.get(t) for t in result.only_asyncio]
    ran_only = sum(1 for o in only if ran(o))
    return (
        f"{c['pass']:>6} {c['fail']:>4} {c['error']:>5} {c['skip']:>4} "
        f"{c['xfail'] + c['xpass']:>5}  {ran_only:>16}/{len(only) - ran_only:<4}"
        f" {result.elapsed:>4.0f}s"
    )


def table(names: list[str], results: dict[str, dict[str, Result]]) -> None:
    print()
    print(f"{'suite':<8} {'reactor':<8}{HEAD}")
    print("-" * (17 + len(HEAD)))
    for name in names:
        for reactor in REACTORS:
            print(f"{name:<8} {reactor:<8}{cell(results[name].get(reactor))}")
    print()


def only_asyncio_report(name: str, results: dict[str, Result]) -> None:
    """What became of the only_asyncio tests on each reactor."""
    for reactor in REACTORS:
        r = results.get(reactor)
        if r is None or not r.only_asyncio:
            continue
        outcomes = Counter(r.outcomes[t] for t in r.only_asyncio)
        shown = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
        print(f"{name}: only_asyncio tests on {reactor}: {shown}")
        reasons = Counter(
            r.skips.get(t, "?") for t in r.only_asyncio if not ran(r.outcomes[t])
        )
        for why, n in reasons.most_common(5):
            print(f"    {n} skipped: {why[:160]}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=list(SUITES), metavar="SUITE"
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="pytest-xdist workers for Scrapy (2)"
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=TEST_TIMEOUT,
        help=f"seconds per test ({TEST_TIMEOUT})",
    )
    parser.add_argument(
        "--from-logs",
        action="store_true",
        help="compare the reports of the last run instead of running again",
    )
    parser.add_argument(
        "--rerun-slow",
        action="store_true",
        help="with --from-logs: rerun the tests slower on rust to confirm them",
    )
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(args.only or SUITES))
    signal.signal(signal.SIGTERM, _interrupt)

    failed: list[str] = []
    results: dict[str, dict[str, Result]] = {n: {} for n in names}
    slow: dict[str, tuple[list[timing.Slow], list[timing.Slow]]] = {}
    if args.from_logs:
        for name in names:
            for reactor in REACTORS:
                log, report = paths(SUITES[name], reactor)
                if report.exists():
                    results[name][reactor] = load(log, report, 0.0, "from log")
        if args.rerun_slow:
            ensure_venvs()
            for name in names:
                if len(results[name]) == len(REACTORS):
                    source = prepare(SUITES[name].sdist)
                    slow[name] = confirm_slow(
                        SUITES[name], results[name], source, args.timeout
                    )
    else:
        ensure_venvs()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print("Scrapy's and Daphne's checks for the asyncio reactor, on ours:")
        proc = subprocess.run(
            [str(PYTHON), "-m", "conformance.peer_recognition"], env=env, cwd=ROOT
        )
        if proc.returncode != 0:
            failed.append("peer_recognition")
        print()
        sources = {n: prepare(SUITES[n].sdist) for n in names}
        for name in names:
            suite = SUITES[name]
            for reactor in REACTORS:
                print(f"{name} on {reactor} ({suite.note}) ...", end=" ", flush=True)
                result = run(suite, reactor, sources[name], args.jobs, args.timeout)
                results[name][reactor] = result
                print(f"{result.elapsed:.0f} s, {result.summary}", flush=True)
        for name in names:
            if len(results[name]) == len(REACTORS):
                slow[name] = confirm_slow(
                    SUITES[name], results[name], sources[name], args.timeout
                )

    table(names, results)
    timing.wall_table(
        (
            (n, results[n]["rust"].elapsed, results[n][REFERENCE].elapsed)
            for n in names
            if len(results[n]) == len(REACTORS)
        ),
        reference=REFERENCE,
    )
    expected = load_expected()
    for name in names:
        suite = SUITES[name]
        if len(results[name]) < len(REACTORS):
            print(f"{name}: no results on some reactor")
            failed.append(f"{name}: not run")
            continue
        ref, ours = results[name][REFERENCE], results[name]["rust"]
        only_asyncio_report(name, results[name])
        for problem in setup_problems(suite, results[name]):
            print(f"{name}: {problem}")
            failed.append(f"{name}: {problem}")
        confirmed, noise = slow.get(name) or (found_slow(ref, ours), [])
        failed.extend(
            timing.report(
                confirmed,
                timing.load_expected_slow(),
                name,
                noise,
                reference=REFERENCE,
            )
        )
        regressed, bad_lines, allowed = compare(ref.outcomes, ours.outcomes, expected)
        if allowed:
            print(f"{name}: other differences (allowed):")
            print("\n".join(allowed))
        if regressed:
            print(f"{name}: worse on rust than on {REFERENCE}:")
            for test_id, line in zip(regressed, bad_lines, strict=True):
                print(line)
                for ln in failure_lines(ours, test_id):
                    print(f"      {ln}")
            failed.extend(regressed)
        stale = sorted(
            t
            for t in expected
            if t in ours.outcomes
            and not worse(ref.outcomes.get(t, "pass"), ours.outcomes[t])
        )
        if stale:
            print(f"{name}: listed in {EXPECTED.name} but no longer worse on rust:")
            print("\n".join(f"  {t}" for t in stale))
        print()
    passed = sum(
        counts(r["rust"].outcomes)["pass"] for r in results.values() if "rust" in r
    )
    print(f"logs: {LOGS.relative_to(ROOT)}/")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


def found_slow(ref: Result, ours: Result) -> list[timing.Slow]:
    compared = timing.ran_on_both(
        {"rust": ours.durations, REFERENCE: ref.durations},
        {"rust": ours.outcomes, REFERENCE: ref.outcomes},
        reference=REFERENCE,
    )
    return timing.find_slow(compared["rust"], compared[REFERENCE])


def confirm_slow(
    suite: Suite, results: dict[str, Result], source: Path, timeout: int
) -> tuple[list[timing.Slow], list[timing.Slow]]:
    """Rerun the tests found slower on rust alone; see L{timing.confirm}."""

    def rerun(reactor: str, tests: list[str]) -> dict[str, float]:
        return run(suite, reactor, source, 1, timeout, tests).durations

    found = found_slow(results[REFERENCE], results["rust"])
    return timing.confirm(found, rerun, reference=REFERENCE)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
