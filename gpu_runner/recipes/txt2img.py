"""``txt2img``: an image from a prompt alone."""

from __future__ import annotations

from pydantic import Field

from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import DiffusionParams, Generation, generate, model_cache, output_size


class Txt2ImgParams(DiffusionParams):
    prompt: str = Field(min_length=1, max_length=4000)


def run(ctx: JobContext, image: None, params: Txt2ImgParams) -> RecipeResult:
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec)
    gen = Generation(task="txt2img", prompt=params.prompt, negative_prompt=params.negative_prompt)
    return generate(ctx, params, spec, size, gen, recipe="txt2img")


RECIPE = Recipe(
    name="txt2img",
    description="Stable Diffusion text-to-image (SD1.5/2.1/SDXL from the models file)",
    params=Txt2ImgParams,
    run=run,
    needs_input=False,
)
