"""``stylize``: the upload redrawn in one of 16 style presets, its structure held by ControlNet.

Each preset brings a prompt, a negative prompt, a guidance type and a default strength
(``gpu_runner/presets.py``). Canny guidance uses the upload's own edges. Pose guidance uses
keypoints from the bucket (``pose_key``: OpenPose JSON), else the people MediaPipe's
BlazePose finds in the upload (``gpu_runner/pose.py``; the ``pose`` extra). Without an
openpose ControlNet for the model, without the pose runtime, or when nobody is found
(``no_pose_found``), stylize falls back to canny and says so in the warnings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from PIL import Image
from pydantic import Field, model_validator

from bucketbrush.errors import ModelUnavailable
from gpu_runner.annotators import canny, parse_openpose_keypoints, render_openpose
from gpu_runner.presets import PRESETS, PresetName, resolve_strength
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import (
    Generation,
    ImageDiffusionParams,
    check_strength,
    generate,
    model_cache,
    output_size,
)

if TYPE_CHECKING:
    from gpu_runner.pose import PoseResult


class StylizeParams(ImageDiffusionParams):
    style: PresetName = "auto"
    prompt: str = Field(default="", max_length=4000, description="added to the preset's prompt")
    strength: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] | None = Field(
        default=None, description="0-1; 'auto': from image complexity (0.20-0.70); None: the preset's"
    )
    control_scale: float = Field(default=0.8, ge=0.0, le=2.0)
    canny_low: int = Field(default=100, ge=0, le=255)
    canny_high: int = Field(default=200, ge=0, le=255)
    pose_key: str | None = Field(default=None, description="OpenPose JSON keypoints, for pose presets")
    output_keypoints: bool = Field(
        default=False, description="pose presets without pose_key: also write the detected keypoints (keypoints.json)")

    @model_validator(mode="after")
    def _check_output_keypoints(self) -> StylizeParams:
        if self.output_keypoints and (PRESETS[self.style].guidance != "pose" or self.pose_key is not None):
            raise ValueError("output_keypoints needs a pose preset (cartoon, anime, ghibli, fantasy) and no pose_key")
        return self


def _detect(image: Image.Image, warnings: list[str], details: dict[str, Any]) -> PoseResult | None:
    """The detected pose (a PoseResult), or None with a warning saying why canny is used."""
    from gpu_runner import pose

    try:
        result = pose.detect_poses(image)
    except ModelUnavailable as exc:
        warnings.append(f"pose detection is unavailable on this runner ({exc.message}); used canny edges instead")
        return None
    details["pose"] = result.details()
    if not result.people:
        warnings.append(pose.no_pose_warning("used canny edges instead"))
        details["pose"]["fallback"] = "canny"
    return result


def run(ctx: JobContext, image: Image.Image | None, params: StylizeParams) -> RecipeResult:
    assert image is not None
    preset = PRESETS[params.style]
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec, image)
    strength, details = resolve_strength(preset, params.strength, image)
    check_strength(params.steps, strength)
    warnings: list[str] = []
    control, control_image, detected = "canny", None, None
    if preset.guidance == "pose":
        has_controlnet = "openpose" in spec.controlnets
        if not has_controlnet:
            warnings.append(f"model {spec.id!r} has no openpose ControlNet; used canny edges instead")
        if params.pose_key is not None:
            if has_controlnet:
                people = parse_openpose_keypoints(ctx.load_bytes(params.pose_key))
                control, control_image = "openpose", render_openpose(people, *size)
                details["pose"] = {"source": "keypoints"}
        elif has_controlnet or params.output_keypoints:
            detected = _detect(image, warnings, details)
            if has_controlnet and detected is not None and detected.people:
                control, control_image = "openpose", render_openpose(detected.skeletons(), *size)
    if control_image is None:
        control_image = canny(image.convert("RGB").resize(size, Image.LANCZOS), params.canny_low, params.canny_high)
    prompt = ", ".join(p for p in (params.prompt, preset.prompt) if p)
    negative = ", ".join(p for p in (params.negative_prompt, preset.negative_prompt) if p)
    details.update(style=preset.name, control=control, control_scale=params.control_scale)
    gen = Generation(task="img2img", prompt=prompt, negative_prompt=negative, image=image,
                     strength=strength, control=control, control_image=control_image,
                     control_scale=params.control_scale, warnings=warnings, details=details)
    result = generate(ctx, params, spec, size, gen, recipe="stylize")
    if params.output_keypoints and detected is not None:
        result.artifacts.append(Artifact.json("keypoints", detected.openpose_json()))
    return result


RECIPE = Recipe(
    name="stylize",
    description="Restyle the upload with one of 16 presets (" + ", ".join(PRESETS) + "), ControlNet-guided",
    params=StylizeParams,
    run=run,
)
