"""The Dramatiq broker, built from settings. Producers enqueue by actor name only, so the
thin functions never import the runner (or torch)."""

from __future__ import annotations

import json
import time
from typing import Any

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


def job_ids_in_broker(client: Any, settings: Settings) -> set[str]:
    """Job ids of every job message the broker still holds: waiting, delayed (a retry not yet
    due) or fetched by a worker and not yet acknowledged.

    Dramatiq's Redis broker keeps each message's data in a hash, ``<ns>:<queue>.msgs`` (and
    ``<ns>:<queue>.DQ.msgs`` for the delay queue), from enqueue until the worker acks it;
    the queue list and the per-worker ack sets hold only ids (its ``dispatch.lua``). A retry
    moves a message from one hash to the other (written to the new one before deleting it
    from the old), so both are read in one MULTI: a moving message is seen in one of them.
    Dead-lettered messages (``.XQ``) never run again and are not counted."""
    prefix = f"{settings.broker_namespace}:{settings.queue_name}"
    pipe = client.pipeline(transaction=True)
    pipe.hvals(f"{prefix}.msgs")
    pipe.hvals(f"{prefix}.DQ.msgs")
    found = set()
    for raw in (m for values in pipe.execute() for m in values):
        try:
            message = json.loads(raw)
            found.add(message["args"][0]["job_id"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not a job message
    return found
