"""Per-tenant quotas, checked and counted atomically in Redis when the handler admits a job.

One Lua script per admission: it checks every limit, and only when all pass counts the job
(jobs this clock hour, the tenant's active jobs, input bytes this UTC day), so two handlers
admitting at once can never both take the last slot. A job stays active (counts towards
``max_concurrent``) until the runner writes its final manifest and calls ``release``; an entry
older than ``tenant_quota_stale_s`` (its runner died) stops counting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bucketbrush.errors import QuotaExceeded
from bucketbrush.settings import Settings
from bucketbrush.tenants import Limits

HOUR_S, DAY_S = 3600, 86400

# KEYS: hour counter, active set (job id -> admitted at), day bytes counter.
# ARGV: now, job id, jobs per hour, max concurrent, bytes per day, size, stale before.
# Returns {0} when admitted (or already active), else {1, limit, current value}.
_ADMIT = """
redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[7])
if redis.call('zscore', KEYS[2], ARGV[2]) then return {0} end
local per_hour, concurrent, per_day, size = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local jobs = tonumber(redis.call('get', KEYS[1]) or '0')
if per_hour > 0 and jobs >= per_hour then return {1, 'jobs_per_hour', jobs} end
local active = redis.call('zcard', KEYS[2])
if concurrent > 0 and active >= concurrent then return {1, 'max_concurrent', active} end
local used = tonumber(redis.call('get', KEYS[3]) or '0')
if per_day > 0 and used + size > per_day then return {1, 'input_bytes_per_day', used} end
redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], 2 * 3600)
redis.call('zadd', KEYS[2], ARGV[1], ARGV[2])
redis.call('incrby', KEYS[3], size)
redis.call('expire', KEYS[3], 2 * 86400)
return {0}
"""


@dataclass(frozen=True)
class Usage:
    jobs_this_hour: int
    active: int
    input_bytes_today: int


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Quotas:
    """The tenants' counters in Redis (the broker's)."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.namespace = settings.broker_namespace
        self._admit = redis.register_script(_ADMIT)

    def _keys(self, tenant: str, now: float) -> list[str]:
        base = f"{self.namespace}:quota:{tenant}"
        return [f"{base}:jobs:{int(now // HOUR_S)}", f"{base}:active", f"{base}:bytes:{int(now // DAY_S)}"]

    def admit(self, tenant: str, job_id: str, *, recipe: str, size: int, limits: Limits,
              now: float | None = None) -> None:
        """Count ``job_id`` against ``tenant``'s limits, or raise QuotaExceeded saying which limit
        and when it resets. Admitting a job that is already active counts nothing."""
        now = time.time() if now is None else now
        if limits.recipes and recipe not in limits.recipes:
            raise QuotaExceeded(f"tenant {tenant!r} may not run recipe {recipe!r} (allowed: "
                                f"{', '.join(limits.recipes)}); this limit does not reset: ask for the recipe")
        stale_before = now - self.settings.tenant_quota_stale_s
        verdict = self._admit(keys=self._keys(tenant, now), args=[
            now, job_id, limits.jobs_per_hour or 0, limits.max_concurrent or 0,
            limits.input_bytes_per_day or 0, max(size, 0), stale_before])
        if int(verdict[0]) == 0:
            return
        limit = verdict[1].decode() if isinstance(verdict[1], bytes) else verdict[1]
        current = int(verdict[2])
        if limit == "jobs_per_hour":
            reset = (now // HOUR_S + 1) * HOUR_S
            raise QuotaExceeded(f"tenant {tenant!r} reached jobs_per_hour: {current} of {limits.jobs_per_hour} "
                                f"jobs this hour; resets at {_iso(reset)} (in {int(reset - now)} s)")
        if limit == "max_concurrent":
            raise QuotaExceeded(f"tenant {tenant!r} reached max_concurrent: {current} of {limits.max_concurrent} "
                                "jobs queued or running; resets when one of them finishes")
        reset = (now // DAY_S + 1) * DAY_S
        raise QuotaExceeded(f"tenant {tenant!r} reached input_bytes_per_day: {current:,} of "
                            f"{limits.input_bytes_per_day:,} bytes today, this input is {size:,}; "
                            f"resets at {_iso(reset)} (in {int(reset - now)} s)")

    def release(self, tenant: str, job_id: str) -> None:
        """The job is over: it no longer counts towards ``max_concurrent``."""
        self.redis.zrem(self._keys(tenant, time.time())[1], job_id)

    def release_finished(self, tenant: str, finished: Callable[[str], bool]) -> list[str]:
        """Free the slots of ``tenant``'s active jobs that ``finished(job_id)`` says are over
        though no runner said so (the reaper failed them, their message was purged): the
        reconciling sweep calls this. The ones freed."""
        key = self._keys(tenant, time.time())[1]
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.zrange(key, 0, -1)]
        done = [job_id for job_id in ids if finished(job_id)]
        if done:
            self.redis.zrem(key, *done)
        return done

    def usage(self, tenant: str, now: float | None = None) -> Usage:
        now = time.time() if now is None else now
        hour, active, day = self._keys(tenant, now)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(hour)
        pipe.zcount(active, now - self.settings.tenant_quota_stale_s, "+inf")
        pipe.get(day)
        jobs, count, used = pipe.execute()
        return Usage(int(jobs or 0), int(count or 0), int(used or 0))
