"""Under CI=true, a test skipped for want of PostgreSQL or Chromium is a failure, not a green skip.

Loaded by conftest.py (pytest_plugins); also usable alone: `pytest -p ci_servers`.
"""

import os

import pytest

NEEDED = ("postgresql", "chromium")


def required(reason: str) -> str | None:
    """The server a skip reason says was missing, when CI requires it."""
    if os.environ.get("CI", "").lower() != "true":
        return None
    return next((name for name in NEEDED if name in reason.lower()), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        name = required(str(report.longrepr[2]))
        if name:
            report.outcome = "failed"
            report.longrepr = (
                f"CI=true but this test was skipped ({report.longrepr[2]}): CI must run it with {name} installed"
            )
