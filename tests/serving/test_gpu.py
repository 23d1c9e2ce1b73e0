"""``gpu.physical_index``: which NVML device a worker's CUDA device 0 is.

gunicorn.conf.py pins each worker with ``CUDA_VISIBLE_DEVICES`` (one id from
``SLEEPWELL_GPU_IDS`` or the inherited list); the GPU monitor asks NVML for utilisation and
temperature by that index. NVML counts physical GPUs, so only a plain integer names one;
UUIDs and MIG ids cannot be mapped to an index here, and the readings are then skipped
(None) rather than read from the wrong GPU.
"""

from __future__ import annotations

import pytest

from app.serving.gpu import physical_index


def test_physical_index_unset_is_the_first_gpu() -> None:
    assert physical_index(None) == 0
    assert physical_index("") == 0


@pytest.mark.parametrize(("visible", "index"), [("0", 0), ("3", 3), ("12", 12)])
def test_physical_index_single_id_is_that_gpu(visible: str, index: int) -> None:
    assert physical_index(visible) == index


@pytest.mark.parametrize(("visible", "index"), [("2,0", 2), ("5,1,3", 5), ("1,", 1)])
def test_physical_index_list_is_its_first_entry(visible: str, index: int) -> None:
    # The worker's device 0 is the first visible one, whatever follows.
    assert physical_index(visible) == index


@pytest.mark.parametrize(("visible", "index"), [(" 1", 1), ("2 ", 2), (" 4 , 0", 4), ("\t3", 3)])
def test_physical_index_whitespace_around_an_id_is_ignored(visible: str, index: int) -> None:
    assert physical_index(visible) == index


@pytest.mark.parametrize("visible", [
    "GPU-8f3e2b1a-5c4d-4e6f-9a0b-1c2d3e4f5a6b",
    "GPU-8f3e2b1a-5c4d-4e6f-9a0b-1c2d3e4f5a6b,1",
    "MIG-GPU-8f3e2b1a-5c4d-4e6f-9a0b-1c2d3e4f5a6b/1/0",
    "MIG-4b6a2c7e-0f1d-5e3a-8b9c-2d4e6f8a0b1c",
])
def test_physical_index_uuid_or_mig_id_is_unknown(visible: str) -> None:
    assert physical_index(visible) is None


@pytest.mark.parametrize("visible", ["abc", "-1", "1.5", "0x1", " ", ",1", "+1"])
def test_physical_index_invalid_id_is_unknown_never_an_error(visible: str) -> None:
    assert physical_index(visible) is None
