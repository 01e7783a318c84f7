"""Runners killed mid-job (SIGKILL), and a poison job that kills its runner every time.

A supervisor thread starts a dead runner again, as compose's ``restart: always`` would.
Dramatiq gives a dead runner's message back after the broker's heartbeat timeout.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.chaos import (
    burst,
    kill_runner_mid_job,
    redelivery_s,
    report,
    runs_logged,
    supervised,
    wait_all_final,
)

pytestmark = pytest.mark.e2e


def test_runner_killed_mid_job_three_times(chaos, chaos_settings, chaos_bucket):
    bucket = chaos_bucket
    job_ids = burst(bucket, 12, seconds=2)
    killed: set[str] = set()
    with supervised(chaos, ["runner-0", "runner-1"]) as restarts:
        for i in range(3):
            name = f"runner-{i % 2}"
            killed.add(kill_runner_mid_job(chaos, bucket, name, killed, timeout=redelivery_s(chaos_settings)))
        repaired = time.time()
        seen = wait_all_final(bucket, job_ids, timeout=2 * redelivery_s(chaos_settings) + 60)
    result = report("runner SIGKILL x3", bucket, job_ids, seen, repaired)
    assert sum(restarts.values()) == 3
    assert result.lost == 0 and result.statuses == {"succeeded": len(job_ids)}, result
    assert result.written_twice == 0
    for job in killed:
        manifest = seen[job]
        assert manifest.interrupted == 1, manifest  # began twice, finished once
    assert all(runs_logged(chaos, j) == 1 for j in job_ids)


def test_poison_job_fails_after_bounded_runner_deaths(chaos, chaos_settings, chaos_bucket):
    bucket, limit = chaos_bucket, chaos_settings.max_runner_deaths
    with supervised(chaos, ["runner-0", "runner-1"]) as restarts:
        [poison] = burst(bucket, 1, recipe="test-crash")
        good = burst(bucket, 8, seconds=0.3)
        seen = wait_all_final(bucket, [poison, *good], timeout=(limit + 1) * redelivery_s(chaos_settings))
        # The poison message is gone: the next job runs and no runner dies again.
        [after] = burst(bucket, 1, seconds=0.1)
        assert wait_all_final(bucket, [after], timeout=60)[after].status == "succeeded"
    manifest = seen[poison]
    assert manifest is not None and manifest.status == "failed", manifest
    assert manifest.error.code == "runner_died" and not manifest.error.retryable
    assert manifest.interrupted == limit
    assert sum(restarts.values()) == limit  # it killed a runner exactly that many times
    # The other jobs kept flowing.
    assert [seen[j].status for j in good] == ["succeeded"] * len(good)
