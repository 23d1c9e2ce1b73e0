"""The cost of edits and of partial images next to plain generations, in one run.

    .venv/bin/python bench/image_api.py [--requests 16] [--steps 10] [--workers 2]
                                        [--preview-decoder linear]

Starts the real service (gunicorn, the demo model unless SLEEPWELL_MODEL is set) and, for
each row, sends ``--requests`` streamed requests (64x64, fixed seed) at concurrency 1
(a row and its "+ partials" row interleaved) and at concurrency 8: generations and edits
(multipart, image only), each without and with ``partial_images=2``. Every row is
streamed, so that a row and its "+ partials" row differ only by the previews. Reports
images/s at c=1 and c=8 and, per preview,
the decode time the server spent on its inference thread (its access lines'
``preview_decode_ms / partial_images_sent``) and the extra wall time per preview at c=1
compared with the row without partials.

A second table times the decoders alone, in-process on this CPU, for one 512x512 image
(64x64 latents), median of ``--repeats``: the linear projection, TAESD's architecture (the
default ``AutoencoderTiny``, random weights: the same arithmetic as the real one) and, for
scale, Stable Diffusion's full VAE decoder (``AutoencoderKL``, SD 1.x config) that makes
the final image. Prints tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table  # noqa: E402
from tests.support.access_log import access_entries  # noqa: E402
from tests.support.server import RunningServer, gunicorn_server  # noqa: E402

PARTIALS = 2
LEVELS = (1, 8)  # concurrency: one client, then eight


def input_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (180, 60, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


async def one(client: httpx.AsyncClient, base: str, edit: bool,
              fields: dict[str, Any]) -> tuple[int, str]:
    """One streamed request: (completed images, request id)."""
    if edit:
        form = {key: json.dumps(value) if isinstance(value, bool) else str(value)
                for key, value in fields.items()}  # true, as the SDK sends it
        request = client.build_request("POST", base + "/v1/images/edits", data=form,
                                       files={"image": ("in.png", input_png(), "image/png")})
    else:
        request = client.build_request("POST", base + "/v1/images/generations", json=fields)
    response = await client.send(request, stream=True)
    try:
        response.raise_for_status()
        images = 0
        async for line in response.aiter_lines():
            images += line.startswith("event: image_") and line.endswith(".completed")
        return images, response.headers["x-request-id"]
    finally:
        await response.aclose()


async def load(base: str, edit: bool, fields: dict[str, Any], concurrency: int,
               requests: int) -> tuple[float, list[float], list[str]]:
    """(images/s, per-request seconds, request ids) for ``requests`` at ``concurrency``."""
    remaining = iter(range(requests))
    seconds: list[float] = []
    ids: list[str] = []
    images = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal images
            for _ in remaining:
                sent = time.perf_counter()
                done, request_id = await one(client, base, edit, fields)
                seconds.append(time.perf_counter() - sent)
                images += done
                ids.append(request_id)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return images / wall, seconds, ids


def decode_ms_per_preview(server: RunningServer, ids: list[str]) -> float | None:
    wanted = set(ids)
    lines = [e for e in access_entries(server.log()) if e.get("request_id") in wanted]
    sent = sum(line.get("partial_images_sent", 0) for line in lines)
    decode = sum(line.get("preview_decode_ms", 0.0) for line in lines)
    return decode / sent if sent else None


def sequential(base: str, edit: bool, variants: list[dict[str, Any]],
               requests: int) -> list[tuple[float, list[str]]]:
    """c=1, the variants interleaved request by request, so drift in the machine's load hits
    them alike: (mean seconds per request, request ids) per variant."""
    seconds: list[list[float]] = [[] for _ in variants]
    ids: list[list[str]] = [[] for _ in variants]

    async def run() -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            for _ in range(requests):
                for index, fields in enumerate(variants):
                    sent = time.perf_counter()
                    _, request_id = await one(client, base, edit, fields)
                    seconds[index].append(time.perf_counter() - sent)
                    ids[index].append(request_id)

    asyncio.run(run())
    return [(statistics.mean(times), names) for times, names in zip(seconds, ids, strict=True)]


def measure(server: RunningServer, args: argparse.Namespace) -> list[list[object]]:
    base = {"prompt": "bench", "size": "64x64", "seed": 1, "stream": True,
            "num_inference_steps": args.steps}
    variants = [{**base, "partial_images": 0}, {**base, "partial_images": PARTIALS}]
    rows: list[list[object]] = []
    for edit in (False, True):  # warm-up: each worker's first call and decoder load
        asyncio.run(load(server.url, edit, variants[1], args.workers, 2 * args.workers))
    for edit in (False, True):
        (plain_s, _), (partial_s, partial_ids) = sequential(server.url, edit, variants,
                                                            args.requests)
        rates = [asyncio.run(load(server.url, edit, fields, max(LEVELS), args.requests))[0]
                 for fields in variants]
        time.sleep(0.5)  # the access lines follow the answers
        decode = decode_ms_per_preview(server, partial_ids)
        name = "edit" if edit else "generate"
        rows.append([name, f"{1 / plain_s:.2f}", f"{rates[0]:.2f}", "-", "-"])
        rows.append([f"{name} + partial_images={PARTIALS}", f"{1 / partial_s:.2f}",
                     f"{rates[1]:.2f}", "-" if decode is None else f"{decode:.2f}",
                     f"{(partial_s - plain_s) * 1000 / PARTIALS:+.1f}"])
    return rows


def decoder_costs(repeats: int) -> list[list[object]]:
    """ms to turn one 512x512 image's latents into pixels, per decoder (inference thread)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from app.serving.previews import TinyAutoencoderDecoder, linear_decoder

    latents = torch.randn(1, 4, 64, 64)
    full_vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()
    decoders = {
        "linear (SD factors)": linear_decoder(object()).decode,
        "AutoencoderTiny (TAESD architecture)":
            TinyAutoencoderDecoder(AutoencoderTiny().eval(), "taesd").decode,
        "AutoencoderKL (SD VAE, final image)": lambda x: full_vae.decode(x).sample,
    }
    rows: list[list[object]] = []
    with torch.inference_mode():
        for name, decode in decoders.items():
            decode(latents)  # first call: allocations, kernel choice
            times = []
            for _ in range(repeats if "KL" not in name else max(1, repeats // 5)):
                started = time.perf_counter()
                decode(latents)
                times.append(time.perf_counter() - started)
            rows.append([name, f"{statistics.median(times) * 1000:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="decoder timing repeats")
    parser.add_argument("--preview-decoder", default=None,
                        help='SLEEPWELL_PREVIEW_DECODER: "linear" or a path; default: the '
                        "model's own preview_decoder/ (the demo's tiny AutoencoderTiny)")
    args = parser.parse_args()
    env = {"SLEEPWELL_MAX_QUEUE": "64"}
    if args.preview_decoder:
        env["SLEEPWELL_PREVIEW_DECODER"] = args.preview_decoder
    with gunicorn_server(env, workers=args.workers) as server:
        rows = measure(server, args)
    decoder = args.preview_decoder or "the model's own (demo: tiny AutoencoderTiny)"
    print(f"{args.requests} streamed requests per cell, 64x64, {args.steps} steps, "
          f"{args.workers} workers; preview decoder: {decoder}")
    print_table(["row", "c=1 images/s", "c=8 images/s", "decode ms/preview (server)",
                 "extra ms/preview at c=1"], rows)
    print(f"\none 512x512 image's latents to pixels on this CPU (median of {args.repeats})")
    print_table(["decoder", "ms"], decoder_costs(args.repeats))


if __name__ == "__main__":
    main()
