"""``txt2img``: an image from a prompt alone."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from bucketbrush.errors import ModelUnavailable, OutOfMemory
from gpu_runner.models import ModelSpec, RemoteSpec
from gpu_runner.providers import generate_remote
from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import DiffusionParams, Generation, generate, model_cache, output_size


class Txt2ImgParams(DiffusionParams):
    prompt: str = Field(min_length=1, max_length=4000)


def run(ctx: JobContext, image: None, params: Txt2ImgParams) -> RecipeResult:
    spec = model_cache(ctx).registry.get_any(params.model)
    if isinstance(spec, RemoteSpec):
        return generate_remote(ctx, params, spec, recipe="txt2img")
    size = output_size(ctx, params, spec)
    gen = Generation(task="txt2img", prompt=params.prompt, negative_prompt=params.negative_prompt)
    return with_fallback(lambda: generate(ctx, params, spec, size, gen, recipe="txt2img"),
                         spec, lambda remote: generate_remote(ctx, params, remote, recipe="txt2img"))


def with_fallback(local: Callable[[], RecipeResult], spec: ModelSpec,
                  remote: Callable[[RemoteSpec], RecipeResult]) -> RecipeResult:
    """``local()``; when the model has a ``fallback`` and its weights are missing
    (``model_unavailable``) or the device ran out of memory (``out_of_memory``): the remote
    provider instead, with a warning saying why."""
    try:
        return local()
    except (ModelUnavailable, OutOfMemory) as exc:
        if spec.fallback is None:
            raise
        reason = exc
    result = remote(spec.fallback)
    result.warnings.insert(0, f"ran on {spec.fallback.provider} ({spec.fallback.remote_model}), the fallback of "
                              f"model {spec.id!r}: {reason.code}: {reason.message}")
    return result


RECIPE = Recipe(
    name="txt2img",
    description="Stable Diffusion text-to-image (SD1.5/2.1/SDXL from the models file)",
    params=Txt2ImgParams,
    run=run,
    needs_input=False,
)
