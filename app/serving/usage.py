"""OpenAI's ``usage`` object, with numbers that are true for a diffusion pipeline.

- ``input_tokens_details.text_tokens``: the tokens the text encoder reads. The prompt, and
  the negative prompt when one is given, as the pipeline's own (first) tokenizer splits
  them, start and end tokens included, each capped at the tokenizer's length (77 for CLIP:
  the encoder never sees more, the pipeline cuts the rest). Counted once per request,
  whatever ``n`` is.
- ``input_tokens_details.image_tokens``: 0. An input image (edits, variations) is encoded
  to latents by the VAE, not to tokens.
- ``output_tokens``: 0. The image is decoded from latents; no tokens are generated.
- ``input_tokens`` and ``total_tokens``: the sums that follow from those.

Counted on the inference thread, just before the pipeline call: the pipeline's tokenizer is
a Rust tokenizer that refuses concurrent use ("Already borrowed") and the pipeline uses it
there; it is the tokenizer of the model that really ran the request (a model swap between
admission and the run changes it); and every kind of work (generations, edits, variations,
jobs) passes there. It costs well under a millisecond per request.
"""

from __future__ import annotations

from typing import Any

from app.contract.images import Usage, UsageInputTokensDetails
from app.serving.generation import Generation


def count_text_tokens(pipeline: Any, texts: list[str | None]) -> int:
    """Tokens the text encoder reads for ``texts``; 0 for a pipeline without a tokenizer."""
    tokenizer = getattr(pipeline, "tokenizer", None) or getattr(pipeline, "tokenizer_2", None)
    if tokenizer is None:
        return 0
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0) or None
    return sum(
        len(tokenizer(text, truncation=limit is not None, max_length=limit).input_ids)
        for text in texts if text is not None
    )


def note_text_tokens(pipeline: Any, generations: list[Generation]) -> None:
    """On the inference thread: count each request's prompts once (see the module doc)."""
    for generation in generations:
        if not generation.text_tokens:
            generation.text_tokens = count_text_tokens(
                pipeline, [generation.prompt, generation.negative_prompt]
            )


def usage_of(generation: Generation) -> Usage:
    text_tokens = generation.text_tokens
    return Usage(
        input_tokens=text_tokens,
        input_tokens_details=UsageInputTokensDetails(text_tokens=text_tokens, image_tokens=0),
        output_tokens=0,
        total_tokens=text_tokens,
    )
