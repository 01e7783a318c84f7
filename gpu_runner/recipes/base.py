"""What a recipe is: a name, a params model that is its schema, and a function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from bucketbrush.routing import RECIPE_NEEDS

if TYPE_CHECKING:
    from bucketbrush.settings import Settings
    from gpu_runner.batching import Batcher
    from gpu_runner.pipelines import ModelCache


class RecipeParams(BaseModel):
    """Params every recipe accepts. Unknown names are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(default=90, ge=1, le=100, description="jpeg/webp quality")


@dataclass
class Artifact:
    """One output, named within outputs/<job_id>/ (the extension is added).

    Usually an image, which the runner encodes in the job's ``format``. Anything else (a video)
    comes as ``data`` already encoded, with its ``content_type`` and file ``extension``;
    ``width``/``height`` describe it in the manifest when it has a size.
    """

    name: str
    image: Image.Image | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None
    content_type: str | None = None
    extension: str | None = None
    width: int | None = None
    height: int | None = None

    @classmethod
    def json(cls, name: str, doc: Any) -> Artifact:
        """A JSON document for apps (e.g. detected keypoints), written as ``<name>.json``."""
        return cls(name, data=json.dumps(doc, separators=(",", ":")).encode(),
                   content_type="application/json", extension="json")

    def __post_init__(self) -> None:
        if (self.image is None) == (self.data is None):
            raise ValueError("an artifact is either an image or encoded data")
        if self.data is not None and not (self.content_type and self.extension):
            raise ValueError("encoded data needs a content type and a file extension")


@dataclass
class RecipeResult:
    artifacts: list[Artifact]
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
    ``settings`` the runner's settings (where vision models are; None outside a runner);
    ``batcher`` the runner's cross-job micro-batcher (gpu_runner/batching.py; None: off, and
    always None in a ``child`` context, whose recipe runs many calls of one job).
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
        batcher: Batcher | None = None,
    ) -> None:
        self.job_id = job_id
        self.models = models
        self.settings = settings
        self.batcher = batcher
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

    def child(self, on_progress: Callable[[int, int], None] | None = None) -> JobContext:
        """The same context with another progress callback: for a recipe that runs another
        recipe many times (video frames), so the inner steps do not overwrite its progress."""
        return JobContext(self.job_id, on_progress, self._load_image, self._load_bytes, self._cancelled,
                          self.models, self.settings)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: type[RecipeParams]
    run: Callable[[JobContext, Any, Any], RecipeResult]
    needs_input: bool = True
    # What ``run`` gets as its input: a decoded, checked image, or the upload's raw bytes
    # (a recipe that reads another format, e.g. video, checks them itself).
    input_kind: Literal["image", "bytes"] = "image"

    @property
    def needs(self) -> str:
        """cpu, gpu or any: declared in ``bucketbrush.routing.RECIPE_NEEDS``, where the handler
        routes without importing the runner (the ``recipe_capabilities`` setting re-maps it)."""
        return RECIPE_NEEDS.get(self.name, "any")
