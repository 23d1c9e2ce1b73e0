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
from tests.ui.browser import DESKTOP, PHONE, open_tab, wait_for

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
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # An existing directory that holds no model: a local load that fails, never a hub call.
    env = {"SLEEPWELL_MODEL": str(tmp_path_factory.mktemp("not-a-model")),
           "SLEEPWELL_LOAD_WAIT_S": "0", "HF_HUB_OFFLINE": "1"}
    with gunicorn_server(env, wait=False) as running:
        assert wait_for(lambda: _state(running) == "failed", 60), running.log()[-3000:]
        yield running


def _state(server: RunningServer) -> str | None:
    try:
        return str(httpx.get(server.url + "/health", timeout=2).json().get("state"))
    except (httpx.HTTPError, ValueError):
        return None


def test_playground_unavailable_model_shows_503_and_failed_state(
    browser: Browser, broken: RunningServer
) -> None:
    tab = open_tab(browser, broken.url + "/ui/")
    page = tab.page
    expect(page.locator("#service-state")).to_have_attribute("data-state", "failed")
    expect(page.locator("#service-state")).to_have_text("Failed")
    page.fill("#prompt", "a lighthouse")
    page.click("#generate")
    expect(page.locator("#error-title")).to_have_text("503 · Service unavailable")
    expect(page.locator("#error-message")).to_contain_text("The model is not ready to serve")
    expect(page.locator("#error-retry")).to_have_text(re.compile(r"^Retry-After: \d+ s$"))
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(viewport)
        tab.screenshot(f"{label}-error-503")
    tab.assert_clean()
