"""Fixtures for the browser suite: one Chromium, the real service with 2 workers, a proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.proxy import RunningProxy, prefix_proxy
from tests.support.server import RunningServer, gunicorn_server
from tests.ui.browser import CHROMIUM, FLAGS

# Fault injection: "[[slow=S]]" in a prompt makes every step take S seconds, so the
# intermediate steps and a cancel mid-run are observable without any timing assertion.
# The edit strength is not the built-in default, so the page's slider shows it came from
# the server.
PLAYGROUND_ENV = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_DEFAULT_STEPS": "4",
                  "SLEEPWELL_EDIT_STRENGTH": "0.55"}


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def service() -> Iterator[RunningServer]:
    with gunicorn_server(PLAYGROUND_ENV, workers=2) as running:
        yield running


@pytest.fixture(scope="package")
def proxy(service: RunningServer) -> Iterator[RunningProxy]:
    with prefix_proxy(service.url, "/sub") as running:
        yield running
