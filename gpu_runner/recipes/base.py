"""What a recipe is: a name, a params model that is its schema, and a function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from bucketbrush.settings import Settings
    from gpu_runner.pipelines import ModelCache


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
class DataArtifact:
    """One non-image output (e.g. JSON for apps), written as is to outputs/<job_id>/<name>.<extension>."""

    name: str
    data: bytes
    content_type: str
    extension: str

    @classmethod
    def json(cls, name: str, doc: Any) -> DataArtifact:
        return cls(name, json.dumps(doc, separators=(",", ":")).encode(), "application/json", "json")


@dataclass
class RecipeResult:
    artifacts: list[Artifact | DataArtifact]
    model: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Recipe-specific facts for the manifest (e.g. resolved strength, layer depth ranges).
    details: dict[str, Any] = field(default_factory=dict)


class JobContext:
    """What a running recipe may ask of the runner.

    ``progress(step, total)`` reports progress (the runner throttles manifest writes);
    ``load_image(key)`` reads another image from the bucket (a mask, a pose file's image) with
    the same size and pixel guards as the main input; ``load_bytes(key)`` reads a small
    non-image input (e.g. keypoints JSON); ``cancelled()`` says whether the user asked to
    cancel (recipes with many steps check it between steps and raise JobCancelled);
    ``models`` is the runner's model cache (None when no models file is configured);
    ``settings`` the runner's settings (where vision models are; None outside a runner).
    """

    def __init__(
        self,
        job_id: str,
        on_progress: Callable[[int, int], None] | None = None,
        load_image: Callable[[str], Image.Image] | None = None,
        load_bytes: Callable[[str], bytes] | None = None,
        cancelled: Callable[[], bool] | None = None,
        models: ModelCache | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.job_id = job_id
        self.models = models
        self.settings = settings
        self._on_progress = on_progress
        self._load_image = load_image
        self._load_bytes = load_bytes
        self._cancelled = cancelled

    def progress(self, step: int, total: int) -> None:
        if self._on_progress:
            self._on_progress(step, total)

    def load_image(self, key: str) -> Image.Image:
        if self._load_image is None:
            raise RuntimeError("no image loader in this context")
        return self._load_image(key)

    def load_bytes(self, key: str) -> bytes:
        if self._load_bytes is None:
            raise RuntimeError("no loader in this context")
        return self._load_bytes(key)

    def cancelled(self) -> bool:
        return bool(self._cancelled and self._cancelled())


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: type[RecipeParams]
    run: Callable[[JobContext, Image.Image | None, Any], RecipeResult]
    needs_input: bool = True
