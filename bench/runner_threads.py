"""Which threads of the runner wake while it computes a job, and how often.

A private local stack with the tiny diffusion model (tests/tiny_models.py); for each
``--busy-poll-ms`` value (the runner's ``runner_busy_poll_ms``), a stack of its own. Each job is
a ``txt2img`` spec of ``--steps`` steps, long enough that the window is the job, not the queue:
the window runs from the job's ``running`` manifest to its final one. Per thread of the runner
process: voluntary context switches per second (sleeps that ended: wake-ups) and CPU cores,
from /proc/<pid>/task; and each thread's Python name and innermost frames from a ``py-spy dump``
taken mid-job, matched by thread id (py-spy is not a dependency: without it on PATH the names
read "?"; ``pip install py-spy`` in any environment). The Redis calls the stack's private Redis
served in the window come from ``INFO commandstats``.

Usage: python -m bench.runner_threads [--steps 60] [--jobs 5] [--busy-poll-ms 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.diffusion_bucket import stack_pids, thread_cpu, thread_wakeups
from bench.stack import private_stack


def py_spy_threads(pid: int) -> dict[int, tuple[str, str]]:
    """Thread id -> (Python thread name, innermost frames), from one ``py-spy dump``."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {}
    out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    threads: dict[int, tuple[str, str]] = {}
    tid, name, frames = None, "", []
    for line in [*out.splitlines(), "Thread 0 (end): \"\""]:
        if line.startswith("Thread "):
            if tid is not None:
                threads[tid] = (name, " < ".join(f.split(" (")[0] for f in frames[:3]))
            tid, name, frames = int(line.split()[1]), line.split(":", 1)[1].strip().strip('"'), []
        elif line.strip() and tid is not None:
            frames.append(line.strip())
    return threads


def redis_calls(client) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def measure(args: argparse.Namespace, busy_poll_ms: int, models_toml: Path, model_id: str) -> dict:
    import redis

    from bucketbrush.store import Bucket

    with private_stack(models_file=models_toml, diffusion_dtype="float32", preload_models=[model_id],
                       runner_busy_poll_ms=busy_poll_ms) as stack:
        settings = stack.settings_for_clients()
        bucket, client = Bucket(settings), redis.Redis.from_url(settings.redis_url)
        pid = stack_pids(stack)["runner-0"]
        windows, names = [], {}
        for i in range(args.jobs + 1):  # the first warms the model up, and is not counted
            job_id = f"threads-{busy_poll_ms}-{i}"
            params = {"prompt": "a lighthouse", "steps": args.steps, "seed": 7, "width": 256, "height": 256}
            bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json",
                                 Body=json.dumps({"recipe": "txt2img", "params": params}))
            while (m := bucket.read_manifest(job_id)) is None or m.status == "queued":
                time.sleep(0.02)
            t0, w0, c0, r0 = time.monotonic(), thread_wakeups(pid), thread_cpu(pid), redis_calls(client)
            dumped = False
            while (m := bucket.read_manifest(job_id)) is None or not m.is_final:
                if i == 1 and not dumped:
                    names, dumped = py_spy_threads(pid), True
                time.sleep(0.1)
            wall = time.monotonic() - t0
            w1, c1, r1 = thread_wakeups(pid), thread_cpu(pid), redis_calls(client)
            assert m.status == "succeeded", m.error
            if i:
                windows.append({"wall": wall, "processing": m.timings["processing_s"],
                                "wakes": {t: (w1[t] - w0.get(t, 0)) / wall for t in w1},
                                "cpu": {t: (c1.get(t, 0) - c0.get(t, 0)) / wall for t in w1},
                                "blpop": (r1.get("blpop", 0) - r0.get("blpop", 0)) / wall,
                                "calls": (sum(r1.values()) - sum(r0.values())) / wall})
        med = statistics.median
        tids = windows[0]["wakes"].keys()
        per_thread = {t: (med(w["wakes"].get(t, 0) for w in windows), med(w["cpu"].get(t, 0) for w in windows))
                      for t in tids}
        return {"processing": med(w["processing"] for w in windows),
                "wakes": med(sum(w["wakes"].values()) for w in windows),
                "blpop": med(w["blpop"] for w in windows), "calls": med(w["calls"] for w in windows),
                "threads": per_thread, "names": names}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--busy-poll-ms", default="100,1000", help="runner_busy_poll_ms values, one stack each")
    ap.add_argument("--top", type=int, default=8, help="threads listed per value")
    args = ap.parse_args()

    from gpu_runner.models import ModelRegistry
    from tests.tiny_models import write_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        models_toml = write_tiny_models(Path(tmp) / "models")
        model_id = ModelRegistry.from_toml(models_toml).default
        results = {v: measure(args, v, models_toml, model_id) for v in map(int, args.busy_poll_ms.split(","))}

    print(f"### The runner's threads during a job (tiny model, {args.steps} steps, 256 px; "
          f"medians of {args.jobs} jobs)\n")
    print(f"Command: `python -m bench.runner_threads --steps {args.steps} --jobs {args.jobs} "
          f"--busy-poll-ms {args.busy_poll_ms}`. Machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; window: `running` manifest -> final manifest.\n")
    print("| busy poll | recipe s | runner wake-ups/s | Redis BLPOP/s | Redis calls/s |")
    print("|---:|---:|---:|---:|---:|")
    for v, r in results.items():
        print(f"| {v} ms | {r['processing']:.2f} | {r['wakes']:.0f} | {r['blpop']:.0f} | {r['calls']:.0f} |")
    for v, r in results.items():
        print(f"\nBusy poll {v} ms, the {args.top} threads that woke most (name and frames from py-spy):\n")
        print("| thread | wake-ups/s | cores | name | innermost frames |")
        print("|---:|---:|---:|---|---|")
        ranked = sorted(r["threads"].items(), key=lambda kv: -kv[1][0])[:args.top]
        for tid, (wakes, cores) in ranked:
            # py-spy lists Python threads only: the others are native (torch's OpenMP pool).
            name, frames = r["names"].get(tid, ("(native)" if r["names"] else "? (no py-spy)", ""))
            print(f"| {tid} | {wakes:.0f} | {cores:.2f} | {name} | {frames} |")


if __name__ == "__main__":
    main()
