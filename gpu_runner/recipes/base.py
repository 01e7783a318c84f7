"""What a recipe is: a name, a params model that is its schema, and a function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class RecipeParams(BaseModel):
    """Params every recipe accepts. Unknown names are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(default=90, ge=1, le=100, description="jpeg/webp quality")


@dataclass
class Artifact:
    """One output image, named within outputs/<job_id>/ (the extension is added)."""

    name: str
    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeResult:
    artifacts: list[Artifact]
    model: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Recipe-specific facts for the manifest (e.g. resolved strength, layer depth ranges).
    details: dict[str, Any] = field(default_factory=dict)


class JobContext:
    """What a running recipe may ask of the runner."""

    def __init__(self, job_id: str, on_progress: Callable[[int, int], None] | None = None) -> None:
        self.job_id = job_id
        self._on_progress = on_progress

    def progress(self, step: int, total: int) -> None:
        if self._on_progress:
            self._on_progress(step, total)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: type[RecipeParams]
    run: Callable[[JobContext, Image.Image | None, Any], RecipeResult]
    needs_input: bool = True
