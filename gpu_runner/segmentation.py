"""Foreground masks: from a semantic segmentation model, or classically with GrabCut.

Model path: any semantic segmentation architecture transformers ships (SegFormer, DPT,
UperNet, BEiT, MobileViT; Mask2Former/MaskFormer through their semantic output). The
foreground is a set of the model's labels: the ones asked for, else every label but
``background`` when the model has one (human parsing / clothes / binary models), else the
common "thing" classes (people, animals, vehicles) the model knows (ADE20K, COCO, ...).
Soft class probabilities give soft edges.

Person path: MediaPipe's selfie segmentation model (``person_foreground``; a TFLite file from
the mediapipe wheel, run with LiteRT), upsampled and refined with a guided filter.

GrabCut path (no model): seeded from a centred rectangle (the margin is sure background),
cleaned (small specks and holes), refined by a second GrabCut pass seeded from the cleaned
mask, and run on a copy at most ``WORK_SIDE`` px for speed. It assumes one subject roughly
centred on a background of different colours; callers label its results as such.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from bucketbrush.errors import InvalidParams, ModelUnavailable

if TYPE_CHECKING:
    from gpu_runner.vision import VisionModel

# Person masks (selfie model): guided-filter regulariser and the largest side it runs at in full.
PERSON_EPS = 1e-3
GUIDED_SIDE = 1024
WORK_SIDE = 384  # measured on 2 CPU cores: 0.1 s for 128 px, 0.7 s at 320 px, 1.8 s at 512 px
# COCO things plus ADE20K's names for the same kinds of objects.
THING_LABELS = (
    "person", "people", "human", "bicycle", "car", "motorcycle", "motorbike", "minibike", "airplane",
    "aeroplane", "bus", "train", "truck", "van", "boat", "ship", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "animal", "backpack", "umbrella", "handbag", "suitcase",
    "bottle", "cup", "vase", "chair", "potted plant", "teddy bear", "laptop", "cell phone", "book", "clock",
)


def _aliases(label: str) -> set[str]:
    """``"person;individual;someone"`` -> {"person;individual;someone", "person", "individual", "someone"}."""
    label = label.strip().lower()
    return {label} | {part.strip() for part in re.split(r"[;,]", label) if part.strip()}


def foreground_classes(id2label: Mapping[int, str], wanted: Iterable[str] = ()) -> list[int]:
    """The class ids that count as foreground (see the module docstring).

    Raises InvalidParams for a wanted label the model lacks, ModelUnavailable when nothing
    can be chosen automatically.
    """
    labels = {int(i): _aliases(name) for i, name in id2label.items()}
    wanted = [w.strip().lower() for w in wanted if w.strip()]
    if wanted:
        missing = [w for w in wanted if not any(w in a for a in labels.values())]
        if missing:
            names = ", ".join(str(id2label[i]) for i in sorted(labels))
            raise InvalidParams(f"the segmentation model has no label {', '.join(map(repr, missing))}; "
                                f"its labels: {names[:2000]}")
        return sorted(i for i, a in labels.items() if a & set(wanted))
    background = [i for i, a in labels.items() if a & {"background", "bg", "_background_"}]
    if background:
        return sorted(set(labels) - set(background))
    things = sorted(i for i, a in labels.items() if a & set(THING_LABELS))
    if not things:
        raise ModelUnavailable("the segmentation model has neither a 'background' label nor common object "
                               "labels; set BUCKETBRUSH_SEGMENTATION_LABELS (or the job's labels param) to "
                               "the labels that are foreground")
    return things


def class_probabilities(vm: VisionModel, image: Image.Image) -> np.ndarray:
    """Per-class probabilities (C x H x W float32) at ``image``'s size."""
    import torch
    import torch.nn.functional as F

    width, height = image.size
    inputs = vm.processor(images=image.convert("RGB"), return_tensors="pt").to(vm.device)
    with torch.inference_mode():
        outputs = vm.model(**inputs)
        logits = getattr(outputs, "logits", None)
        if logits is not None and logits.ndim == 4:
            up = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
            probs = up.softmax(dim=1)[0]
        else:
            # Mask2Former / MaskFormer: queries x (classes + "no object") and queries x masks,
            # combined as their own semantic post-processing does, but kept soft.
            classes = outputs.class_queries_logits.float().softmax(dim=-1)[0, :, :-1]
            masks = F.interpolate(outputs.masks_queries_logits.float(), size=(height, width),
                                  mode="bilinear", align_corners=False)[0].sigmoid()
            seg = torch.einsum("qc,qhw->chw", classes, masks)
            probs = seg / seg.sum(dim=0, keepdim=True).clamp_min(1e-6)
    return probs.cpu().numpy().astype(np.float32)


def model_foreground(vm: VisionModel, image: Image.Image, wanted: Iterable[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Soft foreground probability (HxW float32, 0-1) and the labels counted as foreground."""
    id2label = vm.config.id2label
    ids = foreground_classes(id2label, wanted)
    probs = class_probabilities(vm, image)
    return np.clip(probs[ids].sum(axis=0), 0.0, 1.0), [str(id2label[i]) for i in ids]


def _keep_main_regions(fg: np.ndarray, min_share: float = 0.2, max_hole_share: float = 0.05) -> np.ndarray:
    """``fg`` without specks: components under ``min_share`` of the largest are dropped and
    enclosed holes under ``max_hole_share`` of the foreground are filled."""
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(fg.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_share * areas.max()) + 1
    out = np.isin(labels, keep)
    # Holes: background components that do not touch the border.
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~out).astype(np.uint8), connectivity=4)
    h, w = out.shape
    limit = max_hole_share * out.sum()
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if x > 0 and y > 0 and x + bw < w and y + bh < h and area <= limit:
            out[labels == i] = True
    return out


def grabcut_foreground(image: Image.Image, margin: float = 0.05, iterations: int = 5,
                       refine_iterations: int = 2) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Foreground mask (HxW bool) by GrabCut, and the seed rectangle (x0, y0, x1, y1) in image pixels."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA)
    sh, sw = bgr.shape[:2]
    mx, my = max(1, round(sw * margin)), max(1, round(sh * margin))
    if sw - 2 * mx < 2 or sh - 2 * my < 2:
        raise InvalidParams(f"the image ({width}x{height}) is too small for a {margin:.0%} margin")
    rect = (mx, my, sw - 2 * mx, sh - 2 * my)
    mask = np.zeros((sh, sw), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, mask, rect, bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    fg = _keep_main_regions((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD))
    if fg.any() and refine_iterations:
        side = max(3, round(min(sh, sw) * 0.03)) | 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        inner = cv2.erode(fg.astype(np.uint8), kernel) > 0
        seed = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
        seed[fg] = cv2.GC_PR_FGD
        seed[inner] = cv2.GC_FGD
        outside = np.ones((sh, sw), bool)
        outside[my:sh - my, mx:sw - mx] = False
        seed[outside] = cv2.GC_BGD
        cv2.grabCut(bgr, seed, None, bgd, fgd, refine_iterations, cv2.GC_INIT_WITH_MASK)
        fg = _keep_main_regions((seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD))
    if scale < 1.0:
        fg = cv2.resize(fg.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    x0, y0 = round(mx / scale), round(my / scale)
    return fg, (x0, y0, width - x0, height - y0)


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, cv2.CV_32F, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """He, Sun and Tang's guided filter (ECCV 2010, Algorithm 1) with a grey ``guide``: ``src``
    smoothed so that its edges follow the guide's. Both HxW in 0-1; ``radius`` is the box
    window's half-side in px, ``eps`` the regulariser (larger: smoother, fewer of the guide's
    edges transferred). ``subsample`` > 1 computes the linear coefficients on a copy that much
    smaller and applies them at full size (He and Sun's fast guided filter, 2015)."""
    guide, p = guide.astype(np.float32), src.astype(np.float32)
    height, width = guide.shape
    small_i, small_p, r = guide, p, radius
    if subsample > 1:
        size = (max(1, round(width / subsample)), max(1, round(height / subsample)))
        small_i = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
        small_p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
        r = max(1, round(radius / subsample))
    mean_i, mean_p = _box(small_i, r), _box(small_p, r)
    var_i = _box(small_i * small_i, r) - mean_i * mean_i
    a = (_box(small_i * small_p, r) - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    mean_a, mean_b = _box(a, r), _box(b, r)
    if subsample > 1:
        mean_a = cv2.resize(mean_a, (width, height), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (width, height), interpolation=cv2.INTER_LINEAR)
    return mean_a * guide + mean_b


@dataclass(frozen=True)
class PersonMask:
    """The selfie model's person probability at the image's size, and how it was refined."""

    alpha: np.ndarray  # HxW float32, 0-1
    details: dict[str, Any]
    model: dict[str, Any]


def person_foreground(image: Image.Image, refine: bool = True, eps: float = PERSON_EPS) -> PersonMask:
    """People in ``image`` as a soft mask, from MediaPipe's selfie segmentation model.

    As MediaPipe's SelfieSegmentationCpu graph: the whole image stretched to 256x256 (area
    averaged; values 0-1), the model's person probability (already a sigmoid) resized back to the image with
    bilinear interpolation. ``refine`` then runs a guided filter with the grey image as guide,
    its radius twice the upsampling factor, on a copy at most GUIDED_SIDE px (fast guided
    filter), so the mask's edge follows the photo's. Raises ModelUnavailable when the runtime
    or the model is missing.
    """
    from gpu_runner import tflite

    model = tflite.load("selfie_segmentation")
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    side = tflite.MODELS["selfie_segmentation"][1][1]  # input (1, 256, 256, 3)
    tensor = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    (out,) = model(tensor[None])
    alpha = cv2.resize(out[0, :, :, 0], (width, height), interpolation=cv2.INTER_LINEAR)
    details: dict[str, Any] = {"model_input": [side, side], "refine": "guided" if refine else "none"}
    if refine:
        upsampling = max(width, height) / side
        radius = max(2, round(2 * upsampling))
        subsample = max(1, math.ceil(max(width, height) / GUIDED_SIDE))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        alpha = guided_filter(gray, alpha, radius, eps, subsample)
        details.update(radius=radius, eps=eps, subsample=subsample)
    return PersonMask(np.clip(alpha, 0.0, 1.0).astype(np.float32), details, model.describe())


def feather(alpha: np.ndarray, radius: int) -> np.ndarray:
    """``alpha`` (0-1 float) with edges softened over about ``radius`` px."""
    if radius <= 0:
        return alpha.astype(np.float32)
    side = 2 * radius + 1
    return cv2.GaussianBlur(alpha.astype(np.float32), (side, side), radius / 2.0)


def cutout(image: Image.Image, alpha: np.ndarray) -> Image.Image:
    """``image`` as RGBA with ``alpha`` (0-1) multiplied into any alpha it had."""
    rgba = np.array(image.convert("RGBA"))
    rgba[..., 3] = np.round(rgba[..., 3].astype(np.float32) * np.clip(alpha, 0.0, 1.0)).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")
