"""The Dramatiq actor. Declared on an explicit broker, so importing this module has no
side effects and producers never need it (they enqueue by name)."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimit

from bucketbrush.errors import JobError
from bucketbrush.jobs import JobSpec
from bucketbrush.routing import ACTORS, queue_name
from bucketbrush.runlocks import Hold, RunLocks
from bucketbrush.settings import Settings
from gpu_runner.batching import ComputeSlot
from gpu_runner.conversation import TurnRunner
from gpu_runner.runner import JobRunner

log = logging.getLogger(__name__)

# Dramatiq runs the messages a worker has fetched lowest actor priority first.
ACTOR_PRIORITY = {"interactive": 0, "bulk": 10}


def declare_actors(broker: dramatiq.Broker, settings: Settings, runner: JobRunner,
                   locks: RunLocks | None = None, turns: TurnRunner | None = None,
                   slot: ComputeSlot | None = None) -> list[dramatiq.Actor]:
    """The job actor under its two names (interactive, bulk: ``bucketbrush.routing``). Which
    queues a runner consumes is its worker's choice, not the actors'. With ``locks`` (the
    runner process's, bucketbrush/runlocks.py) a job runs on one runner at a time, and the
    runners that died in it are counted. Chat turns go through ``turns`` (gpu_runner/conversation.py).
    With ``slot`` (a runner with several worker threads: cross-job micro-batching,
    gpu_runner/batching.py) a job starts once no other job computes; its Dramatiq time limit
    then starts again, so waiting for its turn does not count against it."""
    max_retries = settings.max_retries
    time_limits = [m for m in broker.middleware if isinstance(m, TimeLimit)]

    def pause_time_limit(message: dramatiq.Message | None) -> None:
        if message is not None:
            for middleware in time_limits:
                middleware.after_process_message(broker, message)

    def restart_time_limit(message: dramatiq.Message | None, waited_s: float) -> None:
        if message is not None:
            log.info("message %s waited %.2f s for its turn; its time limit starts now", message.message_id, waited_s)
            for middleware in time_limits:
                middleware.before_process_message(broker, message)

    def run_job(spec: dict) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        job = JobSpec.model_validate(spec)
        with locks.hold(job.job_id) if locks else nullcontext(Hold(held=True)) as hold:
            if not hold.held:
                # A second message for a job another runner is running: back to the queue,
                # after the lock would expire if that runner died (not a retry: none is spent).
                delay_ms = locks.expires_in_ms(job.job_id) + 500
                log.warning("job %s is running on another runner; its duplicate message waits %d ms",
                            job.job_id, delay_ms)
                broker.enqueue(message.copy(), delay=delay_ms)
                return
            attempt, last_attempt = retries + 1, retries >= max_retries
            delivery = message.message_id if message else None
            turn = slot.held(lambda: pause_time_limit(message),
                             lambda waited: restart_time_limit(message, waited)) if slot else nullcontext()
            with turn:
                if job.turn is not None and turns is not None:
                    turns.run(job, message=message, attempt=attempt, last_attempt=last_attempt, delivery=delivery,
                              interrupted=hold.deaths)
                else:
                    runner.run(job, attempt=attempt, last_attempt=last_attempt, delivery=delivery,
                               interrupted=hold.deaths)

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
