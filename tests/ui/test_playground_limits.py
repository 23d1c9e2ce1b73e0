"""The playground against a server with API keys and a rate limit, and one whose model
failed to load: the key is asked for, kept and sent; 401, 429 and 503 read as the API says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until
from tests.ui.browser import DESKTOP, PHONE, open_tab

API_KEY = "sk-playground-test"
LONG = 90_000


@pytest.fixture(scope="module")
def keyed() -> Iterator[RunningServer]:
    # 1/hour per key with memory storage and 2 workers: each worker lets one through, so
    # of three generations at least one is refused, whichever workers answer.
    env = {"SLEEPWELL_API_KEYS": API_KEY, "SLEEPWELL_RATE_LIMIT": "1/hour",
           "SLEEPWELL_DEFAULT_STEPS": "2"}
    with gunicorn_server(env, workers=2) as running:
        yield running


def test_playground_keys_are_asked_for_kept_and_sent_then_429_reads_its_retry_after(
    browser: Browser, keyed: RunningServer
) -> None:
    # The page itself needs no key; the API behind it does.
    assert httpx.get(keyed.url + "/ui/").status_code == 200
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    tab = open_tab(browser, keyed.url + "/ui/")
    page = tab.page
    expect(page.locator("#key-field")).to_be_visible()
    page.fill("#prompt", "a lighthouse")
    page.select_option("#size", "64x64")
    page.click("#generate")
    expect(page.locator("#error-title")).to_have_text("401 · API key needed")
    expect(page.locator("#error-message")).to_contain_text("You didn't provide an API key")
    expect(page.locator("#api_key")).to_be_focused()
    page.fill("#api_key", "sk-wrong")
    page.click("#generate")
    expect(page.locator("#error-message")).to_have_text("Incorrect API key provided.")

    page.fill("#api_key", API_KEY)
    page.reload()  # the key survives: local storage
    expect(page.locator("#api_key")).to_have_value(API_KEY)
    page.fill("#prompt", "a lighthouse")
    page.select_option("#size", "64x64")
    page.click("#generate")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    expect(page.locator("#results img")).to_have_count(1)

    for _ in range(2):  # bounded: the third generation at the latest is refused
        if page.locator("#error").is_visible():
            break
        page.click("#generate")
        expect(page.locator("#progress")).to_have_attribute(
            "data-phase", re.compile("done|refused"), timeout=LONG)
    expect(page.locator("#error-title")).to_have_text("429 · Too many requests")
    expect(page.locator("#error-message")).to_contain_text("Rate limit reached for this API key")
    expect(page.locator("#error-retry")).to_have_text(re.compile(r"^Retry-After: \d+ min"))
    expect(page.locator("#generate")).to_be_disabled()
    expect(page.locator("#generate")).to_have_text(re.compile(r"^Retry in \d+ min"))
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(viewport)
        tab.screenshot(f"{label}-error-429")
    page.fill("#api_key", "sk-another-key")  # its own limit: the countdown no longer applies
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#generate")).to_have_text("Generate")
    tab.assert_clean()


@pytest.fixture(scope="module")
def degraded() -> Iterator[RunningServer]:
    """A worker left unready by a failure streak (recycling off, so it stays so) whose GPU
    runs out of memory: a 503 the page must show, and a state its header must show."""
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_FAILURE_STREAK_LIMIT": "1",
           "SLEEPWELL_RECYCLE_ON_FAILURE_STREAK": "false"}
    with gunicorn_server(env) as running:
        failed = httpx.post(running.url + "/v1/images/generations", timeout=60,
                            json={"prompt": "[[fail]] x", "size": "64x64"})
        assert failed.status_code == 500
        wait_until(lambda: _state(running) == "degraded", 60, period=0.2,
                   what="a degraded worker")
        yield running


def _state(server: RunningServer) -> str | None:
    try:
        return str(httpx.get(server.url + "/health", timeout=2).json().get("state"))
    except (httpx.HTTPError, ValueError):
        return None


def test_playground_out_of_memory_shows_503_and_degraded_state(
    browser: Browser, degraded: RunningServer
) -> None:
    tab = open_tab(browser, degraded.url + "/ui/")
    page = tab.page
    expect(page.locator("#service-state")).to_have_attribute("data-state", "degraded")
    expect(page.locator("#service-state")).to_have_text("Degraded")
    page.fill("#prompt", "[[oom]] a lighthouse")
    page.click("#generate")
    expect(page.locator("#error-title")).to_have_text("503 · Service unavailable")
    expect(page.locator("#error-message")).to_contain_text("ran out of memory")
    expect(page.locator("#error-retry")).to_have_text(re.compile(r"^Retry-After: \d+ s$"))
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(viewport)
        tab.screenshot(f"{label}-error-503")
    tab.assert_clean()
