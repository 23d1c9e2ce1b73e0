"""Debian's Chromium driven by Playwright: no browser download, ever."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
PHONE = {"width": 390, "height": 844}
NARROW_PHONE = {"width": 375, "height": 740}  # where issue 21 saw the cut size label
DESKTOP = {"width": 1280, "height": 860}
# Console lines a page may print and still be healthy: the browser logs every non-2xx
# response (the error tests provoke 400/401/429/503 on purpose).
_EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status")


@dataclass
class Tab:
    """One page in its own context (own localStorage), with what it logged."""

    page: Page
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        width = self.page.viewport_size["width"] if self.page.viewport_size else 0
        path = ARTIFACTS / f"{name}-{width}px.png"
        self.page.screenshot(path=str(path), full_page=True, animations="disabled")
        return path

    def assert_clean(self) -> None:
        """No script error and no CSP violation happened on the page."""
        assert not self.problems, self.problems


def open_tab(browser: Browser, url: str, viewport: dict[str, int] = DESKTOP, *,
             touch: bool = False, init_script: str | None = None) -> Tab:
    """``touch``: a touch screen, as on a phone (taps and touch input reach the page).
    ``init_script``: runs in the page before its own scripts (to observe, not to change)."""
    context = browser.new_context(viewport=viewport, accept_downloads=True, has_touch=touch)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    tab = Tab(page)
    page.on("pageerror", lambda error: tab.problems.append(f"pageerror: {error}"))
    page.on("console", lambda message: _note_console(tab, message.type, message.text))
    page.on("request", lambda request: tab.requests.append(request.url))
    page.goto(url)
    return tab


def _note_console(tab: Tab, kind: str, text: str) -> None:
    if kind in ("error", "warning") and not _EXPECTED_CONSOLE.search(text):
        tab.problems.append(f"console {kind}: {text}")

