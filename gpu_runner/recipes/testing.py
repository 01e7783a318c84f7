"""Recipes for tests only, registered when the runner's ``test_recipes`` setting is on.

``test-slow`` is slow by construction, not by the machine's speed: it waits ``seconds`` in small
steps, reporting progress and honouring cancel between them, so time limits and cancels can be
tested on any machine. ``test-slow-limited`` is the same recipe under another name, for a
per-recipe time limit (``recipe_time_limits_s``) that leaves ``test-slow`` alone.
``test-crash`` kills its runner process (``os._exit``), as a job exhausting the machine's
memory would: the poison job of the fault tests.
"""

from __future__ import annotations

import os
import time

from PIL import Image
from pydantic import Field

from bucketbrush.errors import JobCancelled
from gpu_runner.recipes.base import Artifact, JobContext, Recipe, RecipeParams, RecipeResult


class SlowParams(RecipeParams):
    seconds: float = Field(default=5.0, ge=0, le=600, description="how long the job takes")
    steps: int = Field(default=50, ge=1, le=10_000, description="progress steps (cancel is checked between them)")


def run_slow(ctx: JobContext, image: Image.Image | None, params: SlowParams) -> RecipeResult:
    assert image is not None
    pause = params.seconds / params.steps
    for step in range(params.steps):
        time.sleep(pause)  # Python-level: Dramatiq's time limit interrupts it promptly
        ctx.progress(step + 1, params.steps)
        if ctx.cancelled():
            raise JobCancelled("cancelled by the user")
    return RecipeResult(artifacts=[Artifact(name="slow", image=image)], details={"seconds": params.seconds})


TEST_RECIPES = tuple(
    Recipe(name=name, description="tests only: waits `seconds`, then returns the input", params=SlowParams,
           run=run_slow)
    for name in ("test-slow", "test-slow-limited")
)


class CrashParams(RecipeParams):
    exit_code: int = Field(default=137, ge=1, le=255, description="the runner process's exit status")


def run_crash(ctx: JobContext, image: Image.Image | None, params: CrashParams) -> RecipeResult:
    os._exit(params.exit_code)  # no cleanup, no final manifest: as the kernel's OOM killer would


TEST_RECIPES += (Recipe(name="test-crash", description="tests only: kills the runner process", params=CrashParams,
                        run=run_crash),)
