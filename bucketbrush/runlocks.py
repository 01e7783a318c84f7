"""Run locks in Redis: which runner is running a job at this moment.

Dramatiq delivers at least once, and a job may hold two messages (the sweep requeued it after
Redis lost its data while a runner still held the first in memory; a runner cut off from Redis
past the broker's heartbeat timeout). The runner takes ``<ns>:running:<job_id>`` before it
runs a job and renews it every few seconds while it does; the lock expires ``ttl_s`` after
its runner dies. A delivery that finds the lock held by another runner does not run: it puts
its message back, delayed, and the job's final manifest makes the later delivery a no-op.
The renewal writes the lock again even when it is gone, so a Redis restarted empty gets the
locks of running jobs back within one renewal.

Beside each lock, ``<ns>:open-runs:<job_id>`` counts the runs of the job that began and have
not ended: taking the lock adds one, releasing it takes one away. A runner that dies in a job
never releases, so the count a new run finds is the number of runners that died in it (the
poison-job bound, ``max_runner_deaths``), whether or not they wrote a manifest first.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bucketbrush.settings import Settings

log = logging.getLogger(__name__)

# Shorter than the broker's heartbeat timeout (broker_heartbeat_timeout_s), so a dead runner's
# lock is gone when Dramatiq gives its message back.
RUN_LOCK_TTL_S = 5
# Take the lock if it is free or ours; renew it on the same condition. ARGV[3] "1": a new run,
# counted in the open runs; returns 1 + the open runs found before it (0: not taken).
_TAKE = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if ARGV[3] == '1' then
    local open = redis.call('incr', KEYS[2]) - 1
    redis.call('expire', KEYS[2], ARGV[4])
    return 1 + open
  end
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('decr', KEYS[2]) <= 0 then redis.call('del', KEYS[2]) end
end
return 0
"""
# How long the open-runs count of a job is kept (a job's redeliveries come within hours).
OPEN_RUNS_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Hold:
    held: bool  # False: another runner runs the job now
    deaths: int = 0  # runs of this job that began before and never ended: their runner died


class RunLocks:
    def __init__(self, redis: Any, settings: Settings, *, ttl_s: int = RUN_LOCK_TTL_S) -> None:
        self.redis = redis
        self.namespace = settings.broker_namespace
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex  # this process

    def key(self, job_id: str) -> str:
        return f"{self.namespace}:running:{job_id}"

    def open_runs_key(self, job_id: str) -> str:
        return f"{self.namespace}:open-runs:{job_id}"

    def take(self, job_id: str, *, new_run: bool = False) -> int:
        """0 if another runner holds it; else 1 + (for a new run) the runs that never ended."""
        return int(self.redis.eval(_TAKE, 2, self.key(job_id), self.open_runs_key(job_id), self.owner,
                                   self.ttl_s, "1" if new_run else "0", OPEN_RUNS_TTL_S))

    def release(self, job_id: str) -> None:
        self.redis.eval(_RELEASE, 2, self.key(job_id), self.open_runs_key(job_id), self.owner)

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
    def hold(self, job_id: str) -> Iterator[Hold]:
        """Take the lock and renew it in a thread until the block ends (then release it, and
        the run ends); a Hold that is not ``held`` when another runner has it."""
        taken = self.take(job_id, new_run=True)
        if not taken:
            yield Hold(held=False)
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
            yield Hold(held=True, deaths=taken - 1)
        finally:
            stop.set()
            thread.join()
            try:
                self.release(job_id)
            except Exception:  # noqa: BLE001 - it expires by itself
                log.warning("job %s: could not release the run lock", job_id, exc_info=True)
