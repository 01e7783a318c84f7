"""Redis killed and restarted empty mid-burst: the sweep requeues the jobs whose message was
lost, and never one whose message still exists (functions/requeue.py)."""

from __future__ import annotations

import json

import pytest
import redis as redis_lib

from bucketbrush.broker import job_ids_in_broker
from functions.handler import Handler
from functions.sweep import reconcile
from tests.faults.chaos import burst, report, restart_redis_empty, runs_logged, wait_all_final, wait_for

pytestmark = pytest.mark.e2e


def statuses(bucket, job_ids):
    return {j: (m.status if (m := bucket.read_manifest(j)) else None) for j in job_ids}


def runners_idle(bucket) -> bool:
    return all(r.current_job is None for r in bucket.runner_statuses() if r.is_fresh())


def test_redis_restarted_empty_mid_burst_loses_nothing(chaos, chaos_settings, chaos_bucket):
    settings, bucket = chaos_settings, chaos_bucket
    job_ids = burst(bucket, 24, seconds=0.5)
    # Mid-burst: some jobs done, most still waiting in Redis.
    wait_for("3 jobs final", lambda: sum(s in ("succeeded",) for s in statuses(bucket, job_ids).values()) >= 3, 90)
    restart_redis_empty(chaos)
    handler = Handler.from_settings(settings)
    assert job_ids_in_broker(handler.claims.redis, settings) == set()  # every job message is gone
    # The runners finish what they held in memory, then nothing moves: the gap this closes.
    wait_for("runners idle", lambda: runners_idle(bucket) and "running" not in statuses(bucket, job_ids).values(),
             60, interval=0.3)
    stranded = {j for j, s in statuses(bucket, job_ids).items() if s == "queued"}
    assert stranded, "the burst finished before Redis went away: nothing was at risk"
    assert job_ids_in_broker(handler.claims.redis, settings) == set()

    swept = reconcile(settings, bucket, handler, grace_s=0)
    requeued = {o.job_id for o in swept.outcomes if o.reason == "requeued"}
    assert requeued == stranded, swept.summary()
    seen = wait_all_final(bucket, job_ids, timeout=120)
    result = report("redis restarted empty", bucket, job_ids, seen, repaired_at=0)
    assert result.lost == 0 and result.statuses == {"succeeded": len(job_ids)}, result
    assert result.written_twice == 0
    assert all(runs_logged(chaos, j) == 1 for j in job_ids)
    # Every job is final now: the next pass finds nothing to requeue.
    assert reconcile(settings, bucket, handler, grace_s=0).requeued == 0


def test_sweep_requeues_only_jobs_whose_message_is_gone(chaos, chaos_settings, chaos_bucket):
    settings, bucket = chaos_settings, chaos_bucket
    handler = Handler.from_settings(settings)
    runners = [p.name for p in chaos.read_state().processes if p.name.startswith("runner-")]
    for name in runners:
        assert chaos.stop_process(name)
    try:
        job_ids = burst(bucket, 6, seconds=0.1)
        wait_for("6 queued manifests", lambda: list(statuses(bucket, job_ids).values()) == ["queued"] * 6, 60)
        client = handler.claims.redis
        wait_for("6 messages", lambda: job_ids_in_broker(client, settings) >= set(job_ids), 30)
        # Every message is there (waiting): the sweep leaves every job alone.
        assert reconcile(settings, bucket, handler, grace_s=0).requeued == 0
        # One message lost (a queue flushed by hand, a failover that dropped a write).
        prefix = f"{settings.broker_namespace}:{settings.queue_name}"
        lost = job_ids[2]
        for message_id, raw in client.hgetall(f"{prefix}.msgs").items():
            if json.loads(raw)["args"][0]["job_id"] == lost:
                client.hdel(f"{prefix}.msgs", message_id)
                client.lrem(prefix, 0, message_id)
        assert lost not in job_ids_in_broker(client, settings)
        swept = reconcile(settings, bucket, handler, grace_s=0)
        assert swept.requeued == 1 and [o.job_id for o in swept.outcomes if o.reason == "requeued"] == [lost]
        # A second sweeper right after: the message exists again, nothing more is sent.
        assert reconcile(settings, bucket, handler, grace_s=0).requeued == 0
        copies = [m for m in client.hvals(f"{prefix}.msgs") if json.loads(m)["args"][0]["job_id"] == lost]
        assert len(copies) == 1
    finally:
        for name in runners:
            chaos.restart_process(name)
    seen = wait_all_final(bucket, job_ids, timeout=60)
    assert {m.status for m in seen.values()} == {"succeeded"}
    assert all(runs_logged(chaos, j) == 1 for j in job_ids)


def test_a_job_message_in_the_delay_queue_counts_as_existing(chaos_settings):
    """Retries wait in Dramatiq's delay queue (``.DQ.msgs``): still the job's message."""
    from bucketbrush.broker import build_broker

    broker = build_broker(chaos_settings)
    prefix = f"{chaos_settings.broker_namespace}:{chaos_settings.queue_name}"
    client: redis_lib.Redis = broker.client
    client.hset(f"{prefix}.DQ.msgs", "m-delayed", json.dumps({"args": [{"job_id": "delayed-job"}]}))
    try:
        assert "delayed-job" in job_ids_in_broker(client, chaos_settings)
    finally:
        client.hdel(f"{prefix}.DQ.msgs", "m-delayed")
