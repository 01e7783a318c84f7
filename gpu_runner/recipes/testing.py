"""Recipes for tests only, registered when the runner's ``test_recipes`` setting is on.

``test-slow`` is slow by construction, not by the machine's speed: it waits ``seconds`` in small
steps, reporting progress and honouring cancel between them, so time limits and cancels can be
tested on any machine. ``test-slow-limited`` is the same recipe under another name, for a
per-recipe time limit (``recipe_time_limits_s``) that leaves ``test-slow`` alone.

``test-fail-late`` fails while the runner writes its outputs, after the first is in the
bucket: its last output is a CMYK image, which PNG cannot hold, so the failure comes from
the encoder itself (an unexpected error, not a JobError), at a known point.

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
    outputs: int = Field(default=1, ge=1, le=8, description="how many copies of the input it returns")


def run_slow(ctx: JobContext, image: Image.Image | None, params: SlowParams) -> RecipeResult:
    assert image is not None
    pause = params.seconds / params.steps
    for step in range(params.steps):
        time.sleep(pause)  # Python-level: Dramatiq's time limit interrupts it promptly
        ctx.progress(step + 1, params.steps)
        if ctx.cancelled():
            raise JobCancelled("cancelled by the user")
    return RecipeResult(artifacts=copies(image, "slow", params.outputs), details={"seconds": params.seconds})


def copies(image: Image.Image, name: str, count: int) -> list[Artifact]:
    """``count`` outputs of ``image``: ``name``, ``name-2``, ``name-3``..."""
    return [Artifact(name=name if i == 1 else f"{name}-{i}", image=image) for i in range(1, count + 1)]


class FailLateParams(RecipeParams):
    outputs: int = Field(default=2, ge=2, le=8, description="outputs in all; the last one cannot be written")


def run_fail_late(ctx: JobContext, image: Image.Image | None, params: FailLateParams) -> RecipeResult:
    assert image is not None
    unwritable = Artifact(name="unwritable", image=image.convert("CMYK"))  # PNG has no CMYK mode
    return RecipeResult(artifacts=[*copies(image, "first", params.outputs - 1), unwritable])


TEST_RECIPES = (
    *(Recipe(name=name, description="tests only: waits `seconds`, then returns the input", params=SlowParams,
             run=run_slow)
      for name in ("test-slow", "test-slow-limited")),
    Recipe(name="test-fail-late", description="tests only: fails while its outputs are written, after the first",
           params=FailLateParams, run=run_fail_late),
)


class CrashParams(RecipeParams):
    exit_code: int = Field(default=137, ge=1, le=255, description="the runner process's exit status")


def run_crash(ctx: JobContext, image: Image.Image | None, params: CrashParams) -> RecipeResult:
    os._exit(params.exit_code)  # no cleanup, no final manifest: as the kernel's OOM killer would


TEST_RECIPES += (Recipe(name="test-crash", description="tests only: kills the runner process", params=CrashParams,
                        run=run_crash),)
