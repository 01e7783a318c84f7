"""The recipe registry: a read-only mapping from name to recipe."""

from __future__ import annotations

from types import MappingProxyType

from bucketbrush.errors import UnknownRecipe
from gpu_runner.recipes import filter as _filter
from gpu_runner.recipes.base import Recipe

RECIPES = MappingProxyType({r.name: r for r in (_filter.RECIPE,)})


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipe(
            f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES))}"
        ) from None
