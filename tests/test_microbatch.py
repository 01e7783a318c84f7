"""Cross-job micro-batching (gpu_runner/batching.py) on the real diffusers code path.

Jobs run in threads as the runner's worker threads run them: each holds the compute slot
while its recipe runs (the actor's part) and hands its call to the batcher. The tiny random
pipeline of tests/tiny_models.py, no mocks. Reproducibility is "the same seed gives the same
image within a small tolerance, batched or not": a batched oneDNN convolution is ~1e-6..1e-5
away from a lone one, which may move a pixel by a level (issue 18), so images are compared
with a tolerance, not bytewise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from bucketbrush.errors import JobCancelled
from gpu_runner.batching import Batcher, ComputeSlot
from gpu_runner.pipelines import ModelCache
from gpu_runner.recipes import get_recipe
from gpu_runner.recipes.base import JobContext, RecipeResult
from gpu_runner.runner import resolve_params
from tests.test_diffusion import new_cache, photo

# Pixel levels (0-255) an image may differ from its lone counterpart.
TOLERANCE = 2


@pytest.fixture(scope="module")
def cache(models_toml: Path) -> ModelCache:
    return new_cache(models_toml)


def lone(cache: ModelCache, recipe: str, image: Image.Image | None = None, **params: object) -> RecipeResult:
    r = get_recipe(recipe)
    return r.run(JobContext("lone", models=cache), image, resolve_params(r, params, {}))


def close(a: Image.Image, b: Image.Image) -> bool:
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return a.size == b.size and int(diff.max()) <= TOLERANCE and float(diff.mean()) < 0.05


class Job:
    def __init__(self, recipe: str, params: dict[str, Any], image: Image.Image | None = None,
                 cancelled: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None):
        self.recipe, self.params, self.image = recipe, params, image
        self.cancelled, self.on_progress = cancelled, progress
        self.result: RecipeResult | None = None
        self.error: BaseException | None = None
        self.steps: list[tuple[int, int]] = []

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))
        if self.on_progress:
            self.on_progress(step, total)


def run_together(cache: ModelCache, jobs: list[Job], *, max_images: int, wait_s: float) -> list[Job]:
    """Run ``jobs`` in threads, as a runner with ``diffusion_batch_max = max_images`` would."""
    slot = ComputeSlot()
    batcher = Batcher(slot, max_images, wait_s)

    def run(i: int, job: Job) -> None:
        recipe = get_recipe(job.recipe)
        ctx = JobContext(f"job-{i}", on_progress=job.progress, cancelled=job.cancelled, models=cache,
                         batcher=batcher)
        try:
            with slot.held():
                job.result = recipe.run(ctx, job.image, resolve_params(recipe, job.params, {}))
        except BaseException as exc:  # noqa: BLE001 - looked at by the test
            job.error = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return jobs


TXT = {"steps": 2}


def test_compatible_jobs_share_one_call_and_keep_their_own_seeds(cache: ModelCache) -> None:
    params = [{**TXT, "prompt": "a red house", "seed": 1},
              {**TXT, "prompt": "a blue boat", "negative_prompt": "fog", "seed": 2},
              {**TXT, "prompt": "a red house", "seed": 3, "num_images": 2}]
    jobs = run_together(cache, [Job("txt2img", p) for p in params], max_images=4, wait_s=30)
    assert [j.error for j in jobs] == [None] * 3
    batches = [j.result.details["batch"] for j in jobs]
    assert {b["id"] for b in batches} == {batches[0]["id"]}  # one call
    assert batches[0]["jobs"] == 3 and batches[0]["images"] == 4 and batches[0]["closed"] == "full"
    assert all(j.result.details["batching"] == "batched" for j in jobs)
    for job, p in zip(jobs, params, strict=True):
        alone = lone(cache, "txt2img", **p)
        assert job.result.seeds == alone.seeds
        assert len(job.result.artifacts) == p.get("num_images", 1)
        for mine, theirs in zip(job.result.artifacts, alone.artifacts, strict=True):
            assert mine.meta == theirs.meta and close(mine.image, theirs.image)
        assert job.steps[-1] == (2, 2)  # each job saw the shared call's progress
    # Different prompts and seeds give different images: the split is not a copy of one.
    assert not close(jobs[0].result.artifacts[0].image, jobs[1].result.artifacts[0].image)


def test_img2img_jobs_share_a_call_with_their_own_input_images(cache: ModelCache) -> None:
    params = {"steps": 4, "strength": 0.5, "prompt": "a house at dusk", "seed": 7}
    inputs = [photo(), ImageOps.mirror(photo())]
    jobs = run_together(cache, [Job("img2img", params, image) for image in inputs], max_images=2, wait_s=30)
    assert [j.error for j in jobs] == [None, None]
    assert jobs[0].result.details["batch"]["jobs"] == 2
    for job, image in zip(jobs, inputs, strict=True):
        assert close(job.result.artifacts[0].image, lone(cache, "img2img", image, **params).artifacts[0].image)


def test_incompatible_jobs_are_not_grouped(cache: ModelCache) -> None:
    params = [{**TXT, "prompt": "a", "seed": 1}, {"steps": 3, "prompt": "a", "seed": 1},
              {**TXT, "prompt": "a", "seed": 1, "guidance": 3.0}, {**TXT, "prompt": "a", "seed": 1, "width": 72}]
    jobs = run_together(cache, [Job("txt2img", p) for p in params], max_images=4, wait_s=0.5)
    assert [j.error for j in jobs] == [None] * 4
    batches = [j.result.details["batch"] for j in jobs]
    assert len({b["id"] for b in batches}) == 4
    assert all(b["jobs"] == 1 and b["closed"] == "waited" for b in batches)


def test_a_lone_job_waits_at_most_the_wait(cache: ModelCache) -> None:
    [job] = run_together(cache, [Job("txt2img", {**TXT, "prompt": "a", "seed": 5})], max_images=4, wait_s=0.4)
    batch = job.result.details["batch"]
    assert batch["jobs"] == 1 and batch["closed"] == "waited" and job.result.details["batching"] == "per_image"
    # The batcher closed it at the wait's end (its own clock), not earlier; it is no longer.
    assert 0.4 <= batch["waited_s"] < 0.4 + 2.0, batch


def test_a_job_cancelled_inside_a_batch_ends_cancelled_and_the_others_finish(cache: ModelCache) -> None:
    flag = threading.Event()
    params = [{"steps": 4, "prompt": "a red house", "seed": 1}, {"steps": 4, "prompt": "a cat", "seed": 2}]
    jobs = [Job("txt2img", params[0], cancelled=flag.is_set,
                progress=lambda step, total: flag.set() if step == 1 else None),
            Job("txt2img", params[1])]
    run_together(cache, jobs, max_images=2, wait_s=30)
    assert isinstance(jobs[0].error, JobCancelled) and jobs[0].result is None
    assert jobs[0].steps == [(1, 4)]  # nothing reported after its cancel
    assert jobs[1].error is None and jobs[1].result.details["batch"]["jobs"] == 2
    assert close(jobs[1].result.artifacts[0].image, lone(cache, "txt2img", **params[1]).artifacts[0].image)


def test_a_batch_whose_jobs_are_all_cancelled_stops_its_call(cache: ModelCache) -> None:
    jobs = [Job("txt2img", {"steps": 6, "prompt": "a", "seed": s}, cancelled=lambda: True) for s in (1, 2)]
    run_together(cache, jobs, max_images=2, wait_s=30)
    assert all(isinstance(j.error, JobCancelled) for j in jobs)
    assert all(j.steps == [(1, 6)] for j in jobs)  # the call stopped at its first step


def test_a_failure_in_the_shared_call_fails_every_job_in_it(cache: ModelCache) -> None:
    def boom(step: int, total: int) -> None:
        raise RuntimeError("the device fell over")

    jobs = [Job("txt2img", {**TXT, "prompt": "a", "seed": 1}, progress=boom),
            Job("txt2img", {**TXT, "prompt": "b", "seed": 2})]
    run_together(cache, jobs, max_images=2, wait_s=30)
    assert [type(j.error) for j in jobs] == [RuntimeError, RuntimeError]
    assert jobs[0].error is not jobs[1].error and str(jobs[1].error) == "the device fell over"
    # The batcher's thread lives on: the next jobs run.
    again = run_together(cache, [Job("txt2img", {**TXT, "prompt": "a", "seed": 1})], max_images=2, wait_s=0)
    assert again[0].error is None


def test_weighted_prompts_share_a_call_through_their_embeddings(cache: ModelCache) -> None:
    pytest.importorskip("compel")
    params = [{**TXT, "prompt": "a (red)1.4 house", "seed": 1}, {**TXT, "prompt": "a boat++", "seed": 2},
              {**TXT, "prompt": "a plain house", "seed": 3}]  # text, not embeddings: a call of its own
    jobs = run_together(cache, [Job("txt2img", p) for p in params], max_images=3, wait_s=1.0)
    assert [j.error for j in jobs] == [None] * 3
    assert [j.result.details["prompt_weighting"] for j in jobs] == ["compel", "compel", "none"]
    batches = [j.result.details["batch"] for j in jobs]
    assert batches[0]["id"] == batches[1]["id"] != batches[2]["id"] and batches[0]["jobs"] == 2
    for job, p in zip(jobs, params, strict=True):
        assert close(job.result.artifacts[0].image, lone(cache, "txt2img", **p).artifacts[0].image)
