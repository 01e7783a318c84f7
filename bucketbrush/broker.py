"""The Dramatiq broker, built from settings. Producers enqueue by actor name only, so the
thin functions never import the runner (or torch)."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from bucketbrush.jobs import JobSpec
from bucketbrush.settings import Settings

RUN_JOB_ACTOR = "bucketbrush.run_job"


def build_broker(settings: Settings) -> RedisBroker:
    broker = RedisBroker(url=settings.redis_url, namespace=settings.broker_namespace)
    broker.add_middleware(CurrentMessage())
    return broker


def tenant_queues_key(settings: Settings) -> str:
    """The Redis set of tenants' queues, where runners find the ones to consume."""
    return f"{settings.broker_namespace}:tenant-queues"


def queue_for(settings: Settings, tenant: str | None) -> str:
    """The queue of a job: the shared one, or with ``tenant_queues`` its tenant's own (runners
    consume every tenant's queue side by side: gpu_runner/tenant_queues.py)."""
    if tenant and settings.tenant_queues:
        return f"{settings.queue_name}-tenant-{tenant}"
    return settings.queue_name


def enqueue_job(broker: dramatiq.Broker, settings: Settings, spec: JobSpec) -> dramatiq.Message:
    """Send one job message. Safe to repeat: the runner skips jobs that already finished."""
    spec = spec.model_copy(update={"enqueued_at": time.time()})
    limit_s = settings.time_limit_s(spec.recipe, spec.time_limit_s)
    queue = queue_for(settings, spec.tenant)
    if queue != settings.queue_name:
        broker.client.sadd(tenant_queues_key(settings), queue)  # type: ignore[attr-defined]
    message = dramatiq.Message(
        queue_name=queue,
        actor_name=RUN_JOB_ACTOR,
        args=(spec.model_dump(mode="json"),),
        kwargs={},
        # Dramatiq's TimeLimit middleware reads this per message: limits are per recipe.
        options={"time_limit": limit_s * 1000},
    )
    # The producer does not declare the actor, so declare its queue for the broker.
    broker.declare_queue(queue)
    return broker.enqueue(message)
