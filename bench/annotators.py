"""Milliseconds per weight-free ControlNet annotator on a 512 px real photo.

Usage: python -m bench.annotators [--size 512] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import cv2
from PIL import Image
from skimage import data

from gpu_runner import annotators as A

POSE = {"people": [{"pose_keypoints_2d": [
    256, 80, 1, 256, 150, 1, 196, 150, 1, 170, 230, 1, 150, 300, 1, 316, 150, 1, 342, 230, 1,
    362, 300, 1, 220, 300, 1, 215, 390, 1, 210, 480, 1, 292, 300, 1, 297, 390, 1, 302, 480, 1,
    240, 64, 1, 272, 64, 1, 222, 74, 1, 290, 74, 1,
]}], "canvas_width": 512, "canvas_height": 512}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    photo = Image.fromarray(data.astronaut()).resize((args.size, args.size), Image.Resampling.LANCZOS)
    sketch = A.lineart(photo)  # a dark-on-white drawing, as a user's sketch would be
    pose_json = json.dumps(POSE).encode()
    cases = {
        "canny": lambda: A.canny(photo),
        "scribble (photo, dilated canny)": lambda: A.scribble_from_photo(photo),
        "scribble (photo, xdog)": lambda: A.scribble_from_photo(photo, "xdog"),
        "sketch clean-up (Otsu + thinning)": lambda: A.scribble_from_sketch(sketch),
        "lineart (xdog)": lambda: A.lineart(photo),
        "soft edge (sobel)": lambda: A.soft_edge(photo),
        "content shuffle": lambda: A.content_shuffle(photo, 1),
        "pose (parse + render)": lambda: A.render_openpose(A.parse_openpose_keypoints(pose_json), args.size, args.size),
    }
    thinning = "cv2.ximgproc" if hasattr(cv2, "ximgproc") else "numpy Zhang-Suen"
    print(f"Command: `python -m bench.annotators --size {args.size} --repeat {args.repeat}`; "
          f"{os.cpu_count()} CPUs, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
          f"thinning: {thinning}, {platform.python_version()}.\n")
    print(f"| annotator ({args.size}² RGB) | median ms | p90 ms |")
    print("|---|---:|---:|")
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"| {name} | {statistics.median(times):.1f} | {p90:.1f} |")


if __name__ == "__main__":
    main()
