"""
A pytest plugin for L{conformance.run_asyncio_peers}: it chooses the reactor
a peer's suite runs on and writes what happened to each test.

    pytest -p conformance.pytest_peer --peer-reactor=rust --peer-report=F.json

C{--peer-reactor}:

    - C{asyncio} (the default) changes nothing: the suite installs Twisted's
      C{AsyncioSelectorReactor} as it does by itself (Scrapy's
      C{--reactor=asyncio} through pytest-twisted; Daphne's C{daphne.server}
      on import).
    - C{rust} installs L{twisted_shim.reactor.RustReactor} in its place:
      under pytest-twisted, as what its C{--reactor=asyncio} installs (so the
      suite still sees the option value "asyncio" and runs its asyncio-only
      tests); without it, at configure time, before any test module is
      imported. Every process of the run (the xdist workers too) then checks
      that the installed reactor is ours, and refuses to start otherwise. The
      environment variable C{TWISTED_SHIM_PEER_REACTOR=rust} tells processes
      the suite starts itself (Daphne's servers) to do the same.

C{--peer-report} writes a JSON object: C{tests}, test id (pytest's node id) ->
C{{"outcome", "seconds", "only_asyncio"}}, where the outcome is one of
L{conformance.run_full.OUTCOMES}' words (C{pass}, C{fail}, C{error}, C{skip},
C{xfail}, C{xpass}; a test whose teardown also failed is C{error+fail}; a
failed subtest fails its test),
seconds are its setup, call and teardown together, and C{only_asyncio} says
whether it carries Scrapy's C{only_asyncio} marker (a module or class
that skipped or failed to collect as a whole is one entry, C{skip} or
C{error}); C{reactors}, the
installed reactor's class in each process at its end (C{module.Class}), and
C{skips}, the reason of each skip. Under xdist the controller writes it from
the reports its workers send.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

#: The environment variable that carries the choice into processes the
#: suite starts (see the module docstring).
REACTOR_ENV = "TWISTED_SHIM_PEER_REACTOR"

_RUST = "twisted_shim.reactor.RustReactor"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peer", "twisted_shim's side-by-side peer runs")
    group.addoption(
        "--peer-reactor",
        choices=("asyncio", "rust"),
        default="asyncio",
        help="the asyncio reactor to run on: Twisted's (asyncio) or ours (rust)",
    )
    group.addoption("--peer-report", default=None, help="JSON file of outcomes")


def installed_reactor() -> str | None:
    """C{module.Class} of the installed reactor, or C{None}."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return None
    cls = type(reactor)
    return f"{cls.__module__}.{cls.__qualname__}"


def install_rust() -> Any:
    """Install our reactor (L{twisted_shim.install}) and return it."""
    import twisted_shim

    return twisted_shim.install()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _report
    path = config.getoption("peer_report")
    if path is not None and not hasattr(config, "workerinput"):
        _report = Report(Path(path))
    if config.getoption("peer_reactor") != "rust":
        return
    os.environ[REACTOR_ENV] = "rust"
    if config.pluginmanager.hasplugin("twisted"):
        import pytest_twisted

        from twisted_shim.reactor import RustReactor

        def asyncio_is_rust() -> None:
            # What pytest-twisted's own installers do (pinned version).
            pytest_twisted._install_reactor(
                reactor_installer=install_rust, reactor_type=RustReactor
            )

        # Runs after this hook: pytest-twisted's pytest_configure looks the
        # installer up by the --reactor value then.
        pytest_twisted.reactor_installers["asyncio"] = asyncio_is_rust
    else:
        install_rust()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """After every C{pytest_configure} (pytest-twisted's installs the
    reactor there): refuse to run on anything but ours when asked to."""
    if session.config.getoption("peer_reactor") != "rust":
        return
    found = installed_reactor()
    if found != _RUST:
        raise pytest.UsageError(f"--peer-reactor=rust, but the reactor is {found}")


class Report:
    """The outcomes of one run, gathered from each test's reports."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}
        self.skips: dict[str, str] = {}
        self.reactors: list[str | None] = []

    def _entry(self, nodeid: str) -> dict[str, Any]:
        return self.tests.setdefault(
            nodeid,
            {
                "outcomes": [],
                "seconds": 0.0,
                "only_asyncio": False,
                "subtest_failed": False,
            },
        )

    def add(self, report: pytest.TestReport) -> None:
        entry = self._entry(report.nodeid)
        if getattr(report, "context", None) is not None:
            # A subtest (pytest's subtests): inside the test's own call,
            # whose report follows; it only makes that outcome a failure.
            if report.failed:
                entry["subtest_failed"] = True
            return
        entry["seconds"] += report.duration
        if "only_asyncio" in report.keywords:
            entry["only_asyncio"] = True
        outcome = _outcome(report)
        if outcome is not None:
            entry["outcomes"].append(outcome)
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr
            if isinstance(reason, tuple):
                reason = reason[2]
            self.skips[report.nodeid] = str(reason)

    def add_collected(self, report: pytest.CollectReport) -> None:
        """A module (or class) that skipped or failed as a whole."""
        entry = self._entry(report.nodeid)
        entry["outcomes"].append("skip" if report.skipped else "error")
        if report.skipped:
            reason = report.longrepr
            if isinstance(reason, tuple):
                reason = reason[2]
            self.skips[report.nodeid] = str(reason)

    def write(self) -> None:
        tests = {
            test_id: {
                "outcome": _joined(e["outcomes"], e["subtest_failed"]),
                "seconds": round(e["seconds"], 6),
                "only_asyncio": e["only_asyncio"],
            }
            for test_id, e in self.tests.items()
        }
        data = {"tests": tests, "skips": self.skips, "reactors": self.reactors}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _joined(outcomes: list[str], subtest_failed: bool) -> str:
    if subtest_failed:
        # The test's own call passed around a failed subtest: a failure.
        outcomes = [o for o in outcomes if o != "pass"] + ["fail"]
    # No phase said anything: the run ended inside the test.
    return "+".join(sorted(outcomes)) or "error"


def _outcome(report: pytest.TestReport) -> str | None:
    """One phase's contribution to the test's outcome, if any."""
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.passed:
            return "xpass" if xfail else "pass"
        if report.failed:
            return "fail"
        return "xfail" if xfail else "skip"
    # Setup and teardown: only what goes wrong there counts.
    if report.failed:
        return "error"
    if report.skipped:
        return "xfail" if xfail else "skip"
    return None


#: The run's report, in the process that writes it (the xdist controller,
#: or the only process).
_report: Report | None = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _report is not None:
        _report.add(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if _report is not None and not report.passed:
        _report.add_collected(report)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: a worker is done; keep the reactor it had at its end."""
    if _report is not None:
        _report.reactors.append(getattr(node, "workeroutput", {}).get("reactor"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        config.workeroutput["reactor"] = installed_reactor()  # type: ignore[attr-defined]
        return
    if _report is None:
        return
    if not _report.reactors:
        _report.reactors.append(installed_reactor())
    _report.write()
