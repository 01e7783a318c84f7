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


def enqueue_job(broker: dramatiq.Broker, settings: Settings, spec: JobSpec) -> dramatiq.Message:
    """Send one job message. Safe to repeat: the runner skips jobs that already finished."""
    spec = spec.model_copy(update={"enqueued_at": time.time()})
    limit_s = settings.time_limit_s(spec.recipe, spec.time_limit_s)
    if spec.turn is not None:  # a chat turn's recipe is chosen on the runner: allow the longest
        limit_s = max([limit_s, *settings.recipe_time_limits_s.values()])
    message = dramatiq.Message(
        queue_name=settings.queue_name,
        actor_name=RUN_JOB_ACTOR,
        args=(spec.model_dump(mode="json"),),
        kwargs={},
        # Dramatiq's TimeLimit middleware reads this per message: limits are per recipe.
        options={"time_limit": limit_s * 1000},
    )
    # The producer does not declare the actor, so declare its queue for the broker.
    broker.declare_queue(settings.queue_name)
    return broker.enqueue(message)
