"""
The project's own documents say what the code does: the pause_output
contract lives in C{docs/} (no reference leaves the repository), its rules
are the ones C{tests/test_pause_output.py} checks, and C{make help} and the
README list the same make targets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONTRACT = ROOT / "docs" / "pause_output.md"


def test_no_reference_outside_the_repository() -> None:
    paths = [ROOT / "README.md", *(ROOT / "twisted_shim").rglob("*.py")]
    paths += (ROOT / "tests").glob("*.py")
    for path in paths:
        if path.name == "test_docs.py":
            continue
        assert "shared/specs" not in path.read_text(), path


def test_the_contract_is_pointed_at() -> None:
    assert CONTRACT.exists()
    assert "docs/pause_output.md" in README
    init = (ROOT / "twisted_shim" / "wsgi" / "__init__.py").read_text()
    assert "docs/pause_output.md" in init
    tests = (ROOT / "tests" / "test_pause_output.py").read_text()
    assert "docs/pause_output.md" in tests


def test_every_rule_has_its_tests() -> None:
    rules = [int(n) for n in re.findall(r"^(\d+)\. \*\*", CONTRACT.read_text(), re.M)]
    assert rules == list(range(1, len(rules) + 1)) and len(rules) >= 12
    tests = (ROOT / "tests" / "test_pause_output.py").read_text()
    tested = {int(n) for n in re.findall(r"^def test_rule(\d+)_", tests, re.M)}
    assert tested == set(rules)


def test_readme_shows_both_forms_and_module_alone() -> None:
    assert 'resume = environ["wsgi.pause_output"]()' in README
    assert 'environ["twisted_shim.wait"]' in README
    assert "`module` alone means `module:application`" in README


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_target_and_the_readme_too() -> None:
    out = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = re.findall(r"^  make (\S+)", out, re.M)
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony is not None
    assert set(listed) == set(phony.group(1).split()) - {"all"}
    in_readme = set(re.findall(r"^make (\S+)", README, re.M))
    assert set(listed) <= in_readme
