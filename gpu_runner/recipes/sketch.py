"""``sketch``: a drawing turned into an image, guided by a scribble ControlNet.

The upload is cleaned up first (inverted to white-on-black, thresholded, thinned and redrawn
at an even width; see ``annotators.scribble_from_sketch``), so pencil, marker and tablet
sketches reach the ControlNet alike. Set ``clean=False`` for uploads that already are
scribble maps.
"""

from __future__ import annotations

from PIL import Image
from pydantic import Field

from gpu_runner.annotators import scribble_from_sketch
from gpu_runner.recipes.base import JobContext, Recipe, RecipeResult
from gpu_runner.recipes.diffusion import DiffusionParams, Generation, generate, model_cache, output_size


class SketchParams(DiffusionParams):
    prompt: str = Field(min_length=1, max_length=4000)
    clean: bool = Field(default=True, description="clean the sketch up into a scribble map")
    line_width: int = Field(default=3, ge=1, le=16, description="stroke width after clean-up, in px")
    control_scale: float = Field(default=1.0, ge=0.0, le=2.0, description="how strictly to follow the lines")


def run(ctx: JobContext, image: Image.Image | None, params: SketchParams) -> RecipeResult:
    assert image is not None
    spec = model_cache(ctx).registry.get_model(params.model)
    size = output_size(ctx, params, spec, image)
    control = scribble_from_sketch(image, params.line_width) if params.clean else image.convert("RGB")
    gen = Generation(task="txt2img", prompt=params.prompt, negative_prompt=params.negative_prompt,
                     control="scribble", control_image=control, control_scale=params.control_scale,
                     details={"control_scale": params.control_scale, "cleaned": params.clean})
    return generate(ctx, params, spec, size, gen, recipe="sketch")


RECIPE = Recipe(
    name="sketch",
    description="Sketch to image with a scribble ControlNet (the sketch is cleaned up first)",
    params=SketchParams,
    run=run,
)
