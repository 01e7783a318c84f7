"""``layers``: the upload split into 2-5 RGBA depth layers, near to far, for 2.5D / parallax.

A transformers depth model (``BUCKETBRUSH_DEPTH_MODEL``: e.g. Depth Anything V2 or DPT, a
local folder or a repo in the HF cache) estimates depth; the image is cut at the depth map's
quantiles. Every pixel lands in exactly one layer, so the layers composite back to the image.

Modes: ``photo`` cuts the photo itself; ``painterly`` first restyles the whole image with a
``stylize`` preset (diffusion + ControlNet, needs ``BUCKETBRUSH_MODELS_FILE``), then cuts the
painting with the depth of the photo (painting moves texture, not geometry). Painterly layers
come at the painting's size (the model's native size, keeping the aspect ratio).

``details.layers`` lists, near to far: ``index``, ``name``, ``output``, ``depth_range``
(the smallest and largest normalised depth in the layer, 0 = nearest, 1 = farthest in this
image; null for an empty layer) and ``coverage`` (fraction of the pixels). Pixels of equal
depth share a layer, so a large flat region (sky) is never cut in two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import Field, model_validator

from bucketbrush.errors import JobCancelled, ModelUnavailable
from gpu_runner import depth as depthmod
from gpu_runner.presets import PresetName
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult

SETTING = "BUCKETBRUSH_DEPTH_MODEL"
# Params that only mean something in painterly mode.
_PAINTERLY_ONLY = ("style", "strength", "prompt", "model", "steps", "guidance", "seed", "control_scale")


class LayersParams(RecipeParams):
    format: Literal["png", "webp"] = Field(default="png", description="layers are RGBA: png or webp")
    count: int = Field(default=4, ge=2, le=5, description="number of layers, near to far")
    mode: Literal["photo", "painterly"] = "photo"
    output_depth: bool = Field(default=False, description="also write the depth map (near = white)")
    # painterly only (see stylize):
    style: PresetName = "oil_painting"
    strength: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] | None = None
    prompt: str = Field(default="", max_length=4000)
    model: str | None = None
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.5, ge=0.0, le=30.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    control_scale: float = Field(default=0.8, ge=0.0, le=2.0)

    @model_validator(mode="after")
    def _painterly_params_need_painterly(self) -> LayersParams:
        # Defaults pass: a retry resubmits the resolved params, painterly fields included.
        fields = type(self).model_fields
        stray = [name for name in _PAINTERLY_ONLY
                 if name in self.model_fields_set and getattr(self, name) != fields[name].default]
        if self.mode == "photo" and stray:
            raise ValueError(f"{', '.join(stray)} only apply to mode 'painterly'")
        return self


def depth_estimator(ctx: JobContext) -> Any:
    """The runner's depth model, loaded on first use; ModelUnavailable naming the setting."""
    from gpu_runner import vision

    settings = ctx.settings
    value = getattr(settings, "depth_model", None)
    if not value:
        raise ModelUnavailable(
            f"no depth model is configured on this runner; set {SETTING} to a transformers depth "
            f"estimation model: a save_pretrained folder or a repo id in the local HF cache "
            f"(e.g. depth-anything/Depth-Anything-V2-Small-hf)"
        )
    return vision.load("depth", value, setting=SETTING, device=getattr(settings, "diffusion_device", "auto"))


def _painted(ctx: JobContext, image: Image.Image, params: LayersParams, share: int, total: int) -> RecipeResult:
    """``image`` restyled by the stylize recipe; its progress fills steps 0..share of ``total``."""
    from gpu_runner.recipes import stylize

    sub = JobContext(
        ctx.job_id,
        on_progress=lambda step, steps: ctx.progress(share * step // max(steps, 1), total),
        load_image=ctx.load_image, load_bytes=ctx.load_bytes, cancelled=ctx.cancelled, models=ctx.models,
        settings=ctx.settings,
    )
    stylize_params = stylize.StylizeParams(
        style=params.style, strength=params.strength, prompt=params.prompt, model=params.model,
        steps=params.steps, guidance=params.guidance, seed=params.seed, control_scale=params.control_scale,
    )
    return stylize.run(sub, image, stylize_params)


def run(ctx: JobContext, image: Image.Image | None, params: LayersParams) -> RecipeResult:
    assert image is not None
    total = 100
    painterly = params.mode == "painterly"
    share = 80 if painterly else 0
    if painterly:
        from gpu_runner.recipes.diffusion import model_cache

        model_cache(ctx)  # fail before any work when no diffusion models are configured
    ctx.progress(0, total)
    estimator = depth_estimator(ctx)
    depth, kind = depthmod.estimate_depth(estimator, image)

    source, warnings, seeds, details = image, [], [], {"mode": params.mode, "count": params.count}
    model: dict[str, Any] = estimator.describe()
    model["output"] = kind
    if painterly:
        result = _painted(ctx, image, params, share, total)
        source = result.artifacts[0].image
        warnings += result.warnings
        seeds = result.seeds
        model["diffusion"] = result.model
        details["painterly"] = {k: v for k, v in result.details.items() if k != "versions"}
        if source.size != image.size:
            depth = _resize_depth(depth, source.size)
    if ctx.cancelled():
        raise JobCancelled("cancelled by the user")
    ctx.progress(max(share, 10), total)

    layers = depthmod.split_by_depth(depth, params.count)
    artifacts, records = [], []
    for layer in layers:
        name = depthmod.layer_name(layer, params.count)
        span = [round(v, 4) for v in layer.depth_range] if layer.depth_range else None
        record = {"index": layer.index, "name": name, "output": f"{name}.{params.format}",
                  "depth_range": span, "coverage": round(layer.coverage, 6)}
        records.append(record)
        artifacts.append(Artifact(name=name, image=depthmod.cut_layer(source, layer.mask),
                                  meta={k: record[k] for k in ("index", "depth_range", "coverage")}))
        if span is None:
            warnings.append(f"layer {layer.index} is empty: the depth map has fewer distinct depths "
                            f"than layers; try a smaller count")
        ctx.progress(share + (total - share) * (layer.index + 1) // (params.count + 1), total)
    if params.output_depth:
        artifacts.append(Artifact(name="depth", image=depthmod.depth_image(depth), meta={"near": "white"}))
        details["depth_output"] = f"depth.{params.format}"
    details["layers"] = records
    details["depth"] = {"normalised": "0 = nearest, 1 = farthest", "model_output": kind}
    ctx.progress(total, total)
    return RecipeResult(artifacts=artifacts, model=model, seeds=seeds, warnings=warnings, details=details)


def _resize_depth(depth: Any, size: tuple[int, int]) -> Any:
    import cv2
    import numpy as np

    return np.clip(cv2.resize(depth, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


RECIPE = Recipe(
    name="layers",
    description="Split the upload into 2-5 RGBA depth layers (photo, or painterly via a stylize preset)",
    params=LayersParams,
    run=run,
)
