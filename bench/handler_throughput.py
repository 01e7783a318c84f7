"""Handler throughput: how many S3 events per second the functions turn into jobs.

Runs a private local stack (SeaweedFS, Redis), stops its event source and runner so nothing
else competes (the queue just fills), then measures, one event at a time:

1. raw Dramatiq enqueue (``broker.enqueue`` of a job-sized message): the ceiling;
2. ``Handler.handle`` on distinct records: Redis claim + queued manifest PUT + enqueue;
3. the HTTP endpoint (``POST /events/s3``, one record per request, keep-alive) served by
   uvicorn in its own process, when ``functions/http.py`` is present.

Usage: python -m bench.handler_throughput [--n 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import dramatiq

from bench.stack import private_stack
from bucketbrush.broker import RUN_JOB_ACTOR, build_broker, enqueue_job
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.routing import all_queues, queue_for, redis_key
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record
from functions.handler import Handler

# Started as its own process so the server does not share this process's GIL.
SERVER = """
import json, sys
import uvicorn
from pydantic import SecretStr
from bucketbrush.settings import Settings
from functions.http import create_app
# Fields functions/http.py reads that Settings may not declare yet get their defaults here.
extra = {"functions_max_body_bytes": 1 << 20, "sns_topic_arns": []}
update = {k: v for k, v in extra.items() if k not in Settings.model_fields}
settings = Settings().model_copy(update={**update, "functions_token": SecretStr(sys.argv[2])})
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            lifespan="off")
"""


def refs(bucket: str, n: int, tag: str) -> list[ObjectRef]:
    return [ObjectRef(bucket=bucket, key=f"inbox/filter/{tag}/{i:05d}.png", etag=secrets.token_hex(16), size=1000)
            for i in range(n)]


def bench_enqueue(broker: dramatiq.Broker, settings: Settings, n: int) -> float:
    queue = queue_for(settings, "filter")
    broker.declare_queue(queue)
    ref = refs(settings.bucket, 1, "raw")[0]
    messages = [dramatiq.Message(
        queue_name=queue, actor_name=RUN_JOB_ACTOR, kwargs={}, options={"time_limit": 600_000},
        args=(JobSpec(job_id=f"{i:024x}", recipe="filter", source=ref, input=ref).model_dump(mode="json"),),
    ) for i in range(n)]
    started = time.perf_counter()
    for message in messages:
        broker.enqueue(message)
    return n / (time.perf_counter() - started)


def bench_store(bucket: Bucket, n: int) -> dict[str, float]:
    """The two store calls the handler makes per event, alone: GET of the (absent) manifest,
    PUT of the queued one."""
    body = b"{" + b" " * 600 + b"}"  # about a queued manifest's size
    started = time.perf_counter()
    for i in range(n):
        bucket.read_manifest(f"absent{i:018d}")
    get_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(n):
        bucket.s3.put_object(Bucket=bucket.name, Key=f"manifests/bench{i:019d}.json", Body=body,
                             ContentType="application/json")
    return {"s3_get_404": get_rate, "s3_put": n / (time.perf_counter() - started)}


def bench_store_ceiling(bucket: Bucket, n: int, threads: int) -> float:
    """The store's concurrent PUT ceiling: ~600-byte PUTs from ``threads`` threads."""
    body = b"{" + b" " * 600 + b"}"

    def put(i: int) -> None:
        bucket.s3.put_object(Bucket=bucket.name, Key=f"manifests/ceiling{i:017d}.json", Body=body,
                             ContentType="application/json")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(threads)))  # warm-up: one connection per thread
        started = time.perf_counter()
        list(pool.map(put, range(threads, n + threads)))
    return n / (time.perf_counter() - started)


def bench_handler_pool(handler: Handler, settings: Settings, n: int) -> float:
    """``Handler.submit`` for every record, as the event sources do: the handler's pool."""
    records = [S3Record.created("bench", ref) for ref in refs(settings.bucket, n, "pool")]
    started = time.perf_counter()
    futures = [handler.submit(record) for record in records]
    wait(futures)
    elapsed = time.perf_counter() - started
    assert all(f.result().action == "enqueued" for f in futures)
    return n / elapsed


def bench_redis_only(handler: Handler, settings: Settings, n: int, threads: int) -> float:
    """The handler's Redis part alone: the claim (SET NX) and the enqueue, from ``threads``."""
    specs = [JobSpec(job_id=f"redis{threads:03d}{i:016d}", recipe="filter", source=ref, input=ref)
             for i, ref in enumerate(refs(settings.bucket, n, f"redis{threads}"))]

    def one(spec: JobSpec) -> None:
        assert handler.claims.claim(spec.job_id, spec.source.identity)
        enqueue_job(handler.broker, settings, spec)

    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(one, specs))
    return n / (time.perf_counter() - started)


def bench_handler(handler: Handler, settings: Settings, n: int) -> float:
    records = [S3Record.created("bench", ref) for ref in refs(settings.bucket, n, "direct")]
    started = time.perf_counter()
    for record in records:
        [outcome] = handler.handle([record])
        assert outcome.action == "enqueued", outcome
    return n / (time.perf_counter() - started)


def bench_http(settings: Settings, env: dict[str, str], n: int, log: Path) -> dict[str, float]:
    import httpx

    token = secrets.token_urlsafe(16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "ab") as fh:
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), token], env=env,
                                  stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/health").status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the HTTP server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
            bodies = [json.dumps({"Records": [S3Record.created("bench", ref).model_dump(mode="json", by_alias=True)]})
                      for ref in refs(settings.bucket, n + 20, "http")]
            for body in bodies[:20]:  # warm-up: connections, first imports in the server
                client.post("/events/s3", content=body).raise_for_status()
            started = time.perf_counter()
            for body in bodies[20:]:
                response = client.post("/events/s3", content=body)
                response.raise_for_status()
            rates = {"http": n / (time.perf_counter() - started)}
            # Apps and stores post in parallel: 16 clients at once (the host's pool takes them).
            bodies = [json.dumps({"Records": [S3Record.created("bench", ref).model_dump(mode="json", by_alias=True)]})
                      for ref in refs(settings.bucket, n, "http16")]
            with ThreadPoolExecutor(16) as pool:
                started = time.perf_counter()
                list(pool.map(lambda body: client.post("/events/s3", content=body).raise_for_status(), bodies))
            rates["http_16_clients"] = n / (time.perf_counter() - started)
            return rates
    finally:
        server.terminate()
        server.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    has_http = importlib.util.find_spec("functions.http") is not None
    with private_stack() as stack:
        # Only the producer side runs: no runner taking messages, no event source
        # reacting to the manifests the handler writes.
        stack.stop_process("runner-0")
        stack.stop_process("events")
        settings = stack.settings_for_clients()
        broker = build_broker(settings)
        handler = Handler(settings, Bucket(settings), broker, broker.client)
        # Warm-up for both: connection pools, the S3 client's first requests.
        [handler.handle([S3Record.created("bench", r)]) for r in refs(settings.bucket, 20, "warm")]
        threads = settings.handler_concurrency
        rates = {"enqueue": bench_enqueue(broker, settings, args.n),
                 **bench_store(handler.bucket, args.n),
                 f"s3_put_{threads}_threads": bench_store_ceiling(handler.bucket, args.n, threads),
                 "handler": bench_handler(handler, settings, args.n),
                 "handler_pool": bench_handler_pool(handler, settings, args.n),
                 "redis_only": bench_redis_only(handler, settings, args.n, 1),
                 f"redis_only_{threads}_threads": bench_redis_only(handler, settings, args.n, threads)}
        if has_http:
            env = {**os.environ, "BUCKETBRUSH_STATE_DIR": str(stack.state_dir), "BUCKETBRUSH_BUCKET": settings.bucket,
                   "BUCKETBRUSH_S3_ENDPOINT_URL": settings.s3_endpoint_url,
                   "BUCKETBRUSH_S3_ACCESS_KEY": settings.s3_access_key,
                   "BUCKETBRUSH_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
                   "BUCKETBRUSH_REDIS_URL": settings.redis_url}
            rates.update(bench_http(settings, env, args.n, stack.state_dir / "logs" / "http.log"))
        depth = sum(broker.client.hlen(f"{redis_key(settings, q)}.msgs") for q in all_queues(settings))
    print(f"### Handler throughput ({args.n} events each; SeaweedFS + Redis on loopback)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}; "
          f"command: `python -m bench.handler_throughput --n {args.n}`; queue depth after: {depth}\n")
    print("| path | what one event costs | events/s | vs raw enqueue |")
    print("|---|---|---:|---:|")
    what = {
        "enqueue": "`broker.enqueue` of a job message (1 Redis script call)",
        "s3_get_404": "S3 GET of an absent manifest (the handler's \"already finished?\" check)",
        "s3_put": "S3 PUT of a ~600-byte manifest",
        f"s3_put_{threads}_threads": f"S3 PUT of a ~600-byte manifest from {threads} threads: the store's ceiling",
        "handler": "`Handler.handle`, one event at a time: claim (SET NX) + queued manifest and its index "
                   "entry (2 S3 PUTs side by side) + enqueue",
        "handler_pool": f"`Handler.submit` of every event (the event sources' way): {threads} at once, "
                        "in order per key",
        "redis_only": "claim + enqueue alone, one at a time",
        f"redis_only_{threads}_threads": f"claim + enqueue alone, {threads} threads",
        "http": "`POST /events/s3` to uvicorn (own process), then the handler, one client",
        "http_16_clients": "`POST /events/s3`, 16 clients at once",
    }
    for name, rate in rates.items():
        print(f"| {name} | {what[name]} | {rate:,.0f} | {rate / rates['enqueue']:.2f} |")
    share = rates["handler_pool"] / rates[f"s3_put_{threads}_threads"]
    print(f"\nHandler (pool) / the store's concurrent PUT ceiling: **{share:.2f}** (each event needs 2 PUTs, "
          f"the queued manifest and its index entry: {2 * share:.2f} of the ceiling in PUTs); "
          "Redis-only claim + enqueue: "
          f"**{max(rates['redis_only'], rates[f'redis_only_{threads}_threads']):,.0f}/s**")
    if "http" in rates:
        print(f"\nHTTP / direct handler: {rates['http'] / rates['handler']:.2f}")
    else:
        print("\n(functions/http.py is absent: no HTTP row)")


if __name__ == "__main__":
    main()
