"""The fixed intent vocabulary, what each maps to, and the two schemas every refiner shares:
``Refinement`` (what ``refine`` returns) and ``ModelAnswer`` (what a model must answer)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gpu_runner.presets import PresetName

Intent = Literal[
    "generate", "edit", "stylize", "upscale", "remove_background", "remove_object", "sketch", "layers",
    "video", "undo", "chat",
]
INTENTS: tuple[str, ...] = Intent.__args__  # type: ignore[attr-defined]
RefinerName = Literal["rules", "local", "openai"]

# The recipe each intent runs (None: nothing to render; undo is the conversation's business).
RECIPE_FOR: dict[str, str | None] = {
    "generate": "txt2img", "edit": "img2img", "stylize": "stylize", "upscale": "upscale",
    "remove_background": "remove-bg", "remove_object": "inpaint", "sketch": "sketch", "layers": "layers",
    "video": "video", "undo": None, "chat": None,
}
# Intents that work on an input (the upload, or in a conversation the previous turn's image).
NEEDS_INPUT = frozenset({"edit", "stylize", "upscale", "remove_background", "remove_object", "sketch",
                         "layers", "video"})

INTENT_HELP: dict[str, str] = {
    "generate": "create a new picture from a description",
    "edit": "change something in the current picture (add, replace, recolour)",
    "stylize": "redraw the current picture in a style (anime, watercolor, noir, ...)",
    "upscale": "make the current picture bigger / higher resolution",
    "remove_background": "cut the subject out, transparent background",
    "remove_object": "erase one thing from the current picture",
    "sketch": "turn the user's own sketch or drawing into a picture",
    "layers": "split the picture into depth layers (parallax, PSD)",
    "video": "apply an effect to a video, frame by frame",
    "undo": "go back to the previous picture",
    "chat": "no picture wanted: a greeting, thanks or a question",
}


class Refinement(BaseModel):
    """A plain-language request, resolved: which recipe to run, with which params and prompt.

    ``params`` validate against ``recipe``'s params model, except that ``remove_object`` still
    needs a ``mask_key`` (the area to repaint), which text alone cannot give; ``target`` names
    the object to remove. ``answer`` is the reply for ``chat``.
    """

    model_config = ConfigDict(extra="forbid")

    intent: Intent
    recipe: str | None
    params: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    negative_prompt: str = ""
    refiner: RefinerName = "rules"
    original: str
    warnings: list[str] = Field(default_factory=list)
    answer: str | None = None
    target: str | None = None


class ModelAnswer(BaseModel):
    """What a model's answer must be (extra keys are ignored, wrong types or an intent outside
    the vocabulary are not): validated before anything of it is used."""

    model_config = ConfigDict(extra="ignore")

    intent: Intent
    prompt: str = Field(default="", max_length=1000)
    negative_prompt: str = Field(default="", max_length=1000)
    style: PresetName | None = None
    answer: str | None = Field(default=None, max_length=2000)


def context_problem(answer: ModelAnswer, has_image: bool) -> str | None:
    """Why a valid answer still cannot be right here: an intent that works on a picture when
    the user has none (small models ignore the context)."""
    if answer.intent in NEEDS_INPUT and not has_image:
        return f"intent {answer.intent!r} works on a picture, and the user has none"
    return None
