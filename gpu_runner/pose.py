"""Pose from a photo: MediaPipe's two-stage BlazePose pipeline on LiteRT, as OpenPose-18.

Stage 1, the detector (``pose_detection.tflite``, 224x224): the whole image letterboxed to a
square, values in [-1, 1]; 2254 SSD anchors; each anchor regresses a box (the face) and four
alignment keypoints: 0 mid-hip centre, 1 a point that encodes the full body's size and
rotation, 2 mid-shoulder centre, 3 the same for the upper body. Scores are sigmoids (logits
clipped to +-100), kept from 0.5; weighted non-max suppression at IoU 0.3 merges overlapping
detections into score-weighted averages.

Stage 2, per detection, the region of interest: centred on keypoint 0, side twice the distance
from keypoint 0 to keypoint 1, rotated so that the hip-to-scale vector points up (target
angle 90 degrees), enlarged 1.25x. That rotated square is cropped to 256x256 (values in
[0, 1], border replicated) for the landmark model (``pose_landmark_full.tflite``): 39 points
(33 landmarks + 6 auxiliary) of x, y, z, visibility and presence logits, a pose-presence score
(kept from 0.5) and a 64x64 heatmap per point that refines each landmark (7x7 window,
weighted mean when its peak is at least 0.5). Landmarks are then mapped back through the
rotated crop to image pixels. Two of the 6 auxiliary points are alignment points for the next
crop (``pose_landmarks_to_roi.pbtxt``: the same rule as the detector's keypoints 0 and 1);
MediaPipe uses them on a video's next frame; here (``SECOND_CROP``) the landmark model runs
once more on that crop, centred on the body rather than on the detector's guess. Measured
against the hand labels (tests/data/, 9 points on 2 photos): the arms come out nearer (the
astronaut's elbow 23 -> 19 px off, her wrist 34 -> 8 px), the face a little farther (2-5 ->
7-13 px); mean error 11.1 -> 10.5 px. For a ControlNet skeleton the limbs matter more.

Every constant is from MediaPipe v0.10.21's graphs (the version of the wheel the models come
from): ``modules/pose_detection/pose_detection_cpu.pbtxt`` (ImageToTensor, SsdAnchors,
TensorsToDetections, NonMaxSuppression), ``modules/pose_landmark/pose_detection_to_roi.pbtxt``
(AlignmentPointsRects, RectTransformation), ``pose_landmark_by_roi_cpu.pbtxt`` and
``tensors_to_pose_landmarks_and_segmentation.pbtxt`` (TensorsToLandmarks,
RefineLandmarksFromHeatmap), ``pose_landmarks_to_roi.pbtxt``; the calculators' C++ gives the
arithmetic (the crop is the OpenCV converter's: the region's corners onto the tensor's).

The 33 BlazePose landmarks become OpenPose's COCO-18 layout (what ``annotators`` renders and
ControlNet's openpose models expect); the neck is the midpoint of the shoulders. A point is
kept when its visibility and presence are at least 0.5 (MediaPipe's own drawing threshold)
and it lies inside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from gpu_runner import tflite
from gpu_runner.annotators import KEYPOINT_NAMES, Person

# -- detector (pose_detection_cpu.pbtxt) ---------------------------------------------------
DETECTOR_SIZE = 224
ANCHOR_OPTIONS: dict[str, Any] = {
    "num_layers": 5, "min_scale": 0.1484375, "max_scale": 0.75, "input_size": 224,
    "anchor_offset": 0.5, "strides": (8, 16, 32, 32, 32), "aspect_ratios": (1.0,),
    "fixed_anchor_size": True, "interpolated_scale_aspect_ratio": 1.0,  # the proto's default
}
NUM_KEYPOINTS = 4
SCORE_CLIP = 100.0
MIN_DETECTION_SCORE = 0.5
NMS_IOU = 0.3
# -- region of interest (pose_detection_to_roi.pbtxt) ---------------------------------------
ROI_CENTER_KEYPOINT, ROI_SCALE_KEYPOINT = 0, 1
ROI_TARGET_ANGLE = math.pi / 2
ROI_ENLARGE = 1.25
# -- landmarks (pose_landmark_by_roi_cpu.pbtxt, tensors_to_pose_landmarks_and_segmentation.pbtxt)
LANDMARK_SIZE = 256
NUM_LANDMARKS = 33  # of 39 rows; the next 2 are alignment points for the next crop
AUX_CENTER, AUX_SCALE = 33, 34  # pose_landmarks_to_roi.pbtxt: centre, then size and rotation
SECOND_CROP = True  # run the landmark model again on the crop its own alignment points give
MIN_PRESENCE = 0.5
HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5
# -- OpenPose-18 -----------------------------------------------------------------------------
MIN_VISIBILITY = 0.5
# BlazePose landmark index of each COCO-18 keypoint; None: the neck (mid-shoulders).
BLAZEPOSE_TO_COCO18: tuple[int | None, ...] = (
    0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7,
)
LEFT_SHOULDER, RIGHT_SHOULDER = 11, 12
DETECTOR = "mediapipe-blazepose"
DEFAULT_MAX_PEOPLE = 5
MAX_PEOPLE = 10


def no_pose_warning(instead: str) -> str:
    """The manifest warning when the detector finds nobody (a stable prefix apps can match)."""
    return f"no_pose_found: no person was detected in the image; {instead}"


@dataclass(frozen=True)
class RotatedRect:
    """A region in image pixels: centre, size and rotation (radians, clockwise on screen)."""

    cx: float
    cy: float
    width: float
    height: float
    rotation: float = 0.0

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image pixels of points at (u, v), fractions (0-1) of the region's width and height."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        du, dv = (np.asarray(u) - 0.5) * self.width, (np.asarray(v) - 0.5) * self.height
        return self.cx + c * du - s * dv, self.cy + s * du + c * dv


@dataclass(frozen=True)
class Detection:
    """A detector output, normalised to the image (0-1): box (xmin, ymin, xmax, ymax), 4 keypoints."""

    score: float
    box: tuple[float, float, float, float]
    keypoints: np.ndarray  # (4, 2)


@dataclass(frozen=True)
class DetectedPerson:
    """One person: detector score, landmark-model presence, the ROI and 33 landmarks in pixels."""

    score: float
    presence: float
    roi: RotatedRect
    landmarks: np.ndarray  # (33, 4): x, y (image pixels), visibility, presence (0-1)
    keypoints: tuple[tuple[float, float, float] | None, ...]  # OpenPose-18: x, y, confidence

    def person(self, width: int, height: int) -> Person:
        """The skeleton for ``annotators.render_openpose``, on a ``width`` x ``height`` canvas."""
        return Person(tuple(None if k is None else (k[0], k[1]) for k in self.keypoints), canvas=(width, height))

    @property
    def visible(self) -> int:
        return sum(k is not None for k in self.keypoints)


@dataclass(frozen=True)
class PoseResult:
    width: int
    height: int
    people: tuple[DetectedPerson, ...]
    candidates: int  # detections after NMS, before the landmark model's presence check

    def skeletons(self) -> list[Person]:
        return [p.person(self.width, self.height) for p in self.people]

    def openpose_json(self) -> dict[str, Any]:
        """OpenPose JSON (COCO-18 ``pose_keypoints_2d``: x, y, confidence; 0, 0, 0 when not
        visible) that ``annotators.parse_openpose_keypoints`` and pose editors read."""
        people = []
        for p in self.people:
            flat: list[float] = []
            for k in p.keypoints:
                flat += [0.0, 0.0, 0.0] if k is None else [round(k[0], 2), round(k[1], 2), round(k[2], 4)]
            people.append({"pose_keypoints_2d": flat, "score": round(p.score, 4), "presence": round(p.presence, 4)})
        return {"version": 1.3, "people": people, "canvas_width": self.width, "canvas_height": self.height,
                "keypoint_names": list(KEYPOINT_NAMES), "detector": DETECTOR}

    def details(self) -> dict[str, Any]:
        """What the manifest records about the detection."""
        return {
            "source": "detected", "detector": DETECTOR,
            "models": [tflite.load(n).describe() for n in ("pose_detection", "pose_landmark_full")],
            "landmarks": NUM_LANDMARKS, "keypoints": "openpose-18", "people": len(self.people),
            "candidates": self.candidates,
            "confidence": [round(p.score, 4) for p in self.people],
            "presence": [round(p.presence, 4) for p in self.people],
            "visible_keypoints": [p.visible for p in self.people],
        }


# -- stage 1: detector -------------------------------------------------------------------


def ssd_anchors(num_layers: int, min_scale: float, max_scale: float, input_size: int, anchor_offset: float,
                strides: Sequence[int], aspect_ratios: Sequence[float], fixed_anchor_size: bool,
                interpolated_scale_aspect_ratio: float = 1.0) -> np.ndarray:
    """SSD anchors as MediaPipe's SsdAnchorsCalculator makes them: (N, 4) x, y, w, h, normalised.

    Layers with the same stride share one grid; each grid cell gets one anchor per aspect
    ratio per layer, plus one with ``interpolated_scale_aspect_ratio`` at the geometric mean of
    this layer's scale and the next's (1.0 past the last layer).
    """
    def scale(i: int) -> float:
        return (min_scale + max_scale) / 2 if len(strides) == 1 else \
            min_scale + (max_scale - min_scale) * i / (len(strides) - 1)

    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < num_layers:
        sizes: list[tuple[float, float]] = []  # (w, h) per anchor in a cell
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            for ratio in aspect_ratios:
                sizes.append((scale(last) * math.sqrt(ratio), scale(last) / math.sqrt(ratio)))
            if interpolated_scale_aspect_ratio > 0:
                following = 1.0 if last == len(strides) - 1 else scale(last + 1)
                s = math.sqrt(scale(last) * following)
                r = interpolated_scale_aspect_ratio
                sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
            last += 1
        side = math.ceil(input_size / strides[layer])
        for y in range(side):
            for x in range(side):
                for w, h in sizes:
                    anchors.append(((x + anchor_offset) / side, (y + anchor_offset) / side,
                                    1.0 if fixed_anchor_size else w, 1.0 if fixed_anchor_size else h))
        layer = last
    return np.asarray(anchors, np.float32)


ANCHORS = ssd_anchors(**ANCHOR_OPTIONS)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray = ANCHORS,
                      min_score: float = MIN_DETECTION_SCORE, scale: float = DETECTOR_SIZE) -> list[Detection]:
    """Detections from the detector's raw outputs (N x 12 regressions, N scores), normalised to
    the letterboxed input (TensorsToDetectionsCalculator, box format XYWH)."""
    raw_boxes = raw_boxes.reshape(len(anchors), -1)
    scores = _sigmoid(np.clip(raw_scores.reshape(-1), -SCORE_CLIP, SCORE_CLIP))
    ax, ay, aw, ah = anchors.T
    cx = raw_boxes[:, 0] / scale * aw + ax
    cy = raw_boxes[:, 1] / scale * ah + ay
    w, h = raw_boxes[:, 2] / scale * aw, raw_boxes[:, 3] / scale * ah
    kx = raw_boxes[:, 4::2][:, :NUM_KEYPOINTS] / scale * aw[:, None] + ax[:, None]
    ky = raw_boxes[:, 5::2][:, :NUM_KEYPOINTS] / scale * ah[:, None] + ay[:, None]
    keep = np.flatnonzero((scores >= min_score) & (w >= 0) & (h >= 0))
    return [Detection(float(scores[i]), (float(cx[i] - w[i] / 2), float(cy[i] - h[i] / 2),
                                         float(cx[i] + w[i] / 2), float(cy[i] + h[i] / 2)),
                      np.stack([kx[i], ky[i]], axis=1)) for i in keep]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes; 0 when they do not meet."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix < 0 or iy < 0:  # Rectangle::Intersects: touching edges still intersect (with area 0)
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def weighted_nms(detections: Sequence[Detection], threshold: float = NMS_IOU) -> list[Detection]:
    """MediaPipe's WEIGHTED non-max suppression: by falling score, each detection absorbs those
    overlapping it by more than ``threshold`` IoU (itself included); the box and keypoints
    become their score-weighted means, the score stays the best one's."""
    remaining = sorted(detections, key=lambda d: d.score, reverse=True)
    out: list[Detection] = []
    while remaining:
        top = remaining[0]
        group = [d for d in remaining if iou(d.box, top.box) > threshold]
        rest = [d for d in remaining if iou(d.box, top.box) <= threshold]
        if group:
            weights = np.array([d.score for d in group], np.float64)
            boxes = np.array([d.box for d in group], np.float64)
            points = np.stack([d.keypoints for d in group]).astype(np.float64)
            box = tuple(float(v) for v in (weights[:, None] * boxes).sum(0) / weights.sum())
            keypoints = ((weights[:, None, None] * points).sum(0) / weights.sum()).astype(np.float32)
            top = Detection(top.score, box, keypoints)  # type: ignore[arg-type]
        out.append(top)
        if len(rest) == len(remaining):
            break
        remaining = rest
    return out


def crop(rgb: np.ndarray, roi: RotatedRect, size: int, border: int) -> np.ndarray:
    """The rotated region ``roi`` of ``rgb`` resampled to ``size`` x ``size`` (float32, 0-255),
    as ImageToTensorCalculator's OpenCV converter does: the region's corners to the tensor's."""
    corners = cv2.boxPoints(((roi.cx, roi.cy), (roi.width, roi.height), math.degrees(roi.rotation)))
    # boxPoints order: bottom-left, top-left, top-right (then bottom-right).
    target = np.array([[0, size], [0, 0], [size, 0]], np.float32)
    matrix = cv2.getAffineTransform(corners[:3].astype(np.float32), target)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border,
                          borderValue=(0, 0, 0)).astype(np.float32)


def letterbox_roi(width: int, height: int) -> RotatedRect:
    """The whole image padded to a square (keep_aspect_ratio: the long side, centred)."""
    side = float(max(width, height))
    return RotatedRect(width / 2, height / 2, side, side)


def detect(rgb: np.ndarray) -> list[Detection]:
    """Pose detections in ``rgb`` (HxWx3 uint8), normalised to the image, after NMS."""
    height, width = rgb.shape[:2]
    roi = letterbox_roi(width, height)
    tensor = crop(rgb, roi, DETECTOR_SIZE, cv2.BORDER_CONSTANT) / 127.5 - 1.0
    raw_boxes, raw_scores = tflite.load("pose_detection")(tensor[None])
    out = []
    for d in weighted_nms(decode_detections(raw_boxes[0], raw_scores[0])):
        # Letterbox removal: from the padded square back to the image.
        (x0, x1), (y0, y1) = (roi.to_image(np.array([d.box[0], d.box[2]]), np.array([d.box[1], d.box[3]])))
        kx, ky = roi.to_image(d.keypoints[:, 0], d.keypoints[:, 1])
        out.append(Detection(d.score, (float(x0) / width, float(y0) / height, float(x1) / width, float(y1) / height),
                             np.stack([kx / width, ky / height], axis=1).astype(np.float32)))
    return out


# -- stage 2: landmarks ------------------------------------------------------------------


def normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def alignment_roi(center: Sequence[float], scale_point: Sequence[float]) -> RotatedRect:
    """AlignmentPointsRectsCalculator (target angle 90 degrees), then RectTransformationCalculator
    (x1.25, square on the long side), in image pixels: a square centred on ``center``, its side
    twice the distance to ``scale_point``, rotated so that ``scale_point`` is straight above."""
    (x0, y0), (x1, y1) = center, scale_point
    side = 2.0 * math.hypot(x1 - x0, y1 - y0) * ROI_ENLARGE
    rotation = normalize_radians(ROI_TARGET_ANGLE - math.atan2(-(y1 - y0), x1 - x0))
    return RotatedRect(float(x0), float(y0), side, side, rotation)


def detection_roi(detection: Detection, width: int, height: int) -> RotatedRect:
    """The landmark model's region for a detection (pose_detection_to_roi.pbtxt): keypoint 0
    (mid-hip) is the centre, keypoint 1 gives size and rotation."""
    size = np.array([width, height], np.float64)
    points = detection.keypoints * size
    return alignment_roi(points[ROI_CENTER_KEYPOINT], points[ROI_SCALE_KEYPOINT])


def refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL,
                        min_confidence: float = HEATMAP_MIN_CONFIDENCE) -> np.ndarray:
    """RefineLandmarksFromHeatmapCalculator: each point (normalised x, y) moves to the
    sigmoid-weighted mean of its heatmap in a ``kernel`` window when the window's peak is at
    least ``min_confidence``; points off the heatmap stay."""
    hm_h, hm_w, _ = heatmap.shape
    out = xy.copy()
    half = (kernel - 1) // 2
    for i, (x, y) in enumerate(xy):
        col, row = int(x * hm_w), int(y * hm_h)  # C++ truncation toward zero
        if not (0 <= col < hm_w and 0 <= row < hm_h):
            continue
        r0, r1, c0, c1 = max(0, row - half), min(hm_h, row + half + 1), max(0, col - half), min(hm_w, col + half + 1)
        conf = 1.0 / (1.0 + np.exp(-heatmap[r0:r1, c0:c1, i].astype(np.float64)))
        total = conf.sum()
        if conf.max() >= min_confidence and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i] = ((cols * conf).sum() / hm_w / total, (rows * conf).sum() / hm_h / total)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def landmarks(rgb: np.ndarray, roi: RotatedRect) -> tuple[float, np.ndarray, RotatedRect]:
    """The landmark model on ``roi``: pose presence (0-1); 33 x (x, y, visibility, presence),
    x and y in image pixels; and the region its two auxiliary points give (the next crop)."""
    tensor = crop(rgb, roi, LANDMARK_SIZE, cv2.BORDER_REPLICATE) / 255.0
    raw, flag, _segmentation, heatmap, _world = tflite.load("pose_landmark_full")(tensor[None])
    rows = raw.reshape(-1, 5)  # 39 x (x, y, z, visibility, presence), x/y in tensor pixels
    xy = refine_from_heatmap(rows[:, :2] / LANDMARK_SIZE, heatmap[0])
    x, y = roi.to_image(xy[:, 0], xy[:, 1])
    marks = np.stack([x[:NUM_LANDMARKS], y[:NUM_LANDMARKS], _sigmoid(rows[:NUM_LANDMARKS, 3]),
                      _sigmoid(rows[:NUM_LANDMARKS, 4])], axis=1).astype(np.float32)
    aux = alignment_roi((x[AUX_CENTER], y[AUX_CENTER]), (x[AUX_SCALE], y[AUX_SCALE]))
    return float(flag.reshape(-1)[0]), marks, aux


def to_openpose(marks: np.ndarray, width: int, height: int,
                min_visibility: float = MIN_VISIBILITY) -> tuple[tuple[float, float, float] | None, ...]:
    """BlazePose's 33 landmarks (pixels, visibility, presence) as OpenPose COCO-18 keypoints
    (x, y, confidence), None where not visible or outside the image."""
    def point(i: int) -> tuple[float, float, float]:
        x, y, vis, pres = (float(v) for v in marks[i])
        return x, y, min(vis, pres)

    out: list[tuple[float, float, float] | None] = []
    for index in BLAZEPOSE_TO_COCO18:
        if index is None:  # the neck: midpoint of the shoulders, as sure as the less sure one
            (lx, ly, lc), (rx, ry, rc) = point(LEFT_SHOULDER), point(RIGHT_SHOULDER)
            x, y, c = (lx + rx) / 2, (ly + ry) / 2, min(lc, rc)
        else:
            x, y, c = point(index)
        inside = 0 <= x < width and 0 <= y < height
        out.append((x, y, c) if c >= min_visibility and inside else None)
    return tuple(out)


def detect_poses(image: Image.Image, max_people: int = DEFAULT_MAX_PEOPLE) -> PoseResult:
    """Every person the detector finds in ``image`` (up to ``max_people``, best first), with
    landmarks. Raises ModelUnavailable when the runtime or the models are not installed."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    detections = detect(rgb)
    people = []
    for detection in detections[:max_people]:
        roi = detection_roi(detection, width, height)
        if roi.width < 1:
            continue
        presence, marks, next_roi = landmarks(rgb, roi)
        if presence < MIN_PRESENCE:
            continue
        # A second crop from the landmark model's own alignment points, as MediaPipe does on
        # the next frame of a video: better centred and oriented than the detector's guess.
        if SECOND_CROP and next_roi.width >= 1:
            again = landmarks(rgb, next_roi)
            if again[0] >= MIN_PRESENCE:
                (presence, marks, _), roi = again, next_roi
        keypoints = to_openpose(marks, width, height)
        if any(k is not None for k in keypoints):
            people.append(DetectedPerson(detection.score, presence, roi, marks, keypoints))
    return PoseResult(width, height, tuple(people), len(detections))
