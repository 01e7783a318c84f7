"""Store requests per job, from the event to the final manifest (the client's upload excluded).

Runs a private local stack (SeaweedFS, Redis), stops its event source and runner, and plays
both in this process with the production classes: ``Handler.handle`` on the upload's event
record, then ``JobRunner.run`` on the message the handler enqueued, taken from Redis with
Dramatiq's own consumer. Every S3 request of the bucket client is counted with a botocore
``before-call`` hook (``bucketbrush.store.RequestCounter``), by stage, operation and key.
Usage: python -m bench.store_requests [--n 20]
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import platform
from collections import Counter
from datetime import UTC, datetime

from bench.stack import private_stack
from bucketbrush.broker import build_broker
from bucketbrush.claims import Claims
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.routing import queue_for
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket, RequestCounter
from bucketbrush.webhooks import Notifier
from functions.events import S3Record
from functions.handler import Handler
from gpu_runner.runner import JobRunner

# (operation, key kind) -> what the request is for, in the order a job makes them.
WHAT = {
    ("GetObject", "manifest"): "read the manifest",
    ("PutObject", "manifest"): "write a manifest (queued, running, final)",
    ("PutObject", "index"): "job index entry (bucketbrush/index.py)",
    ("DeleteObjects", "index"): "drop the job's older index entries",
    ("HeadObject", "cancel"): "cancel requested?",
    ("GetObject", "input"): "read the input",
    ("PutObject", "output"): "write the output",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    buf = io.BytesIO()
    landscape(128, 128).save(buf, "PNG")
    body = buf.getvalue()
    with private_stack() as stack:
        stack.stop_process("runner-0")
        stack.stop_process("events")
        settings = stack.settings_for_clients()
        uploads = Bucket(settings)  # the client's own: its upload is not counted
        bucket = Bucket(settings)
        counter = RequestCounter(settings)
        counter.attach(bucket.s3)
        broker = build_broker(settings)
        handler = Handler(settings, bucket, broker, broker.client)
        # As gpu_runner/worker.py builds it (before this change: no done markers).
        marks = "claims" in inspect.signature(JobRunner).parameters
        claims = [Claims(broker.client, settings)] if marks else []
        runner = JobRunner(bucket, None, Notifier(settings, broker), *claims)
        # Drop-folder uploads are bulk jobs (bucketbrush/routing.py).
        consumer = broker.consume(queue_for(settings, "filter", "bulk"), prefetch=1, timeout=100)
        stages: dict[str, Counter[tuple[str, str]]] = {"handler": Counter(), "runner": Counter()}
        for i in range(args.n + 1):
            key = f"inbox/filter/requests/{i}.png"
            etag = uploads.s3.put_object(Bucket=bucket.name, Key=key, Body=body,
                                         Metadata={"style": "sepia"})["ETag"].strip('"')
            # As the filer subscription announces it: with the event's time.
            record = S3Record.created("seaweedfs", ObjectRef(bucket=bucket.name, key=key, etag=etag, size=len(body)),
                                      event_time=datetime.now(UTC).isoformat())
            [outcome] = handler.handle([record])
            assert outcome.action == "enqueued", outcome
            handled = counter.take()
            while (message := next(consumer)) is None:
                pass
            delivery = {"delivery": message.message_id} if marks else {}
            manifest = runner.run(JobSpec.model_validate(message.args[0]), **delivery)
            consumer.ack(message)
            ran = counter.take()
            assert manifest.status == "succeeded" and len(manifest.outputs) == 1, manifest
            if i:  # the first job warms the connections
                stages["handler"] += handled
                stages["runner"] += ran
        consumer.close()
    print(f"### Store requests per job ({args.n} filter/sepia jobs, one output each)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: `python -m bench.store_requests --n {args.n}`\n")
    print("| stage | request | for | per job |")
    print("|---|---|---|---:|")
    for stage, counts in stages.items():
        for (op, kind), n in sorted(counts.items(), key=lambda kv: list(WHAT).index(kv[0]) if kv[0] in WHAT else 99):
            print(f"| {stage} | {op} {kind} | {WHAT.get((op, kind), '')} | {n / args.n:g} |")
    total = sum(sum(c.values()) for c in stages.values()) / args.n
    index = sum(n for c in stages.values() for (_, kind), n in c.items() if kind == "index") / args.n
    print(f"| **all** | | **event -> final manifest** | **{total:g}** |")
    print(f"| | | of which the job index | {index:g} |")


if __name__ == "__main__":
    main()
