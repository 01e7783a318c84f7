"""Runners elsewhere: a runner needs only the S3 endpoint, its keys and the Redis URL (no
shared filesystem, no state from ``up``); one process per device; interactive jobs ahead of
bulk ones. Each runner here is started by the test from another working directory with a
clean environment, against the session stack's store and Redis.

Each runner consumes a queue prefix of its own (``BUCKETBRUSH_QUEUE_NAME``), so the session
stack's runner (which serves every capability) cannot take these jobs: a job that finishes was
run by the runner under test. Inputs live outside ``inbox/`` so the event source leaves them
alone; the test enqueues as the handler would.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.credentials import DEV_CERTS, DEV_KEY, dev_dir
from bucketbrush.deadletters import list_dead, purge_dead
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.manifest import Manifest, RunnerStatus
from bucketbrush.settings import Settings
from bucketbrush.status import status_report
from bucketbrush.store import Bucket
from infra.procs import proc_start_time, spawn, terminate, wait_until
from tests.helpers import png_bytes, wait_final


def only_the_three(settings: Settings) -> dict[str, str]:
    """The settings a runner on another machine gets: endpoint, keys, Redis URL (plus the
    bucket's name, which the test stack does not leave at its default). With Content
    Credentials on (the default) every runner also signs with the same identity: the key and
    certificate chain as PEM text in the environment (here the stack's development signer's,
    copied as values, not shared as files)."""
    env = {
        "BUCKETBRUSH_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "BUCKETBRUSH_S3_ACCESS_KEY": settings.s3_access_key or "",
        "BUCKETBRUSH_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "BUCKETBRUSH_REDIS_URL": settings.redis_url,
        "BUCKETBRUSH_BUCKET": settings.bucket,
    }
    if settings.content_credentials:
        folder = dev_dir(settings.state_dir)
        env |= {"BUCKETBRUSH_C2PA_SIGNING_KEY": (folder / DEV_KEY).read_text(),
                "BUCKETBRUSH_C2PA_SIGNING_CERTS": (folder / DEV_CERTS).read_text()}
    return env


@contextmanager
def remote_runner(settings: Settings, workdir: Path, args: list[str], extra: dict[str, str]) -> Iterator[Path]:
    """``bucketbrush runner ARGS`` in ``workdir`` with nothing but ``only_the_three`` and
    ``extra`` in its environment (no BUCKETBRUSH_STATE_DIR, no .env, no stack.json there)."""
    workdir.mkdir()
    ready = workdir / "ready"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "PYTHONUNBUFFERED": "1",
           **only_the_three(settings), **extra}
    cmd = [sys.executable, "-m", "bucketbrush.cli", "runner", *args, "--ready-file", str(ready)]
    popen, proc = spawn("remote-runner", cmd, workdir / "logs", env, cwd=workdir, inherit_env=False)
    try:
        wait_until("remote runner", ready.exists, 120, popen, Path(proc.log))
        yield Path(proc.log)
    finally:
        terminate(proc, 60)
    assert not list(workdir.glob(".bucketbrush*")), "the runner wrote local state"


def put_input(bucket: Bucket) -> ObjectRef:
    key = f"scale-test/{uuid.uuid4().hex}.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(), ContentType="image/png")
    return ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'))


def submit(bucket: Bucket, settings: Settings, recipe: str, params: dict, priority: str = "interactive") -> str:
    """As the handler does: a queued manifest, then the message on the job's queue."""
    ref = put_input(bucket)
    spec = JobSpec(job_id=uuid.uuid4().hex[:24], recipe=recipe, source=ref, input=ref, params=params,
                   priority=priority)
    bucket.write_manifest(Manifest(job_id=spec.job_id, status="queued", recipe=recipe, params=params,
                                   inputs=spec.inputs, timings={"queued_at": time.time()}))
    enqueue_job(build_broker(settings), settings, spec)
    return spec.job_id


def heartbeats_of(bucket: Bucket, queue_prefix: str) -> list[RunnerStatus]:
    return [b for _, b in bucket.heartbeats(bucket.layout.runners, RunnerStatus)
            if b.queue.startswith(f"{queue_prefix}-") and b.updated_at > time.time() - 60]


def test_a_runner_elsewhere_needs_only_endpoint_keys_and_redis(settings, bucket, tmp_path):
    prefix = f"remote-{uuid.uuid4().hex[:6]}"
    mine = settings.model_copy(update={"queue_name": prefix})
    # Two devices forced by a setting: one worker process per device, each pinned.
    extra = {"BUCKETBRUSH_QUEUE_NAME": prefix, "BUCKETBRUSH_RUNNER_DEVICE_INVENTORY": json.dumps(["0", "1"])}
    with remote_runner(settings, tmp_path / "elsewhere", ["--devices", "all", "--serve", "cpu"], extra):
        jobs = [submit(bucket, mine, "filter", {"style": s}) for s in ("noir", "sepia", "hdr", "cartoon")]
        done = [wait_final(bucket, j) for j in jobs]
        assert [m.status for m in done] == ["succeeded"] * 4, [m.error for m in done]
        beats = heartbeats_of(bucket, prefix)
        assert sorted(b.visible_devices for b in beats) == ["0", "1"]
        assert len({b.pid for b in beats}) == 2
        assert all(b.queue == f"{prefix}-cpu,{prefix}-cpu-bulk,{prefix}-any,{prefix}-any-bulk" for b in beats)
        children = [(b.pid, proc_start_time(b.pid)) for b in beats]
    # SIGTERM to the parent stopped every device worker too.
    assert all(proc_start_time(pid) != started for pid, started in children)


def test_interactive_jobs_go_ahead_of_bulk_ones(settings, bucket, tmp_path):
    prefix = f"prio-{uuid.uuid4().hex[:6]}"
    mine = settings.model_copy(update={"queue_name": prefix})
    extra = {"BUCKETBRUSH_QUEUE_NAME": prefix, "BUCKETBRUSH_TEST_RECIPES": "true"}
    with remote_runner(settings, tmp_path / "prio", [], extra):
        busy = submit(bucket, mine, "test-slow", {"seconds": 3, "steps": 30}, "bulk")
        deadline = time.monotonic() + 30
        while bucket.read_manifest(busy).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # While the runner is busy: three bulk jobs, then one interactive job.
        bulk = [submit(bucket, mine, "test-slow", {"seconds": 0, "steps": 1}, "bulk") for _ in range(3)]
        interactive = submit(bucket, mine, "test-slow", {"seconds": 0, "steps": 1})
        started = {j: wait_final(bucket, j).timings["started_at"] for j in [busy, *bulk, interactive]}
        # Bad input is dead-lettered in its own queue; the views over every queue find it.
        bad = submit(bucket, mine, "test-slow", {"seconds": -1}, "bulk")
        assert wait_final(bucket, bad).error.code == "invalid_params"
        broker = build_broker(mine)
        deadline = time.monotonic() + 30
        while not (letters := list_dead(broker, mine)):
            assert time.monotonic() < deadline, "the bad job was not dead-lettered"
            time.sleep(0.05)
    assert started[interactive] < min(started[j] for j in bulk)
    assert started[busy] < started[interactive]
    assert [(d.job_id, d.queue) for d in letters] == [(bad, f"{prefix}-any-bulk")]
    report = status_report(Bucket(mine), broker, prune=False)
    assert report["queues"][f"{prefix}-any-bulk"]["dead_lettered"] == 1 and report["queue"]["dead_lettered"] == 1
    assert [d.job_id for d in purge_dead(broker, mine)] == [bad] and list_dead(broker, mine) == []


def test_a_device_list_that_cannot_be_served_fails_with_the_reason(tmp_path):
    import subprocess

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "BUCKETBRUSH_RUNNER_DEVICE_INVENTORY": '["0"]'}
    done = subprocess.run([sys.executable, "-m", "bucketbrush.cli", "runner", "--devices", "0,3"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no device 3" in done.stderr, done.stderr
