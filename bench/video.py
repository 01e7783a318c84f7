"""The video recipe: flicker with and without the temporal blend, and frames per second through
the bucket vs the bare per-frame loop, in one run.

Flicker: a generated clip (a slow camera pan, a moving ball, fresh sensor noise in every frame:
what makes per-frame stylisation shimmer) through each filter style at several blend weights;
flicker = mean absolute change (0-255) between consecutive output frames over the pixels whose
input barely changed (gpu_runner/video.py, FlickerMeter).

Throughput: the same clip and params, alternately (a) the bare loop in this process (decode,
filter, blend, encode: ``transform_video`` with the filter as the per-frame function, no bucket,
no recipe) and (b) a drop-folder upload through a private local stack (event, handler, Redis,
runner, the recipe, outputs + manifest), timed from the PUT to the final manifest's
``finished_at``. This process sleeps while the runner works, so they do not share the CPU.

Usage: python -m bench.video [--seconds 10] [--size 320x240] [--style cartoon] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from PIL import Image


def flicker_table(clip: bytes, styles: list[str], weights: list[float]) -> list[str]:
    from gpu_runner.recipes.filter import apply_filter
    from gpu_runner.video import VideoLimits, transform_video

    rows = ["| style | " + " | ".join(f"weight {w:g}" for w in weights) + " | reduction at 0.5 |",
            "|---|" + "---:|" * (len(weights) + 1)]
    for style in styles:
        def process(rgb: np.ndarray, i: int, style: str = style) -> np.ndarray:
            return np.asarray(apply_filter(Image.fromarray(rgb), style))

        values = [transform_video(clip, process, limits=VideoLimits(), temporal_weight=w,
                                  measure_flicker=True).flicker or 0.0 for w in weights]
        base = values[0]
        half = values[weights.index(0.5)] if 0.5 in weights else values[-1]
        rows.append(f"| {style} | " + " | ".join(f"{v:.2f}" for v in values) +
                    f" | {100 * (1 - half / base):.0f}% |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--style", default="cartoon")
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-flicker", action="store_true")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from bench.stack import private_stack
    from bucketbrush.jobs import ObjectRef, job_id_for
    from bucketbrush.store import Bucket
    from gpu_runner.recipes.filter import STYLES, apply_filter
    from gpu_runner.video import VideoLimits, transform_video
    from gpu_runner.video_samples import sample_clip

    clip = sample_clip(args.seconds, fps=args.fps, size=(width, height), noise=3)
    frames = round(args.seconds * args.fps)
    print(f"## Video: flicker and throughput\n\n`python -m bench.video --seconds {args.seconds:g} --size {args.size} "
          f"--style {args.style} --repeat {args.repeat}` on {platform.machine()}, {platform.python_version()}; "
          f"clip: {frames} frames {width}x{height} at {args.fps} fps, H.264 + AAC tone, {len(clip):,} bytes.\n")
    if not args.skip_flicker:
        short = sample_clip(3, fps=args.fps, size=(width, height), noise=3)
        print("Flicker (mean change between consecutive output frames where the input barely changed; "
              "lower is steadier), 3 s of the same scene:\n")
        print("\n".join(flicker_table(short, list(STYLES), [0.0, 0.3, 0.5, 0.7])) + "\n")

    def process(rgb: np.ndarray, i: int) -> np.ndarray:
        return np.asarray(apply_filter(Image.fromarray(rgb), args.style))

    def bare() -> float:
        started = time.perf_counter()
        out = transform_video(clip, process, limits=VideoLimits(), temporal_weight=args.weight)
        assert out.frames == frames
        return time.perf_counter() - started

    params = {"style": args.style, "temporal_weight": args.weight}
    bare_s, total_s, runner_s = [], [], []
    with private_stack() as stack:
        bucket = Bucket(stack.settings_for_clients())
        for i in range(args.repeat):
            bare_s.append(bare())
            key = f"inbox/video/bench-{i}-{time.time_ns()}.mp4"
            put_at = time.time()
            put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=clip, ContentType="video/mp4",
                                       Metadata={"params": json.dumps(params)})
            job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"')))
            deadline = time.monotonic() + 600
            while True:
                manifest = bucket.read_manifest(job_id)
                if manifest is not None and manifest.is_final:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job_id} not final")
                time.sleep(0.25)
            assert manifest.status == "succeeded", manifest.error
            assert manifest.details["frames"] == frames
            total_s.append(manifest.timings["finished_at"] - put_at)
            runner_s.append(manifest.timings["processing_s"])
    b, t, r = (statistics.median(v) for v in (bare_s, total_s, runner_s))
    print(f"Throughput ({args.style}, blend {args.weight:g}), median of {args.repeat} alternating runs:\n")
    print("| path | seconds | frames/s | vs bare |\n|---|---:|---:|---:|")
    print(f"| bare per-frame loop in this process (decode, filter, blend, encode) | {b:.2f} | "
          f"{frames / b:.1f} | 1.00 |")
    print(f"| the recipe in the runner (`processing_s`) | {r:.2f} | {frames / r:.1f} | {b / r:.2f} |")
    print(f"| through the bucket: PUT -> final manifest | {t:.2f} | {frames / t:.1f} | {b / t:.2f} |")
    print(f"\nall runs (s): bare {[round(x, 2) for x in bare_s]}, bucket {[round(x, 2) for x in total_s]}, "
          f"runner {[round(x, 2) for x in runner_s]}")


if __name__ == "__main__":
    main()
