"""A tiny random-weight Stable Diffusion XL pipeline on disk, loaded like a real checkpoint.

SDXL differs from SD where the edit routes could trip: two text encoders (the second with a
projection), the UNet's extra "text_time" conditioning, and its own img2img and inpainting
pipelines made by ``from_pipe``. Built deterministically from a seed (about 2 MB) with the
demo model's tokenizer and VAE, and saved with ``save_pretrained``; served through
SLEEPWELL_MODEL, so it takes ``AutoPipelineForText2Image.from_pretrained`` like any model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.serving.demo_model import _make_tokenizer, _seeded, _text_encoder, _vae

_MARKER = ".tiny-sdxl-complete"
_HIDDEN = 32  # both text encoders; the UNet's cross-attention sees both: 2 * 32
_TIME_EMBED = 8  # SDXL conditions on 6 size/crop numbers, each embedded in this many


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
        in_channels=4, out_channels=4, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=_TIME_EMBED,
        transformer_layers_per_block=(1, 1), cross_attention_dim=2 * _HIDDEN,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED + _HIDDEN,
    )


def _projected_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextModelWithProjection

    config = _text_encoder(vocab_size).config
    config.projection_dim = _HIDDEN
    return CLIPTextModelWithProjection(config)


def build_tiny_sdxl(raw_tokenizer_dir: Path, seed: int = 0) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    tokenizer = _make_tokenizer(CLIPTokenizer, raw_tokenizer_dir)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=_seeded(_vae, seed),
        text_encoder=_seeded(lambda: _text_encoder(len(tokenizer)), seed),
        text_encoder_2=_seeded(lambda: _projected_text_encoder(len(tokenizer)), seed + 1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_seeded(_unet, seed),
        scheduler=scheduler,
    )


def ensure_tiny_sdxl(target: Path) -> Path:
    """Build at ``target`` unless a complete copy is there (built aside, then renamed)."""
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-sdxl-", dir=target.parent))
    try:
        pipeline = build_tiny_sdxl(scratch / "raw-tokenizer")
        model_dir = scratch / "model"
        pipeline.save_pretrained(model_dir, safe_serialization=True)
        (model_dir / _MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        model_dir.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
