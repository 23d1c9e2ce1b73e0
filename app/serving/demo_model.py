"""Build the tiny random-weight Stable Diffusion pipeline used by the demo and the tests.

There is no model hub on the build machines, so the project makes its own model: every
component is constructed from a fixed seed, saved with ``save_pretrained`` and then served
through exactly the same ``from_pretrained`` path as a real checkpoint. Its images are noise.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

DEMO_SEED = 0
DEMO_MODEL_NAME = "sleepwell-demo-tiny-sd"
# The marker file is written last, so a directory without it is an interrupted build.
_COMPLETE_MARKER = ".sleepwell-demo-complete"
# Its own tiny AutoencoderTiny (TAESD's architecture) for partial images: app/serving/previews.py
PREVIEW_DECODER_FOLDER = "preview_decoder"
T = TypeVar("T")


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP byte-level vocabulary with no merges: every byte is its own token."""
    # Same table as CLIP's bytes_to_unicode(): printable bytes map to themselves.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    return {token: index for index, token in enumerate(tokens)}


def _write_tokenizer_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(_byte_level_vocab()), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _make_tokenizer(tokenizer_class: Any, raw_dir: Path) -> Any:
    # transformers 5 takes the vocabulary in memory; 4.x only reads it from files.
    if "vocab" in inspect.signature(tokenizer_class.__init__).parameters:
        return tokenizer_class(vocab=_byte_level_vocab(), merges=[], model_max_length=77)
    _write_tokenizer_files(raw_dir)
    return tokenizer_class(
        vocab_file=str(raw_dir / "vocab.json"),
        merges_file=str(raw_dir / "merges.txt"),
        model_max_length=77,
    )


def _seeded(factory: Callable[[], T], seed: int) -> T:
    """Each component starts from the same seed, so it never depends on build order."""
    import torch

    torch.manual_seed(seed)
    return factory()


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
    )


def _text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


def _preview_decoder() -> Any:
    """TAESD's architecture, shrunk: two blocks, so it upsamples 2x as the demo VAE does."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4,
    )


def _save_preview_decoder(model_dir: Path, seed: int) -> None:
    decoder = _seeded(_preview_decoder, seed)
    decoder.save_pretrained(model_dir / PREVIEW_DECODER_FOLDER, safe_serialization=True)
    _drop_unexpected_config(model_dir / PREVIEW_DECODER_FOLDER / "config.json")


def _drop_unexpected_config(config_file: Path) -> None:
    """AutoencoderTiny registers ``block_out_channels`` in its config itself, then warns on
    every load that the key is unexpected: a WARNING at each start. TAESD's own files lack it."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.pop("block_out_channels", None) is None:
        return
    scratch = config_file.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(scratch, config_file)


def ensure_preview_decoder(target: Path, seed: int = DEMO_SEED) -> None:
    """Add the preview decoder to a demo model built before it had one (atomic, like the
    model: built aside, then renamed into place; a sibling worker's rename may win)."""
    if (target / PREVIEW_DECODER_FOLDER / "config.json").is_file():
        try:  # a copy built before the key was dropped
            _drop_unexpected_config(target / PREVIEW_DECODER_FOLDER / "config.json")
        except (OSError, ValueError) as exc:
            logger.warning("demo preview decoder config in %s left as is: %s", target, exc)
        return
    scratch = Path(tempfile.mkdtemp(prefix=".preview-build-", dir=target.parent))
    try:
        _save_preview_decoder(scratch, seed)
        _make_world_readable(scratch)
        os.rename(scratch / PREVIEW_DECODER_FOLDER, target / PREVIEW_DECODER_FOLDER)
    except OSError as exc:  # a read-only copy, or another worker was first
        if not (target / PREVIEW_DECODER_FOLDER / "config.json").is_file():
            logger.warning("demo preview decoder not added to %s: %s", target, exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_demo_pipeline(raw_tokenizer_dir: Path, seed: int = DEMO_SEED) -> Any:
    """Construct the pipeline in memory, deterministically from ``seed``.

    Another seed gives another model of the same shape (tests swap between the two).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = _make_tokenizer(CLIPTokenizer, raw_tokenizer_dir)
    # steps_offset=1 as in Stable Diffusion's own scheduler config: the pipeline rewrites
    # any other value on load with a multi-line FutureWarning. Euler's default "linspace"
    # spacing never reads it, so the images are the same either way.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_seeded(_vae, seed),
        text_encoder=_seeded(lambda: _text_encoder(len(tokenizer)), seed),
        tokenizer=tokenizer,
        unet=_seeded(_unet, seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def is_built(target: Path) -> bool:
    return (target / _COMPLETE_MARKER).is_file()


def ensure_demo_model(target: Path, seed: int = DEMO_SEED) -> Path:
    """Build the demo model at ``target`` unless a complete copy is already there.

    Several workers may race here; each builds into its own temporary directory and the
    first atomic rename wins, so no worker ever loads a half-written model.
    """
    if is_built(target):
        ensure_preview_decoder(target, seed)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=target.parent))
    try:
        pipeline = build_demo_pipeline(scratch / "raw-tokenizer", seed)
        model_dir = scratch / "model"
        pipeline.save_pretrained(model_dir, safe_serialization=True)
        _save_preview_decoder(model_dir, seed)
        _make_world_readable(model_dir)
        (model_dir / _COMPLETE_MARKER).write_text(DEMO_MODEL_NAME, encoding="utf-8")
        try:
            os.rename(model_dir, target)
            logger.info("built demo model at %s", target)
        except OSError:
            if not is_built(target):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _make_world_readable(directory: Path) -> None:
    # safetensors may write files 0600; a different runtime user must still read them.
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    directory.chmod(0o755)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the Sleepwell demo model.")
    parser.add_argument("target", type=Path)
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="another seed, another model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(ensure_demo_model(args.target, args.seed))


if __name__ == "__main__":
    main()
