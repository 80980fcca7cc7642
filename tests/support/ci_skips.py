"""Under CI (``CI=true``) a skipped test fails the run.

A test here skips only for want of something on the host (rabbitmqctl,
systemd-analyze: see infrastructure.py), and CI must have it all: a green run that
skipped tests would hide the tests that never ran. Hooks, imported by tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

_skipped_modules: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _in_ci():
        _as_failure(report)


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped at collection (``pytest.importorskip``)."""
    if report.skipped and _in_ci():
        _as_failure(report)
        _skipped_modules.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A collection report turned into a failure is shown, but not counted in the exit status.
    if _skipped_modules and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
