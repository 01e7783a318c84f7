"""``remove-bg``: the upload's subject as an RGBA cut-out, and optionally its mask.

With ``BUCKETBRUSH_SEGMENTATION_MODEL`` set (a transformers semantic segmentation model:
SegFormer, DPT, UperNet, BEiT, MobileViT, Mask2Former, MaskFormer; a folder or a repo in the
local HF cache, never remote code), the foreground is the model's probability of the
foreground labels: the job's ``labels``, else ``BUCKETBRUSH_SEGMENTATION_LABELS``, else every
label but ``background`` when the model has one, else common object classes (people,
animals, vehicles).

``method=person`` uses MediaPipe's selfie segmentation model (a TFLite file from the
mediapipe wheel, run with LiteRT; the ``pose`` extra): people and what they hold, upsampled
and refined with a guided filter (``segmentation.person_foreground``). ``auto`` takes, in
order: the configured model; the person model when BlazePose detects a person; else a
classical GrabCut seeded from a centred rectangle, labelled in the manifest
(``details.method = "grabcut"`` and a warning), because it only suits one roughly centred
subject on a distinct background.

Binary matting models on the hub (RMBG, BiRefNet) need ``trust_remote_code`` and are
refused; a SegFormer fine-tuned with labels ``background``/``foreground`` works as one.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from bucketbrush.errors import ModelUnavailable
from gpu_runner import segmentation
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult

SETTING = "BUCKETBRUSH_SEGMENTATION_MODEL"
GRABCUT_WARNING = ("the background was removed with classical GrabCut from a centred rectangle ({why}); "
                   "expect rough edges unless the subject is centred on a distinct background")
NO_MODEL = "no segmentation model is configured (BUCKETBRUSH_SEGMENTATION_MODEL)"


class RemoveBgParams(RecipeParams):
    format: Literal["png", "webp"] = Field(default="png", description="the cut-out is RGBA: png or webp")
    method: Literal["auto", "model", "person", "grabcut"] = Field(
        default="auto", description="auto: the configured model, else person when one is detected, else GrabCut")
    output_mask: bool = Field(default=False, description="also write the mask (white = kept)")
    labels: list[str] | None = Field(default=None, max_length=64,
                                     description="model labels that are foreground (model method)")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0,
                                    description="hard mask at this probability; None: soft edges")
    feather: int | None = Field(default=None, ge=0, le=50,
                                description="edge softening in px; None: 0 for the models, 2 for GrabCut")
    refine: bool = Field(default=True, description="person: guided-filter the mask to the photo's edges")
    margin: float = Field(default=0.05, ge=0.0, le=0.45,
                          description="GrabCut: share of each side that is sure background")
    iterations: int = Field(default=5, ge=1, le=20, description="GrabCut iterations")


def _segmenter(ctx: JobContext) -> Any | None:
    from gpu_runner import vision

    settings = ctx.settings
    value = getattr(settings, "segmentation_model", None)
    if not value:
        return None
    return vision.load("segmentation", value, setting=SETTING,
                       device=getattr(settings, "diffusion_device", "auto"))


def _person_detected(image: Image.Image) -> tuple[bool | None, str]:
    """Whether BlazePose's detector finds a person (None: the pose runtime is missing), and why not."""
    from gpu_runner import pose

    try:
        return bool(pose.detect(np.asarray(image.convert("RGB")))), f"{NO_MODEL} and no person was detected"
    except ModelUnavailable as exc:
        return None, f"{NO_MODEL} and the person model is unavailable: {exc.message}"


def run(ctx: JobContext, image: Image.Image | None, params: RemoveBgParams) -> RecipeResult:
    assert image is not None
    ctx.progress(0, 3)
    vm = _segmenter(ctx) if params.method in ("auto", "model") else None
    if params.method == "model" and vm is None:
        raise ModelUnavailable(f"method 'model' needs a segmentation model; set {SETTING} to a "
                               f"transformers semantic segmentation model (folder or HF cache repo id)")
    method, why = params.method, "method=grabcut"
    if method == "auto":
        detected, why = (None, "") if vm is not None else _person_detected(image)
        method = "model" if vm is not None else "person" if detected else "grabcut"
    warnings: list[str] = []
    model = None
    ctx.progress(1, 3)
    if method == "model":
        settings = ctx.settings
        wanted = params.labels if params.labels is not None else getattr(settings, "segmentation_labels", None) or []
        alpha, labels = segmentation.model_foreground(vm, image, wanted)
        details: dict[str, Any] = {"method": "model", "labels": labels}
        model = vm.describe()
        radius = 0 if params.feather is None else params.feather
    elif method == "person":
        person = segmentation.person_foreground(image, refine=params.refine)
        alpha, model = person.alpha, person.model
        details = {"method": "person", **person.details}
        radius = 0 if params.feather is None else params.feather
    else:
        fg, rect = segmentation.grabcut_foreground(image, params.margin, params.iterations)
        alpha = fg.astype(np.float32)
        details = {"method": "grabcut", "rect": list(rect), "iterations": params.iterations}
        warnings.append(GRABCUT_WARNING.format(why=why))
        radius = 2 if params.feather is None else params.feather
    if params.threshold is not None:
        alpha = (alpha >= params.threshold).astype(np.float32)
    alpha = segmentation.feather(alpha, radius)
    ctx.progress(2, 3)
    details.update(foreground_fraction=round(float(alpha.mean()), 6), feather=radius, threshold=params.threshold)
    if details["foreground_fraction"] < 0.001:
        warnings.append("no foreground was found; the cut-out is fully transparent")
    artifacts: list[Artifact] = [
        Artifact(name="cutout", image=segmentation.cutout(image, alpha), meta={"method": details["method"]})]
    if params.output_mask:
        mask = Image.fromarray(np.round(np.clip(alpha, 0.0, 1.0) * 255).astype(np.uint8), "L")
        artifacts.append(Artifact(name="mask", image=mask, meta={"white": "kept"}))
    ctx.progress(3, 3)
    return RecipeResult(artifacts=artifacts, model=model, warnings=warnings, details=details)


RECIPE = Recipe(
    name="remove-bg",
    description="Cut out the subject (segmentation model when configured, else the person model when a "
                "person is detected, else labelled GrabCut fallback)",
    params=RemoveBgParams,
    run=run,
)
