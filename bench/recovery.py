"""Recovery from a dead runner: kill -9 the runner mid-job, start a replacement, and time how
long until the killed job runs again.

Runs a private local stack (SeaweedFS, Redis, the filer event source, one runner with the
test recipes) with bucket versioning on, so every write of an output leaves a version. Each
round drops two ``test-slow`` uploads (``--seconds`` each, slow by construction), waits until
the first is running and has reported progress, SIGKILLs the runner, reads from Redis which
messages the dead runner held (its Dramatiq ack set: the running job and the one it
prefetched), starts a replacement runner and waits until one of those jobs starts again
(its manifest's ``timings.started_at``, stamped by the new runner). At the end every job must
have succeeded (lost: not) with exactly one version of exactly one output (else: written
twice). Usage: python -m bench.recovery [--n 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import time
from typing import Any

import redis

from bench.stack import pct, private_stack
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket


def wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)  # the stamps compared come from the manifests, not from this loop
    return value


def held_jobs(client: redis.Redis, settings: Settings) -> set[str]:
    """Job ids of the messages fetched but not acknowledged by any process (Dramatiq's ack
    sets, ``<ns>:__acks__.<worker>.<queue>``, on every job queue)."""
    prefix = f"{settings.broker_namespace}:__acks__."
    held: set[str] = set()
    for key in client.scan_iter(prefix + "*"):
        queue = key.decode()[len(prefix):].split(".", 1)[1]
        ids = list(client.smembers(key))
        for data in client.hmget(f"{settings.broker_namespace}:{queue}.msgs", ids) if ids else []:
            if data and (job_id := json.loads(data)["args"][0].get("job_id")):
                held.add(job_id)
    return held


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="kills")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each test-slow job")
    args = ap.parse_args()
    buf = io.BytesIO()
    landscape(64, 64).save(buf, "PNG")
    body = buf.getvalue()
    with private_stack(test_recipes=True) as stack:
        settings = stack.settings_for_clients()
        bucket = Bucket(settings)
        client = redis.Redis.from_url(settings.redis_url)
        bucket.s3.put_bucket_versioning(Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"})

        def submit(name: str) -> str:
            key = f"inbox/test-slow/recovery/{name}.png"
            etag = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, Metadata={
                "seconds": str(args.seconds), "steps": "20"})["ETag"].strip('"')
            return job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=etag))

        def manifest(job_id: str) -> Manifest | None:
            return bucket.read_manifest(job_id)

        jobs: list[str] = []
        rows = []
        for i in range(args.n):
            first, second = submit(f"{i}a"), submit(f"{i}b")
            jobs += [first, second]
            wait_for(f"job {first} running", lambda j=first: (m := manifest(j)) and m.status == "running"
                     and m.progress.step >= 1)
            pid = stack.read_state().process("runner-0").pid
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            held = wait_for("the dead runner's ack set", lambda: held_jobs(client, settings), 10)
            spawned = time.time()
            stack.restart_process("runner-0")  # returns once the new runner is consuming
            ready = time.time()

            def restarted(held: set[str] = held, killed: float = killed) -> float | None:
                starts = [m.timings["started_at"] for j in held if (m := manifest(j))
                          and m.timings.get("started_at", 0) > killed]
                return min(starts) if starts else None

            again = wait_for(f"round {i}: a held job running again", restarted)
            rows.append({"from_spawn": again - spawned, "from_kill": again - killed,
                         "startup": ready - spawned, "held": len(held)})
            print(f"round {i}: held {len(held)}, runner startup {ready - spawned:.1f} s, "
                  f"running again {again - spawned:.1f} s after the replacement started", flush=True)
        finals = {j: wait_for(f"job {j} final", lambda j=j: (m := manifest(j)) and m.is_final and m, 300)
                  for j in jobs}
        lost = sum(m.status != "succeeded" for m in finals.values())
        twice = 0
        for job_id in jobs:
            listing = bucket.s3.list_object_versions(Bucket=bucket.name, Prefix=bucket.output_key(job_id, ""))
            versions = listing.get("Versions", [])
            if len(versions) != 1:
                twice += 1
    print(f"\n### Recovery from a dead runner ({args.n} kills -9 mid-job, 2 jobs of "
          f"{args.seconds:g} s each per kill)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}; "
          f"command: `python -m bench.recovery --n {args.n}`; broker_heartbeat_timeout_s "
          f"{settings.broker_heartbeat_timeout_s:g}, "
          f"broker_maintenance_chance {settings.broker_maintenance_chance:g}\n")
    print("| | p50 s | max s |")
    print("|---|---:|---:|")
    for name, label in (("from_spawn", "**replacement runner started -> killed job running again**"),
                        ("startup", "replacement runner started -> consuming"),
                        ("from_kill", "kill -> killed job running again")):
        values = [r[name] for r in rows]
        print(f"| {label} | {pct(values, 50):.1f} | {max(values):.1f} |")
    held_total = sum(r["held"] for r in rows)
    print(f"\nJobs: {len(jobs)} ({held_total} held by a runner when it was killed); "
          f"**lost: {lost}**; **outputs written twice: {twice}** (output versions != 1).")


if __name__ == "__main__":
    main()
