"""The playground's Edit mode in Chromium at phone (375 px) and desktop (1280 px) widths,
against the real service (gunicorn, 2 workers, the demo model): choose or drop an image,
paint a mask with mouse or finger, erase it, and edit with the keyboard alone.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.support.proxy import RunningProxy
from tests.support.server import RunningServer
from tests.ui.browser import DESKTOP, NARROW_PHONE, Tab, open_tab

LONG = 90_000  # ms: a run on two busy cores, never a timing assertion
WIDTHS = [pytest.param(NARROW_PHONE, id="375px"), pytest.param(DESKTOP, id="1280px")]
TIMES = "\N{MULTIPLICATION SIGN}"  # the page writes sizes as "64 <times> 64"
SERVER_STRENGTH = "0.55"  # SLEEPWELL_EDIT_STRENGTH in tests/ui/conftest.py
# Counts the partial previews the results grid ever showed, however briefly.
RECORD_PREVIEWS = """() => {
  window.__previews = 0;
  new MutationObserver((changes) => {
    for (const change of changes) for (const node of change.addedNodes) {
      if (node.matches && node.matches("img.preview")) window.__previews += 1;
    }
  }).observe(document.getElementById("results"), {childList: true, subtree: true});
}"""
# What the page POSTs as multipart, as the browser holds it (Chromium's request events carry
# no file bytes): each FormData entry, files base64. The request itself goes out unchanged.
RECORD_FORMS = """(() => {
  window.__forms = [];
  const send = window.fetch;
  window.fetch = function (url, init) {
    if (init && init.body instanceof FormData) {
      const form = {url: String(url), parts: {}, reading: 0};
      window.__forms.push(form);
      for (const [name, value] of init.body.entries()) {
        if (typeof value === "string") { form.parts[name] = value; continue; }
        form.reading += 1;
        value.arrayBuffer().then((buffer) => {
          let binary = "";
          for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
          form.parts[name] = {file: value.name, b64: btoa(binary)};
          form.reading -= 1;
        });
      }
    }
    return send.apply(this, arguments);
  };
})();"""
# The alpha of the mask canvas at a point given as fractions of its width and height.
MASK_ALPHA = """([fx, fy]) => {
  const canvas = document.getElementById("mask");
  const x = Math.floor(fx * canvas.width), y = Math.floor(fy * canvas.height);
  return canvas.getContext("2d").getImageData(x, y, 1, 1).data[3];
}"""


def picture(width: int = 64, height: int = 64) -> bytes:
    """A gradient, so an edit has something to change."""
    image = Image.new("RGB", (width, height))
    image.putdata([(4 * (i % width), 4 * (i // width), 128) for i in range(width * height)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def edit_tab(browser: Browser, service: RunningServer, viewport: dict[str, int],
             touch: bool = False) -> Tab:
    tab = open_tab(browser, service.url + "/ui/", viewport, touch=touch,
                   init_script=RECORD_FORMS)
    expect(tab.page.locator("#size option[value='64x64']")).to_have_count(1)  # config loaded
    return tab


def choose_image(page: Page) -> None:
    page.get_by_label("Edit an image").check()
    page.set_input_files("#edit-image", files=[
        {"name": "gradient.png", "mimeType": "image/png", "buffer": picture()}])
    expect(page.locator("#stage")).to_be_visible()
    page.locator("#mask").scroll_into_view_if_needed()


def drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse stroke across the mask canvas, from and to fractions of its box."""
    box = page.locator("#mask").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=12)
    page.mouse.up()


def last_form(page: Page) -> dict[str, bytes]:
    """The last multipart body the page sent to the edits route, by field name."""
    page.wait_for_function("() => window.__forms.length && !window.__forms.at(-1).reading")
    form = page.evaluate("window.__forms.at(-1)")
    assert form["url"].endswith("/v1/images/edits"), form["url"]
    return {name: base64.b64decode(value["b64"]) if isinstance(value, dict) else value.encode()
            for name, value in form["parts"].items()}


def wait_done(page: Page) -> None:
    expect(page.locator("#progress")).to_have_attribute("data-phase", "done", timeout=LONG)
    final = page.locator("#results img:not(.preview)")
    expect(final).to_have_count(1)
    assert final.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]


@pytest.mark.parametrize("viewport", WIDTHS)
def test_edit_painted_mask_sends_transparent_mask_and_shows_previews_then_the_image(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = edit_tab(browser, service, viewport)
    page = tab.page
    choose_image(page)
    expect(page.locator("#strength")).to_have_value(SERVER_STRENGTH)  # the server's default
    drag(page, (0.1, 0.1), (0.45, 0.45))
    assert page.evaluate(MASK_ALPHA, [0.3, 0.3]) > 0
    expect(page.locator("#mask-state")).to_have_text("Only the painted area changes.")
    expect(page.locator("#strength")).to_have_value("1")  # a mask's area is redrawn whole
    page.fill("#prompt", "a red door")
    page.fill("#steps", "4")
    page.evaluate(RECORD_PREVIEWS)
    page.click("#generate")
    wait_done(page)
    assert page.evaluate("window.__previews") >= 1
    page.evaluate("window.scrollTo(0, 0)")
    tab.screenshot("edit-masked")  # tests/artifacts/ui/, for a person to look at
    parts = last_form(page)
    assert parts["prompt"] == b"a red door" and parts["stream"] == b"true"
    assert parts["partial_images"] == b"2" and parts["strength"] == b"1"
    assert parts["image"] == picture()
    with Image.open(io.BytesIO(parts["mask"])) as mask:
        assert mask.size == (64, 64) and mask.mode == "RGBA"
        assert mask.getpixel((19, 19))[3] == 0  # painted: transparent, "change this"
        assert mask.getpixel((56, 56)) == (255, 255, 255, 255)  # kept
    tab.assert_clean()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_edit_eraser_removes_painted_mask(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = edit_tab(browser, service, viewport)
    page = tab.page
    choose_image(page)
    drag(page, (0.2, 0.5), (0.8, 0.5))
    assert [page.evaluate(MASK_ALPHA, [x, 0.5]) > 0 for x in (0.3, 0.5, 0.7)] == [True] * 3
    page.get_by_label("Eraser").check()
    page.fill("#brush-size", "96")
    drag(page, (0.1, 0.5), (0.6, 0.5))
    assert [page.evaluate(MASK_ALPHA, [x, 0.5]) for x in (0.3, 0.5)] == [0, 0]
    assert page.evaluate(MASK_ALPHA, [0.75, 0.5]) > 0  # past the eraser's stroke
    expect(page.locator("#mask-state")).to_have_text("Only the painted area changes.")
    page.get_by_role("button", name="Clear mask").click()
    assert page.evaluate(MASK_ALPHA, [0.75, 0.5]) == 0
    expect(page.locator("#mask-state")).to_contain_text("No mask painted")
    tab.assert_clean()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_edit_touch_stroke_paints_the_mask_without_scrolling(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = edit_tab(browser, service, viewport, touch=True)
    page = tab.page
    choose_image(page)
    page.evaluate("""() => { window.__kinds = [];
      document.getElementById("mask").addEventListener("pointerdown",
        (e) => window.__kinds.push(e.pointerType)); }""")
    box = page.locator("#mask").bounding_box()
    assert box is not None
    scrolled = page.evaluate("window.scrollY")
    cdp = page.context.new_cdp_session(page)
    y = box["y"] + 0.6 * box["height"]
    points = [box["x"] + f * box["width"] for f in (0.2, 0.35, 0.5, 0.65, 0.8)]
    cdp.send("Input.dispatchTouchEvent",
             {"type": "touchStart", "touchPoints": [{"x": points[0], "y": y}]})
    for x in points[1:]:
        cdp.send("Input.dispatchTouchEvent",
                 {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert page.evaluate("window.__kinds") == ["touch"]
    assert [page.evaluate(MASK_ALPHA, [x, 0.6]) > 0 for x in (0.3, 0.5, 0.7)] == [True] * 3
    assert page.evaluate(MASK_ALPHA, [0.5, 0.2]) == 0
    assert page.evaluate("window.scrollY") == scrolled  # the finger painted, not scrolled
    expect(page.locator("#mask-state")).to_have_text("Only the painted area changes.")
    tab.assert_clean()


def focus_by_tab(page: Page, selector: str, most: int = 30) -> None:
    """Press Tab until ``selector`` has focus: it must be reachable from the keyboard."""
    target = page.locator(selector)
    for _ in range(most):
        if target.evaluate("node => node === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} not reached in {most} presses of Tab")


@pytest.mark.parametrize("viewport", WIDTHS)
def test_edit_keyboard_alone_runs_img2img_without_a_mask(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = edit_tab(browser, service, viewport)
    page = tab.page
    # Listening from the start: the browser only hands its file dialog to the test once the
    # listener's interception is on, and turning it on is not awaited.
    page.on("filechooser", lambda chooser: chooser.set_files(files=[
        {"name": "gradient.png", "mimeType": "image/png", "buffer": picture()}]))
    page.locator("input[name='mode'][value='generate']").focus()
    page.keyboard.press("ArrowRight")  # a radio group: the arrow picks Edit
    expect(page.locator("#edit-fields")).to_be_visible()
    focus_by_tab(page, "#edit-image")
    page.keyboard.press("Space")  # opens the file dialog, answered by the listener above
    expect(page.locator("#stage")).to_be_visible()
    focus_by_tab(page, "#strength")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#strength-value")).to_have_text("0.50")
    focus_by_tab(page, "#prompt")
    page.keyboard.type("a quiet harbour")
    page.keyboard.press("Control+Enter")
    wait_done(page)
    parts = last_form(page)
    assert "mask" not in parts  # nothing painted: img2img of the whole image
    assert parts["strength"] == b"0.5" and parts["prompt"] == b"a quiet harbour"
    tab.assert_clean()


def test_edit_dropped_image_loads_and_a_non_image_is_refused_with_a_reason(
    browser: Browser, service: RunningServer
) -> None:
    tab = edit_tab(browser, service, DESKTOP)
    page = tab.page
    page.get_by_label("Edit an image").check()
    drop = """([name, type, bytes]) => {
      const data = new DataTransfer();
      data.items.add(new File([new Uint8Array(bytes)], name, {type}));
      const zone = document.getElementById("dropzone");
      const init = {dataTransfer: data, bubbles: true, cancelable: true};
      zone.dispatchEvent(new DragEvent("dragover", init));
      zone.dispatchEvent(new DragEvent("drop", init));
    }"""
    page.evaluate(drop, ["notes.txt", "text/plain", list(b"not an image")])
    expect(page.locator("#error-message")).to_have_text(
        "notes.txt is not a PNG, JPEG or WebP image.")
    expect(page.locator("#stage")).to_be_hidden()
    page.evaluate(drop, ["wide.png", "image/png", list(picture(96, 64))])
    expect(page.locator("#stage")).to_be_visible()
    expect(page.locator("#edit-picture")).to_have_attribute(
        "alt", f"The image to edit: wide.png, 96 {TIMES} 64 pixels")
    assert page.locator("#mask").evaluate("c => [c.width, c.height]") == [96, 64]
    expect(page.locator("#size option").first).to_have_text(f"Same as the image (96 {TIMES} 64)")
    tab.assert_clean()


@pytest.mark.parametrize("viewport", WIDTHS)
def test_generate_mode_shows_partial_previews_unless_turned_off(
    browser: Browser, service: RunningServer, viewport: dict[str, int]
) -> None:
    tab = edit_tab(browser, service, viewport)
    page = tab.page
    bodies: list[dict[str, object]] = []
    page.on("request", lambda request: bodies.append(request.post_data_json)
            if request.url.endswith("/v1/images/generations") else None)
    page.fill("#prompt", "a lighthouse")
    page.select_option("#size", "64x64")
    page.fill("#steps", "4")
    page.evaluate(RECORD_PREVIEWS)
    page.click("#generate")
    wait_done(page)
    assert page.evaluate("window.__previews") >= 1
    assert bodies[-1]["partial_images"] == 2
    page.get_by_label("Show previews while it forms").uncheck()
    page.evaluate(RECORD_PREVIEWS)
    page.click("#generate")
    wait_done(page)
    assert page.evaluate("window.__previews") == 0
    assert "partial_images" not in bodies[-1]
    tab.assert_clean()


def test_edit_every_control_has_an_accessible_name(
    browser: Browser, service: RunningServer
) -> None:
    tab = edit_tab(browser, service, DESKTOP)
    page = tab.page
    choose_image(page)
    unnamed = page.evaluate("""() => [...document.querySelectorAll(
        "#form input, #form select, #form textarea, #form button, #form canvas")]
      .filter((node) => !(node.labels && node.labels.length) && !node.getAttribute("aria-label")
        && !node.getAttribute("aria-labelledby") && !(node.tagName === "BUTTON"
        && node.textContent.trim()))
      .map((node) => node.outerHTML)""")
    assert unnamed == []
    tab.assert_clean()


def test_edit_behind_a_proxy_prefix_posts_under_the_prefix(
    browser: Browser, proxy: RunningProxy
) -> None:
    tab = open_tab(browser, proxy.url + "/ui/", DESKTOP, init_script=RECORD_FORMS)
    page = tab.page
    expect(page.locator("#size option[value='64x64']")).to_have_count(1)
    choose_image(page)
    page.fill("#prompt", "a quiet harbour")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_done(page)
    assert ("POST", "/sub/v1/images/edits", 200) in proxy.app.seen
    tab.assert_clean()
