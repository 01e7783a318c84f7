"""``hold`` (tests only, ``BUCKETBRUSH_TEST_RECIPES=true``): slow by construction, whatever the CPU.

It reports ``steps`` progress steps ``step_s`` seconds apart, checks for cancel between steps,
and returns the input unchanged: a job that stays ``running`` long enough to be watched and
cancelled from a test, without depending on how fast a filter or a model runs.
"""

from __future__ import annotations

import time

from PIL import Image
from pydantic import Field

from bucketbrush.errors import JobCancelled
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult


class HoldParams(RecipeParams):
    steps: int = Field(default=100, ge=1, le=1000, description="progress steps")
    step_s: float = Field(default=0.2, ge=0.0, le=5.0, description="seconds per step")


def run(ctx: JobContext, image: Image.Image | None, params: HoldParams) -> RecipeResult:
    assert image is not None
    for step in range(params.steps):
        if ctx.cancelled():
            raise JobCancelled(f"cancelled at step {step} of {params.steps}")
        ctx.progress(step, params.steps)
        time.sleep(params.step_s)
    ctx.progress(params.steps, params.steps)
    return RecipeResult(artifacts=[Artifact(name="held", image=image.copy())])


RECIPE = Recipe(
    name="hold",
    description="tests only: waits steps x step_s seconds, cancellable, returns the input",
    params=HoldParams,
    run=run,
)
