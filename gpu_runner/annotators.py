"""ControlNet annotators that need no weights: OpenCV and numpy only, a few ms each.

Every function takes and returns an RGB PIL image. Edge-like maps follow ControlNet's
convention (white lines on black) except ``lineart``, which draws dark lines on white paper
unless asked otherwise. Pose maps are drawn from keypoints the user supplies (OpenPose JSON);
detecting a pose in a photo needs weights and is not done here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from bucketbrush.errors import InvalidKeypoints


def _rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB; transparent pixels become white (sketches drawn on a clear canvas)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return np.asarray(image.convert("RGB"))


def _gray(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY)


def _to_image(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))


# -- edges --------------------------------------------------------------------------------


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges (ControlNet ``canny``): 1 px white edges on black.

    ``low``/``high`` are the hysteresis thresholds on the Sobel gradient magnitude of the grey
    image (ControlNet's defaults are 100/200); lower values keep more, weaker edges.
    """
    return _to_image(cv2.Canny(_gray(image), low, high))


def _auto_canny(gray: np.ndarray) -> np.ndarray:
    # Thresholds around the median brightness adapt to the photo's exposure.
    median = float(np.median(gray))
    return cv2.Canny(gray, int(max(0, 0.66 * median)), int(min(255, 1.33 * median)))


def _xdog_dog(gray: np.ndarray, sigma: float, k: float) -> np.ndarray:
    img = gray.astype(np.float32) / 255.0
    return cv2.GaussianBlur(img, (0, 0), sigma), cv2.GaussianBlur(img, (0, 0), sigma * k)


def scribble_from_photo(image: Image.Image, method: str = "canny", line_width: int = 3) -> Image.Image:
    """A scribble-like map of a photo: bold white lines on black (ControlNet ``scribble``).

    ``method="canny"`` dilates automatically-thresholded Canny edges of a smoothed copy;
    ``method="xdog"`` thresholds a difference of Gaussians (the A1111 ``scribble_xdog``
    preprocessor). ``line_width`` is the stroke width in pixels.
    """
    gray = cv2.GaussianBlur(_gray(image), (5, 5), 0)
    if method == "canny":
        lines = _auto_canny(gray)
    elif method == "xdog":
        fine, coarse = _xdog_dog(gray, 0.5, 10.0)
        # Dark-side response only: a line where the pixel is darker than its surroundings.
        lines = np.where((coarse - fine) * 510.0 > 32.0, 255, 0).astype(np.uint8)
    else:
        raise ValueError(f"unknown scribble method {method!r}; use 'canny' or 'xdog'")
    return _to_image(_widen(lines, line_width))


def _widen(mask: np.ndarray, line_width: int) -> np.ndarray:
    if line_width <= 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (line_width, line_width))
    return cv2.dilate(mask, kernel)


def _zhang_suen(mask: np.ndarray) -> np.ndarray:
    """1 px skeleton of a boolean mask (Zhang-Suen thinning, vectorised)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for first_pass in (True, False):
            p2, p3, p4 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:]
            p5, p6, p7 = img[2:, 2:], img[2:, 1:-1], img[2:, :-2]
            p8, p9 = img[1:-1, :-2], img[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            neighbours = sum(p.astype(np.int8) for p in ring[:-1])
            transitions = sum(((a == 0) & (b == 1)).astype(np.int8) for a, b in zip(ring, ring[1:], strict=False))
            if first_pass:
                side = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                side = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img[1:-1, 1:-1] == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & side
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _thin(mask: np.ndarray) -> np.ndarray:
    ximgproc = getattr(cv2, "ximgproc", None)  # only in opencv-contrib builds
    if ximgproc is not None:
        return ximgproc.thinning(mask.astype(np.uint8) * 255) > 0
    return _zhang_suen(mask)


def scribble_from_sketch(image: Image.Image, line_width: int = 3) -> Image.Image:
    """Clean up a user's sketch into a ControlNet scribble: white strokes on black.

    The sketch is inverted when it is dark lines on light paper (the usual case), binarised
    with Otsu's threshold, thinned to a 1 px skeleton (``cv2.ximgproc.thinning`` when the
    contrib build is installed, Zhang-Suen in numpy otherwise) and redrawn ``line_width`` px
    wide, so thick marker strokes and thin pencil strokes come out alike.
    """
    gray = _gray(image)
    if np.median(gray) > 127:  # mostly light paper: the strokes are the dark pixels
        gray = 255 - gray
    _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Close pinholes so a hollow marker stroke does not thin into two parallel lines.
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    skeleton = _thin(binary > 0).astype(np.uint8) * 255
    return _to_image(_widen(skeleton, line_width))


def lineart(
    image: Image.Image,
    sigma: float = 1.0,
    k: float = 1.6,
    p: float = 40.0,
    epsilon: float = -0.02,
    phi: float = 50.0,
    white_background: bool = True,
) -> Image.Image:
    """XDoG line drawing (Winnemöller et al. 2012): dark, soft-edged lines on white.

    ``sigma`` sets the line scale, ``p`` the edge sharpening, ``epsilon`` the threshold (above
    0, dark areas fill with ink; below, only edges do) and ``phi`` the softness of the ramp.
    ControlNet's lineart models want the inverse (white lines on black): pass
    ``white_background=False``.
    """
    fine, coarse = _xdog_dog(_gray(image), sigma, k)
    sharpened = (1.0 + p) * fine - p * coarse
    # Soft threshold: 1 (paper) above epsilon, a tanh ramp into ink below it.
    out = np.where(sharpened >= epsilon, 1.0, 1.0 + np.tanh(phi * (sharpened - epsilon)))
    gray = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _to_image(gray if white_background else 255 - gray)


def soft_edge(image: Image.Image, blur: float = 1.0) -> Image.Image:
    """Soft edges (stand-in for ControlNet ``softedge``/HED): Sobel magnitude on black.

    The gradient magnitude of a lightly blurred grey copy, scaled so its 99.5th percentile is
    white; flat areas stay black, strong edges saturate, texture shows as grey.
    """
    gray = _gray(image).astype(np.float32)
    if blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy)
    top = float(np.percentile(magnitude, 99.5))
    if top <= 1e-6:
        return _to_image(np.zeros(magnitude.shape, np.uint8))
    return _to_image(np.clip(magnitude * (255.0 / top), 0, 255).astype(np.uint8))


# -- content shuffle ----------------------------------------------------------------------


def _noise_disk(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    # Smooth random field in [0, 1]: a coarse uniform grid upsampled with bicubic.
    grid = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    field = cv2.resize(grid, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    field = field[cell:cell + height, cell:cell + width]
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def content_shuffle(image: Image.Image, seed: int = 0, cell: int = 256) -> Image.Image:
    """ControlNet ``shuffle``: the image's own pixels pulled along a smooth random flow.

    Colours and textures survive, layout does not. ``seed`` makes it repeatable; ``cell`` is
    the size of the random flow's features (ControlNet uses 256).
    """
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    map_x = _noise_disk(rng, height, width, cell) * float(width - 1)
    map_y = _noise_disk(rng, height, width, cell) * float(height - 1)
    return Image.fromarray(cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR))


# -- pose ---------------------------------------------------------------------------------

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
)
# OpenPose COCO-18 limbs (1-based, as in ControlNet's annotator/openpose/util.py) and colours.
LIMBS = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# BODY_25 index of each COCO-18 keypoint (BODY_25 adds mid-hip at 8 and the feet).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
MAX_PEOPLE = 64

Point = tuple[float, float]


@dataclass(frozen=True)
class Person:
    """One skeleton: 18 COCO keypoints, ``None`` where not visible.

    Coordinates are pixels of ``canvas`` (width, height) when the JSON named a canvas;
    without one they are pixels of whatever image the pose is drawn on, or fractions of it
    when every coordinate is within [0, 1].
    """

    points: tuple[Point | None, ...]
    canvas: tuple[int, int] | None = None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidKeypoints(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _from_flat(values: Any, where: str) -> list[Point | None]:
    if not isinstance(values, list):
        raise InvalidKeypoints(f"{where}: pose_keypoints_2d must be a list of numbers")
    if len(values) == 25 * 3:
        triples = [values[3 * i:3 * i + 3] for i in _BODY25_TO_COCO18]
    elif len(values) == 18 * 3:
        triples = [values[3 * i:3 * i + 3] for i in range(18)]
    else:
        raise InvalidKeypoints(
            f"{where}: pose_keypoints_2d has {len(values)} values; expected 54 (18 keypoints "
            "as x, y, confidence: OpenPose COCO-18) or 75 (BODY_25)"
        )
    points: list[Point | None] = []
    for i, (x, y, c) in enumerate(triples):
        x, y, c = (_number(v, f"{where} keypoint {i}") for v in (x, y, c))
        points.append((x, y) if c > 0 else None)  # OpenPose writes 0,0,0 for unseen points
    return points


def _from_pairs(values: list, where: str) -> list[Point | None]:
    if len(values) != 18:
        raise InvalidKeypoints(f"{where}: expected 18 keypoints (OpenPose COCO-18), got {len(values)}")
    points: list[Point | None] = []
    for i, item in enumerate(values):
        if item is None:
            points.append(None)
            continue
        if not isinstance(item, list | tuple) or len(item) not in (2, 3):
            raise InvalidKeypoints(f"{where} keypoint {i}: expected [x, y] or [x, y, confidence]")
        x, y = _number(item[0], f"{where} keypoint {i}"), _number(item[1], f"{where} keypoint {i}")
        c = _number(item[2], f"{where} keypoint {i}") if len(item) == 3 else 1.0
        # Pose editors mark a missing point with negative coordinates or zero confidence.
        points.append((x, y) if c > 0 and x >= 0 and y >= 0 else None)
    return points


def _canvas(doc: dict) -> tuple[int, int] | None:
    width, height = doc.get("canvas_width"), doc.get("canvas_height")
    if width is None and height is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise InvalidKeypoints("canvas_width and canvas_height must both be positive integers")
    return int(width), int(height)


def parse_openpose_keypoints(data: bytes | str | dict | list) -> list[Person]:
    """People from OpenPose JSON (COCO-18 or BODY_25) or a plain list of 18 points.

    Accepted: ``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}], "canvas_width": W,
    "canvas_height": H}`` (the format of OpenPose and of ControlNet pose editors), a list of
    18 ``[x, y]``/``[x, y, c]`` (``null`` for a missing point), or a list of such lists.
    Raises ``InvalidKeypoints`` (code ``invalid_keypoints``) for anything else, and when no
    keypoint at all is visible.
    """
    doc: Any = data
    if isinstance(data, bytes | bytearray | str):
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidKeypoints(f"keypoints are not valid JSON: {exc}") from None

    if isinstance(doc, dict):
        people_doc = doc.get("people")
        if not isinstance(people_doc, list):
            raise InvalidKeypoints('expected an object with a "people" list (OpenPose JSON)')
        if len(people_doc) > MAX_PEOPLE:
            raise InvalidKeypoints(f"{len(people_doc)} people; at most {MAX_PEOPLE} are drawn")
        canvas = _canvas(doc)
        people = []
        for n, person in enumerate(people_doc):
            if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
                raise InvalidKeypoints(f"people[{n}]: missing pose_keypoints_2d")
            people.append(Person(tuple(_from_flat(person["pose_keypoints_2d"], f"people[{n}]")), canvas))
    elif isinstance(doc, list) and doc and all(isinstance(p, list) and len(p) == 18 for p in doc) \
            and all(item is None or isinstance(item, list) for p in doc for item in p):
        if len(doc) > MAX_PEOPLE:
            raise InvalidKeypoints(f"{len(doc)} people; at most {MAX_PEOPLE} are drawn")
        people = [Person(tuple(_from_pairs(p, f"person {n}"))) for n, p in enumerate(doc)]
    elif isinstance(doc, list):
        people = [Person(tuple(_from_pairs(doc, "keypoints")))]
    else:
        raise InvalidKeypoints("keypoints must be OpenPose JSON or a list of 18 [x, y] points")

    if not any(point is not None for person in people for point in person.points):
        raise InvalidKeypoints("no visible keypoint in the pose")
    return people


def _to_pixels(person: Person, width: int, height: int) -> list[Point | None]:
    if person.canvas is not None:
        sx, sy = width / person.canvas[0], height / person.canvas[1]
    elif all(0.0 <= c <= 1.0 for p in person.points if p is not None for c in p):
        sx, sy = float(width), float(height)  # normalised coordinates
    else:
        sx = sy = 1.0
    return [None if p is None else (p[0] * sx, p[1] * sy) for p in person.points]


def render_openpose(people: Sequence[Person], width: int, height: int) -> Image.Image:
    """The OpenPose-18 control image ControlNet's openpose models expect.

    Limbs are filled ellipses 4 px wide at 60% of their colour, joints 4 px discs in full
    colour, on black, as drawn by ControlNet's own annotator (``draw_bodypose``).
    """
    canvas = np.zeros((height, width, 3), np.uint8)  # RGB, so the colours read as listed
    stick = 4
    for person in people:
        points = _to_pixels(person, width, height)
        for (a, b), color in zip(LIMBS, COLORS, strict=False):  # 17 limbs, 18 colours
            p, q = points[a - 1], points[b - 1]
            if p is None or q is None:
                continue
            length = math.hypot(p[0] - q[0], p[1] - q[1])
            angle = math.degrees(math.atan2(p[1] - q[1], p[0] - q[0]))
            center = (int((p[0] + q[0]) / 2), int((p[1] + q[1]) / 2))
            polygon = cv2.ellipse2Poly(center, (int(length / 2), stick), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in color])
        for point, color in zip(points, COLORS, strict=True):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), 4, color, thickness=-1)
    return Image.fromarray(canvas)
