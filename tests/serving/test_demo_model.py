"""The demo model: deterministic build, loaded through the real from_pretrained path."""

from __future__ import annotations

import hashlib
import logging
import stat
from pathlib import Path

from app.serving.demo_model import ensure_demo_model, is_built
from app.serving.model import load_model
from app.settings import Settings


def weight_digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*.safetensors"))
    }


def test_demo_model_built_twice_has_identical_weights(demo_model_dir, tmp_path) -> None:
    again = ensure_demo_model(tmp_path / "demo")
    assert is_built(again)
    digests = weight_digests(again)
    assert len(digests) == 4  # unet, vae, text encoder, preview decoder
    assert digests == weight_digests(demo_model_dir)


def test_demo_model_files_readable_by_any_user(demo_model_dir) -> None:
    for path in demo_model_dir.rglob("*"):
        assert path.stat().st_mode & stat.S_IROTH, path


def test_demo_model_loads_through_from_pretrained_at_native_64px(demo_model_dir) -> None:
    model = load_model(Settings(demo_model_dir=demo_model_dir, device="cpu", warmup=False))
    assert type(model.pipeline).__name__ == "StableDiffusionPipeline"
    assert (model.native_width, model.native_height) == (64, 64)
    assert model.name == "sleepwell-demo-tiny-sd"
    assert str(model.dtype) == "torch.float32" and model.device.type == "cpu"
    total = sum(path.stat().st_size for path in demo_model_dir.rglob("*") if path.is_file())
    assert total < 10 * 1024 * 1024


def test_demo_model_preview_decoder_loads_without_a_library_warning(demo_model_dir,
                                                                     caplog) -> None:
    from diffusers import AutoencoderTiny

    library = logging.getLogger("diffusers")  # it does not propagate to the root logger
    library.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            AutoencoderTiny.from_pretrained(demo_model_dir / "preview_decoder")
    finally:
        library.removeHandler(caplog.handler)
    assert [record.getMessage() for record in caplog.records] == []
