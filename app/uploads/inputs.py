"""An edit's inputs as a pipeline takes them: one RGB image and an optional mask."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from PIL import Image

from app.errors import InvalidRequest
from app.settings import Settings
from app.uploads.decode import decode, to_rgb
from app.uploads.mask import check_mask_size, to_mask


@dataclass(frozen=True)
class EditInputs:
    image: Image.Image  # RGB, at the size it was sent
    mask: Image.Image | None = None  # "L", the image's size: 255 = change, 0 = keep

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def check_image_count(count: int, param: str) -> None:
    if count == 0:
        raise InvalidRequest(f"{param} is required: send the image to edit.", param=param)
    if count > 1:
        # diffusers' img2img and inpainting pipelines condition on exactly one image.
        raise InvalidRequest(
            f"{count} images were sent; this model takes one image per edit. Send one image "
            "(and a mask to inpaint).", param=param, code="too_many_images",
        )


def decode_inputs(images: list[bytes], mask: bytes | None, settings: Settings,
                  image_param: str = "image") -> EditInputs:
    """Decode and check; CPU work, so the caller runs it off the event loop."""
    check_image_count(len(images), image_param)
    image = to_rgb(decode(images[0], image_param, settings))
    if mask is None:
        return EditInputs(image)
    mask_image = to_mask(decode(mask, "mask", settings))
    check_mask_size(mask_image, image)
    return EditInputs(image, mask_image)


async def load_inputs(images: list[bytes], mask: bytes | None, settings: Settings,
                      image_param: str = "image") -> EditInputs:
    """``decode_inputs`` in a worker thread: a large PNG takes a while to decode."""
    return await asyncio.to_thread(decode_inputs, images, mask, settings, image_param)
