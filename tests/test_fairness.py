"""Tenant queues (``tenant_queues``): a real Dramatiq worker on the stack's Redis takes turns
between tenants, so one tenant's burst does not hold back another's job."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import dramatiq
from dramatiq import Worker

from bucketbrush.broker import RUN_JOB_ACTOR, build_broker, enqueue_job
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.routing import base_queue, queue_for
from bucketbrush.settings import Settings
from gpu_runner.tenant_queues import TenantQueues


def _order(settings: Settings, *, tenant_queues: bool, burst: int = 20) -> list[str]:
    """Tenant a sends ``burst`` jobs, then tenant b one; the order one worker thread ran them in."""
    own = settings.model_copy(update={"broker_namespace": f"fair-{uuid.uuid4().hex[:8]}",
                                      "tenant_queues": tenant_queues})
    broker = build_broker(own)
    ran: list[str] = []
    done = threading.Event()

    b_queue = f"{own.broker_namespace}:{queue_for(own, 'filter', tenant='b')}"

    def run_job(spec: dict) -> None:
        if not ran and tenant_queues:
            # By construction, not by speed: the first job waits until b's consumer has taken
            # b's message off its queue (into the worker's work queue, beside the at most
            # prefetch messages a's consumer holds), however slowly its thread started.
            deadline = time.monotonic() + 30
            while broker.client.llen(b_queue) and time.monotonic() < deadline:
                time.sleep(0.01)
        ran.append(spec["tenant"])
        time.sleep(0.01)  # a job takes a moment: the consumers refill meanwhile
        if len(ran) == burst + 1:
            done.set()

    served = queue_for(own, "filter")
    dramatiq.actor(run_job, broker=broker, actor_name=RUN_JOB_ACTOR, queue_name=served)
    for n, tenant in enumerate(["a"] * burst + ["b"]):
        ref = ObjectRef(bucket="b", key=f"tenants/{tenant}/jobs/j{n}.json")
        enqueue_job(broker, own, JobSpec(job_id=f"j{n}", recipe="filter", source=ref, tenant=tenant))
    worker = Worker(broker, queues={served}, worker_threads=1, worker_timeout=100)
    worker.start()
    queues = TenantQueues(broker, own, worker, {served}, interval_s=0.1)
    try:
        queues.start()
        assert done.wait(60), f"ran only {ran}"
    finally:
        queues.stop()
        worker.stop()
        broker.close()
    return ran


def test_a_burst_does_not_hold_back_another_tenant(stack: Any, settings: Settings) -> None:
    shared = _order(settings, tenant_queues=False)
    fair = _order(settings, tenant_queues=True)
    # One shared queue: b's job runs after the whole burst. Tenant queues: within the first few
    # (the burst's consumer holds at most its prefetch, two messages, ahead of it).
    assert shared.index("b") == 20
    assert fair.index("b") <= 3, fair
    assert sorted(fair) == sorted(shared)


def test_queue_names() -> None:
    settings = Settings(_env_file=None, tenant_queues=True, queue_name="bb")
    assert queue_for(settings, "filter") == "bb-cpu"
    assert queue_for(settings, "filter", tenant="acme") == "bb-cpu-tenant-acme"
    assert queue_for(settings, "txt2img", "bulk", "acme") == "bb-gpu-bulk-tenant-acme"
    assert base_queue("bb-gpu-bulk-tenant-acme") == "bb-gpu-bulk" and base_queue("bb-cpu") == "bb-cpu"
    assert queue_for(settings.model_copy(update={"tenant_queues": False}), "filter", tenant="acme") == "bb-cpu"


def test_views_over_every_queue_include_the_tenants(stack: Any, settings: Settings) -> None:
    from bucketbrush.deadletters import list_dead
    from bucketbrush.status import job_queue_depths

    own = settings.model_copy(update={"broker_namespace": f"fair-{uuid.uuid4().hex[:8]}", "tenant_queues": True})
    broker = build_broker(own)
    try:
        ref = ObjectRef(bucket="b", key="tenants/acme/jobs/j.json")
        enqueue_job(broker, own, JobSpec(job_id="j", recipe="filter", source=ref, tenant="acme"))
        totals, each = job_queue_depths(broker, own)
        assert each[queue_for(own, "filter", tenant="acme")]["ready"] == 1 and totals["ready"] == 1
        assert list_dead(broker, own) == []
    finally:
        broker.close()
