"""Outages of the parts around the runner: Redis unavailable (data intact), SeaweedFS
restarted mid-burst, the event source SIGKILLed mid-stream. Nothing is lost, nothing runs twice
(tests/faults/scenarios.py)."""

from __future__ import annotations

import pytest

from tests.faults import scenarios

pytestmark = pytest.mark.e2e


def test_redis_unavailable_http_503_source_retries_from_cursor(chaos):
    result = scenarios.redis_unavailable(chaos, n=10, down_s=10)
    assert result.evidence["http_status"] == 503  # the sender keeps the event and retries
    assert result.evidence["http_retry_status"] == 200
    assert result.evidence["cursor_held"]  # the source did not move past what it could not enqueue
    assert result.lost == 0 and result.statuses == {"succeeded": result.submitted}, result
    assert result.written_twice == 0 and result.evidence["max_runs"] == 1


def test_seaweedfs_restarted_mid_burst(chaos):
    result = scenarios.seaweedfs_restarted(chaos, n=16, seconds=1)
    assert result.lost == 0, result
    # Each ends succeeded, or failed as retryable (a transient storage error on its last attempt).
    assert set(result.statuses) <= {"succeeded", "failed"}, result
    assert set(result.codes) <= {"transient_error"}, result
    assert result.written_twice == 0 and result.evidence["max_runs"] == 1


def test_event_source_killed_mid_stream(chaos):
    result = scenarios.event_source_killed(chaos, n=20)
    assert result.lost == 0 and result.statuses == {"succeeded": result.submitted}, result
    assert result.written_twice == 0 and result.evidence["max_runs"] == 1
    assert result.evidence["attempts"] == {1}
    # A job whose claim the killed source left is recovered by the sweep, not by a replay.


def test_slow_cutting_store(chaos):
    result = scenarios.slow_store(chaos, n=12, latency_s=0.05, cut_every=4)
    assert result.evidence["cuts"] > 0  # the fault happened
    assert result.lost == 0, result
    assert set(result.statuses) <= {"succeeded", "failed"}, result
    assert set(result.codes) <= {"transient_error"}, result  # storage errors surface as retryable
    assert result.evidence["longest_s"] < result.evidence["limit_s"]
    assert result.written_twice == 0 and result.evidence["max_runs"] == 1
