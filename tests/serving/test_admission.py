"""Admission control: requests that cannot fit the pixel or VRAM budget never reach the GPU."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.serving.admission import check_budget
from app.serving.budget import MemoryBudget
from app.settings import Settings


def test_check_budget_within_limits_passes() -> None:
    check_budget(512, 512, 4, Settings(), MemoryBudget())


def test_check_budget_too_many_pixels_names_n_and_the_setting() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_budget(1024, 1024, 4, Settings(max_request_pixels=1024 * 1024), None)
    assert caught.value.param == "n"
    assert "SLEEPWELL_MAX_REQUEST_PIXELS" in caught.value.message


def test_check_budget_over_vram_estimate_refused_with_figures() -> None:
    settings = Settings(vram_bytes_per_pixel=6144)
    budget = 2 * 1024**3  # a 2 GiB budget: 1024x1024 needs ~6 GiB by the estimate
    with pytest.raises(InvalidRequest) as caught:
        check_budget(1024, 1024, 1, settings, MemoryBudget(vram_bytes=budget))
    assert caught.value.param == "size"
    assert "6.0 GiB" in caught.value.message and "2.0 GiB" in caught.value.message


def test_check_budget_cpu_has_no_vram_limit() -> None:
    check_budget(1024, 1024, 1, Settings(), MemoryBudget(vram_bytes=None))


def test_check_budget_at_learned_oom_ceiling_refused_below_it_admitted() -> None:
    budget = MemoryBudget(largest_success_pixels=64 * 64)
    assert budget.explains_oom(128 * 128)  # nothing that large has fit
    budget.learn_oom(128 * 128)
    with pytest.raises(InvalidRequest) as caught:
        check_budget(128, 128, 1, Settings(), budget)
    assert caught.value.param == "size" and caught.value.code == "insufficient_gpu_memory"
    check_budget(64, 128, 1, Settings(), budget)  # smaller than what ran out: still admitted
    assert not budget.explains_oom(64 * 64)  # this size fit before: an OOM here is ours
