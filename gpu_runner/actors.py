"""The Dramatiq actor. Declared on an explicit broker, so importing this module has no
side effects and producers never need it (they enqueue by name)."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage

from bucketbrush.broker import RUN_JOB_ACTOR
from bucketbrush.errors import JobError
from bucketbrush.jobs import JobSpec
from bucketbrush.settings import Settings
from gpu_runner.conversation import TurnRunner
from gpu_runner.runner import JobRunner


def declare_actors(broker: dramatiq.Broker, settings: Settings, runner: JobRunner,
                   turns: TurnRunner | None = None) -> dramatiq.Actor:
    """The job actor; chat turns go through ``turns`` (gpu_runner/conversation.py)."""
    max_retries = settings.max_retries

    def run_job(spec: dict) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        job = JobSpec.model_validate(spec)
        attempt, last_attempt = retries + 1, retries >= max_retries
        if job.turn is not None and turns is not None:
            turns.run(job, message=message, attempt=attempt, last_attempt=last_attempt)
        else:
            runner.run(job, attempt=attempt, last_attempt=last_attempt)

    return dramatiq.actor(
        run_job,
        broker=broker,
        actor_name=RUN_JOB_ACTOR,
        queue_name=settings.queue_name,
        max_retries=max_retries,
        # Bad input fails the same way every time: never retry it.
        throws=(JobError,),
        min_backoff=1_000,
        max_backoff=60_000,
    )
