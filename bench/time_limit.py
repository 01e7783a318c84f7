"""How late a time limit fires: Dramatiq's TimeLimit (soft) vs the child process (hard).

A private local stack; a large JPEG filtered with ``watercolor`` (one long OpenCV call,
``cv2.stylization``) under ``time_limit_s``, alternating soft and hard specs. The overshoot
is ``finished_at - started_at - limit`` from the failed manifest (the runner's clock); the
time to the next job shows the runner is free again. Also the cost of the child process
itself on a job that finishes (a 128 px sepia: hard vs soft processing time).

    python -m bench.time_limit --n 3 --limit 2
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

from bench.stack import private_stack
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    landscape(width, height).save(buf, "JPEG")
    return buf.getvalue()


def _run(bucket: Bucket, job_id: str, doc: dict, timeout: float = 300) -> dict:
    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json", Body=json.dumps(doc))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = bucket.read_manifest(job_id)
        if m is not None and m.is_final:
            return m.model_dump()
        time.sleep(0.05)
    raise TimeoutError(job_id)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--size", default="2400x1800")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with private_stack(max_upload_bytes=20 * 2**20) as stack:
        bucket = Bucket(stack.settings_for_clients())
        big, small = "inbox/none/big.jpg", "inbox/none/small.jpg"  # `none`: their own jobs fail fast
        bucket.s3.put_object(Bucket=bucket.name, Key=big, Body=_jpeg(width, height))
        bucket.s3.put_object(Bucket=bucket.name, Key=small, Body=_jpeg(128, 96))
        full = _run(bucket, "full", {"recipe": "filter", "input": big, "params": {"style": "watercolor"}})
        over: dict[str, list[float]] = {"soft": [], "hard": []}
        small_s: dict[str, list[float]] = {"soft": [], "hard": []}
        for i in range(args.n):
            for mode in ("soft", "hard"):
                hard = mode == "hard"
                m = _run(bucket, f"{mode}-{i}", {"recipe": "filter", "input": big, "params": {"style": "watercolor"},
                                                 "time_limit_s": args.limit, "hard_time_limit": hard})
                assert m["error"]["code"] == "timed_out", m["error"]
                t = m["timings"]
                over[mode].append(t["finished_at"] - t["started_at"] - args.limit)
                ok = _run(bucket, f"{mode}-small-{i}", {"recipe": "filter", "input": small,
                                                        "params": {"style": "sepia"}, "hard_time_limit": hard})
                assert ok["status"] == "succeeded", ok["error"]
                small_s[mode].append(ok["timings"]["processing_s"])
    print(f"## Time limits: soft (Dramatiq) vs hard (child process)\n\n`python -m bench.time_limit --n {args.n} "
          f"--limit {args.limit} --size {args.size}`: `filter` watercolor on a {args.size} JPEG (one "
          f"`cv2.stylization` call, {full['timings']['processing_s']:.1f} s unlimited) under "
          f"`time_limit_s: {args.limit}`; overshoot = finished_at - started_at - limit.\n")
    print("| limit | runs | overshoot median s | overshoot max s | 128 px sepia processing median ms |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("soft", "hard"):
        print(f"| {mode} | {len(over[mode])} | {statistics.median(over[mode]):.2f} | {max(over[mode]):.2f} | "
              f"{statistics.median(small_s[mode]) * 1000:.1f} |")


if __name__ == "__main__":
    main()
