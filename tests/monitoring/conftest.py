"""Report the end-to-end figures (seconds to page, to resolve) at the end of every run; the
metrics-token module's service, booted beside the main stack's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.monitoring.stack import FIGURES, METRICS_TOKEN
from tests.support.server import RunningServer, gunicorn_server


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("monitoring end-to-end figures (test intervals = production / 15)")
    for name, value in FIGURES.items():
        shown = f"{value}" if isinstance(value, int) else f"{value:.1f} s"
        terminalreporter.write_line(f"{name}: {shown}")


@pytest.fixture(scope="package")
def metrics_token_service() -> Iterator[RunningServer]:
    """The service with SLEEPWELL_METRICS_TOKEN set (test_e2e_metrics_token.py), started
    without waiting for it. test_e2e.py's stack asks for it first, so it boots side by side
    with that stack's service instead of after it; its users wait until it is ready."""
    with gunicorn_server({"SLEEPWELL_METRICS_TOKEN": METRICS_TOKEN}, wait=False) as server:
        yield server
