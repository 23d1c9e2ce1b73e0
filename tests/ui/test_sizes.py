"""The playground offers the sizes this worker can finish inside the request deadline, and
says before a run how long it would take (issue 20, item 6).

The estimate itself (app/serving/run_estimate.py) is checked as plain functions; the figures
/ui/config.json serves and what the page does with them, against a real gunicorn worker with
a 5 s deadline and no practical step limit. Its warm-up times a step of the demo model at its
native 64x64 (about 0.1 s): that size fits unless a step takes 2.5 s, and 1024x1024 (65536
times dearer by the quadratic bound) would need a step under 0.1 ms there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from app.serving.run_estimate import MeasuredSpeed, fit_size, offered_sizes
from tests.support.server import RunningServer, gunicorn_server
from tests.ui.browser import Tab, open_tab

DEADLINE_S = 5
MAX_STEPS = 100_000


@pytest.fixture(scope="module")
def tight() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_REQUEST_TIMEOUT_S": str(DEADLINE_S), "SLEEPWELL_MAX_STEPS": str(MAX_STEPS)}
    with gunicorn_server(env, workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def config(tight: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(tight.url + "/ui/config.json", timeout=30).json()
    return body


def fits_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {fit["size"]: fit for fit in config["sizes"]}


def page_of(browser: Browser, tight: RunningServer) -> Tab:
    tab = open_tab(browser, tight.url + "/ui/")
    expect(tab.page.locator("#size option[value='64x64']")).to_have_count(1)  # config loaded
    return tab


# --- the estimate ---------------------------------------------------------------------------
def test_run_estimate_above_the_measured_size_grows_with_pixels_squared() -> None:
    speed = MeasuredSpeed(seconds_per_step=1.0, pixels=256 * 256)
    assert speed.seconds_per_step_at(512, 512) == pytest.approx(16.0)
    assert speed.seconds_per_step_at(256, 256) == pytest.approx(1.0)


def test_run_estimate_below_the_measured_size_shrinks_only_linearly() -> None:
    speed = MeasuredSpeed(seconds_per_step=1.0, pixels=256 * 256)
    assert speed.seconds_per_step_at(128, 128) == pytest.approx(0.25)


def test_fit_size_gives_the_steps_that_fit_the_deadline_capped_at_the_limit() -> None:
    speed = MeasuredSpeed(seconds_per_step=2.0, pixels=256 * 256)
    assert fit_size(256, 256, speed, 120, 100).max_steps == 59  # and one for encode/decode
    assert fit_size(128, 128, speed, 120, 100).max_steps == 100  # 239 fit; the limit is 100
    assert fit_size(1024, 1024, speed, 120, 100).max_steps == 0  # 512 s a step


def test_fit_size_unmeasured_offers_every_step() -> None:
    fit = fit_size(512, 512, None, 120, 50)
    assert fit.seconds_per_step is None and fit.max_steps == 50


def test_offered_sizes_respect_max_pixels_and_include_the_native_size() -> None:
    sizes = offered_sizes((320, 320), 512 * 512)
    assert (320, 320) in sizes and (512, 512) in sizes
    assert all(width * height <= 512 * 512 for width, height in sizes)


# --- what /ui/config.json says --------------------------------------------------------------
def test_sizes_config_gives_each_size_its_speed_and_steps_inside_the_deadline(
    config: dict[str, Any],
) -> None:
    assert config["deadline_s"] == DEADLINE_S
    fits = list(fits_of(config).values())
    assert fits and all(fit["seconds_per_step"] > 0 for fit in fits)
    for fit in fits:  # one step's worth goes to text encoding and VAE decode
        fitting = math.floor(DEADLINE_S / fit["seconds_per_step"]) - 1
        assert fit["max_steps"] == max(0, fitting)
    by_pixels = sorted(fits, key=lambda fit: math.prod(map(int, fit["size"].split("x"))))
    speeds = [fit["seconds_per_step"] for fit in by_pixels]
    assert speeds == sorted(speeds)


def test_sizes_config_on_a_tight_deadline_keeps_small_sizes_and_drops_huge_ones(
    config: dict[str, Any],
) -> None:
    fits = fits_of(config)
    assert fits["64x64"]["max_steps"] >= 1
    assert fits["1024x1024"]["max_steps"] == 0


# --- what the page does with it -------------------------------------------------------------
def test_sizes_playground_disables_exactly_the_sizes_too_slow_for_the_deadline(
    browser: Browser, tight: RunningServer, config: dict[str, Any]
) -> None:
    tab = page_of(browser, tight)
    for size, fit in fits_of(config).items():
        option = tab.page.locator(f"#size option[value='{size}']")
        if fit["max_steps"] < 1:
            expect(option).to_be_disabled()
            expect(option).to_contain_text("too slow")
        else:
            expect(option).to_be_enabled()
    tab.assert_clean()


def test_sizes_playground_warns_before_a_run_that_would_pass_the_deadline(
    browser: Browser, tight: RunningServer, config: dict[str, Any]
) -> None:
    most = fits_of(config)["64x64"]["max_steps"]
    tab = page_of(browser, tight)
    page, estimate = tab.page, tab.page.locator("#estimate")
    page.select_option("#size", "64x64")
    page.fill("#n", "1")
    page.fill("#steps", str(most + 1))
    expect(estimate).to_be_visible()
    expect(estimate).to_have_attribute("data-level", "over")
    expect(estimate).to_contain_text(f"past its {DEADLINE_S} s limit")
    expect(estimate).to_contain_text(f"Use {most} steps or fewer")
    page.fill("#steps", "1")
    expect(estimate).not_to_have_attribute("data-level", "over")
    expect(estimate).to_contain_text("on this worker")
    tab.assert_clean()


def test_sizes_estimate_says_a_long_run_takes_minutes(
    browser: Browser, tight: RunningServer
) -> None:
    tab = page_of(browser, tight)
    verdict = tab.page.evaluate(
        "() => window.SleepwellEstimate.assess({seconds_per_step: 1, max_steps: 300}, 90, 1, 300)"
    )
    assert verdict == {"level": "slow",
                       "text": "This run will take about 1 min 31 s on this worker (limit 5 min)."}
