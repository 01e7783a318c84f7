"""``stylize``: the upload redrawn in one of 16 style presets, its structure held by ControlNet.

Each preset brings a prompt, a negative prompt, a guidance type and a default strength
(``gpu_runner/presets.py``). Canny guidance uses the upload's own edges. Pose guidance needs
keypoints (``pose_key``: OpenPose JSON in the bucket), because detecting a pose needs
weights this runner does not ship; without them, or without an openpose ControlNet for the
model, stylize falls back to canny and says so in the warnings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from PIL import Image
from pydantic import Field

from gpu_runner.annotators import canny, parse_openpose_keypoints, render_openpose
from gpu_runner.presets import PRESETS, PresetName, resolve_strength
from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import (
    Generation,
    ImageDiffusionParams,
    check_strength,
    generate,
    model_cache,
    output_size,
)


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


def run(ctx: JobContext, image: Image.Image | None, params: StylizeParams) -> RecipeResult:
    assert image is not None
    preset = PRESETS[params.style]
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec, image)
    strength, details = resolve_strength(preset, params.strength, image)
    check_strength(params.steps, strength)
    warnings: list[str] = []
    control, control_image = "canny", None
    if preset.guidance == "pose":
        if params.pose_key is None:
            warnings.append(f"style {preset.name!r} uses pose guidance, which needs keypoints "
                            f"(pose_key); used canny edges instead")
        elif "openpose" not in spec.controlnets:
            warnings.append(f"model {spec.id!r} has no openpose ControlNet; used canny edges instead")
        else:
            people = parse_openpose_keypoints(ctx.load_bytes(params.pose_key))
            control, control_image = "openpose", render_openpose(people, *size)
    if control_image is None:
        control_image = canny(image.convert("RGB").resize(size, Image.LANCZOS), params.canny_low, params.canny_high)
    prompt = ", ".join(p for p in (params.prompt, preset.prompt) if p)
    negative = ", ".join(p for p in (params.negative_prompt, preset.negative_prompt) if p)
    details.update(style=preset.name, control=control, control_scale=params.control_scale)
    gen = Generation(task="img2img", prompt=prompt, negative_prompt=negative, image=image,
                     strength=strength, control=control, control_image=control_image,
                     control_scale=params.control_scale, warnings=warnings, details=details)
    return generate(ctx, params, spec, size, gen, recipe="stylize")


RECIPE = Recipe(
    name="stylize",
    description="Restyle the upload with one of 16 presets (" + ", ".join(PRESETS) + "), ControlNet-guided",
    params=StylizeParams,
    run=run,
)
