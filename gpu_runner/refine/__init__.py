"""Refine: a plain-language request -> intent, recipe, params and a generation prompt.

Three refiners behind one interface (``refine(text, has_image=...) -> Refinement``):
``rules`` (default; deterministic), ``local`` (SmolLM2-135M-Instruct, offline, kept loaded in
the process) and ``openai`` (any OpenAI-compatible endpoint). A model's answer is validated
(``ModelAnswer``); invalid JSON, a timeout, an error or an unknown intent falls back to the
rules, with a warning in ``Refinement.warnings``.

A conversation turn (issue 12, part 2) calls ``refine(message, has_image=<a previous image
exists>)`` and runs ``recipe`` with ``params`` on the previous turn's output; ``undo`` and
``chat`` render nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gpu_runner.refine.rules import RulesRefiner
from gpu_runner.refine.schema import INTENTS, RECIPE_FOR, ModelAnswer, Refinement

if TYPE_CHECKING:
    from bucketbrush.settings import Settings

__all__ = ["INTENTS", "RECIPE_FOR", "ModelAnswer", "Refinement", "Refiner", "get_refiner", "refine"]


class Refiner(Protocol):
    name: str

    def refine(self, text: str, *, has_image: bool = False) -> Refinement: ...


def get_refiner(name: str | None = None, settings: Settings | None = None) -> Refiner:
    """The refiner called ``name`` (default: ``settings.refiner``, else rules)."""
    name = name or (settings.refiner if settings is not None else "rules")
    if name == "rules":
        return RulesRefiner()
    if name == "local":
        from gpu_runner.refine.local import LocalRefiner

        return LocalRefiner.from_settings(settings)
    if name == "openai":
        from gpu_runner.refine.openai import OpenAIRefiner

        return OpenAIRefiner.from_settings(settings)
    raise ValueError(f"unknown refiner {name!r}: rules, local or openai")


def refine(text: str, *, has_image: bool = False, refiner: str | None = None,
           settings: Settings | None = None) -> Refinement:
    return get_refiner(refiner, settings).refine(text, has_image=has_image)
