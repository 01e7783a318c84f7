"""Cross-job micro-batching through a real runner process (``bucketbrush runner``) with
``diffusion_batch_max`` on: jobs sent to the broker together share one denoising call, and
each still ends through the normal runner path with its own outputs and manifest.

The runner loads the session's tiny random pipeline (tests/tiny_models.py) from its models
TOML. Each job's image is compared with a lone in-process run of the same seed within a
tolerance (batched kernels are ~1e-5 from unbatched ones: tests/test_microbatch.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.jobs import JobSpec
from bucketbrush.management import cancel_job
from bucketbrush.manifest import Manifest
from gpu_runner.pipelines import ModelCache
from tests.helpers import check_outputs, wait_final
from tests.test_diffusion import new_cache
from tests.test_microbatch import close, lone
from tests.test_runner_processes import Corner, Runner, new_corner, runner, wait_status

pytestmark = pytest.mark.e2e

WAIT_MS = 3000


@pytest.fixture(scope="module")
def corner(stack, settings, tmp_path_factory) -> Corner:
    return new_corner(settings, tmp_path_factory.mktemp("microbatch"))


@pytest.fixture(scope="module")
def batching_runner(corner, models_toml: Path) -> Iterator[Runner]:
    env = corner.runner_env(models_file=models_toml, diffusion_dtype="float32", diffusion_batch_max=3,
                            diffusion_batch_wait_ms=WAIT_MS)
    with runner(corner, "batching-runner", env) as r:
        r.wait_log("3 worker thread(s); diffusion micro-batching up to 3 images")
        yield r


@pytest.fixture(scope="module")
def cache(models_toml: Path) -> ModelCache:
    return new_cache(models_toml)


def send(corner: Corner, params_list: list[dict]) -> list[str]:
    """txt2img jobs, straight to the broker one after the other (no event source here)."""
    broker, ids = build_broker(corner.settings), []
    for params in params_list:
        ref = corner.input(f"mb-{uuid.uuid4().hex[:8]}")  # a source object for the job's identity
        spec = JobSpec(job_id=uuid.uuid4().hex[:32], recipe="txt2img", source=ref, params=params,
                       enqueued_at=time.time())
        enqueue_job(broker, corner.settings, spec)
        ids.append(spec.job_id)
    return ids


def batch_of(manifest: Manifest) -> dict:
    assert manifest.status == "succeeded", manifest
    return manifest.details["batch"]


def test_compatible_jobs_share_a_call_and_each_ends_with_its_own_outputs(corner, batching_runner, cache):
    params = [{"prompt": "a red house", "steps": 2, "seed": 11}, {"prompt": "a boat", "steps": 2, "seed": 12},
              {"prompt": "a red house", "steps": 2, "seed": 13},
              {"prompt": "a red house", "steps": 3, "seed": 11}]  # other steps: not in their call
    ids = send(corner, params)
    manifests = [wait_final(corner.bucket, job_id, timeout=300) for job_id in ids]
    batches = [batch_of(m) for m in manifests]
    assert batches[0]["id"] == batches[1]["id"] == batches[2]["id"] != batches[3]["id"]
    assert batches[0]["jobs"] == 3 and batches[0]["closed"] == "full" and batches[3]["jobs"] == 1
    for manifest, p in zip(manifests, params, strict=True):
        [image] = check_outputs(corner.bucket, manifest)  # its own outputs, under its own job id
        assert manifest.outputs[0].key.startswith(f"outputs/{manifest.job_id}/")
        assert manifest.seeds == [p["seed"]] and manifest.progress.fraction == 1.0
        assert close(image, lone(cache, "txt2img", **p).artifacts[0].image)
        # The job's manifest brackets its share of the call.
        batch = manifest.details["batch"]
        assert manifest.timings["started_at"] <= batch["submitted_at"] <= batch["started_at"]
        assert batch["started_at"] <= manifest.timings["finished_at"]


def test_a_lone_job_is_held_no_longer_than_the_wait(corner, batching_runner):
    [job_id] = send(corner, [{"prompt": "a lone house", "steps": 2, "seed": 5}])
    manifest = wait_final(corner.bucket, job_id, timeout=300)
    batch = batch_of(manifest)
    assert batch["jobs"] == 1 and batch["closed"] == "waited" and batch["wait_ms"] == WAIT_MS
    # From the manifest's timestamps: it waited for company for the whole wait, then ran (the
    # slack covers a busy 2-core machine; the batcher never waits past its deadline).
    held = batch["started_at"] - batch["submitted_at"]
    assert WAIT_MS / 1000 <= held < WAIT_MS / 1000 + 2.0, batch


def test_a_job_cancelled_inside_a_batch_ends_cancelled_and_its_partner_succeeds(corner, batching_runner, cache):
    # Two compatible jobs of a batch of up to 3: their call waits WAIT_MS for a third, and the
    # victim is cancelled once it runs (in that wait, or in the call's first steps: either way
    # it leaves the batch at the call's next step and its partner goes on).
    params = [{"prompt": "a slow house", "steps": 20, "seed": 21}, {"prompt": "a slow boat", "steps": 20, "seed": 22}]
    victim, partner = send(corner, params)
    wait_status(corner.bucket, victim, "running", timeout=120)
    cancel_job(corner.bucket, victim)
    cancelled = wait_final(corner.bucket, victim, timeout=300)
    assert cancelled.status == "cancelled" and cancelled.error.code == "cancelled" and not cancelled.outputs
    assert corner.outputs(victim) == []
    manifest = wait_final(corner.bucket, partner, timeout=300)
    assert batch_of(manifest)["jobs"] == 2
    [image] = check_outputs(corner.bucket, manifest)
    assert close(image, lone(cache, "txt2img", **params[1]).artifacts[0].image)


def test_waiting_for_the_compute_slot_does_not_count_against_a_jobs_time_limit(corner, batching_runner):
    # With several worker threads one job computes at a time: a job that waits for another's
    # turn gets its full Dramatiq time limit once it starts, and the limit still stops it.
    def slow(name: str, seconds: float, limit_s: int | None = None) -> str:
        ref = corner.input(name)
        spec = JobSpec(job_id=uuid.uuid4().hex[:32], recipe="test-slow", source=ref, input=ref,
                       params={"seconds": seconds, "steps": 20}, time_limit_s=limit_s)
        enqueue_job(build_broker(corner.settings), corner.settings, spec)
        return spec.job_id

    first = slow("slot-first", 6)
    wait_status(corner.bucket, first, "running", timeout=120)
    patient, late = slow("slot-patient", 1, limit_s=3), slow("slot-over", 5, limit_s=2)
    assert wait_final(corner.bucket, first, timeout=120).status == "succeeded"
    waited = wait_final(corner.bucket, patient, timeout=120)
    assert waited.status == "succeeded", waited.error
    assert waited.timings["queue_wait_s"] > 3  # it waited longer than its own limit, then ran
    over = wait_final(corner.bucket, late, timeout=120)
    assert over.status == "failed" and over.error.code == "timed_out"
    assert "for its turn; its time limit starts now" in batching_runner.log
