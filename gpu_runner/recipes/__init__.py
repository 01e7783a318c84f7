"""The recipe registry: a read-only mapping from name to recipe, and its catalog (each
recipe's params as JSON Schema, for forms such as the studio page's)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from bucketbrush.errors import InvalidParams, UnknownRecipe
from bucketbrush.presign import accepted_types
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
from gpu_runner.recipes.base import Recipe, RecipeParams

RECIPES = MappingProxyType({r.name: r for r in (
    _filter.RECIPE, _upscale.RECIPE, _annotate.RECIPE,
    _txt2img.RECIPE, _img2img.RECIPE, _sketch.RECIPE, _stylize.RECIPE, _inpaint.RECIPE,
    _layers.RECIPE, _remove_bg.RECIPE, _video.RECIPE,
)})

# Recipes that use the runner's diffusion model cache: they cannot run in a child process.
MODEL_CACHE_RECIPES = frozenset({"txt2img", "img2img", "sketch", "stylize", "inpaint", "layers"})


def get_recipe(name: str, *, testing: bool = False) -> Recipe:
    """The recipe called ``name``; with ``testing`` (the ``test_recipes`` setting) also the
    recipes that exist for tests only (gpu_runner/recipes/testing.py)."""
    try:
        return RECIPES[name]
    except KeyError:
        pass
    if testing:
        from gpu_runner.recipes.testing import TEST_RECIPES

        for recipe in TEST_RECIPES:
            if recipe.name == name:
                return recipe
    raise UnknownRecipe(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}")


def validate_params(name: str, params: dict[str, Any], *, testing: bool = False) -> RecipeParams:
    """The one validation of a recipe name and its params: the runner's, and the one the
    composition root injects into presign and submit (``bucketbrush.presign.ParamsValidator``).
    Raises UnknownRecipe or InvalidParams (the codes a failed manifest carries)."""
    return check_params(get_recipe(name, testing=testing), params)


def check_params(recipe: Recipe, params: dict[str, Any]) -> RecipeParams:
    """``params`` as ``recipe``'s params model; InvalidParams naming every problem."""
    try:
        return recipe.params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidParams(f"invalid params for {recipe.name}: {problems}") from exc

def catalog(*, testing: bool = False) -> list[dict[str, Any]]:
    """Every recipe as ``{name, description, needs_input, accept, needs, schema}`` (``accept``:
    the upload types, an HTML ``accept`` value from ``bucketbrush.presign.accepted_types``;
    ``needs``: cpu, gpu or any, see ``bucketbrush.routing``): ``schema`` is the params
    model's JSON Schema (types, defaults, enums, bounds, descriptions), as pydantic makes it.
    With ``testing``, the recipes that exist for tests only come last."""
    recipes = list(RECIPES.values())
    if testing:
        from gpu_runner.recipes.testing import TEST_RECIPES

        recipes += TEST_RECIPES
    return [{"name": r.name, "description": r.description, "needs_input": r.needs_input,
             "accept": accepted_types(r.name), "needs": r.needs,
             "schema": r.params.model_json_schema()} for r in recipes]
