"""Job-id claims in Redis: which content a job id belongs to.

The handler takes a claim (``SET NX`` with the dedupe TTL) before it writes a job's queued
manifest, so a repeated event for the same content, from any transport or the sweep, finds
the id taken and does nothing. The value is the content's identity (bucket, key, version id,
ETag), so a re-upload of other content to the same key can tell the claim is not its own.
"""

from __future__ import annotations

from typing import Any

from bucketbrush.settings import Settings

_RELEASE_IF_HELD = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Claims:
    def __init__(self, redis: Any, settings: Settings, tenant: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.namespace = settings.broker_namespace
        self.ttl_s = settings.dedupe_ttl_s
        self.tenant = tenant

    def for_tenant(self, tenant: str | None) -> Claims:
        """Claims on ``tenant``'s job ids (two tenants may choose the same spec job id)."""
        return self if tenant == self.tenant else Claims(self.redis, self.settings, tenant)

    def key(self, job_id: str) -> str:
        if self.tenant:
            return f"{self.namespace}:claim:{self.tenant}/{job_id}"
        return f"{self.namespace}:claim:{job_id}"

    def claim(self, job_id: str, identity: str) -> bool:
        """Atomically take ``job_id`` for ``identity``; False if anything already holds it."""
        return bool(self.redis.set(self.key(job_id), identity, nx=True, ex=self.ttl_s))

    def take(self, job_id: str, identity: str) -> None:
        """Set the claim whoever held it (a requeue: the caller already owns the job)."""
        self.redis.set(self.key(job_id), identity, ex=self.ttl_s)

    def holder(self, job_id: str) -> str | None:
        return _text(self.redis.get(self.key(job_id)))

    def holders(self, job_ids: list[str]) -> dict[str, str | None]:
        """``holder`` for many ids in one round trip."""
        if not job_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(self.key(job_id))
        return {j: _text(v) for j, v in zip(job_ids, pipe.execute(), strict=True)}

    def held_for_s(self, job_id: str) -> float | None:
        """How long the claim has stood (from its remaining TTL); None when there is none."""
        ttl = self.redis.ttl(self.key(job_id))
        return None if ttl is None or ttl < 0 else float(self.ttl_s - ttl)

    def release_if_held(self, job_id: str, identity: str) -> bool:
        """Delete the claim only if ``identity`` still holds it (atomic, in Redis)."""
        return bool(self.redis.eval(_RELEASE_IF_HELD, 1, self.key(job_id), identity))

    def delete(self, job_id: str) -> None:
        self.redis.delete(self.key(job_id))

    # Done markers: which message finished a job. A runner that gets a message again (Dramatiq
    # delivers at least once) learns from Redis, not from an S3 read, that it already ran.

    def mark_done(self, job_id: str, delivery: str) -> None:
        self.redis.set(f"{self.namespace}:done:{job_id}", delivery, ex=self.ttl_s)

    def done_by(self, job_id: str) -> str | None:
        """The id of the message that finished ``job_id`` (None: none did, or long ago)."""
        return _text(self.redis.get(f"{self.namespace}:done:{job_id}"))
