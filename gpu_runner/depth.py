"""Depth estimation with a transformers model, and splitting an image into depth layers.

Depth is normalised per image to 0-1 with **0 = nearest, 1 = farthest**, whatever the model
outputs: relative models (DPT, Depth Anything) predict inverse depth (larger = nearer),
metric ones (ZoeDepth, GLPN, Depth Pro, Prompt Depth Anything, Depth Anything "metric")
predict distance (larger = farther).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from gpu_runner.vision import VisionModel

Orientation = Literal["disparity", "depth"]
_METRIC_TYPES = frozenset({"zoedepth", "glpn", "depth_pro", "prompt_depth_anything"})


def orientation(config: object) -> Orientation:
    """Whether a depth model's output grows with nearness (disparity) or distance (depth)."""
    if getattr(config, "model_type", None) in _METRIC_TYPES:
        return "depth"
    if getattr(config, "depth_estimation_type", None) == "metric":
        return "depth"
    return "disparity"


def normalise(raw: np.ndarray, kind: Orientation) -> np.ndarray:
    """``raw`` model output as float32 in 0-1, 0 = nearest. A flat map is all zeros."""
    raw = np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(raw.min()), float(raw.max())
    if hi <= lo:
        return np.zeros(raw.shape, np.float32)
    scaled = (raw - lo) / (hi - lo)
    return (1.0 - scaled if kind == "disparity" else scaled).astype(np.float32)


def estimate_depth(vm: VisionModel, image: Image.Image) -> tuple[np.ndarray, Orientation]:
    """Normalised depth (HxW float32, 0 = nearest) at ``image``'s size, and the model's orientation."""
    import torch

    width, height = image.size
    inputs = vm.processor(images=image.convert("RGB"), return_tensors="pt").to(vm.device)
    with torch.inference_mode():
        outputs = vm.model(**inputs)
    post = getattr(vm.processor, "post_process_depth_estimation", None)
    if post is not None:
        kwargs = {"target_sizes": [(height, width)]}
        if "source_sizes" in inspect.signature(post).parameters:
            kwargs["source_sizes"] = [(height, width)]  # ZoeDepth crops its padding with it
        raw = post(outputs, **kwargs)[0]["predicted_depth"]
    else:
        raw = torch.nn.functional.interpolate(outputs.predicted_depth[:, None].float(), size=(height, width),
                                              mode="bilinear", align_corners=False)[0, 0]
    kind = orientation(vm.config)
    return normalise(raw.float().cpu().numpy(), kind), kind


@dataclass(frozen=True)
class DepthLayer:
    """One slice of the image: the pixels whose normalised depth is in ``depth_range``."""

    index: int  # 0 = nearest
    mask: np.ndarray  # HxW bool
    depth_range: tuple[float, float] | None  # smallest and largest depth in it; None when empty
    coverage: float  # fraction of the image's pixels

    @property
    def role(self) -> str:
        return "foreground" if self.index == 0 else "midground"


DEPTH_BINS = 1024


def _balanced_cuts(before: np.ndarray, count: int) -> list[int]:
    """Cut positions ``0 = b[0] < b[1] < ... < b[count] = n`` over ``n`` ordered bins, where
    ``before[b]`` is the share of pixels in bins ``< b``, chosen so that layer sizes are as
    close to 1/count as ties allow (least squares, by dynamic programming over the bins)."""
    n = len(before) - 1
    if n < count:  # fewer occupied bins than layers: one bin each, the farthest layers stay empty
        return list(range(n + 1)) + [n] * (count - n)
    target = 1.0 / count
    # sizes[j, i]: share of pixels in bins i..j-1; only i < j is a non-empty layer.
    sizes = before[:, None] - before[None, :]
    invalid = np.triu(np.ones((n + 1, n + 1), bool))
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    choices = []
    for _ in range(count):
        total = np.where(invalid, np.inf, cost[None, :] + (sizes - target) ** 2)
        choice = total.argmin(axis=1)
        cost = total[np.arange(n + 1), choice]
        choices.append(choice)
    cuts = [n]
    for choice in reversed(choices):
        cuts.append(int(choice[cuts[-1]]))
    return cuts[::-1]


def split_by_depth(depth: np.ndarray, count: int) -> list[DepthLayer]:
    """``count`` disjoint masks that together cover every pixel, near to far, cut at the
    depth map's quantiles, so each holds about 1/count of the pixels.

    Depth is binned in 1/1024ths of its range and a bin is never split: a depth that many
    pixels share (a sky the model clips to zero, a flat wall) stays in one layer, and the
    other layers share the rest evenly. A layer is empty only when the map has fewer
    occupied bins than ``count`` (a flat map).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    lo, hi = float(depth.min()), float(depth.max())
    scaled = (depth - lo) / (hi - lo) if hi > lo else np.zeros(depth.shape)
    bins = np.minimum((scaled * DEPTH_BINS).astype(np.int64), DEPTH_BINS - 1)
    counts = np.bincount(bins.ravel(), minlength=DEPTH_BINS)
    occupied = np.flatnonzero(counts)
    cuts = _balanced_cuts(np.concatenate([[0.0], np.cumsum(counts[occupied]) / depth.size]), count)
    # Each bin's layer, looked up per pixel (one pass over the image).
    bin_layer = np.zeros(DEPTH_BINS, np.int64)
    bin_layer[occupied] = np.searchsorted(np.asarray(cuts[1:-1]), np.arange(occupied.size), side="right")
    labels = bin_layer[bins]
    layers = []
    for i in range(count):
        mask = labels == i
        values = depth[mask]
        span = (float(values.min()), float(values.max())) if values.size else None
        layers.append(DepthLayer(index=i, mask=mask, depth_range=span, coverage=values.size / depth.size))
    return layers


def layer_name(layer: DepthLayer, count: int) -> str:
    role = "background" if layer.index == count - 1 else layer.role
    return f"layer_{layer.index}_{role}"


def cut_layer(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """``image`` as RGBA, opaque only inside ``mask`` (an input alpha is kept within it).

    Hidden pixels are zeroed: they compress to almost nothing and cannot leak the photo.
    """
    rgba = np.array(image.convert("RGBA"))
    alpha = np.where(mask, rgba[..., 3], 0).astype(np.uint8)
    rgba[..., :3][alpha == 0] = 0
    rgba[..., 3] = alpha
    return Image.fromarray(rgba, "RGBA")


def depth_image(depth: np.ndarray) -> Image.Image:
    """The depth map as an 8-bit grayscale image, near = white (the ControlNet/parallax convention)."""
    return Image.fromarray(np.round((1.0 - depth) * 255.0).astype(np.uint8), "L")
