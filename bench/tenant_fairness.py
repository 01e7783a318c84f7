"""Fairness between tenants: how long tenant b's single job waits, alone and behind tenant a's
burst, with one shared queue and with tenant queues (``tenant_queues``).

One private local stack per mode (one runner, one worker thread), run one after the other in
one process. Tenant a writes ``--burst`` job specs (a ``filter`` of a small image) from a
thread pool; right after, tenant b writes one. b's wait is its manifest's ``started_at``
minus the moment its spec was written (``submit_to_start_s``), split into the event source and
handler's part (``queued_at``) and the queue's part (``queue_wait_s``, from the runner). The
baseline is b's job with nothing else queued (median of ``--repeats``).

    python -m bench.tenant_fairness --burst 1000
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from bench.stack import private_stack
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket


def _png() -> bytes:
    buf = io.BytesIO()
    landscape(32, 24).save(buf, "PNG")
    return buf.getvalue()


def _spec(bucket: Bucket, tenant: str, job_id: str) -> float:
    """Write tenant's job spec; when it was written."""
    layout = bucket.layout.for_tenant(tenant)
    body = json.dumps({"recipe": "filter", "input": f"{layout.space}in.png", "params": {"style": "sepia"}})
    bucket.s3.put_object(Bucket=bucket.name, Key=f"{layout.jobs}{job_id}.json", Body=body.encode())
    return time.time()


def _wait(bucket: Bucket, tenant: str, job_id: str, timeout: float = 1800) -> dict:
    view = bucket.for_tenant(tenant)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = view.read_manifest(job_id)
        if m is not None and m.is_final:
            assert m.status == "succeeded", m.error
            return m.timings
        time.sleep(0.05)
    raise TimeoutError(job_id)


def _measure(bucket: Bucket, job_id: str) -> dict[str, float]:
    submitted = _spec(bucket, "b", job_id)
    t = _wait(bucket, "b", job_id)
    return {"submit_to_start_s": t["started_at"] - submitted, "handler_s": t["queued_at"] - submitted,
            "queue_wait_s": t["queue_wait_s"]}


def run_mode(tenant_queues: bool, burst: int, repeats: int) -> dict:
    with private_stack(tenant_queues=tenant_queues) as stack:
        bucket = Bucket(stack.settings_for_clients())
        for tenant in ("a", "b"):
            space = bucket.layout.for_tenant(tenant).space
            bucket.s3.put_object(Bucket=bucket.name, Key=f"{space}in.png", Body=_png())
        alone = [_measure(bucket, f"alone-{i}") for i in range(repeats)]
        started = time.time()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: _spec(bucket, "a", f"burst-{n:05d}"), range(burst)))
        written = time.time() - started
        behind = _measure(bucket, "behind-burst")
        # a's queue is first in, first out: its last job ends the burst (the same work in both modes).
        last = _wait(bucket, "a", f"burst-{burst - 1:05d}")
        return {
            "tenant_queues": tenant_queues,
            "alone": {k: statistics.median(m[k] for m in alone) for k in alone[0]},
            "behind_burst": behind,
            "burst_written_s": written,
            "burst_done_s": last["finished_at"] - started,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = [run_mode(False, args.burst, args.repeats), run_mode(True, args.burst, args.repeats)]
    print(f"tenant b's one job, alone and behind tenant a's burst of {args.burst} (one runner thread)")
    print(f"{'queues':<16} {'alone: start s':>15} {'behind burst: start s':>22} {'(handler s':>11} "
          f"{'queue s)':>9} {'burst done s':>13}")
    for r in results:
        b = r["behind_burst"]
        print(f"{'per tenant' if r['tenant_queues'] else 'one shared':<16} {r['alone']['submit_to_start_s']:>15.2f} "
              f"{b['submit_to_start_s']:>22.2f} {b['handler_s']:>11.2f} {b['queue_wait_s']:>9.2f} "
              f"{r['burst_done_s']:>13.1f}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
