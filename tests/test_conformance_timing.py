"""
Tests for L{conformance.timing}: reading trial's durations, and telling a
test that is slower on our reactor from one that was slow once.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance import timing  # noqa: E402
from conformance.timing import Slow  # noqa: E402

TIMING_LOG = """\
Running 3 tests.
pkg.test_a.T.test_one ... [OK]
(0.012 secs)
pkg.test_a.T.test_two ... [SKIPPED]
(0.000 secs)
pkg.test_b.U.test_three ... [FAIL]
(1.250 secs)

-------------------------------------------------------------------------------
Ran 3 tests in 1.262s
"""


def test_durations_from_trial_timing_reporter() -> None:
    assert timing.durations(TIMING_LOG) == {
        "pkg.test_a.T.test_one": 0.012,
        "pkg.test_a.T.test_two": 0.0,
        "pkg.test_b.U.test_three": 1.25,
    }


def test_a_test_is_slow_only_past_both_bounds() -> None:
    rust = {"stall": 1.002, "small": 0.05, "close": 0.14, "both": 0.16}
    epoll = {"stall": 0.002, "small": 0.001, "close": 0.1, "both": 0.1}
    assert [s.test_id for s in timing.find_slow(rust, epoll)] == ["stall", "both"]


def test_skipped_tests_are_not_compared() -> None:
    compared = timing.ran_on_both(
        {"rust": {"a": 1.0, "b": 1.0}, "epoll": {"a": 0.0, "b": 0.0}},
        {"rust": {"a": "pass", "b": "pass"}, "epoll": {"a": "skip", "b": "pass"}},
    )
    assert compared == {"rust": {"b": 1.0}, "epoll": {"b": 0.0}}


def test_confirm_keeps_a_stall_and_drops_noise() -> None:
    """A stall is slow in every rerun; noise is fast in at least one."""
    runs = {"rust": iter([1.0, 0.05, 1.0, 1.0, 1.0]), "epoll": iter([0.01] * 5)}
    calls: list[tuple[str, list[str]]] = []

    def rerun(reactor: str, ids: list[str]) -> dict[str, float]:
        calls.append((reactor, ids))
        t = next(runs[reactor])
        return {"stall": 1.0 if reactor == "rust" else 0.01, "noisy": t}

    found = [Slow("stall", 1.0, 0.01), Slow("noisy", 0.3, 0.01)]
    confirmed, noise = timing.confirm(found, rerun)
    assert [s.test_id for s in confirmed] == ["stall"]
    assert confirmed[0].rust == 1.0 and confirmed[0].epoll == 0.01
    assert noise == [Slow("noisy", 0.3, 0.01)]
    assert [r for r, _ in calls] == ["epoll", "rust"] * timing.CONFIRM_RUNS


def test_expected_slow_file_parses(tmp_path: Path) -> None:
    listed = tmp_path / "expected_slow.txt"
    listed.write_text("# comment\n\nmod.T.test_x | 1.2 | 0.3 | it sleeps on purpose\n")
    assert timing.load_expected_slow(listed) == {
        "mod.T.test_x": "it sleeps on purpose (recorded: rust 1.2 s, epoll 0.3 s)"
    }
    assert (
        timing.report(
            [Slow("mod.T.test_x", 1.2, 0.3)], timing.load_expected_slow(listed)
        )
        == []
    )
    assert timing.report([Slow("other", 1.2, 0.3)], {}) == ["other"]
    # The repository's own file parses.
    timing.load_expected_slow()
