"""
Tests for L{conformance.run_asyncio_peers} and its pytest plugin
L{conformance.pytest_peer}, on small suites of their own (Scrapy and Daphne
live in C{.venv-peers}, which C{make conformance-peers} makes): the report
has one outcome per test, as the runner reads it; C{--peer-reactor=rust}
installs our reactor before any test module is imported and says so; the
comparison counts what is worse on rust and nothing else; the pins are read
from the requirements files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conformance import run_asyncio_peers as runner
from conformance.pytest_peer import REACTOR_ENV

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
import os, sys, unittest
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("setup fails")

@pytest.fixture
def breaks_after():
    yield
    raise RuntimeError("teardown fails")

def test_pass():
    pass

def test_fail():
    assert False

def test_skip():
    pytest.skip("not here")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="known", strict=False)
def test_xpass():
    pass

def test_setup_error(broken):
    pass

def test_fail_and_teardown_error(breaks_after):
    assert False

@pytest.mark.only_asyncio
def test_marked():
    pass

class T(unittest.TestCase):
    def test_subtests_pass(self):
        for i in range(3):
            with self.subTest(i=i):
                pass

    def test_a_subtest_fails(self):
        for i in range(3):
            with self.subTest(i=i):
                assert i != 1

def test_reactor():
    reactor = sys.modules.get("twisted.internet.reactor")
    print("reactor:", type(reactor).__name__, os.environ.get(REACTOR_ENV))
""".replace("REACTOR_ENV", repr(REACTOR_ENV))


def run_suite(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    (tmp_path / "test_small.py").write_text(textwrap.dedent(SUITE))
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(REACTOR_ENV, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conformance.pytest_peer",
            f"--peer-report={report}",
            "-p",
            "no:cacheprovider",
            "-o",
            "markers=only_asyncio",
            "-s",
            *args,
            "test_small.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.exists(), proc.stdout + proc.stderr
    return json.loads(report.read_text()), proc.stdout


def test_the_report_has_one_outcome_per_test(tmp_path: Path) -> None:
    data, _ = run_suite(tmp_path)
    outcomes = {
        test_id.split("::", 1)[1]: e["outcome"] for test_id, e in data["tests"].items()
    }
    assert outcomes == {
        "test_pass": "pass",
        "test_fail": "fail",
        "test_skip": "skip",
        "test_xfail": "xfail",
        "test_xpass": "xpass",
        "test_setup_error": "error",
        "test_fail_and_teardown_error": "error+fail",
        "test_marked": "pass",
        "test_reactor": "pass",
        # One entry per test, whatever its subtests; a failed one fails it.
        "T::test_subtests_pass": "pass",
        "T::test_a_subtest_fails": "fail",
    }
    marked = {t.split("::")[1] for t, e in data["tests"].items() if e["only_asyncio"]}
    assert marked == {"test_marked"}
    assert list(data["skips"].values()) == ["Skipped: not here"]
    assert all(e["seconds"] >= 0 for e in data["tests"].values())
    # Nothing installed a reactor: the run does not pretend one.
    assert data["reactors"] == [None]


def test_rust_installs_ours_before_the_tests_and_says_so(tmp_path: Path) -> None:
    data, out = run_suite(tmp_path, "--peer-reactor=rust")
    assert "reactor: RustReactor rust" in out
    assert data["reactors"] == [runner.REACTOR_CLASSES["rust"]]
    # The runner reads it the same way.
    result = runner.load(tmp_path / "none.log", tmp_path / "report.json", 1.0, "x")
    assert result.outcomes["test_small.py::test_pass"] == "pass"
    assert result.only_asyncio == {"test_small.py::test_marked"}


def test_the_comparison_counts_what_is_worse_on_rust() -> None:
    ref = {"a": "pass", "b": "pass", "c": "skip", "d": "fail", "e": "pass"}
    ours = {"a": "pass", "b": "fail", "c": "pass", "d": "pass", "f": "pass"}
    regressed, bad, allowed = runner.compare(ref, ours, {})
    # b fails where it passed; e did not run on rust.
    assert regressed == ["b", "e"]
    assert len(bad) == 2 and len(allowed) == 3
    # Listed with a reason: allowed, and the reason is shown.
    regressed, _, allowed = runner.compare(ref, ours, {"b": "why (on rust: fail)"})
    assert regressed == ["e"]
    assert any("why" in line for line in allowed)


def test_a_skip_where_the_reference_ran_is_worse() -> None:
    regressed, _, _ = runner.compare({"a": "pass"}, {"a": "skip"}, {})
    assert regressed == ["a"]


def test_pins_come_from_the_requirements_files() -> None:
    assert runner.pinned("scrapy").count(".") == 2
    assert runner.pinned("daphne").count(".") == 2
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert runner.twisted_requirement() in dev
    with pytest.raises(SystemExit):
        runner.pinned("no-such-package")


def test_expected_differences_parse() -> None:
    for test_id, reason in runner.load_expected().items():
        assert test_id.startswith("tests/"), test_id
        assert "on rust" in reason
