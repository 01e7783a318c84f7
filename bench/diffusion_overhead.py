"""What bucketbrush adds around diffusers: the bare pipeline call vs the ``txt2img`` recipe.

Both run the same warm tiny random SD1.5-style pipeline (tests/tiny_models.py, no weights
needed) at the same size, steps and seed; the recipe adds registry lookup, a fresh
scheduler, compel prompt encoding, the progress/cancel callback, per-image generators and
the result record. Once in float32 and once in bfloat16.

Usage: python -m bench.diffusion_overhead [--size 256] [--steps 10] [--repeat 5] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    import torch

    from gpu_runner.devices import RuntimeOptions, cpu_has_native_bf16
    from gpu_runner.models import ModelRegistry
    from gpu_runner.pipelines import ModelCache
    from gpu_runner.recipes import get_recipe
    from gpu_runner.recipes.base import JobContext
    from gpu_runner.runner import resolve_params
    from tests.tiny_models import write_tiny_models

    prompt, seed = "a lighthouse on a cliff at sunset", 7
    recipe = get_recipe("txt2img")
    params = resolve_params(recipe, {"prompt": prompt, "steps": args.steps, "seed": seed,
                                     "width": args.size, "height": args.size}, {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = ModelRegistry.from_toml(write_tiny_models(Path(tmp)))
        for dtype in args.dtypes.split(","):
            cache = ModelCache(registry, RuntimeOptions(device="cpu", dtype=dtype))
            ctx = JobContext("bench", models=cache)
            pipe, _ = cache.pipeline("tiny", "txt2img")

            def bare(pipe: object = pipe) -> None:
                pipe(prompt, num_inference_steps=args.steps, width=args.size, height=args.size,
                     generator=torch.Generator("cpu").manual_seed(seed))

            def ours(ctx: JobContext = ctx) -> None:
                recipe.run(ctx, None, params)

            timings: dict[str, list[float]] = {"bare": [], "recipe": []}
            bare(), ours()  # warm: first calls allocate and pick kernels
            for _ in range(args.repeat):
                # Interleaved, so load from other processes hits both alike.
                for name, fn in (("bare", bare), ("recipe", ours)):
                    started = time.perf_counter()
                    fn()
                    timings[name].append(time.perf_counter() - started)
            b, r = statistics.median(timings["bare"]), statistics.median(timings["recipe"])
            rows.append((dtype, b, r))

    print(f"### Diffusion overhead ({platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()})\n")
    print(f"Tiny SD1.5-style pipeline, {args.size} px, {args.steps} steps, median of {args.repeat}, warm.\n")
    print("| dtype | bare diffusers s | txt2img recipe s | recipe / bare | overhead ms |")
    print("|---|---|---|---|---|")
    for dtype, b, r in rows:
        print(f"| {dtype} | {b:.3f} | {r:.3f} | {r / b:.3f} | {(r - b) * 1000:+.0f} |")
    if len(rows) == 2:
        print(f"\n{rows[1][0]} / {rows[0][0]} (bare): {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
