"""PUT -> enqueue latency per event source: from the PUT returning to the queued manifest's
``timings.queued_at`` (stamped by the handler just before it enqueues; same machine's clock).

Runs a private local stack with the runner stopped (the queue just fills), then:

- ``seaweedfs``: the filer metadata subscription (``bucketbrush events seaweedfs``);
- ``sweep``: event source stopped, one ``functions.sweep.sweep(grace_s=0)`` right after each
  PUT: the cost of discovery by listing. Deployed, a lost event waits ``grace_s`` plus up to
  one sweep interval on top of this.

Usage: python -m bench.put_to_enqueue [--n 50]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from collections.abc import Callable

from bench.stack import pct, private_stack
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket
from functions.handler import Handler
from functions.sweep import sweep


def measure(bucket: Bucket, body: bytes, tag: str, n: int, after_put: Callable[[], None]) -> list[float]:
    """Latencies in ms for ``n`` sequential uploads (plus one warm-up)."""
    out = []
    for i in range(n + 1):
        key = f"inbox/filter/{tag}/{i:04d}.png"
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, Metadata={"style": "sepia"})
        t0 = time.time()
        after_put()
        job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'),
                                      version_id=put.get("VersionId")))
        deadline = time.monotonic() + 30
        while (m := bucket.read_manifest(job_id)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no manifest for {key} after 30 s")
            time.sleep(0.05)  # the stamps are exact; polling hard would load the CPU under test
        if i:
            out.append((m.timings["queued_at"] - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    buf = io.BytesIO()
    landscape(32, 32).save(buf, "PNG")
    body = buf.getvalue()
    sweep_seconds: list[float] = []
    with private_stack() as stack:
        stack.stop_process("runner-0")
        settings = stack.settings_for_clients()
        bucket = Bucket(settings)
        rows = {"seaweedfs": measure(bucket, body, "filer", args.n, lambda: None)}
        stack.stop_process("events")
        handler = Handler.from_settings(settings)

        def sweep_now() -> None:
            sweep_seconds.append(sweep(settings, bucket, handler, grace_s=0).seconds)

        rows["sweep"] = measure(bucket, body, "sweep", args.n, sweep_now)
        listed = len(bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix="inbox/").get("Contents", []))
    print(f"### PUT -> enqueue latency ({args.n} sequential 32 px uploads per source, runner stopped)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: `python -m bench.put_to_enqueue --n {args.n}`\n")
    print("| source | p50 ms | p95 ms | max ms | how the event arrives |")
    print("|---|---:|---:|---:|---|")
    notes = {
        "seaweedfs": "`weed filer.meta.tail` subscription -> handler",
        "sweep": f"list inbox/ + jobs/ + manifests/, handler (one pass right after the PUT; "
                 f"{listed} inputs at the end, pass p50 {pct([s * 1000 for s in sweep_seconds], 50):.0f} ms)",
    }
    for name, values in rows.items():
        print(f"| {name} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {max(values):.1f} | {notes[name]} |")


if __name__ == "__main__":
    main()
