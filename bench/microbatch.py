"""Cross-job micro-batching: throughput at ``diffusion_batch_max`` 1 (off), 2 and 4, through the runner.

For each model and batch size: a private local stack whose runner loads the model (in
a warm-up job) and batches up to that many jobs per denoising call (gpu_runner/batching.py);
then ``--jobs`` txt2img job specs (``jobs/<id>.json``, each its own seed) PUT at once. Time:
the first PUT -> the last job's final manifest (its own ``finished_at`` stamp, same clock);
throughput = jobs / that time, and its ratio to batch 1 of the same model in the same run.
"Calls" counts the distinct shared calls the manifests name (``details.batch.id``): the
evidence that jobs were batched.

Models: ``tiny`` (tests/tiny_models.py) and ``full`` (bench/full_size.py: the SD1.5
architecture with random weights, ~4.3 GB in float32, built once into a cache folder; slow on
a CPU, so opt-in).

Usage:
    python -m bench.microbatch                                   # tiny, 256 px, 10 steps
    python -m bench.microbatch --models tiny,full --full-jobs 4  # and the full-size pipeline (slow on CPU)
    python -m bench.microbatch --models full --device cuda --dtype float16 --size 512 --steps 20 --full-jobs 16
                                                                 # the GPU run (issue 13)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def run_config(models_toml: Path, model: str, batch: int, *, jobs: int, params: dict[str, Any],
               device: str, dtype: str, wait_ms: int) -> dict[str, Any]:
    from bench.stack import private_stack
    from bucketbrush.store import Bucket

    with private_stack(models_file=models_toml, diffusion_device=device,
                       diffusion_dtype=dtype, diffusion_batch_max=batch, diffusion_batch_wait_ms=wait_ms,
                       diffusion_max_side=max(1024, params["width"])) as stack:
        bucket = Bucket(stack.settings_for_clients())

        def submit(job_id: str, seed: int) -> None:
            bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json",
                                 Body=json.dumps({"recipe": "txt2img", "params": {**params, "seed": seed}}))

        def wait(job_ids: list[str]) -> list[Any]:
            manifests = {}
            while len(manifests) < len(job_ids):
                for job_id in job_ids:
                    if job_id not in manifests and (m := bucket.read_manifest(job_id)) is not None and m.is_final:
                        assert m.status == "succeeded", m.error
                        manifests[job_id] = m
                time.sleep(0.1)  # the stamps are exact; polling hard would load the CPU under test
            return [manifests[j] for j in job_ids]

        submit(f"warm-{model}-{batch}", 0)  # the first call allocates and picks kernels
        wait([f"warm-{model}-{batch}"])
        job_ids = [f"mb-{model}-{batch}-{i}" for i in range(jobs)]
        t0 = time.time()
        for i, job_id in enumerate(job_ids):
            submit(job_id, 1000 + i)
        manifests = wait(job_ids)
        elapsed = max(m.timings["finished_at"] for m in manifests) - t0
        calls = {m.details["batch"]["id"] for m in manifests} if batch > 1 else set(job_ids)
        return {"model": model, "batch": batch, "jobs": jobs, "elapsed": elapsed, "calls": len(calls),
                "jobs_per_s": jobs / elapsed,
                "processing": sorted(m.timings["processing_s"] for m in manifests)[jobs // 2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny", help="tiny, full or tiny,full")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="steps of the tiny model's jobs")
    ap.add_argument("--full-steps", type=int, default=4, help="steps of the full-size model's jobs")
    ap.add_argument("--jobs", type=int, default=16, help="jobs per batch size, tiny model")
    ap.add_argument("--full-jobs", type=int, default=4, help="jobs per batch size, full-size model")
    ap.add_argument("--wait-ms", type=int, default=250, help="diffusion_batch_wait_ms")
    ap.add_argument("--device", default="cpu", help="diffusion_device: cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import torch

    from gpu_runner.devices import describe_device

    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            if model == "tiny":
                from tests.tiny_models import write_tiny_models

                toml, model_id, steps, jobs = write_tiny_models(Path(tmp) / "tiny"), "tiny", args.steps, args.jobs
            else:
                from bench.full_size import write_full_size_models

                toml, model_id, steps, jobs = write_full_size_models(), "sd15", args.full_steps, args.full_jobs
            params = {"prompt": "a lighthouse on a cliff at sunset", "steps": steps,
                      "width": args.size, "height": args.size, "model": model_id}
            for batch in batches:
                row = run_config(toml, model_id, batch, jobs=jobs, params=params, device=args.device,
                                 dtype=args.dtype, wait_ms=args.wait_ms)
                row["steps"] = steps
                rows.append(row)
                print(f"# {model} batch {batch}: {row['jobs_per_s']:.3f} jobs/s, {row['calls']} calls, "
                      f"{row['elapsed']:.1f} s", flush=True)

    device, name = describe_device(args.device, use_torch=True)
    command = " ".join(["python -m bench.microbatch", f"--models {args.models}", f"--batches {args.batches}",
                        f"--size {args.size}", f"--steps {args.steps}", f"--full-steps {args.full_steps}",
                        f"--jobs {args.jobs}", f"--full-jobs {args.full_jobs}", f"--wait-ms {args.wait_ms}",
                        f"--device {args.device}", f"--dtype {args.dtype}"])
    print(f"\n### Micro-batching: throughput through the runner at diffusion_batch_max 1/2/4 "
          f"({args.size} px, {args.dtype}, wait {args.wait_ms} ms)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {device} ({name}), torch {torch.__version__}; "
          f"command: `{command}`\n")
    print("| model | steps | batch max | jobs | shared calls | first PUT -> last manifest s | jobs/s "
          "| vs batch 1 | median processing_s per job |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {r["model"]: r["jobs_per_s"] for r in rows if r["batch"] == batches[0]}
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['batch']} | {r['jobs']} | {r['calls']} | {r['elapsed']:.2f} "
              f"| {r['jobs_per_s']:.3f} | {r['jobs_per_s'] / base[r['model']]:.2f} | {r['processing']:.2f} |")


if __name__ == "__main__":
    main()
