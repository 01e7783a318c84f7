"""The fault scenarios, each a function of a running fault stack that returns its
:class:`FaultReport` (with the evidence the tests check in ``report.evidence``).
tests/faults/ runs them small and asserts; bench/faults.py runs them at size for RELIABILITY.md.
"""

from __future__ import annotations

import threading
import time

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from bucketbrush.broker import job_ids_in_broker
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.store import Bucket
from functions.handler import Handler
from functions.http import create_app
from functions.sweep import ABANDONED_CLAIM_S, reconcile
from infra.local import LocalStack
from infra.procs import redis_answers
from tests.faults.chaos import (
    FaultReport,
    FlakyProxy,
    burst,
    kill,
    kill_runner_mid_job,
    proxied_runner,
    redelivery_s,
    redis_outage,
    report,
    restart_redis_empty,
    restart_seaweedfs,
    runs_logged,
    supervised,
    wait_all_final,
    wait_for,
)
from tests.helpers import png_bytes
from tests.test_http import minio_event, running

TOKEN = "tok-faults-6b1d"


def _clients(stack: LocalStack) -> tuple[Bucket, Handler]:
    settings = stack.settings_for_clients()
    return Bucket(settings), Handler.from_settings(settings)


def statuses(bucket: Bucket, job_ids: list[str]) -> dict[str, str | None]:
    return {j: (m.status if (m := bucket.read_manifest(j)) else None) for j in job_ids}


def idle(bucket: Bucket, handler: Handler) -> bool:
    """No job message left in the broker and no live runner on a job."""
    try:
        busy = [r for r in bucket.runner_statuses() if r.is_fresh() and r.current_job]
    except (ClientError, BotoCoreError):
        return False
    return not busy and not job_ids_in_broker(handler.claims.redis, handler.settings)


def max_runs(stack: LocalStack, job_ids: list[str]) -> int:
    """The most times one of ``job_ids`` ran to success (runner logs): must be 1."""
    return max((runs_logged(stack, j) for j in job_ids), default=0)


# -- Redis ------------------------------------------------------------------------------------

def redis_restarted_empty(stack: LocalStack, n: int = 24, seconds: float = 0.5) -> FaultReport:
    """Kill Redis mid-burst, start it empty on the same port, run the sweep once the runners
    are idle: it requeues the queued jobs whose message was lost."""
    bucket, handler = _clients(stack)
    job_ids = burst(bucket, n, seconds=seconds)
    wait_for("3 jobs final", lambda: list(statuses(bucket, job_ids).values()).count("succeeded") >= 3, 90)
    restart_redis_empty(stack)
    repaired = time.time()
    emptied = job_ids_in_broker(handler.claims.redis, handler.settings) == set()
    # The runners finish what they held in memory; then nothing moves (the gap the sweep closes).
    wait_for("runners idle", lambda: idle(bucket, handler) and "running" not in statuses(bucket, job_ids).values(),
             60, interval=0.3)
    stranded = {j for j, s in statuses(bucket, job_ids).items() if s == "queued"}
    swept = reconcile(handler.settings, bucket, handler, grace_s=0)
    requeued = {o.job_id for o in swept.outcomes if o.reason == "requeued"}
    seen = wait_all_final(bucket, job_ids, timeout=120)
    result = report("Redis killed, restarted empty", bucket, job_ids, seen, repaired,
                    notes=f"{len(stranded)} queued jobs had lost their message; the sweep requeued {len(requeued)}")
    again = reconcile(handler.settings, bucket, handler, grace_s=0)
    result.evidence = {"emptied": emptied, "stranded": stranded, "requeued": requeued,
                       "requeued_again": again.requeued, "max_runs": max_runs(stack, job_ids)}
    return result


def redis_unavailable(stack: LocalStack, n: int = 10, down_s: float = 10) -> FaultReport:
    """Redis down ``down_s`` (data intact) while uploads arrive: the HTTP host answers 503 and
    the SeaweedFS source fails and replays from its cursor once Redis is back."""
    bucket, handler = _clients(stack)
    settings = handler.settings.model_copy(update={"functions_token": SecretStr(TOKEN)})
    events_log = stack.logs / "events.log"
    offset = events_log.stat().st_size
    key = f"inbox/filter/outage/{time.time_ns()}.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(), Metadata={"style": "sepia"})
    # An object whose event a MinIO-style webhook delivers to the HTTP host during the outage.
    http_ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    evidence: dict = {}
    with running(create_app(settings, Handler.from_settings(settings))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_all_final(bucket, [job_id_for(http_ref)], timeout=60)  # the source's event made it

        def while_down() -> None:
            wait_for("redis down", lambda: not redis_answers(settings.redis_url), 10)
            first = burst(bucket, 1, seconds=0.2, tag="during-outage-first")
            after_first_ns = time.time_ns()  # the first upload's event is in the filer's log
            evidence["jobs"] = first + burst(bucket, n - 1, seconds=0.2, tag="during-outage")
            evidence["http_status"] = client.post("/events/minio", json=minio_event(http_ref), headers=auth).status_code
            wait_for("the source to fail", lambda: "restarting from the cursor" in events_log.read_bytes()[
                offset:].decode(errors="replace"), 8)
            cursor = int((stack.state_dir / f"cursor-{stack.settings.bucket}.txt").read_text())
            evidence["cursor_held"] = cursor < after_first_ns

        thread = threading.Thread(target=while_down)
        thread.start()
        redis_outage(stack, down_s=down_s)
        repaired = time.time()
        thread.join(30)
        evidence["http_retry_status"] = client.post("/events/minio", json=minio_event(http_ref),
                                                    headers=auth).status_code
    job_ids = evidence["jobs"]
    seen = wait_all_final(bucket, job_ids, timeout=120)
    result = report(f"Redis unavailable {down_s:.0f} s", bucket, job_ids, seen, repaired,
                    notes=f"HTTP event during the outage: {evidence['http_status']}, its retry after: "
                          f"{evidence['http_retry_status']}; the source replayed from its cursor")
    evidence["max_runs"] = max_runs(stack, job_ids)
    result.evidence = evidence
    return result


# -- runners ----------------------------------------------------------------------------------

def runner_kills(stack: LocalStack, n: int = 12, kills: int = 3, seconds: float = 2) -> FaultReport:
    """SIGKILL a runner mid-job ``kills`` times (each time another job), runners restarted by a
    supervisor; Dramatiq gives the killed job's message back after its heartbeat timeout."""
    bucket, handler = _clients(stack)
    runners = sorted(p.name for p in stack.read_state().processes if p.name.startswith("runner-"))
    job_ids = burst(bucket, n, seconds=seconds)
    killed: list[str] = []
    with supervised(stack, runners) as restarts:
        for i in range(kills):
            killed.append(kill_runner_mid_job(stack, bucket, runners[i % len(runners)], set(killed),
                                              timeout=redelivery_s(handler.settings)))
        repaired = time.time()
        seen = wait_all_final(bucket, job_ids, timeout=2 * redelivery_s(handler.settings) + n * seconds)
    result = report(f"runner SIGKILL mid-job x{kills}", bucket, job_ids, seen, repaired,
                    notes=f"{sum(restarts.values())} runner restarts")
    result.evidence = {"killed": killed, "restarts": sum(restarts.values()), "max_runs": max_runs(stack, job_ids),
                       "interrupted": {j: seen[j].interrupted for j in killed if seen[j]}}
    return result


def poison_job(stack: LocalStack, good: int = 8) -> FaultReport:
    """A job that kills its runner every time (test-crash), among good ones."""
    bucket, handler = _clients(stack)
    limit = handler.settings.max_runner_deaths
    runners = sorted(p.name for p in stack.read_state().processes if p.name.startswith("runner-"))
    started = time.time()
    with supervised(stack, runners) as restarts:
        [poison] = burst(bucket, 1, recipe="test-crash")
        fine = burst(bucket, good, seconds=0.3)
        seen = wait_all_final(bucket, [poison, *fine], timeout=(limit + 1) * redelivery_s(handler.settings))
        # The poison message is gone: the next job runs and no runner dies again.
        [after] = burst(bucket, 1, seconds=0.1)
        after_status = wait_all_final(bucket, [after], timeout=60)[after]
    deaths = sum(restarts.values())
    result = report("poison job (kills its runner)", bucket, [poison, *fine], seen, started,
                    notes=f"{deaths} runner deaths, then failed")
    result.evidence = {"poison": seen[poison], "good": [seen[j] for j in fine], "deaths": deaths,
                       "after": after_status, "limit": limit}
    return result


# -- the store and the event source ---------------------------------------------------------------

def seaweedfs_restarted(stack: LocalStack, n: int = 16, seconds: float = 1) -> FaultReport:
    """SIGKILL SeaweedFS while jobs run and start it again. The filer loses the tail of its
    metadata log that it had not flushed: those uploads' events never come, and the sweep
    (every sweep_interval_s in the event source; run here once the runners are idle) finds
    them, and requeues a job whose enqueue the outage cut short."""
    bucket, handler = _clients(stack)
    job_ids = burst(bucket, n, seconds=seconds)
    wait_for("a job running", lambda: "running" in statuses(bucket, job_ids).values(), 60)
    restart_seaweedfs(stack)
    repaired = time.time()
    wait_for("runners idle", lambda: idle(bucket, handler), 120, interval=0.5)
    swept = reconcile(handler.settings, bucket, handler, grace_s=0)
    seen = wait_all_final(bucket, job_ids, timeout=180)
    result = report("SeaweedFS SIGKILLed and restarted", bucket, job_ids, seen, repaired,
                    notes=f"the sweep enqueued {swept.enqueued} (events lost by the filer), "
                          f"requeued {swept.requeued}")
    result.evidence = {"max_runs": max_runs(stack, job_ids), "swept": swept}
    return result


def event_source_killed(stack: LocalStack, n: int = 20) -> FaultReport:
    """SIGKILL the event source mid-stream; uploads go on; it starts again from its cursor."""
    bucket, handler = _clients(stack)
    first = burst(bucket, n // 2, seconds=0.1, tag=f"stream-a-{time.time_ns()}")
    kill(stack, "events")
    second = burst(bucket, n - n // 2, seconds=0.1, tag=f"stream-b-{time.time_ns()}")
    stack.restart_process("events")
    repaired = time.time()
    job_ids = first + second
    seen = wait_all_final(bucket, job_ids, timeout=60)
    # Killed between its claim and the job's manifest, the source leaves a claim that makes
    # its own replay of that event a duplicate: the sweep releases such a claim once it is
    # ABANDONED_CLAIM_S old and makes the job (in production, the event source's periodic sweep).
    reclaimed = 0
    deadline = time.monotonic() + ABANDONED_CLAIM_S + 90
    while any(m is None or not m.is_final for m in seen.values()) and time.monotonic() < deadline:
        reclaimed += reconcile(handler.settings, bucket, handler, grace_s=0).reclaimed
        seen = wait_all_final(bucket, job_ids, timeout=5)
    result = report("event source SIGKILLed mid-stream", bucket, job_ids, seen, repaired,
                    notes=f"{reclaimed} recovered by the sweep from a claim the killed source left"
                    if reclaimed else "")
    result.evidence = {"max_runs": max_runs(stack, job_ids), "attempts": {m.attempts for m in seen.values() if m},
                       "reclaimed": reclaimed}
    return result


def slow_store(stack: LocalStack, n: int = 12, latency_s: float = 0.05, cut_every: int = 4) -> FaultReport:
    """The runner reaches the store through a proxy that delays every reply chunk and cuts
    every ``cut_every``-th request chunk. Storage errors are retried
    (botocore, then Dramatiq's backoff); jobs end succeeded, or failed with ``retryable``, and
    none runs past its time limit."""
    bucket, handler = _clients(stack)
    s3_port = int(handler.settings.s3_endpoint_url.rsplit(":", 1)[1])
    proxy = FlakyProxy(s3_port, latency_s=latency_s, cut_every=cut_every)
    started = time.time()
    try:
        with proxied_runner(stack, proxy.url):
            job_ids = burst(bucket, n, seconds=0.2)
            seen = wait_all_final(bucket, job_ids, timeout=60 + n * 10)
    finally:
        proxy.close()
    limit = handler.settings.job_time_limit_s
    longest = max((m.timings.get("finished_at", 0) - m.timings.get("started_at", 0)
                   for m in seen.values() if m and m.is_final), default=0.0)
    result = report(f"store behind a proxy: +{latency_s * 1000:.0f} ms per reply chunk, every {cut_every}th "
                    "request cut", bucket, job_ids, seen, started,
                    notes=f"{proxy.cuts} of {proxy.requests} request chunks cut; longest run {longest:.1f} s "
                          f"(limit {limit} s)")
    result.evidence = {"cuts": proxy.cuts, "longest_s": longest, "limit_s": limit,
                       "max_runs": max_runs(stack, job_ids)}
    return result
