"""Exactly one job per upload, whatever the transport does: duplicates, outages, lost events.

Real SeaweedFS, Redis, filer event source and runner process (the session ``stack``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape
from functions.events import S3Record
from functions.handler import Handler
from functions.sweep import ABANDONED_CLAIM_S, reconcile, sweep
from tests.helpers import drop, flush_pipeline, png_bytes, wait_final

pytestmark = pytest.mark.e2e

SEPIA = {"style": "sepia"}


@cache
def tiny_png() -> bytes:
    return png_bytes(landscape(32, 32))


@pytest.fixture(scope="module")
def handler(settings, bucket) -> Handler:
    return Handler.from_settings(settings)


@contextmanager
def event_source_stopped(stack) -> Iterator[None]:
    assert stack.stop_process("events")
    try:
        yield
    finally:
        stack.restart_process("events")


def process_log(stack, name: str) -> Path:
    return Path(stack.read_state().process(name).log)


def runs_of(stack, job_id: str) -> int:
    """How many times the runner process finished ``job_id`` (its own log says so)."""
    return process_log(stack, "runner-0").read_text().count(f"job {job_id} succeeded")


def cursor_file(stack, settings) -> Path:
    return stack.state_dir / f"cursor-{settings.bucket}.txt"


def wait_cursor_past(stack, settings, ts_ns: int, timeout: float = 30) -> None:
    """Until the event source has handled everything the filer logged before ``ts_ns``."""
    path = cursor_file(stack, settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(path.read_text()) >= ts_ns:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"event source cursor did not pass {ts_ns} in {timeout}s")


def enqueued_keys(report) -> set[str]:
    return {o.key for o in report.outcomes if o.action == "enqueued"}


def test_same_event_ten_times_at_once_is_one_job(stack, settings, bucket):
    key = "inbox/filter/tenfold/a.png"
    with event_source_stopped(stack):  # so the only deliveries are ours
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=tiny_png(), Metadata=SEPIA)
        put_ns = time.time_ns()
        ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
        record = S3Record.created("test", ref)
        # Each delivery its own handler, connection pool and S3 client, as separate processes would be.
        handlers = [Handler.from_settings(settings) for _ in range(10)]
        for h in handlers:
            h.bucket.s3  # noqa: B018 - build the client before the race
        barrier = threading.Barrier(len(handlers))
        outcomes = [None] * len(handlers)

        def deliver(i: int) -> None:
            barrier.wait()
            outcomes[i] = handlers[i].handle([record])[0]

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(handlers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(o.action for o in outcomes) == ["duplicate"] * 9 + ["enqueued"]
        assert {o.job_id for o in outcomes} == {job_id_for(ref)}
        first = wait_final(bucket, job_id_for(ref))
    # The restarted event source replays the real event too: still the same single job.
    wait_cursor_past(stack, settings, put_ns)
    flush_pipeline(bucket)  # had the replay enqueued a second run, it would have run by now
    after = bucket.read_manifest(first.job_id)
    assert first.status == "succeeded" and first.attempts == 1
    assert after.updated_at == first.updated_at
    assert runs_of(stack, first.job_id) == 1


def test_fifty_uploads_while_event_source_is_down(stack, bucket):
    with event_source_stopped(stack):
        job_ids = [drop(bucket, f"inbox/filter/outage/{i:02d}.png", tiny_png(), Metadata=SEPIA) for i in range(50)]
        assert all(bucket.read_manifest(j) is None for j in job_ids[:5])
    manifests = [wait_final(bucket, j, timeout=60) for j in job_ids]
    assert [m.status for m in manifests] == ["succeeded"] * 50
    assert {m.attempts for m in manifests} == {1}


def test_lost_events_are_recovered_by_the_sweep(stack, settings, bucket, handler):
    keys = [f"inbox/filter/lost/{i}.png" for i in range(8)]
    with event_source_stopped(stack):
        job_ids = [drop(bucket, k, tiny_png(), Metadata=SEPIA) for k in keys]
        # Lose the events outright: move the cursor past them, so the source never replays them.
        cursor_file(stack, settings).write_text(f"{time.time_ns()}\n")
    # The source is back and working (a fresh upload goes through) but never saw the others.
    canary = drop(bucket, "inbox/filter/lost/canary.png", tiny_png(), Metadata=SEPIA)
    assert wait_final(bucket, canary).status == "succeeded"
    assert all(bucket.read_manifest(j) is None for j in job_ids)

    # Younger than the grace period: their events may be in flight, so the sweep leaves them.
    # Each sweep here is scoped to this test's folder: the shared bucket holds other tests' inputs.
    report = sweep(settings, bucket, handler, grace_s=3600, under="inbox/filter/lost/")
    assert report.listed == report.young == len(keys) + 1 and not report.outcomes
    assert all(bucket.read_manifest(j) is None for j in job_ids)

    report = sweep(settings, bucket, handler, grace_s=0, under="inbox/filter/lost/")
    assert enqueued_keys(report) == set(keys), report.outcomes
    assert report.listed == len(keys) + 1 and report.has_manifest == 1  # the canary
    assert {o.job_id for o in report.outcomes if o.key in keys} == set(job_ids)
    manifests = [wait_final(bucket, j) for j in job_ids]
    assert [m.status for m in manifests] == ["succeeded"] * len(keys)
    assert all(m.inputs[0].key == k for m, k in zip(manifests, keys, strict=True))

    # Recovered jobs are jobs like any other: the next sweep leaves them alone.
    again = sweep(settings, bucket, handler, grace_s=0, under="inbox/filter/lost/")
    assert not again.outcomes and again.has_manifest == len(keys) + 1


def test_sweep_leaves_finished_jobs_alone(settings, bucket, handler):
    job_ids = [drop(bucket, f"inbox/filter/done/{i}.png", tiny_png(), Metadata=SEPIA) for i in range(3)]
    bucket.s3.put_object(Bucket=bucket.name, Key="jobs/sweep-done-spec.json",
                         Body=b'{"recipe": "filter", "input": "inbox/filter/done/0.png", "params": {"style": "noir"}}')
    job_ids.append("sweep-done-spec")
    before = [wait_final(bucket, j) for j in job_ids]
    assert all(m.status == "succeeded" for m in before)
    report = sweep(settings, bucket, handler, grace_s=0, under="inbox/filter/done/")
    assert not report.outcomes and report.listed == report.has_manifest == 3
    report = sweep(settings, bucket, handler, grace_s=0, under="jobs/sweep-done-spec.json")
    assert not report.outcomes and report.listed == report.has_manifest == 1
    flush_pipeline(bucket)
    assert [bucket.read_manifest(j).updated_at for j in job_ids] == [m.updated_at for m in before]


def test_sweep_releases_a_claim_whose_handler_died(stack, settings, bucket, handler):
    key = "inbox/filter/abandoned/a.png"
    body = png_bytes(landscape(32, 33))  # content no other test uploads
    job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=hashlib.md5(body).hexdigest()))
    # A handler claimed the job a while ago and died before writing the manifest.
    handler.claims.redis.set(handler.claims.key(job_id), "someone", ex=settings.dedupe_ttl_s - ABANDONED_CLAIM_S - 5)
    put_ns = time.time_ns()
    assert drop(bucket, key, body, Metadata=SEPIA) == job_id
    wait_cursor_past(stack, settings, put_ns)  # the real event arrived, and found the claim taken
    assert bucket.read_manifest(job_id) is None
    report = sweep(settings, bucket, handler, grace_s=0, under="inbox/filter/abandoned/")
    assert report.reclaimed == 1 and enqueued_keys(report) == {key}
    assert wait_final(bucket, job_id).status == "succeeded"


def test_running_job_past_its_deadline_is_failed_as_timed_out(settings, bucket, handler):
    now = time.time()
    ref = ObjectRef(bucket=bucket.name, key="inbox/filter/ghost/a.png")
    dead = Manifest(job_id="sweep-dead-runner", status="running", recipe="filter", inputs=[ref],
                    timings={"queued_at": now - 10_000, "started_at": now - 9_999})
    alive = Manifest(job_id="sweep-live-runner", status="running", recipe="filter", inputs=[ref],
                     timings={"queued_at": now - 5, "started_at": now - 4})
    bucket.write_manifest(dead)
    bucket.write_manifest(alive)
    report = reconcile(settings, bucket, handler, grace_s=3600, timeout_margin_s=0)
    # At least ours: the shared bucket may hold other tests' overdue jobs (failed here too).
    assert report.timed_out >= 1
    assert dead.job_id not in {o.job_id for o in report.outcomes}  # failed, never re-queued by the sweep
    failed = bucket.read_manifest(dead.job_id)
    assert failed.status == "failed" and failed.error.code == "timed_out" and failed.error.retryable
    assert bucket.read_manifest(alive.job_id).status == "running"
    # Final now: the next pass leaves it as it is (and a redelivery would be skipped by the runner).
    again = reconcile(settings, bucket, handler, grace_s=3600, timeout_margin_s=0)
    assert dead.job_id not in {o.job_id for o in again.outcomes}
    assert bucket.read_manifest(dead.job_id).updated_at == failed.updated_at
