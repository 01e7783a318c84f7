"""Per-tenant quotas: counted atomically in (the stack's real) Redis, enforced by the handler,
freed by the runner; an over-quota job is a failed manifest that says which limit and when."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from bucketbrush.errors import QuotaExceeded
from bucketbrush.management import cancel_job
from bucketbrush.quotas import Quotas
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from bucketbrush.tenants import Limits
from tests.helpers import png_bytes, wait_final
from tests.test_tenants import tenant

HOUR = 3600.0


@pytest.fixture
def quotas(stack: Any, settings: Settings) -> Quotas:
    """Quotas in the stack's Redis, under a namespace of their own."""
    own = settings.model_copy(update={"broker_namespace": f"quota-test-{uuid.uuid4().hex[:8]}"})
    return Quotas(redis.Redis.from_url(own.redis_url), own)


def test_concurrent_admissions_never_pass_the_limit(quotas: Quotas) -> None:
    limits, admitted, refused = Limits(max_concurrent=3), [], []
    start = threading.Barrier(24)

    def submit(n: int) -> None:
        start.wait()
        try:
            quotas.admit("acme", f"job{n}", recipe="filter", size=10, limits=limits)
            admitted.append(n)
        except QuotaExceeded as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and len(refused) == 21
    assert "max_concurrent: 3 of 3" in refused[0] and "when one of them finishes" in refused[0]
    assert quotas.usage("acme").active == 3
    # The same job again counts nothing; a finished job frees its slot.
    quotas.admit("acme", f"job{admitted[0]}", recipe="filter", size=10, limits=limits)
    with pytest.raises(QuotaExceeded):
        quotas.admit("acme", "late", recipe="filter", size=10, limits=limits)
    quotas.release("acme", f"job{admitted[0]}")
    quotas.admit("acme", "late", recipe="filter", size=10, limits=limits)
    # Other tenants have counters of their own.
    quotas.admit("other", "x", recipe="filter", size=10, limits=limits)


def test_jobs_per_hour_resets_at_the_next_hour(quotas: Quotas) -> None:
    limits, now = Limits(jobs_per_hour=2), 1_800_000_000.0 + 600  # 10 minutes into an hour
    for n in range(2):
        quotas.admit("acme", f"j{n}", recipe="filter", size=0, limits=limits, now=now)
        quotas.release("acme", f"j{n}")  # finished: only the hourly count limits
    with pytest.raises(QuotaExceeded) as over:
        quotas.admit("acme", "j2", recipe="filter", size=0, limits=limits, now=now)
    assert "jobs_per_hour: 2 of 2" in str(over.value)
    assert "resets at 2027-01-15T09:00:00Z (in 3000 s)" in str(over.value)
    quotas.admit("acme", "j2", recipe="filter", size=0, limits=limits, now=now + HOUR)


def test_input_bytes_per_day_and_recipes(quotas: Quotas) -> None:
    limits, now = Limits(input_bytes_per_day=1000, recipes=["filter"]), 1_800_000_000.0
    quotas.admit("acme", "a", recipe="filter", size=600, limits=limits, now=now)
    with pytest.raises(QuotaExceeded) as over:
        quotas.admit("acme", "b", recipe="filter", size=600, limits=limits, now=now)
    assert "input_bytes_per_day: 600 of 1,000 bytes today, this input is 600" in str(over.value)
    assert "resets at 2027-01-16T00:00:00Z" in str(over.value)
    quotas.admit("acme", "c", recipe="filter", size=400, limits=limits, now=now)  # exactly to the limit
    with pytest.raises(QuotaExceeded, match="may not run recipe 'upscale'.*allowed: filter"):
        quotas.admit("acme", "d", recipe="upscale", size=0, limits=limits, now=now)
    assert quotas.usage("acme", now=now).input_bytes_today == 1000  # a refused job counts nothing


def test_the_handler_enforces_a_tenants_limits(stack: Any, settings: Settings) -> None:
    with tenant(settings, "q", "--max-concurrent", "1", "--recipes", "filter,test-slow") as creds:
        run_limited_jobs(settings, creds["tenant"])


def run_limited_jobs(settings: Settings, tenant: str) -> None:
    tb = Bucket(settings.model_copy(update={"tenant": tenant}))
    # A spec's input is an upload or an output; an output's folder starts no job of its own.
    image = f"{tb.layout.space}outputs/fixtures/in.png"
    tb.s3.put_object(Bucket=tb.name, Key=image, Body=png_bytes())

    def spec(job_id: str, recipe: str, **params: object) -> None:
        tb.s3.put_object(Bucket=tb.name, Key=tb.layout.jobs + f"{job_id}.json",
                         Body=json.dumps({"recipe": recipe, "input": image, "params": params}).encode())

    spec("slow", "test-slow", seconds=60, steps=600)
    assert wait_running(tb, "slow").tenant == tenant
    spec("second", "filter", style="noir")
    second = wait_final(tb, "second")
    assert (second.status, second.error.code) == ("failed", "quota_exceeded")
    assert "max_concurrent: 1 of 1" in second.error.message and "when one of them finishes" in second.error.message
    assert second.recipe == "filter" and not second.outputs
    spec("upscaled", "upscale")
    refused = wait_final(tb, "upscaled")
    assert refused.error.code == "quota_exceeded" and "may not run recipe 'upscale'" in refused.error.message
    # The slow job's end (here: cancelled) frees the slot: the next job runs.
    cancel_job(tb, "slow")
    assert wait_final(tb, "slow").status == "cancelled"
    spec("third", "filter", style="noir")
    assert wait_final(tb, "third").status == "succeeded"


def wait_running(bucket: Bucket, job_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = bucket.read_manifest(job_id)
        if manifest is not None and manifest.status == "running":
            return manifest
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never ran: {bucket.read_manifest(job_id)}")


def test_the_sweep_frees_the_slot_of_a_job_that_ended_without_its_runner(stack: Any, settings: Settings) -> None:
    """A job the reaper failed (its runner died) never had its slot freed by a runner: the
    reconciling sweep sees its final manifest and frees it."""
    from bucketbrush.errors import TimedOut
    from bucketbrush.manifest import ErrorInfo, Manifest
    from functions.handler import Handler
    from functions.sweep import reconcile

    limits = Limits(max_concurrent=1)
    with tenant(settings, "s") as creds:
        name = creds["tenant"]
        handler = Handler.from_settings(settings)
        handler.quotas.admit(name, "ghost", recipe="filter", size=0, limits=limits)
        Bucket(settings).for_tenant(name).write_manifest(Manifest(
            job_id="ghost", status="failed", recipe="filter", tenant=name,
            error=ErrorInfo.of(TimedOut("its runner stopped without reporting"))))
        with pytest.raises(QuotaExceeded):
            handler.quotas.admit(name, "next", recipe="filter", size=0, limits=limits)
        report = reconcile(settings, Bucket(settings), handler, grace_s=3600)
        assert report.released >= 1
        handler.quotas.admit(name, "next", recipe="filter", size=0, limits=limits)
