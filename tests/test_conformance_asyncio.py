"""
Tests for L{conformance.run_asyncio}: the expected-differences file parses
and names tests of the modules run; a module runs in a child on either loop,
and the record says which tests ran on ours; a hung test is counted and the
rest of the module still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance import run_asyncio


def test_expected_differences_name_tests_of_the_modules_run() -> None:
    expected = run_asyncio.load_expected()
    assert expected, "expected_asyncio.txt lists the known differences"
    for test_id, reason in expected.items():
        module = test_id.split(".")[2]
        assert module in run_asyncio.MODULES, test_id
        assert "on rust" in reason
    assert set(run_asyncio.FAST) <= set(run_asyncio.MODULES)


@pytest.mark.parametrize("loop", ["default", "rust"])
def test_a_module_runs_on_either_loop(loop: str, tmp_path: Path) -> None:
    results, ours = run_asyncio.run_module("test_context", loop, 30, 120, tmp_path)
    assert results, "the child recorded its tests"
    assert {o for o, _ in results.values()} == {"pass"}
    # test_context's test uses asyncio.run: a loop from the policy.
    assert bool(ours) == (loop == "rust")


def test_a_hung_test_is_counted_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake module: its first test hangs past the per-test limit.
    pkg = tmp_path / "fake_pkg"
    (pkg / "test" / "test_asyncio").mkdir(parents=True)
    for init in (
        pkg / "test" / "__init__.py",
        pkg / "test" / "test_asyncio" / "__init__.py",
    ):
        init.write_text("")
    (pkg / "test" / "test_asyncio" / "test_fake.py").write_text(
        "import time, unittest\n"
        "class T(unittest.TestCase):\n"
        "    def test_a_hangs(self):\n"
        "        time.sleep(60)\n"
        "    def test_b_passes(self):\n"
        "        pass\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(pkg))
    results, _ = run_asyncio.run_module("test_fake", "default", 1.0, 60, tmp_path)
    assert results["test.test_asyncio.test_fake.T.test_a_hangs"][0] == "hang"
    assert results["test.test_asyncio.test_fake.T.test_b_passes"][0] == "pass"
