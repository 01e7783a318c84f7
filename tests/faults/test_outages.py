"""Outages of the parts around the runner: Redis unavailable (data intact), SeaweedFS
restarted mid-burst, the event source SIGKILLed mid-stream. Nothing is lost, nothing runs twice."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from bucketbrush.jobs import ObjectRef, job_id_for
from functions.handler import Handler
from functions.http import create_app
from functions.sweep import reconcile
from tests.faults.chaos import (
    burst,
    kill,
    redis_outage,
    report,
    restart_seaweedfs,
    runs_logged,
    wait_all_final,
    wait_for,
)
from tests.helpers import png_bytes
from tests.test_http import minio_event, running

pytestmark = pytest.mark.e2e

TOKEN = "tok-faults-6b1d"


def cursor_ns(stack) -> int:
    return int((stack.state_dir / f"cursor-{stack.settings.bucket}.txt").read_text())


def log_size(stack, name: str) -> int:
    return (stack.logs / f"{name}.log").stat().st_size


def logged_since(stack, name: str, offset: int) -> str:
    return (stack.logs / f"{name}.log").read_bytes()[offset:].decode(errors="replace")


def test_redis_unavailable_http_503_source_retries_from_cursor(chaos, chaos_settings, chaos_bucket):
    settings = chaos_settings.model_copy(update={"functions_token": SecretStr(TOKEN)})
    bucket = chaos_bucket
    before = burst(bucket, 6, seconds=0.2)
    wait_all_final(bucket, before, timeout=60)
    app = create_app(settings, Handler.from_settings(settings))
    events_log = log_size(chaos, "events")
    put = bucket.s3.put_object(Bucket=bucket.name, Key="inbox/filter/outage/http.png", Body=png_bytes(),
                               Metadata={"style": "sepia"})
    ref = ObjectRef(bucket=bucket.name, key="inbox/filter/outage/http.png", etag=put["ETag"].strip('"'))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        outage_started = threading.Event()
        during: dict[str, object] = {}

        def while_down() -> None:
            outage_started.wait(30)
            wait_for("redis down", lambda: not _redis_answers(settings.redis_url), 10)
            first = burst(bucket, 1, seconds=0.2, tag="during-outage-first")
            start_ns = time.time_ns()  # after the first upload's event was logged by the filer
            during["jobs"] = first + burst(bucket, 9, seconds=0.2, tag="during-outage")
            during["http"] = client.post("/events/minio", json=minio_event(ref),
                                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code
            # The source tried, failed, and will replay from its cursor, which stays before them.
            wait_for("the source to fail", lambda: "restarting from the cursor" in logged_since(
                chaos, "events", events_log), 8)
            during["cursor_before_uploads"] = cursor_ns(chaos) < start_ns

        thread = threading.Thread(target=while_down)
        thread.start()
        outage_started.set()
        redis_outage(chaos, down_s=10)
        repaired = time.time()
        thread.join(30)
        assert during["http"] == 503  # the sender keeps the event and retries
        assert during["cursor_before_uploads"]
        retried = client.post("/events/minio", json=minio_event(ref), headers={"Authorization": f"Bearer {TOKEN}"})
        assert retried.status_code == 200, retried.text
    job_ids = [*during["jobs"], job_id_for(ref)]
    seen = wait_all_final(bucket, job_ids, timeout=120)
    result = report("redis unavailable", bucket, job_ids, seen, repaired)
    assert result.lost == 0 and result.statuses == {"succeeded": len(job_ids)}, result
    assert result.written_twice == 0
    assert all(runs_logged(chaos, j) == 1 for j in job_ids)


def _idle(bucket, handler, settings) -> bool:
    """No job message left in the broker and no runner on a job."""
    from bucketbrush.broker import job_ids_in_broker

    try:
        busy = [r for r in bucket.runner_statuses() if r.is_fresh() and r.current_job]
    except (ClientError, BotoCoreError):
        return False
    return not busy and not job_ids_in_broker(handler.claims.redis, settings)


def _redis_answers(url: str) -> bool:
    from infra.procs import redis_answers

    return redis_answers(url)


def test_seaweedfs_restarted_mid_burst(chaos, chaos_bucket):
    bucket = chaos_bucket
    job_ids = burst(bucket, 16, seconds=1)
    wait_for("a job running", lambda: any((m := bucket.read_manifest(j)) and m.status == "running"
                                          for j in job_ids), 60)
    restart_seaweedfs(chaos)
    repaired = time.time()
    # SIGKILLed, the filer loses the tail of its metadata log it had not flushed: those uploads'
    # events never come. Once the runners are idle, the sweep (every sweep_interval_s in the
    # event source) finds them, and requeues a job whose enqueue the outage cut short.
    settings = chaos.settings_for_clients()
    handler = Handler.from_settings(settings)
    wait_for("runners idle", lambda: _idle(bucket, handler, settings), 120, interval=0.5)
    swept = reconcile(settings, bucket, handler, grace_s=0)
    seen = wait_all_final(bucket, job_ids, timeout=180)
    result = report("seaweedfs restarted", bucket, job_ids, seen, repaired,
                    notes=f"sweep: {swept.enqueued} enqueued, {swept.requeued} requeued")
    assert result.lost == 0, (result, swept.summary())
    # Each ends succeeded, or failed as retryable (a transient storage error on its last attempt).
    for manifest in seen.values():
        assert manifest.status == "succeeded" or (manifest.status == "failed" and manifest.error.retryable), manifest
    assert result.written_twice == 0


def test_event_source_killed_mid_stream(chaos, chaos_bucket):
    bucket = chaos_bucket
    first = burst(bucket, 10, seconds=0.1, tag="stream-a")
    kill(chaos, "events")
    # Uploads go on while no source runs; then it starts again from its cursor.
    second = burst(bucket, 10, seconds=0.1, tag="stream-b")
    chaos.restart_process("events")
    repaired = time.time()
    job_ids = first + second
    seen = wait_all_final(bucket, job_ids, timeout=120)
    result = report("event source SIGKILL", bucket, job_ids, seen, repaired)
    assert result.lost == 0 and result.statuses == {"succeeded": len(job_ids)}, result
    assert result.written_twice == 0
    assert all(runs_logged(chaos, j) == 1 for j in job_ids)
    assert {m.attempts for m in seen.values()} == {1}
