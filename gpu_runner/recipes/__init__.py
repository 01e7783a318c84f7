"""The recipe registry: a read-only mapping from name to recipe."""

from __future__ import annotations

from types import MappingProxyType

from bucketbrush.errors import UnknownRecipe
from gpu_runner.recipes import annotate as _annotate
from gpu_runner.recipes import filter as _filter
from gpu_runner.recipes import img2img as _img2img
from gpu_runner.recipes import inpaint as _inpaint
from gpu_runner.recipes import layers as _layers
from gpu_runner.recipes import remove_bg as _remove_bg
from gpu_runner.recipes import sketch as _sketch
from gpu_runner.recipes import stylize as _stylize
from gpu_runner.recipes import txt2img as _txt2img
from gpu_runner.recipes import upscale as _upscale
from gpu_runner.recipes import video as _video
from gpu_runner.recipes.base import Recipe

RECIPES = MappingProxyType({r.name: r for r in (
    _filter.RECIPE, _upscale.RECIPE, _annotate.RECIPE,
    _txt2img.RECIPE, _img2img.RECIPE, _sketch.RECIPE, _stylize.RECIPE, _inpaint.RECIPE,
    _layers.RECIPE, _remove_bg.RECIPE, _video.RECIPE,
)})


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipe(
            f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}"
        ) from None
