"""The Dramatiq broker, built from settings. Producers enqueue by actor name only, so the
thin functions never import the runner (or torch)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker, _RedisConsumer
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage, Middleware

from bucketbrush.jobs import JobSpec
from bucketbrush.routing import (
    ACTORS,
    RUN_JOB_ACTOR,
    all_queues,
    queue_for,
    redis_key,
    tenant_queues,
    tenant_queues_key,
)
from bucketbrush.settings import Settings

__all__ = ["RUN_JOB_ACTOR", "build_broker", "enqueue_job"]

# Wake-up tokens kept per queue: enough to wake every idle runner of a burst, few enough that
# stale ones (pushed while every runner was busy) cost idle consumers nothing worth counting.
WAKE_TOKENS = 16


def wake_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:{queue_name}.wake"


class WakeUp(Middleware):
    """After each enqueue, push a token onto the queue's wake list: an idle consumer blocks on
    it (BLPOP) instead of sleeping between polls, so a job starts within a Redis round trip."""

    def after_enqueue(self, broker: Any, message: dramatiq.Message, delay: int | None) -> None:
        # message.queue_name is the delay queue's for a delayed message: its consumer wakes.
        key = wake_key(broker.namespace, message.queue_name)
        pipe = broker.client.pipeline(transaction=False)
        pipe.rpush(key, 1)
        pipe.ltrim(key, -WAKE_TOKENS, -1)
        pipe.expire(key, 60)
        pipe.execute()


class _WakeConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, idle-waiting on the queue's wake list. Dramatiq's own idle
    wait is a sleep of up to the worker timeout between polls (a job arriving after a quiet
    spell waited half of it on average); here that sleep is cut to 1 ms and the consumer blocks
    on BLPOP for up to the worker timeout instead (its poll, and its heartbeat, still come at
    least that often). A consumer whose worker is busy does not take wake-ups (an idle runner
    gets the token): it blocks, without Redis calls or wake-ups, until its worker acks or nacks
    (or the worker timeout passes: the poll that carries its heartbeat), then polls.

    The blocking wait matters where the job computes: the consumer threads share the GIL and
    the cores with the job's thread, so a consumer that woke every few milliseconds while a job
    ran (200 wake-ups/s) took them from the job (BENCHMARKS.md, "Diffusion"). For the same
    reason the process's other consumers (one per queue and delay queue: 16 in a runner) block
    up to ``runner_busy_poll_ms`` instead of the worker timeout while one of them has a message
    out: an enqueue's token still wakes them at once, so this only bounds how late a busy runner
    notices a message that came without a token (Dramatiq's requeue of a dead runner's messages;
    idle runners still poll every worker timeout)."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, 1)
        self.idle_s = timeout / 1000
        # A BLPOP must return before the client's socket timeout (redis-py's default is 5 s), or
        # an idle consumer raises TimeoutError and Dramatiq restarts it seconds later.
        socket_timeout = broker.client.connection_pool.connection_kwargs.get("socket_timeout")
        cap = max(socket_timeout * 0.5, 0.01) if socket_timeout else float("inf")
        self.block_s = min(self.idle_s, cap)
        self.busy_block_s = min(max(self.idle_s, broker.busy_block_s), cap)
        self.wake_key = wake_key(broker.namespace, queue_name)
        # Set by the worker thread when it acks or nacks a message of this consumer.
        self.freed = threading.Event()
        # The process's consumers, to tell whether any has a message out (see ``_idle_block_s``).
        self.siblings: set[_WakeConsumer] = broker.wake_consumers
        self.siblings.add(self)
        self.delays = queue_name != q_name(queue_name)  # a delay queue: what it holds waits, not computes

    def close(self) -> None:
        self.siblings.discard(self)
        super().close()

    def _idle_block_s(self) -> float:
        """How long this consumer, with nothing out, blocks on its wake list: the poll interval
        while the process is idle, ``busy_block_s`` while another of its consumers has a message
        out (whose job computes meanwhile: each poll takes the GIL and a core from it)."""
        busy = any(c.outstanding_message_count for c in list(self.siblings) if c is not self and not c.delays)
        return self.busy_block_s if busy else self.block_s

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)
        finally:
            self.freed.set()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)
        finally:
            self.freed.set()

    def __next__(self) -> Any:
        message = super().__next__()
        if message is None:
            if self.outstanding_message_count:
                self.freed.clear()
                if self.outstanding_message_count:  # not acked between the fetch and the clear
                    self.freed.wait(self.idle_s)
            else:
                self.broker.client.blpop([self.wake_key], timeout=self._idle_block_s())
        return message


class Broker(RedisBroker):
    """Dramatiq's RedisBroker whose consumers wake on enqueue (see ``WakeUp``)."""

    def __init__(self, *, busy_block_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wake_consumers: set[_WakeConsumer] = set()
        self.busy_block_s = busy_block_s

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakeConsumer


def build_broker(settings: Settings) -> RedisBroker:
    broker = Broker(
        url=settings.redis_url, namespace=settings.broker_namespace, busy_block_s=settings.runner_busy_poll_ms / 1000,
        # How soon a killed runner's messages come back (docs/operations.md, "A runner dies").
        heartbeat_timeout=int(settings.broker_heartbeat_timeout_s * 1000),
        maintenance_chance=max(1, round(settings.broker_maintenance_chance * MAINTENANCE_SCALE)),
    )
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(WakeUp())
    return broker


def enqueue_job(broker: dramatiq.Broker, settings: Settings, spec: JobSpec) -> dramatiq.Message:
    """Send one job message to its queue (``bucketbrush.routing``: by what the recipe needs and
    the job's priority). Safe to repeat: the runner skips jobs that already finished."""
    spec = spec.model_copy(update={"enqueued_at": time.time()})
    limit_s = settings.time_limit_s(spec.recipe, spec.time_limit_s)
    if spec.turn is not None:  # a chat turn's recipe is chosen on the runner: allow the longest
        limit_s = max([limit_s, *settings.recipe_time_limits_s.values()])
    queue = queue_for(settings, spec.recipe, spec.priority, spec.tenant)
    if spec.tenant and settings.tenant_queues:  # where runners find the tenants' queues
        broker.client.sadd(tenant_queues_key(settings), queue)  # type: ignore[attr-defined]
    message = dramatiq.Message(
        queue_name=queue,
        actor_name=ACTORS[spec.priority],
        args=(spec.model_dump(mode="json"),),
        kwargs={},
        # Dramatiq's TimeLimit middleware reads this per message: limits are per recipe.
        options={"time_limit": limit_s * 1000},
    )
    # The producer does not declare the actor, so declare its queue for the broker.
    broker.declare_queue(queue)
    return broker.enqueue(message)


def job_ids_in_broker(client: Any, settings: Settings) -> set[str]:
    """Job ids of every job message the broker still holds: waiting, delayed (a retry not yet
    due) or fetched by a worker and not yet acknowledged.

    Every job queue is read (``bucketbrush.routing.all_queues``, and the tenants' queues). Dramatiq's Redis broker
    keeps each message's data in a hash, ``<ns>:<queue>.msgs`` (and
    ``<ns>:<queue>.DQ.msgs`` for the delay queue), from enqueue until the worker acks it;
    the queue list and the per-worker ack sets hold only ids (its ``dispatch.lua``). A retry
    moves a message from one hash to the other (written to the new one before deleting it
    from the old), so both are read in one MULTI: a moving message is seen in one of them.
    Dead-lettered messages (``.XQ``) never run again and are not counted."""
    queues = [*all_queues(settings), *tenant_queues(settings, client)]
    pipe = client.pipeline(transaction=True)
    for queue in queues:
        prefix = redis_key(settings, queue)
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
