"""Prints how many cases each fuzz target ran (budget.COUNTS) at the end of the run."""

from __future__ import annotations

import pytest

from tests.fuzz.budget import COUNTS, PROFILE, REQUIRED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section(f"fuzz cases (profile {PROFILE}, {REQUIRED} required per target)")
    for target, count in sorted(COUNTS.items()):
        terminalreporter.write_line(f"fuzz {target}: {count} cases")
