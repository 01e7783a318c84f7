"""Head-of-line blocking: a quick `filter` job submitted behind 10 slow "gpu" jobs.

A private local stack with two runners, one started with ``--serve cpu`` and one with
``--serve gpu`` (on the CPU here: the slow job is ``test-slow``, slow by construction, which
``recipe_capabilities`` declares ``gpu``). Ten ``test-slow`` uploads, then one ``filter`` upload,
through the real event source and handler. Two layouts of the same processes:

- ``single``: every recipe mapped to ``any``: one queue, which both runners consume (what
  one queue for everything does);
- ``routed``: ``test-slow`` is ``gpu`` and ``filter`` ``cpu`` (their declared needs): each
  goes to its own queue.

The filter's wait is its manifest's ``started_at - queued_at`` (the handler's enqueue to the
runner's start); its latency is PUT -> final manifest.

    python -m bench.head_of_line --slow-s 2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.helpers import png_bytes

LAYOUTS = {
    "single": {"test-slow": "any", "filter": "any"},
    "routed": {"test-slow": "gpu"},  # filter stays cpu, as declared
}


@contextmanager
def two_runner_stack(capabilities: dict[str, str]) -> Iterator[Bucket]:
    with TemporaryDirectory() as tmp:
        os.environ["BUCKETBRUSH_STATE_DIR"] = tmp
        stack = LocalStack(Settings(state_dir=Path(tmp), local_redis="always", bucket="bench", test_recipes=True,
                                    recipe_capabilities=capabilities))
        stack.up(runners=0)
        try:
            stack.start_runner("runner-cpu", "--serve", "cpu")
            stack.start_runner("runner-gpu", "--serve", "gpu")
            yield Bucket(stack.settings_for_clients())
        finally:
            stack.down()


def wait_final(bucket: Bucket, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = bucket.read_manifest(job_id)
        if m is not None and m.is_final:
            assert m.status == "succeeded", m.error
            return m.model_dump()
        time.sleep(0.02)
    raise TimeoutError(job_id)


def drop(bucket: Bucket, recipe: str, metadata: dict[str, str]) -> str:
    from bucketbrush.jobs import ObjectRef, job_id_for

    key = f"inbox/{recipe}/{uuid.uuid4().hex}.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(landscape(64, 48)), Metadata=metadata)
    return job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"')))


def one_round(bucket: Bucket, slow_s: float, n_slow: int) -> dict[str, float]:
    slow = [drop(bucket, "test-slow", {"seconds": str(slow_s), "steps": "10"}) for _ in range(n_slow)]
    put_at = time.time()
    quick = drop(bucket, "filter", {"style": "noir"})
    m = wait_final(bucket, quick)
    for job in slow:  # the next round starts with empty queues
        wait_final(bucket, job)
    t = m["timings"]
    return {"wait_s": t["started_at"] - t["queued_at"], "processing_s": t.get("processing_s", 0.0),
            "latency_s": t["finished_at"] - put_at}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow-s", type=float, default=2.0, help="each slow job's duration")
    ap.add_argument("--n-slow", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for layout, capabilities in LAYOUTS.items():
        with two_runner_stack(capabilities) as bucket:
            wait_final(bucket, drop(bucket, "filter", {"style": "noir"}))  # warm-up: the first job imports
            results[layout] = [one_round(bucket, args.slow_s, args.n_slow) for _ in range(args.rounds)]
    print(f"### Head-of-line blocking: a `filter` job behind {args.n_slow} slow jobs of {args.slow_s:g} s\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; command: "
          f"`python -m bench.head_of_line --slow-s {args.slow_s:g} --n-slow {args.n_slow} --rounds {args.rounds}`\n")
    print("| queues | filter wait in queue (s), median | filter processing (s) | PUT -> final manifest (s), median |")
    print("|---|---|---|---|")
    for layout, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        label = "one queue for all (before)" if layout == "single" else "by capability (after)"
        print(f"| {label} | {med['wait_s']:.2f} | {med['processing_s']:.3f} | {med['latency_s']:.2f} |")


if __name__ == "__main__":
    main()
