"""The Dramatiq actor. Declared on an explicit broker, so importing this module has no
side effects and producers never need it (they enqueue by name)."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from bucketbrush.errors import JobError
from bucketbrush.jobs import JobSpec
from bucketbrush.routing import ACTORS, queue_name
from bucketbrush.settings import Settings
from gpu_runner.runner import JobRunner

# Dramatiq runs the messages a worker has fetched lowest actor priority first.
ACTOR_PRIORITY = {"interactive": 0, "bulk": 10}


def declare_actors(broker: dramatiq.Broker, settings: Settings, runner: JobRunner) -> list[dramatiq.Actor]:
    """The job actor under its two names (interactive, bulk: ``bucketbrush.routing``). Which
    queues a runner consumes is its worker's choice, not the actors'."""
    max_retries = settings.max_retries

    def run_job(spec: dict) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        runner.run(
            JobSpec.model_validate(spec),
            attempt=retries + 1,
            last_attempt=retries >= max_retries,
            delivery=message.message_id if message else None,
        )

    return [dramatiq.actor(
        run_job,
        broker=broker,
        actor_name=name,
        queue_name=queue_name(settings, "any", priority),
        priority=ACTOR_PRIORITY[priority],
        max_retries=max_retries,
        # Bad input fails the same way every time: never retry it.
        throws=(JobError,),
        min_backoff=1_000,
        max_backoff=60_000,
    ) for priority, name in ACTORS.items()]
