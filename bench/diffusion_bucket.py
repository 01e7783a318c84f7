"""The whole bucket path vs the bare diffusers call, on the same warm tiny model.

For each dtype: a private local stack whose runner loads the tiny random SD1.5-style model
(tests/tiny_models.py) through its models file; this process loads the same folder with
plain diffusers. Runs alternate (bare, job, bare, job, ...) so both see the same machine
load. A job is a ``jobs/<id>.json`` txt2img spec: PUT -> event -> handler -> Redis ->
runner -> PNG + manifest; its time is PUT start -> final manifest (the manifest's own
``finished_at`` stamp, same clock).

Usage: python -m bench.diffusion_bucket [--size 256] [--steps 10] [--repeat 7] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from bench.stack import private_stack
    from bucketbrush.store import Bucket
    from gpu_runner.devices import RuntimeOptions
    from gpu_runner.models import ModelRegistry
    from gpu_runner.pipelines import ModelCache
    from gpu_runner.recipes import get_recipe
    from gpu_runner.recipes.base import JobContext
    from gpu_runner.runner import resolve_params
    from tests.tiny_models import write_tiny_models

    prompt, seed = "a lighthouse on a cliff at sunset", 7
    params = {"prompt": prompt, "steps": args.steps, "seed": seed, "width": args.size, "height": args.size}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models_toml = write_tiny_models(Path(tmp) / "models")
        for dtype in args.dtypes.split(","):
            with private_stack(models_file=models_toml, diffusion_dtype=dtype,
                               preload_models=["tiny"]) as stack:
                bucket = Bucket(stack.settings_for_clients())
                pipe = StableDiffusionPipeline.from_pretrained(models_toml.parent / "tiny-sd15",
                                                               torch_dtype=getattr(torch, dtype))

                def bare(pipe=pipe) -> float:
                    t0 = time.perf_counter()
                    pipe(prompt, num_inference_steps=args.steps, width=args.size, height=args.size,
                         generator=torch.Generator("cpu").manual_seed(seed))
                    return time.perf_counter() - t0

                def job(i: int, bucket=bucket, dtype=dtype) -> tuple[float, float]:
                    job_id = f"bench-{dtype}-{i}"
                    t0 = time.time()
                    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json",
                                         Body=json.dumps({"recipe": "txt2img", "params": params}))
                    while (m := bucket.read_manifest(job_id)) is None or not m.is_final:
                        time.sleep(0.1)  # the stamps are exact; polling hard would load the CPU under test
                    assert m.status == "succeeded", m.error
                    return m.timings["finished_at"] - t0, m.timings["processing_s"]

                # The same recipe called in this process, without the bucket or the runner process.
                cache = ModelCache(ModelRegistry.from_toml(models_toml), RuntimeOptions(device="cpu", dtype=dtype))
                recipe = get_recipe("txt2img")
                resolved = resolve_params(recipe, params, {})

                def in_process(cache=cache, recipe=recipe, resolved=resolved) -> float:
                    t0 = time.perf_counter()
                    recipe.run(JobContext("bench", models=cache), None, resolved)
                    return time.perf_counter() - t0

                bare(), in_process(), job(0)  # warm all: first calls allocate and pick kernels
                b, local, total, proc = [], [], [], []
                for i in range(1, args.repeat + 1):
                    b.append(bare())
                    local.append(in_process())
                    # Let this process's OpenMP threads stop spinning before the runner starts:
                    # measured, without the pause the job ran 1.5x slower on 2 cores.
                    time.sleep(0.5)
                    t, p = job(i)
                    total.append(t)
                    proc.append(p)
                med = statistics.median
                rows.append((dtype, med(b), med(local), med(proc), med(total)))
                del cache
    print(f"### Diffusion: bare diffusers call vs the same job through the bucket "
          f"(tiny model, {args.size} px, {args.steps} steps, warm, median of {args.repeat})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; command: "
          f"`python -m bench.diffusion_bucket --size {args.size} --steps {args.steps} --repeat {args.repeat}`\n")
    print("| dtype | bare call s | recipe, same process s | recipe in runner s | PUT -> final manifest s "
          "| bucket path s (total - runner recipe) | total / bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for dtype, b, local, p, t in rows:
        print(f"| {dtype} | {b:.3f} | {local:.3f} | {p:.3f} | {t:.3f} | {t - p:.3f} | {t / b:.2f} |")


if __name__ == "__main__":
    main()
