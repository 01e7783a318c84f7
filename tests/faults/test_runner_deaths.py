"""Runners SIGKILLed mid-job, and a poison job that kills its runner every time
(tests/faults/scenarios.py). A supervisor thread starts a dead runner again, as compose's
``restart: always`` would; Dramatiq gives a dead runner's message back after its heartbeat timeout."""

from __future__ import annotations

import pytest

from tests.faults import scenarios

pytestmark = pytest.mark.e2e


def test_runner_killed_mid_job_three_times(chaos):
    result = scenarios.runner_kills(chaos, n=12, kills=3, seconds=2)
    assert result.evidence["restarts"] == 3
    assert result.lost == 0 and result.statuses == {"succeeded": result.submitted}, result
    assert result.written_twice == 0 and result.evidence["max_runs"] == 1
    # Each killed job began twice and finished once.
    assert set(result.evidence["interrupted"].values()) == {1}, result.evidence


def test_poison_job_fails_after_bounded_runner_deaths(chaos, chaos_settings):
    result = scenarios.poison_job(chaos, good=8)
    limit, poison = chaos_settings.max_runner_deaths, result.evidence["poison"]
    assert poison is not None and poison.status == "failed", poison
    assert poison.error.code == "runner_died" and not poison.error.retryable
    assert poison.interrupted == limit
    assert result.evidence["deaths"] == limit  # it killed a runner exactly that many times
    # The other jobs kept flowing, and the next one after it runs (its message is gone).
    assert [m.status for m in result.evidence["good"]] == ["succeeded"] * 8
    assert result.evidence["after"].status == "succeeded"
