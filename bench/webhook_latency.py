"""Webhook delivery latency: final manifest written -> the receiver has the signed POST.

Runs a private local stack (SeaweedFS, Redis, the filer event source, one runner with its
delivery threads) and the tests' receiver process (loopback, verifies each signature), then
N sequential ``filter`` jobs, each with a per-job webhook. "Written" is the final manifest's
``timings.finished_at`` (stamped just before its PUT); "received" is the receiver's clock after
it verified the body. Same machine, same clock. Usage: python -m bench.webhook_latency [--n 50]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stack import pct, private_stack
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket

RECEIVER = Path(__file__).resolve().parent.parent / "tests" / "webhook_receiver.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    import io

    buf = io.BytesIO()
    landscape(128, 128).save(buf, "PNG")
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with tempfile.TemporaryDirectory() as tmp, \
            private_stack(webhook_job_secret=secret, webhook_allow_private=True) as stack:
        log, port_file = Path(tmp) / "received.jsonl", Path(tmp) / "port"
        log.touch()
        receiver = subprocess.Popen([sys.executable, str(RECEIVER), secret, str(log), str(port_file)],
                                    start_new_session=True)
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            base = f"http://127.0.0.1:{port_file.read_text()}"
            bucket = Bucket(stack.settings_for_clients())
            bucket.s3.put_object(Bucket=bucket.name, Key="inbox/bench/in.png", Body=buf.getvalue())
            rows = []
            for i in range(args.n + 1):
                job_id = f"hook-bench-{i}"
                bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json", Body=json.dumps({
                    "recipe": "filter", "input": "inbox/bench/in.png", "params": {"style": "sepia"},
                    "webhook": f"{base}/ok/{job_id}"}))
                while not (got := [json.loads(line) for line in log.read_text().splitlines()
                                   if f"/ok/{job_id}" in line]):
                    time.sleep(0.02)
                [request] = got
                assert request["verified"], request["error"]
                manifest = json.loads(request["body"])["data"]
                assert manifest["status"] == "succeeded", manifest["error"]
                if i:  # the first one warms connections and imports
                    rows.append((request["received_at"] - manifest["timings"]["finished_at"]) * 1000)
        finally:
            receiver.terminate()
            receiver.wait(10)
    print(f"### Webhook delivery latency: final manifest -> receiver ({args.n} sequential filter jobs)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: `python -m bench.webhook_latency --n {args.n}`\n")
    print("| | p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|")
    print(f"| final manifest written -> verified at the receiver | {pct(rows, 50):.1f} | {pct(rows, 95):.1f} | "
          f"{max(rows):.1f} |")


if __name__ == "__main__":
    main()
