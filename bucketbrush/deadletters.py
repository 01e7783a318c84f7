"""Dramatiq's dead-letter queue, as ``bucketbrush jobs dead list|retry|purge`` shows and acts on it.

A message is dead-lettered when its job failed for good: bad input (after the failed manifest
was written) or a transient failure on its last retry. Dramatiq keeps them in Redis for its
``dead_message_ttl`` (7 days) under two keys per queue (every queue of ``bucketbrush.routing``,
and the single queue ``queue_name`` of earlier versions): ``<namespace>:<queue>.XQ``, a sorted
set of message ids by the time they died (ms), and ``<namespace>:<queue>.XQ.msgs``, a hash of
id -> encoded message. The manifest already records each failure; these commands let a person list
them, run them again (``retry``: as ``jobs retry`` does, a queued manifest then a message) or
drop them (``purge``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dramatiq

from bucketbrush.broker import enqueue_job
from bucketbrush.errors import BucketbrushError, JobNotFound
from bucketbrush.jobs import JobSpec
from bucketbrush.manifest import Manifest
from bucketbrush.routing import all_queues, tenant_queues
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket


@dataclass
class DeadLetter:
    message_id: str
    dead_at: float  # epoch seconds
    job_id: str | None
    recipe: str | None
    spec: dict[str, Any] | None
    queue: str = ""


def _queues(settings: Settings, redis: Any) -> list[str]:
    return [*all_queues(settings), settings.queue_name, *tenant_queues(settings, redis)]


def _keys(settings: Settings, queue: str) -> tuple[str, str]:
    base = f"{settings.broker_namespace}:{queue}.XQ"
    return base, f"{base}.msgs"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def list_dead(broker: dramatiq.Broker, settings: Settings) -> list[DeadLetter]:
    """Every dead-lettered message of every queue, oldest first."""
    client = broker.client
    letters = []
    for queue in _queues(settings, client):
        xq, msgs = _keys(settings, queue)
        ids = client.zrange(xq, 0, -1, withscores=True)
        bodies = client.hmget(msgs, [i for i, _ in ids]) if ids else []
        for (raw_id, score), body in zip(ids, bodies, strict=True):
            spec = None
            if body is not None:
                try:
                    args = dramatiq.Message.decode(body).args
                    spec = args[0] if args and isinstance(args[0], dict) else None
                except Exception:  # noqa: BLE001 - a message we cannot read is still listed
                    spec = None
            letters.append(DeadLetter(_text(raw_id), score / 1000, (spec or {}).get("job_id"),
                                      (spec or {}).get("recipe"), spec, queue))
    return sorted(letters, key=lambda d: d.dead_at)


def _select(letters: list[DeadLetter], ids: list[str] | None) -> list[DeadLetter]:
    """The letters named by message id or job id (all when ``ids`` is None)."""
    if ids is None:
        return letters
    chosen = [d for d in letters if d.message_id in ids or d.job_id in ids]
    missing = set(ids) - {d.message_id for d in chosen} - {d.job_id for d in chosen}
    if missing:
        raise JobNotFound(f"not in the dead-letter queue: {', '.join(sorted(missing))}")
    return chosen


def purge_dead(broker: dramatiq.Broker, settings: Settings, ids: list[str] | None = None) -> list[DeadLetter]:
    """Drop dead-lettered messages (all, or those named by message or job id); the ones dropped."""
    chosen = _select(list_dead(broker, settings), ids)
    _remove(broker, settings, chosen)
    return chosen


def _remove(broker: dramatiq.Broker, settings: Settings, letters: list[DeadLetter]) -> None:
    pipe = broker.client.pipeline()
    for letter in letters:
        xq, msgs = _keys(settings, letter.queue)
        pipe.zrem(xq, letter.message_id)
        pipe.hdel(msgs, letter.message_id)
    pipe.execute()


def retry_dead(bucket: Bucket, broker: dramatiq.Broker,
               ids: list[str] | None = None) -> list[tuple[DeadLetter, str]]:
    """Run dead-lettered jobs again; (letter, what happened) for each one chosen.

    A job whose manifest is failed or cancelled is queued again under its id (a queued
    manifest, then a message: the runner would skip a bare redelivery of a finished job); one
    that has no manifest is queued from the message's spec; one that succeeded since is only
    dropped from the queue. Each letter leaves the dead-letter queue once handled. A replay is
    bulk work: it queues behind interactive jobs (``bucketbrush.routing``)."""
    from bucketbrush.management import retry_job

    settings = bucket.settings
    done = []
    for letter in _select(list_dead(broker, settings), ids):
        if letter.job_id is None or letter.spec is None:
            done.append((letter, "skipped: not a bucketbrush job message (purge it)"))
            continue
        manifest = bucket.read_manifest(letter.job_id)
        try:
            if manifest is None:
                spec = JobSpec.model_validate(letter.spec).model_copy(update={"priority": "bulk"})
                bucket.write_manifest(Manifest(job_id=spec.job_id, status="queued", recipe=spec.recipe,
                                               params=spec.params, inputs=spec.inputs,
                                               timings={"queued_at": time.time()}))
                enqueue_job(broker, settings, spec)
                what = "queued again (it had no manifest)"
            elif manifest.status in ("failed", "cancelled"):
                retry_job(bucket, broker, letter.job_id, priority="bulk")
                what = f"queued again (was {manifest.status}: {manifest.error.code if manifest.error else '-'})"
            else:
                what = f"dropped: the job is {manifest.status}"
        except (BucketbrushError, ValueError) as exc:
            done.append((letter, f"skipped: {exc}"))
            continue
        _remove(broker, settings, [letter])
        done.append((letter, what))
    return done
