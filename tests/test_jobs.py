"""Job lifecycle end to end on SeaweedFS + Redis: management, cancel, timeouts, gallery, status."""

from __future__ import annotations

import json
import time

import pytest

from bucketbrush import gallery
from bucketbrush.broker import build_broker
from bucketbrush.management import (
    InvalidCursor,
    InvalidState,
    JobNotFound,
    cancel_job,
    delete_job,
    download_outputs,
    get_job,
    list_jobs,
    retry_job,
)
from bucketbrush.status import status_report
from tests.helpers import drop, flush_pipeline, png_bytes, wait_final

pytestmark = pytest.mark.e2e

SLOW = {"seconds": 60}  # test-slow: a minute by construction (cancelled or timed out long before)


@pytest.fixture(scope="module")
def broker(settings):
    return build_broker(settings)


def test_list_filters_and_pages(bucket):
    ok = [drop(bucket, f"inbox/filter/list/{i}.png", png_bytes(), Metadata={"style": "sepia"}) for i in range(3)]
    bad = drop(bucket, "inbox/filter/list/bad.png", b"nope")
    for job_id in [*ok, bad]:
        wait_final(bucket, job_id)
    failed = list_jobs(bucket, status="failed", limit=1000).jobs
    assert bad in {m.job_id for m in failed} and not set(ok) & {m.job_id for m in failed}
    seen, cursor, pages = [], None, 0
    while True:
        page = list_jobs(bucket, limit=2, cursor=cursor)
        seen += [m.job_id for m in page.jobs]
        pages += 1
        if not (cursor := page.next_cursor):
            break
    assert set(ok) | {bad} <= set(seen) and len(seen) == len(set(seen)) and pages >= 2
    assert list_jobs(bucket, recipe="never-used", limit=1000).jobs == []
    with pytest.raises(InvalidCursor):
        list_jobs(bucket, cursor="not-a-cursor")


def test_show_download_delete(bucket, broker, tmp_path):
    key = "inbox/filter/del/scene.png"
    job_id = drop(bucket, key, png_bytes(), Metadata={"style": "noir"})
    manifest = wait_final(bucket, job_id)
    assert get_job(bucket, job_id).job_id == job_id
    [path] = download_outputs(bucket, job_id, tmp_path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    deleted = delete_job(bucket, broker, job_id)
    assert key in deleted and manifest.outputs[0].key in deleted
    for k in deleted:
        assert not bucket.exists(k)
    with pytest.raises(JobNotFound):
        delete_job(bucket, broker, job_id)
    # The same content uploaded again after a delete is processed again.
    assert drop(bucket, key, png_bytes(), Metadata={"style": "noir"}) == job_id
    assert wait_final(bucket, job_id).status == "succeeded"


def test_retry_only_failed_or_cancelled(bucket, broker):
    job_id = drop(bucket, "inbox/filter/retry/x.png", png_bytes(), Metadata={"params": '{"style": "nope"}'})
    failed = wait_final(bucket, job_id)
    assert failed.error.code == "invalid_params"
    with pytest.raises(InvalidState):
        cancel_job(bucket, job_id)
    # Fix the input's metadata by copying it over itself, then retry the same job id.
    bucket.s3.copy_object(Bucket=bucket.name, Key="inbox/filter/retry/x.png",
                          CopySource={"Bucket": bucket.name, "Key": "inbox/filter/retry/x.png"},
                          Metadata={"style": "sepia"}, MetadataDirective="REPLACE")
    # Same bytes, same key: the same job, so the copy's own event runs nothing.
    flush_pipeline(bucket)  # the copy's event has been handled
    assert bucket.read_manifest(job_id).updated_at == failed.updated_at
    retried = retry_job(bucket, broker, job_id)
    assert retried.status == "queued"
    done = wait_final(bucket, job_id)
    assert done.status == "succeeded" and done.params["style"] == "sepia"
    with pytest.raises(InvalidState, match="succeeded"):
        retry_job(bucket, broker, job_id)
    with pytest.raises(JobNotFound):
        retry_job(bucket, broker, "0" * 24)


def wait_running(bucket, job_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (m := bucket.read_manifest(job_id)) is not None and m.status == "running":
            return m
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not running after {timeout}s: {bucket.read_manifest(job_id)}")


def test_cancel_a_running_then_a_queued_job(bucket):
    busy = drop(bucket, "inbox/test-slow/cancel/busy.png", png_bytes(), Metadata={"seconds": "60"})
    # The one runner (one worker thread) is busy for a minute before the victim is even uploaded:
    # the victim must stay queued. (Dropped together, the two events are handled in parallel and
    # go to different queues, so the victim could be taken first.)
    wait_running(bucket, busy)
    victim = drop(bucket, "inbox/filter/cancel/victim.png", png_bytes(), Metadata={"style": "sepia"})
    deadline = time.monotonic() + 20
    while (m := bucket.read_manifest(victim)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m is not None and m.status == "queued"
    cancel_job(bucket, victim)
    cancel_job(bucket, busy)
    stopped = wait_final(bucket, busy)
    assert stopped.status == "cancelled" and stopped.outputs == []
    assert 0 < stopped.progress.step < stopped.progress.total  # stopped between steps, mid-run
    cancelled = wait_final(bucket, victim)
    assert cancelled.status == "cancelled" and cancelled.error.code == "cancelled"
    assert cancelled.outputs == [] and "before it started" in cancelled.error.message


@pytest.mark.parametrize(("job_id", "spec"), [
    # The job's own limit, in its spec.
    ("too-slow", {"recipe": "test-slow", "params": SLOW, "time_limit_s": 1}),
    # The per-recipe limit from settings (the test stack sets test-slow-limited: 2 s).
    ("too-slow-by-settings", {"recipe": "test-slow-limited", "params": SLOW}),
])
def test_time_limit_ends_job_as_timed_out(bucket, job_id, spec):
    drop(bucket, "inbox/filter/slow/in.png", png_bytes(), Metadata={"style": "nope"})
    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json",
                         Body=json.dumps({**spec, "input": "inbox/filter/slow/in.png"}))
    manifest = wait_final(bucket, job_id, timeout=90)
    assert manifest.status == "failed" and manifest.error.code == "timed_out", manifest.error
    limit = spec.get("time_limit_s", 2)
    assert f"time limit of {limit} s" in manifest.error.message
    assert manifest.outputs == [] and manifest.error.retryable is False
    # The limit cut a one-minute job short (an upper bound with a wide margin: not a timing test).
    assert manifest.timings["finished_at"] - manifest.timings["started_at"] < 30
    # The worker is free again.
    after = drop(bucket, "inbox/filter/slow/after.png", png_bytes(), Metadata={"style": "sepia"})
    assert wait_final(bucket, after).status == "succeeded"
    assert get_job(bucket, job_id).attempts == 1


def test_gallery_soft_delete_restore_purge(bucket):
    gallery.enable_versioning(bucket)
    job_id = drop(bucket, "inbox/filter/gallery/x.png", png_bytes(), Metadata={"style": "hdr"})
    manifest = wait_final(bucket, job_id)
    out = manifest.outputs[0].key
    gallery.soft_delete(bucket, job_id)
    assert not bucket.exists(out) and bucket.read_manifest(job_id) is None
    assert not bucket.exists("inbox/filter/gallery/x.png")  # or the sweep would run it again
    assert job_id in gallery.list_deleted(bucket)
    restored = gallery.restore(bucket, job_id)
    assert out in restored and bucket.exists(out) and bucket.exists("inbox/filter/gallery/x.png")
    assert get_job(bucket, job_id).status == "succeeded"
    assert job_id not in gallery.list_deleted(bucket)
    with pytest.raises(JobNotFound):
        gallery.restore(bucket, job_id)
    assert gallery.purge(bucket, job_id) >= 2
    assert bucket.read_manifest(job_id) is None and job_id not in gallery.list_deleted(bucket)
    versions = bucket.s3.list_object_versions(Bucket=bucket.name, Prefix=f"outputs/{job_id}/")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


def test_status_shows_runner_heartbeat_and_queue(bucket, broker):
    flush_pipeline(bucket)  # an earlier test's failed message is dead-lettered before counting
    before = status_report(bucket, broker)["queue"]["dead_lettered"]
    bad = drop(bucket, "inbox/filter/status/bad.png", b"not an image")
    assert wait_final(bucket, bad).error.code == "invalid_image"
    flush_pipeline(bucket)  # the runner has acked the failed message by now
    # The heartbeat publishes the runner's counters every heartbeat_interval_s: wait for a beat
    # that counts the canary.
    deadline = time.monotonic() + 3 * bucket.settings.heartbeat_interval_s + 5
    while True:
        report = status_report(bucket, broker)
        [runner] = report["runners"]
        if runner["jobs_done"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert runner["stale"] is False and runner["jobs_done"] >= 1 and runner["device"] == "cpu"
    assert runner["device_name"]  # the CPU's model name
    assert set(report["queue"]) >= {"ready", "delayed", "dead_lettered"}
    assert report["queue"]["dead_lettered"] == before + 1  # failed, not retried: dead-lettered once
