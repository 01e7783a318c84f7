"""Run locks in Redis: which runner is running a job at this moment.

Dramatiq delivers at least once, and a job may hold two messages (the sweep requeued it after
Redis lost its data while a runner still held the first in memory; a runner cut off from Redis
past the broker's heartbeat timeout). The runner takes ``<ns>:running:<job_id>`` before it
runs a job and renews it every few seconds while it does; the lock expires ``ttl_s`` after
its runner dies. A delivery that finds the lock held by another runner does not run: it puts
its message back, delayed, and the job's final manifest makes the later delivery a no-op.
The renewal writes the lock again even when it is gone, so a Redis restarted empty gets the
locks of running jobs back within one renewal.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bucketbrush.settings import Settings

log = logging.getLogger(__name__)

# Shorter than the broker's heartbeat timeout (broker_heartbeat_timeout_s), so a dead runner's
# lock is gone when Dramatiq gives its message back.
RUN_LOCK_TTL_S = 5
# Take the lock if it is free or ours; renew it on the same condition.
_TAKE = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RunLocks:
    def __init__(self, redis: Any, settings: Settings, *, ttl_s: int = RUN_LOCK_TTL_S) -> None:
        self.redis = redis
        self.namespace = settings.broker_namespace
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex  # this process

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:running:{job_id}"

    def take(self, job_id: str) -> bool:
        return bool(self.redis.eval(_TAKE, 1, self.key(job_id), self.owner, self.ttl_s))

    def release(self, job_id: str) -> None:
        self.redis.eval(_RELEASE, 1, self.key(job_id), self.owner)

    def expires_in_ms(self, job_id: str) -> int:
        """How long the lock on ``job_id`` lasts unless renewed (0: not held)."""
        return max(0, int(self.redis.pttl(self.key(job_id))))

    def held(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` some runner holds now (one round trip)."""
        if not job_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self.key(job_id))
        return {j for j, held in zip(job_ids, pipe.execute(), strict=True) if held}

    @contextmanager
    def hold(self, job_id: str) -> Iterator[bool]:
        """Take the lock and renew it in a thread until the block ends; yields False (and
        holds nothing) when another runner has it."""
        if not self.take(job_id):
            yield False
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.ttl_s / 4):
                try:
                    if not self.take(job_id):
                        log.warning("job %s: run lock taken by another runner while this one runs it", job_id)
                except Exception:  # noqa: BLE001 - Redis away: try again at the next tick
                    log.warning("job %s: could not renew the run lock", job_id, exc_info=True)

        thread = threading.Thread(target=renew, name=f"runlock-{job_id}", daemon=True)
        thread.start()
        try:
            yield True
        finally:
            stop.set()
            thread.join()
            try:
                self.release(job_id)
            except Exception:  # noqa: BLE001 - it expires by itself
                log.warning("job %s: could not release the run lock", job_id, exc_info=True)
