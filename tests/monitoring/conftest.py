"""Report the end-to-end figures (seconds to page, to resolve) at the end of every run."""

from __future__ import annotations

from typing import Any

from tests.monitoring.stack import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("monitoring end-to-end figures (test intervals = production / 15)")
    for name, value in FIGURES.items():
        shown = f"{value}" if isinstance(value, int) else f"{value:.1f} s"
        terminalreporter.write_line(f"{name}: {shown}")
