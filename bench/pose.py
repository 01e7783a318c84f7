"""Pose detection and person segmentation: per-model latency at 512 px, keypoint errors and
person-mask IoU against the hand-labelled references (tests/data/), GrabCut alongside.

Usage: python -m bench.pose [--size 512] [--repeat 20]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from importlib import metadata

import cv2
import numpy as np

from bench.stack import timed
from gpu_runner import pose, segmentation, tflite
from gpu_runner.annotators import KEYPOINT_NAMES, render_openpose
from tests.references import iou, photo, reference


def latency(size: int, repeat: int) -> None:
    image = photo("astronaut").resize((size, size))
    rgb = np.asarray(image)
    load = {}
    for name in tflite.MODELS:
        t0 = time.perf_counter()
        tflite.load(name)
        load[name] = (time.perf_counter() - t0) * 1000
    roi = pose.detection_roi(pose.detect(rgb)[0], size, size)
    detector_in = pose.crop(rgb, pose.letterbox_roi(size, size), pose.DETECTOR_SIZE, cv2.BORDER_CONSTANT)[None]
    landmark_in = pose.crop(rgb, roi, pose.LANDMARK_SIZE, cv2.BORDER_REPLICATE)[None] / 255.0
    selfie_in = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)[None].astype(np.float32) / 255.0
    cases = {
        "pose_detection.tflite (224², invoke only)": (
            lambda: tflite.load("pose_detection")(detector_in / 127.5 - 1.0), "pose_detection"),
        "pose_landmark_full.tflite (256², invoke only)": (
            lambda: tflite.load("pose_landmark_full")(landmark_in), "pose_landmark_full"),
        "selfie_segmentation.tflite (256², invoke only)": (
            lambda: tflite.load("selfie_segmentation")(selfie_in), "selfie_segmentation"),
        "detector stage (letterbox + model + anchors + NMS)": (lambda: pose.detect(rgb), None),
        "landmark stage, one crop (crop + model + heatmap + projection)": (lambda: pose.landmarks(rgb, roi), None),
        "detect_poses, 1 person (detector + 2 landmark crops)": (lambda: pose.detect_poses(image), None),
        "annotate kind=pose (detect_poses + render)": (
            lambda: render_openpose(pose.detect_poses(image).skeletons(), size, size), None),
        "person mask, no refinement (model + resize)": (
            lambda: segmentation.person_foreground(image, refine=False), None),
        "person mask + guided filter (remove-bg method=person)": (
            lambda: segmentation.person_foreground(image), None),
        "GrabCut (remove-bg method=grabcut, for comparison)": (
            lambda: segmentation.grabcut_foreground(image), None),
    }
    print(f"### Latency at {size} px\n")
    print(f"| step ({size}² RGB, scikit-image's astronaut) | load ms | median ms | p90 ms |")
    print("|---|---:|---:|---:|")
    for name, (fn, model) in cases.items():
        median, p90 = timed(fn, repeat if "GrabCut" not in name else max(3, repeat // 5))
        loaded = f"{load[model]:.0f}" if model else ""
        print(f"| {name} | {loaded} | {median:.1f} | {p90:.1f} |")


def _located(person: pose.DetectedPerson, key: str, target: tuple[float, float]) -> tuple[str, tuple]:
    """The keypoint named ``key`` (the raw landmark when it is not visible)."""
    if key == "eye":  # the cameraman's near eye: whichever of the two the model put there
        key = min(("right_eye", "left_eye"), key=lambda k: math.dist(_point(person, k)[:2], target))
    point = person.keypoints[KEYPOINT_NAMES.index(key)]
    return (key, point) if point is not None else (f"{key} (hidden)", _point(person, key))


def _point(person: pose.DetectedPerson, key: str) -> tuple[float, float, float]:
    raw = person.landmarks[pose.BLAZEPOSE_TO_COCO18[KEYPOINT_NAMES.index(key)]]
    return float(raw[0]), float(raw[1]), float(min(raw[2], raw[3]))


def keypoint_errors() -> None:
    print("\n### Keypoints against the hand labels (tests/data/)\n")
    print("| photo | keypoint | detected (x, y) | label (x, y) | error px | confidence | error px, first crop only |")
    print("|---|---|---|---|---:|---:|---:|")
    errors: dict[bool, list[float]] = {True: [], False: []}
    for name in ("astronaut", "camera"):
        people = {}
        for second in (False, True):
            pose.SECOND_CROP = second
            (people[second],) = pose.detect_poses(photo(name)).people
        for key, (x, y, _tolerance) in reference(name).keypoints.items():
            shown = {second: _located(people[second], key, (x, y)) for second in (False, True)}
            for second, (_, point) in shown.items():
                errors[second].append(math.dist(point[:2], (x, y)))
            label, point = shown[True]
            print(f"| {name} | {label} | ({point[0]:.0f}, {point[1]:.0f}) | ({x:.0f}, {y:.0f}) "
                  f"| {errors[True][-1]:.1f} | {point[2]:.2f} | {errors[False][-1]:.1f} |")
    pose.SECOND_CROP = True
    for second, label in ((True, "two crops (the default)"), (False, "first crop only")):
        e = errors[second]
        print(f"\n{label}: mean error {statistics.mean(e):.1f} px, median {statistics.median(e):.1f} px, "
              f"max {max(e):.1f} px over {len(e)} points.")


def mask_quality() -> None:
    print("\n### Person masks against the hand-drawn reference (IoU at alpha 0.5)\n")
    print("| photo (reference) | person, raw | person + guided filter | GrabCut | GrabCut ms |")
    print("|---|---:|---:|---:|---:|")
    for name, held, label in (("astronaut", True, "astronaut (person + the helmet she holds)"),
                              ("astronaut", False, "astronaut (person only)"),
                              ("camera", False, "cameraman (person)")):
        image, truth = photo(name), reference(name).mask(held)
        raw = segmentation.person_foreground(image, refine=False).alpha >= 0.5
        refined = segmentation.person_foreground(image).alpha >= 0.5
        t0 = time.perf_counter()
        grabcut = segmentation.grabcut_foreground(image)[0]
        ms = (time.perf_counter() - t0) * 1000
        print(f"| {label} | {iou(raw, truth):.3f} | {iou(refined, truth):.3f} | {iou(grabcut, truth):.3f} | {ms:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"Command: `python -m bench.pose --size {args.size} --repeat {args.repeat}`; {os.cpu_count()} CPUs, "
          f"{platform.machine()}, Python {platform.python_version()}, ai-edge-litert "
          f"{metadata.version('ai-edge-litert')} (XNNPACK, default threads), models from mediapipe "
          f"{metadata.version('mediapipe')}, OpenCV {cv2.__version__}.\n")
    latency(args.size, args.repeat)
    keypoint_errors()
    mask_quality()


if __name__ == "__main__":
    main()
