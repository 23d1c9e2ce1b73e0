"""The playground in a real browser, against gunicorn with 2 workers, direct and behind a
reverse proxy that serves the service under /sub/ with a new upstream connection per request.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.proxy import RunningProxy
from tests.support.scrape import value
from tests.support.server import RunningServer
from tests.support.waiting import wait_until
from tests.ui.browser import DESKTOP, PHONE, Tab, open_tab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG = 90_000  # ms: a run on two busy cores, never a timing assertion
# Records every value the progress bar shows, so the test sees intermediate steps
# however briefly each one lasted on screen.
RECORD_STEPS = """() => {
  window.__steps = [];
  const bar = document.getElementById("bar");
  new MutationObserver(() => window.__steps.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


@pytest.fixture(params=["direct", "proxy"])
def base(request: pytest.FixtureRequest, service: RunningServer) -> str:
    """Where the browser finds the service: itself, or /sub/ behind the proxy."""
    if request.param == "direct":
        return service.url
    proxy: RunningProxy = request.getfixturevalue("proxy")
    return proxy.url


def metrics(service: RunningServer) -> str:
    return httpx.get(service.url + "/metrics", timeout=10).text


def fill(tab: Tab, prompt: str, *, steps: int, n: int = 1, seed: int | None = None) -> None:
    page = tab.page
    expect(page.locator("#size option[value='64x64']")).to_have_count(1)  # config loaded
    page.fill("#prompt", prompt)
    page.select_option("#size", "64x64")
    page.fill("#steps", str(steps))
    page.fill("#n", str(n))
    page.fill("#seed", "" if seed is None else str(seed))


def test_playground_generate_moves_through_steps_and_shows_downloadable_images(
    browser: Browser, base: str, service: RunningServer, request: pytest.FixtureRequest
) -> None:
    tab = open_tab(browser, base + "/ui")  # no slash: the relative redirect adds it
    page = tab.page
    assert page.url == base + "/ui/"
    expect(page.locator("#service-state")).to_have_attribute("data-state", re.compile("ready|busy"))
    expect(page.locator("#service-model")).to_have_text("sleepwell-demo-tiny-sd")
    expect(page.locator("#service-device")).to_have_text("CPU")
    expect(page.locator("#key-field")).to_be_hidden()  # keys are off on this server
    fill(tab, "[[slow=0.3]] a lighthouse at dusk", steps=6, n=2, seed=1234)
    page.evaluate(RECORD_STEPS)
    page.click("#generate")
    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    seen = page.evaluate("window.__steps")
    assert any(0 < step < 6 for step in seen), seen
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^Done · 2 images in "))
    images = page.locator("#results img")
    expect(images).to_have_count(2)
    assert images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [64, 64]
    cards = page.locator("#results .card")
    assert [cards.nth(i).get_attribute("data-seed") for i in range(2)] == ["1234", "1235"]
    expect(cards.first).to_contain_text("Seed 1234")
    with page.expect_download() as download:
        page.locator("#results a.download").first.click()
    assert download.value.suggested_filename == "sleepwell-1234.png"
    assert Path(download.value.path()).read_bytes().startswith(PNG_MAGIC)
    if request.node.callspec.params["base"] == "proxy":
        proxy: RunningProxy = request.getfixturevalue("proxy")
        fetched = [url for url in tab.requests if not url.startswith("blob:")]  # the images
        assert all(url.startswith(proxy.url + "/") for url in fetched), fetched
        assert ("POST", "/sub/v1/images/generations", 200) in proxy.app.seen
    tab.assert_clean()


def test_playground_cancel_stops_the_run_on_the_server(
    browser: Browser, base: str, service: RunningServer
) -> None:
    steps = 50
    before = metrics(service)
    tab = open_tab(browser, base + "/ui/")
    page = tab.page
    fill(tab, "[[slow=0.4]] cancel me", steps=steps)
    page.click("#generate")
    bar = page.locator("#bar")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^([2-9]|[1-4]\d)$"),
                                  timeout=LONG)
    page.click("#cancel")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "cancelled")
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^Cancelled at step \d+ / 50"))
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()

    def cancelled_and_idle() -> bool:
        text = metrics(service)
        return (value(text, "image_generation_total", status="cancelled")
                == value(before, "image_generation_total", status="cancelled") + 1
                and value(text, "image_generation_inflight") == 0)

    wait_until(cancelled_and_idle, 30, period=0.2, what="run cancelled, service idle")
    stopped_at = value(metrics(service), "inference_steps_total")
    assert stopped_at - value(before, "inference_steps_total") < steps
    # inference_steps_total stopped growing: the next 2-step run adds exactly 2.
    response = httpx.post(service.url + "/v1/images/generations", timeout=60,
                          json={"prompt": "after", "size": "64x64", "num_inference_steps": 2})
    assert response.status_code == 200
    assert value(metrics(service), "inference_steps_total") == stopped_at + 2
    tab.assert_clean()


def test_playground_bad_input_shows_the_api_message_and_marks_the_field(
    browser: Browser, base: str
) -> None:
    tab = open_tab(browser, base + "/ui/")
    page = tab.page
    fill(tab, "a lighthouse", steps=1000)
    page.click("#generate")
    alert = page.locator("#error")
    expect(alert).to_be_visible()
    expect(page.locator("#error-title")).to_have_text("400 · Invalid request")
    expect(page.locator("#error-message")).to_have_text(
        "num_inference_steps must be between 1 and 100; got 1000."
    )
    expect(page.locator("#steps")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#steps")).to_be_focused()
    # Fixing the field and generating again clears the error.
    page.fill("#steps", "2")
    page.fill("#guidance", "99")
    page.click("#generate")
    expect(page.locator("#error-message")).to_have_text(
        "Invalid value for 'guidance_scale': guidance_scale must be between 0 and 50"
    )
    expect(page.locator("#guidance")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#steps")).not_to_have_attribute("aria-invalid", "true")
    page.fill("#guidance", "7")
    page.click("#generate")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    expect(alert).to_be_hidden()
    tab.assert_clean()


def test_playground_keyboard_alone_generates_and_cancels(browser: Browser, service) -> None:
    tab = open_tab(browser, service.url + "/ui/")
    page = tab.page
    fill(tab, "", steps=40)
    page.locator("#prompt").focus()
    page.keyboard.type("[[slow=0.4]] typed, not clicked")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d*$"),
                                                   timeout=LONG)
    page.keyboard.press("Escape")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "cancelled")
    # Example prompts and the random seed are buttons: reachable and usable by keyboard.
    page.locator("[data-example]").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_have_value(re.compile("lighthouse", re.IGNORECASE))
    page.locator("#seed-random").focus()
    page.keyboard.press("Space")
    expect(page.locator("#seed")).to_have_value(re.compile(r"^\d+$"))
    page.locator("#generate").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    tab.assert_clean()


@pytest.mark.parametrize(("label", "viewport"), [("phone", PHONE), ("desktop", DESKTOP)])
def test_playground_screenshots_at_phone_and_desktop_width(
    browser: Browser, service: RunningServer, label: str, viewport: dict[str, int]
) -> None:
    """Saved under tests/artifacts/ui/ for a person to look at; the asserts keep them honest."""
    tab = open_tab(browser, service.url + "/ui/", viewport)
    page = tab.page
    fill(tab, "A lighthouse on a cliff at dusk, oil painting, warm light", steps=4, n=4, seed=7)
    page.click("#generate")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    expect(page.locator("#results img")).to_have_count(4)
    page.evaluate("window.scrollTo(0, 0)")
    tab.screenshot(f"{label}-results")
    fill(tab, "[[slow=0.5]] a red fox in a misty pine forest", steps=30)
    page.click("#generate")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", re.compile(r"^([3-9]|\d\d)$"),
                                                   timeout=LONG)
    tab.screenshot(f"{label}-running")
    page.click("#cancel")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "cancelled")
    fill(tab, "a lighthouse", steps=1000)
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    tab.screenshot(f"{label}-error-400")
    # Nothing sticks out sideways at this width.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    tab.assert_clean()
