"""The Dramatiq actor. Declared on an explicit broker, so importing this module has no
side effects and producers never need it (they enqueue by name)."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import dramatiq
from dramatiq.middleware import CurrentMessage

from bucketbrush.broker import RUN_JOB_ACTOR
from bucketbrush.errors import JobError
from bucketbrush.jobs import JobSpec
from bucketbrush.runlocks import RunLocks
from bucketbrush.settings import Settings
from gpu_runner.runner import JobRunner

log = logging.getLogger(__name__)


def declare_actors(broker: dramatiq.Broker, settings: Settings, runner: JobRunner,
                   locks: RunLocks | None = None) -> dramatiq.Actor:
    """The job actor; with ``locks`` (the runner process's), a job runs on one runner at a time."""
    max_retries = settings.max_retries

    def run_job(spec: dict) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        job = JobSpec.model_validate(spec)
        with locks.hold(job.job_id) if locks else nullcontext(True) as held:
            if not held:
                # A second message for a job another runner is running: back to the queue,
                # after the lock would expire if that runner died (not a retry: none is spent).
                delay_ms = locks.expires_in_ms(job.job_id) + 500
                log.warning("job %s is running on another runner; its duplicate message waits %d ms",
                            job.job_id, delay_ms)
                broker.enqueue(message.copy(), delay=delay_ms)
                return
            runner.run(job, attempt=retries + 1, last_attempt=retries >= max_retries)

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
