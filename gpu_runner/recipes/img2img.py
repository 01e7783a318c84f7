"""``img2img``: the input image redrawn to match a prompt; ``strength`` sets how far."""

from __future__ import annotations

from PIL import Image
from pydantic import Field

from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import (
    Generation,
    ImageDiffusionParams,
    check_strength,
    generate,
    model_cache,
    output_size,
)


class Img2ImgParams(ImageDiffusionParams):
    prompt: str = Field(min_length=1, max_length=4000)


def run(ctx: JobContext, image: Image.Image | None, params: Img2ImgParams) -> RecipeResult:
    assert image is not None
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec, image)
    check_strength(params.steps, params.strength)
    gen = Generation(task="img2img", prompt=params.prompt, negative_prompt=params.negative_prompt,
                     image=image, strength=params.strength, details={"strength": params.strength})
    return generate(ctx, params, spec, size, gen, recipe="img2img")


RECIPE = Recipe(
    name="img2img",
    description="Stable Diffusion image-to-image: redraw the upload to match a prompt",
    params=Img2ImgParams,
    run=run,
)
