"""pytest plugin: with ``RITM_STRICT_SKIPS=1`` a run that skipped any test fails, listing why.

``scripts/test.sh`` sets the variable when the shared folder (``$RITM_SHARED_DIR`` or
``../shared``) is present: there every test has what it needs, so a skip hides a missing
feature or a broken fixture rather than an absent optional input. Tests marked ``gpu`` may
still skip on a machine without CUDA (reported, not counted). Loaded from ``tests/conftest.py``.
"""

from __future__ import annotations

import os

import pytest

ENV = "RITM_STRICT_SKIPS"


def strict_skips_enabled() -> bool:
    """True when ``$RITM_STRICT_SKIPS`` is set to a non-empty value other than ``0``."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The skip reason of a report (``longrepr`` is ``(file, line, "Skipped: reason")``)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class StrictSkips:
    """Collects skips during the run; fails the session and lists them at the end."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []  # (node id, reason)
        self.allowed: list[tuple[str, str]] = []  # gpu-marked tests without CUDA

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return  # xfail/xpass are expected outcomes, not skips
        target = self.allowed if "gpu" in getattr(report, "keywords", {}) else self.skips
        target.append((report.nodeid, _reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Skips raised by a marker, in a fixture or in the test body."""
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """Skipped modules (module-level ``pytest.skip``/``importorskip``)."""
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Turn a passing run with skips into a failed one."""
        if self.skips and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """List the skips that failed the run."""
        for node, why in self.allowed:
            terminalreporter.write_line(f"{ENV}: allowed skip (gpu) {node}: {why}")
        if not self.skips:
            return
        terminalreporter.write_sep(
            "=", f"{ENV}: {len(self.skips)} skipped test(s) fail this run", red=True, bold=True
        )
        terminalreporter.write_line(
            "no test may skip here (scripts/test.sh sets RITM_STRICT_SKIPS=1 when the shared "
            "folder is present; RITM_STRICT_SKIPS=0 allows skips):"
        )
        for node, why in self.skips:
            terminalreporter.write_line(f"SKIPPED {node}: {why}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the checker when ``$RITM_STRICT_SKIPS`` asks for it."""
    if strict_skips_enabled():
        config.pluginmanager.register(StrictSkips(), "ritm-strict-skips")
