"""Redis killed and restarted empty mid-burst: the sweep requeues the jobs whose message was
lost, and never one whose message still exists (functions/requeue.py)."""

from __future__ import annotations

import json

import pytest

from bucketbrush.broker import build_broker, job_ids_in_broker
from bucketbrush.routing import queue_for, redis_key
from functions.handler import Handler
from functions.sweep import reconcile
from tests.faults import scenarios
from tests.faults.chaos import burst, runs_logged, wait_all_final, wait_for

pytestmark = pytest.mark.e2e


def test_redis_restarted_empty_mid_burst_loses_nothing(chaos):
    result = scenarios.redis_restarted_empty(chaos, n=24, seconds=0.5)
    evidence = result.evidence
    assert evidence["emptied"]  # every job message was gone
    assert evidence["stranded"], "the burst finished before Redis went away: nothing was at risk"
    assert evidence["requeued"] == evidence["stranded"]
    assert result.lost == 0 and result.statuses == {"succeeded": result.submitted}, result
    assert result.written_twice == 0 and evidence["max_runs"] == 1
    assert evidence["requeued_again"] == 0  # every job final: the next pass requeues nothing


def test_sweep_requeues_only_jobs_whose_message_is_gone(chaos, chaos_settings, chaos_bucket):
    settings, bucket = chaos_settings, chaos_bucket
    handler = Handler.from_settings(settings)
    runners = [p.name for p in chaos.read_state().processes if p.name.startswith("runner-")]
    for name in runners:
        assert chaos.stop_process(name)
    try:
        job_ids = burst(bucket, 6, seconds=0.1)
        wait_for("6 queued manifests",
                 lambda: list(scenarios.statuses(bucket, job_ids).values()) == ["queued"] * 6, 60)
        client = handler.claims.redis
        wait_for("6 messages", lambda: job_ids_in_broker(client, settings) >= set(job_ids), 30)
        # Every message is there (waiting): the sweep leaves every job alone.
        assert reconcile(settings, bucket, handler, grace_s=0).requeued == 0
        # One message lost (a queue flushed by hand, a failover that dropped a write).
        prefix = redis_key(settings, queue_for(settings, "test-slow", "bulk"))  # drop-folder uploads
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
    client = build_broker(chaos_settings).client
    prefix = redis_key(chaos_settings, queue_for(chaos_settings, "test-slow"))
    client.hset(f"{prefix}.DQ.msgs", "m-delayed", json.dumps({"args": [{"job_id": "delayed-job"}]}))
    try:
        assert "delayed-job" in job_ids_in_broker(client, chaos_settings)
    finally:
        client.hdel(f"{prefix}.DQ.msgs", "m-delayed")
