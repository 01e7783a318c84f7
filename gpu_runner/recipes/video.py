"""``video``: any image recipe on every frame of a clip, with temporal smoothing.

The upload (mp4, mov, webm, mkv, avi or gif) is decoded with PyAV's FFmpeg; each frame goes
through ``frame_recipe`` (``filter`` by default; ``stylize`` or ``img2img`` when a diffusion
model is configured, with one fixed seed for every frame), the previous output frame warped
by optical flow is blended in (``temporal_weight``), and the frames are encoded as an H.264
MP4 with the audio packets copied unchanged. Outputs: ``video.mp4`` and a ``poster`` image.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from bucketbrush.errors import InvalidParams
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult
from gpu_runner.recipes.diffusion import MAX_SEED


class VideoParams(RecipeParams):
    """``format``/``quality`` apply to the poster; the video is always an MP4."""

    frame_recipe: str = Field(default="filter", description="the image recipe run on every frame")
    frame_params: dict[str, Any] = Field(default_factory=dict, description="its params (its own schema)")
    style: str | None = Field(default=None, description="shortcut for frame_params.style")
    temporal_weight: float | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="share of the previous output frame (warped by optical flow); None: the runner's setting")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED,
                             description="one seed for every frame of a diffusion frame recipe; None: random")
    crf: int = Field(default=23, ge=0, le=51, description="H.264 quality (lower: better, bigger)")
    max_side: int | None = Field(default=None, ge=16, le=4096, description="downscale frames to this side first")


def frame_recipe(params: VideoParams) -> tuple[Recipe, Any, int | None]:
    """The per-frame recipe, its validated params and the seed every frame shares."""
    from gpu_runner.recipes import get_recipe
    from gpu_runner.runner import resolve_params

    recipe = get_recipe(params.frame_recipe)
    if recipe.name == "video" or not recipe.needs_input or recipe.input_kind != "image":
        raise InvalidParams(f"frame_recipe {recipe.name!r} does not take an image; use an image recipe "
                            f"(filter, stylize, img2img, ...)")
    doc = dict(params.frame_params)
    if params.style is not None:
        doc.setdefault("style", params.style)
    seed = None
    if "seed" in recipe.params.model_fields:
        seed = doc.get("seed", params.seed)
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        doc["seed"] = seed
    return recipe, resolve_params(recipe, doc, {}), seed


def run(ctx: JobContext, data: Any, params: VideoParams) -> RecipeResult:
    from gpu_runner.video import VideoLimits, transform_video

    assert isinstance(data, bytes)
    recipe, inner_params, seed = frame_recipe(params)
    inner_ctx = ctx.child()  # the inner recipe's own progress (denoising steps) is not the job's
    first: list[RecipeResult] = []
    warnings: list[str] = []

    def process(rgb: np.ndarray, index: int) -> np.ndarray:
        result = recipe.run(inner_ctx, Image.fromarray(rgb), inner_params)
        if not first:
            first.append(result)
        warnings.extend(w for w in result.warnings if w not in warnings)
        return np.asarray(result.artifacts[0].image.convert("RGB"))

    settings = ctx.settings
    weight = params.temporal_weight if params.temporal_weight is not None else (
        settings.video_temporal_weight if settings is not None else 0.5)
    out = transform_video(data, process, limits=VideoLimits.from_settings(settings), temporal_weight=weight,
                          crf=params.crf, max_side=params.max_side, progress=ctx.progress,
                          cancelled=ctx.cancelled)
    details = {**out.details(), "frame_recipe": recipe.name,
               "frame_params": inner_params.model_dump(mode="json"), "temporal_weight": weight}
    if first and first[0].details:
        details["frame_details"] = first[0].details
    artifacts = [
        Artifact(name="video", data=out.data, content_type="video/mp4", extension="mp4",
                 width=out.width, height=out.height, meta={"frames": out.frames}),
        Artifact(name="poster", image=Image.fromarray(out.poster)),
    ]
    return RecipeResult(artifacts=artifacts, model=first[0].model if first else None,
                        seeds=[seed] if seed is not None else [], warnings=out.warnings + warnings, details=details)


RECIPE = Recipe(
    name="video",
    description="Any image recipe on every frame of a video (mp4, mov, webm, gif), temporally smoothed; "
                "H.264 MP4 with the audio copied",
    params=VideoParams,
    run=run,
    input_kind="bytes",
)
