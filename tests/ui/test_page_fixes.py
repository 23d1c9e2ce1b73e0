"""Two things issue 21 saw on the playground at 375 and 1280 px: the progress bar stopping
at about 80 % when the run was done, and the size select's label cut ("Model default (64").
"""

from __future__ import annotations

import io

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.support.server import RunningServer
from tests.ui.browser import DESKTOP, NARROW_PHONE, open_tab

TIMES = "\N{MULTIPLICATION SIGN}"  # the page writes sizes as "64 <times> 64"
LONG = 90_000  # ms: a run on two busy cores, never a timing assertion
WIDTHS = [pytest.param(NARROW_PHONE, id="375px"), pytest.param(DESKTOP, id="1280px")]
# What the bar shows at the very moment the run turns "done" (a microtask after the page
# set it, before any frame is painted), and how far it was before.
RECORD_DONE = """() => {
  window.__done = null;
  window.__before = [];
  const progress = document.getElementById("progress");
  const bar = document.getElementById("bar");
  const fill = document.getElementById("bar-fill");
  new MutationObserver(() => {
    const shown = fill.getBoundingClientRect().width / bar.getBoundingClientRect().width;
    if (progress.dataset.phase !== "done") window.__before.push(shown);
    else if (!window.__done) window.__done = {shown, now: bar.getAttribute("aria-valuenow"),
                                              max: bar.getAttribute("aria-valuemax")};
  }).observe(progress, {attributes: true, attributeFilter: ["data-phase"]});
}"""
# A select with width "auto" is exactly as wide as an option's label needs (text, padding,
# arrow). Every option a user can pick must fit the real select that wide.
CUT_OPTIONS = """(select) => {
  const probe = select.cloneNode(false);
  probe.removeAttribute("id");
  Object.assign(probe.style, {width: "auto", position: "absolute", visibility: "hidden"});
  select.after(probe);
  const has = select.getBoundingClientRect().width;
  const cut = [];
  for (const option of select.options) {
    if (option.disabled) continue;
    probe.replaceChildren(new Option(option.text));
    const needs = probe.getBoundingClientRect().width;
    if (needs > has + 0.5) cut.push(`${option.text}: needs ${needs} px, has ${has} px`);
  }
  probe.remove();
  return cut;
}"""


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 110, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_progress_bar_done_fills_the_whole_bar_at_once(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, service.url + "/ui/", viewport)
    page = tab.page
    expect(page.locator("#size option[value='64x64']")).to_have_count(1)  # config loaded
    page.fill("#prompt", "[[slow=0.3]] a lighthouse")
    page.select_option("#size", "64x64")
    page.fill("#steps", "5")
    run_and_check_the_bar_when_done(page)
    # An edit below strength 1 runs only that share of the steps: its bar ends full too.
    page.get_by_label("Edit an image").check()
    page.set_input_files("#edit-image", files=[
        {"name": "small.png", "mimeType": "image/png", "buffer": png(64, 64)}])
    run_and_check_the_bar_when_done(page)
    tab.assert_clean()


def run_and_check_the_bar_when_done(page: Page) -> None:
    page.evaluate(RECORD_DONE)
    page.click("#generate")
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    done = page.evaluate("window.__done")
    assert done["shown"] == pytest.approx(1.0, abs=0.002), (done, page.evaluate("window.__before"))
    assert done["now"] == done["max"] != "0"


@pytest.mark.parametrize("viewport", WIDTHS)
def test_size_select_every_label_fits_in_both_modes(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, service.url + "/ui/", viewport)
    page = tab.page
    select = page.locator("#size")
    expect(select.locator("option").first).to_have_text(f"Model default (64 {TIMES} 64)")
    assert select.evaluate(CUT_OPTIONS) == []
    page.get_by_label("Edit an image").check()
    page.set_input_files("#edit-image", files=[
        {"name": "wide.png", "mimeType": "image/png", "buffer": png(1024, 768)}])
    expect(select.locator("option").first).to_have_text(f"Same as the image (1024 {TIMES} 768)")
    assert select.evaluate(CUT_OPTIONS) == []
    # The one shown when the page opens, the way the issue measured it.
    assert select.evaluate("s => s.scrollWidth <= s.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    tab.assert_clean()
