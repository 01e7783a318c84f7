"""Pipeline latency: PUT -> final manifest, minus the recipe's own processing time.

Runs a private local stack (SeaweedFS, Redis, filer event source, one runner), uploads N
small images one after another into the drop folder, and reads the stamps each manifest
carries (all clocks are this machine's). Usage: python -m bench.latency [--n 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from bench.stack import pct, private_stack
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = ap.parse_args()
    import io

    buf = io.BytesIO()
    landscape(args.size, args.size).save(buf, "PNG")
    body = buf.getvalue()
    with private_stack() as stack:
        bucket = Bucket(stack.settings_for_clients())
        rows = []
        for i in range(args.n + 1):
            key = f"inbox/filter/bench/{i}.png"
            t0 = time.time()
            etag = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body,
                                        Metadata={"style": "sepia"})["ETag"].strip('"')
            job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=etag))
            while (m := bucket.read_manifest(job_id)) is None or not m.is_final:
                time.sleep(0.05)  # the stamps are exact; polling hard would load the CPU under test
            assert m.status == "succeeded", m.error
            if i == 0:
                continue  # warm-up: first connections, first import of the recipe
            t = m.timings
            rows.append({
                "put_to_queued": t["queued_at"] - t0,
                "queue_wait": t["queue_wait_s"],
                "processing": t["processing_s"],
                "total": t["finished_at"] - t0,
                "overhead": t["finished_at"] - t0 - t["processing_s"],
            })
    print(f"### Latency: PUT -> final manifest ({args.n} sequential {args.size}px uploads, filter/sepia)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          "command: `python -m bench.latency --n %d`\n" % args.n)
    print("| stage | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for name in ("put_to_queued", "queue_wait", "processing", "total", "overhead"):
        values = [r[name] * 1000 for r in rows]
        print(f"| {name} | {pct(values, 50):.1f} | {pct(values, 95):.1f} |")


if __name__ == "__main__":
    main()
