"""``inpaint``: repaint the masked part of the input (white in the mask = repaint)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field

from bucketbrush.errors import InputMissing, InvalidParams
from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import (
    Generation,
    ImageDiffusionParams,
    check_strength,
    generate,
    model_cache,
    output_size,
)


class InpaintParams(ImageDiffusionParams):
    prompt: str = Field(min_length=1, max_length=4000)
    mask_key: str = Field(min_length=1, description="bucket key of the mask image (white = repaint)")
    strength: float = Field(default=1.0, ge=0.0, le=1.0)


def load_mask(ctx: JobContext, key: str, size: tuple[int, int]) -> Image.Image:
    """The mask at ``key`` as a binary L image of ``size``; InvalidParams if it is missing or empty."""
    try:
        mask = ctx.load_image(key)
    except InputMissing as exc:
        raise InvalidParams(f"mask_key {key!r}: no such object in the bucket") from exc
    # Alpha masks (transparent = keep) are common from editors; use alpha when present.
    gray = mask.getchannel("A") if mask.mode == "RGBA" and mask.getextrema()[3][0] < 255 else mask.convert("L")
    binary = (np.asarray(gray.resize(size, Image.NEAREST)) > 127).astype(np.uint8) * 255
    if not binary.any():
        raise InvalidParams(f"mask_key {key!r}: the mask selects no pixels (white marks the area to repaint)")
    return Image.fromarray(binary, mode="L")


def run(ctx: JobContext, image: Image.Image | None, params: InpaintParams) -> RecipeResult:
    assert image is not None
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec, image)
    check_strength(params.steps, params.strength)
    mask = load_mask(ctx, params.mask_key, size)
    gen = Generation(task="inpaint", prompt=params.prompt, negative_prompt=params.negative_prompt,
                     image=image, mask=mask, strength=params.strength,
                     details={"strength": params.strength, "mask_key": params.mask_key})
    return generate(ctx, params, spec, size, gen, recipe="inpaint")


RECIPE = Recipe(
    name="inpaint",
    description="Stable Diffusion inpainting: repaint the white area of mask_key",
    params=InpaintParams,
    run=run,
)
